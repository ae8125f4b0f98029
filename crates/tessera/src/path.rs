//! Request paths as routes see them and upstreams receive them. A route's groups protect a
//! path only if the proxy and the upstream agree on which path was asked for, so the proxy
//! matches routes on one normal form and forwards that same form: escapes of unreserved
//! characters decoded (RFC 3986 §6.2.2.2), other escapes in upper case (§6.2.2.1), dot
//! segments resolved (§5.2.4, `%2e` included) and repeated slashes merged. A path no upstream
//! reads the same way as the proxy is refused instead: an encoded `/`, a `\`, a control
//! character, a broken escape, escapes that are not UTF-8, or `..` above the root.
//!
//! Upstreams also differ among themselves: some ignore letter case, Tomcat drops `;parameters`
//! from segments, Windows drops trailing dots and spaces. [`lenient`] reads a normal path as
//! the most forgiving of them would; the proxy refuses a path whose route would change under
//! that reading.

use std::borrow::Cow;

/// Why a path is refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnsafePath {
    /// Not `/`-rooted (`*`, or an authority alone).
    NotRooted,
    /// `%2F`: one segment to some upstreams, two to others.
    EncodedSlash,
    /// `\` or `%5C`: a separator to Windows upstreams.
    Backslash,
    /// A control character, raw or escaped (`%00`, `%0A`).
    ControlCharacter,
    /// `%` without two hex digits.
    BrokenEscape,
    /// Escapes that decode to bytes that are not UTF-8 (such as the overlong `%C0%AE`, a `.`
    /// to careless decoders).
    NotUtf8,
    /// `..` above the root.
    AboveRoot,
    /// The path matches another route when read as a lenient upstream reads it.
    Ambiguous,
}

impl UnsafePath {
    /// One sentence for the client.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            UnsafePath::NotRooted => "the request path must start with /",
            UnsafePath::EncodedSlash => "the request path contains an encoded slash (%2F)",
            UnsafePath::Backslash => "the request path contains a backslash",
            UnsafePath::ControlCharacter => "the request path contains a control character",
            UnsafePath::BrokenEscape => "the request path contains a malformed %-escape",
            UnsafePath::NotUtf8 => "the request path's %-escapes are not UTF-8",
            UnsafePath::AboveRoot => "the request path climbs above the root with ..",
            UnsafePath::Ambiguous => {
                "the request path reaches another route when letter case, ;parameters or trailing dots are ignored"
            }
        }
    }
}

/// The normal form of `raw` (a path without its query), or why it has none.
pub(crate) fn normalize(raw: &str) -> Result<Cow<'_, str>, UnsafePath> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(UnsafePath::NotRooted);
    };
    if is_normal(rest) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut segments = Vec::new();
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        let segment = decode_unreserved(segment)?;
        trailing_slash = !push_segment(&mut segments, segment)?;
    }
    Ok(Cow::Owned(join(&segments, trailing_slash)))
}

/// A normal path as the most lenient upstream reads it: each segment fully decoded, cut at
/// its first `;` (Tomcat's path parameters), in lower case, without trailing dots and spaces
/// (Windows), and dot segments resolved again (Tomcat reads `..;` as `..`).
pub(crate) fn lenient(normal: &str) -> Result<Cow<'_, str>, UnsafePath> {
    let rest = normal.strip_prefix('/').ok_or(UnsafePath::NotRooted)?;
    let unchanged = !rest
        .bytes()
        .any(|b| matches!(b, b'%' | b';') || b.is_ascii_uppercase() || !b.is_ascii())
        && !rest.split('/').any(|s| s.ends_with('.'));
    if unchanged {
        return Ok(Cow::Borrowed(normal));
    }
    let mut segments = Vec::new();
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        let decoded = percent_decode(segment);
        let without_parameters = decoded.split(';').next().unwrap_or_default();
        let folded = without_parameters.to_lowercase();
        let segment = match folded.as_str() {
            "." | ".." => folded,
            other => other.trim_end_matches(['.', ' ']).to_owned(),
        };
        trailing_slash = !push_segment(&mut segments, segment)?;
    }
    Ok(Cow::Owned(join(&segments, trailing_slash)))
}

/// Whether a rooted path (after its first `/`) is already normal: no escape, no backslash or
/// control character, no empty (but the last) or dot segment.
fn is_normal(rest: &str) -> bool {
    let plain = !rest
        .bytes()
        .any(|b| b == b'%' || b == b'\\' || b.is_ascii_control());
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    plain
}

/// Adds `segment` to a path being resolved (RFC 3986 §5.2.4, with empty segments merged);
/// answers whether it added a named segment (else the path now ends with `/`).
fn push_segment(segments: &mut Vec<String>, segment: String) -> Result<bool, UnsafePath> {
    match segment.as_str() {
        "" | "." => Ok(false),
        ".." => segments.pop().map(|_| false).ok_or(UnsafePath::AboveRoot),
        _ => {
            segments.push(segment);
            Ok(true)
        }
    }
}

fn join(segments: &[String], trailing_slash: bool) -> String {
    let mut path = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    for segment in segments {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    path
}

/// One segment with escapes of unreserved characters (ALPHA DIGIT - . _ ~) decoded and the
/// others in upper case; refuses what has no safe reading.
fn decode_unreserved(segment: &str) -> Result<String, UnsafePath> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    // Every escape decoded, to check that the escapes spell UTF-8.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            refuse_separator_or_control(byte)?;
            out.push(byte);
            decoded.push(byte);
            i += 1;
            continue;
        }
        let value = escape_at(bytes, i).ok_or(UnsafePath::BrokenEscape)?;
        match value {
            b'/' => return Err(UnsafePath::EncodedSlash),
            _ => refuse_separator_or_control(value)?,
        }
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(value);
        } else {
            out.extend_from_slice(format!("%{value:02X}").as_bytes());
        }
        decoded.push(value);
        i += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(UnsafePath::NotUtf8);
    }
    String::from_utf8(out).map_err(|_| UnsafePath::NotUtf8)
}

fn refuse_separator_or_control(byte: u8) -> Result<(), UnsafePath> {
    match byte {
        b'\\' => Err(UnsafePath::Backslash),
        b if b.is_ascii_control() => Err(UnsafePath::ControlCharacter),
        _ => Ok(()),
    }
}

/// The byte that the escape `%XY` at `bytes[i]` stands for.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = bytes.get(i + 1..i + 3)?;
    let digit = |d: u8| {
        char::from(d)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    Some((digit(hex[0])? << 4) | digit(hex[1])?)
}

/// Every escape decoded (a normal path's escapes are valid and UTF-8).
fn percent_decode(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%').then(|| escape_at(bytes, i)).flatten();
        match escaped {
            Some(value) => {
                out.push(value);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        let table = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin/"),
            ("/a/b/c", "/a/b/c"),
            ("//admin", "/admin"),
            ("///admin//x//", "/admin/x/"),
            ("/./admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/./x", "/admin/x"),
            ("/public/../admin", "/admin"),
            ("/public/./../admin/", "/admin/"),
            ("/admin/x/..", "/admin/"),
            ("/a/b/../../c", "/c"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/%2e./admin", "/admin"),
            ("/%2e/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%61%64%6D%69%6e", "/admin"),
            ("/%7euser/%7Euser", "/~user/~user"),
            ("/%2D%5F%2E%30%39", "/-_.09"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%3Fb%23c%25d", "/a%3Fb%23c%25d"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/caf\u{e9}", "/caf\u{e9}"),
            ("/%2e%2e%2e", "/..."),
            ("/...", "/..."),
            ("/.a/..b/a.", "/.a/..b/a."),
            ("/admin;x", "/admin;x"),
            ("/..;/admin", "/..;/admin"),
            ("/a b", "/a b"),
        ];
        for (raw, normal) in table {
            assert_eq!(normalize(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn a_normal_path_is_not_copied() {
        for raw in ["/", "/admin", "/admin/", "/a/b.c/d;e", "/a~b_c-d"] {
            assert!(matches!(normalize(raw), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn paths_without_a_safe_reading_are_refused() {
        let table = [
            ("", UnsafePath::NotRooted),
            ("*", UnsafePath::NotRooted),
            ("admin", UnsafePath::NotRooted),
            ("/admin%2f", UnsafePath::EncodedSlash),
            ("/admin%2Fx", UnsafePath::EncodedSlash),
            ("/a%2f..%2fadmin", UnsafePath::EncodedSlash),
            ("/a\\..\\admin", UnsafePath::Backslash),
            ("/a%5c..%5Cadmin", UnsafePath::Backslash),
            ("/admin%00", UnsafePath::ControlCharacter),
            ("/admin%0a", UnsafePath::ControlCharacter),
            ("/admin%0D", UnsafePath::ControlCharacter),
            ("/admin%7f", UnsafePath::ControlCharacter),
            ("/admin\u{1}", UnsafePath::ControlCharacter),
            ("/admin\t", UnsafePath::ControlCharacter),
            ("/admin%", UnsafePath::BrokenEscape),
            ("/admin%4", UnsafePath::BrokenEscape),
            ("/admin%zz", UnsafePath::BrokenEscape),
            ("/admin%g0", UnsafePath::BrokenEscape),
            ("/admin%%30", UnsafePath::BrokenEscape),
            ("/%c0%ae%c0%ae/admin", UnsafePath::NotUtf8),
            ("/%c0%af", UnsafePath::NotUtf8),
            ("/%e9t%e9", UnsafePath::NotUtf8),
            ("/%ff", UnsafePath::NotUtf8),
            ("/..", UnsafePath::AboveRoot),
            ("/../admin", UnsafePath::AboveRoot),
            ("/a/../../admin", UnsafePath::AboveRoot),
            ("/%2e%2e/admin", UnsafePath::AboveRoot),
            ("/.%2E", UnsafePath::AboveRoot),
        ];
        for (raw, why) in table {
            assert_eq!(normalize(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn the_lenient_reading_folds_case_parameters_and_trailing_dots() {
        let table = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/ADMIN", "/admin"),
            ("/Admin/X", "/admin/x"),
            ("/admin;x", "/admin"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/;/admin", "/admin"),
            ("/public/..;/admin", "/admin"),
            ("/admin.", "/admin"),
            ("/admin..", "/admin"),
            ("/admin%20", "/admin"),
            ("/admin.%20.", "/admin"),
            ("/admin%3B", "/admin"),
            ("/a%3Bb", "/a"),
            ("/caf%C3%89", "/caf\u{e9}"),
            ("/v1.2/x", "/v1.2/x"),
        ];
        for (normal, read) in table {
            assert_eq!(lenient(normal).as_deref(), Ok(read), "{normal}");
        }
        assert_eq!(lenient("/..;/admin"), Err(UnsafePath::AboveRoot));
        assert!(matches!(lenient("/api/pods"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn every_normal_form_is_its_own_normal_form() {
        let raws = [
            "//a/./b/../%63/",
            "/%2e%2e%2e/x",
            "/a%3bb/%7e",
            "/x/%e2%82%ac/.",
            "/a/b/c/../..",
        ];
        for raw in raws {
            let once = normalize(raw).unwrap().into_owned();
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }
}
