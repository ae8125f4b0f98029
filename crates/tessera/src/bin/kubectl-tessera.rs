//! `kubectl-tessera`: the kubectl plugin alone (`kubectl tessera login|credential|logout`). It
//! links only the client crate, none of the server: kubectl starts it before every request.
//!
//! The binary is declared in this package, not the client's, so the black-box tests beside
//! `tessera` can run it (cargo gives a test the paths of its own package's binaries only).

fn main() -> std::process::ExitCode {
    tessera_client::plugin_main()
}
