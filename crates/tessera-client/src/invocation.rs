//! How the person at the terminal runs this client, for the commands its messages and the
//! kubeconfig name: `tessera login`, or `kubectl tessera login` when this process is the
//! kubectl plugin `kubectl-tessera` (kubectl finds a program named `kubectl-NAME` on PATH and
//! runs it for `kubectl NAME`).

use std::ffi::OsStr;
use std::path::Path;

/// The command that runs this client: `tessera` or `kubectl tessera`.
pub fn command() -> &'static str {
    command_for(&std::env::args_os().next().unwrap_or_default())
}

/// The program to install for it: `tessera` or `kubectl-tessera`.
pub fn program() -> &'static str {
    match command() {
        PLUGIN_COMMAND => PLUGIN_PROGRAM,
        _ => SERVER_PROGRAM,
    }
}

const SERVER_PROGRAM: &str = "tessera";
const PLUGIN_PROGRAM: &str = "kubectl-tessera";
const PLUGIN_COMMAND: &str = "kubectl tessera";

/// The command for a process started as `argv0`.
fn command_for(argv0: &OsStr) -> &'static str {
    let name = Path::new(argv0).file_name().unwrap_or_default();
    if name == PLUGIN_PROGRAM {
        PLUGIN_COMMAND
    } else {
        SERVER_PROGRAM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_run_through_kubectl_and_anything_else_as_tessera() {
        for (argv0, command) in [
            ("/usr/local/bin/kubectl-tessera", "kubectl tessera"),
            ("kubectl-tessera", "kubectl tessera"),
            ("/usr/local/bin/tessera", "tessera"),
            ("/opt/kubectl-tessera/bin/tessera", "tessera"),
            ("", "tessera"),
        ] {
            assert_eq!(command_for(OsStr::new(argv0)), command, "{argv0}");
        }
    }
}
