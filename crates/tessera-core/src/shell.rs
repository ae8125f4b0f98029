//! Text for a POSIX shell: the commands tessera's error messages name (`chmod 700 DIR`) must
//! work when pasted, whatever the path holds.

use std::path::Path;

/// `path` as one word a POSIX shell reads back unchanged, so the command can be pasted.
pub fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@,%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_shell_would_split_are_quoted() {
        assert_eq!(
            shell_word(Path::new("/etc/tessera.yaml")),
            "/etc/tessera.yaml"
        );
        assert_eq!(shell_word(Path::new("/my dir/it's")), r"'/my dir/it'\''s'");
        assert_eq!(shell_word(Path::new("$HOME")), "'$HOME'");
        assert_eq!(shell_word(Path::new("")), "''");
    }
}
