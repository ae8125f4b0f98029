//! The whole flow through an OpenID Connect client library that nobody here wrote: Python's
//! authlib, pinned in `tests/oidc_client/requirements.txt` and installed by this test into
//! `target/test-venv`. `tests/oidc_client/authlib_flow.py` says what the library verifies.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::python;
use crate::support::{PASSWORD, Server};

const CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc_client");

#[tokio::test]
async fn authlib_completes_the_whole_flow_and_verifies_every_id_token() {
    let requirements = Path::new(CLIENT_DIR).join("requirements.txt");
    let python = python::venv("test-venv", requirements).await;
    let server = Server::start().await;
    let run = tokio::process::Command::new(python)
        // Isolated mode: no PYTHONPATH, user site-packages or script directory on sys.path.
        .arg("-I")
        .arg(Path::new(CLIENT_DIR).join("authlib_flow.py"))
        .env("ISSUER", &server.issuer)
        .env("CA_FILE", &server.ca)
        .env("USERNAME", "dev")
        .env("PASSWORD", PASSWORD)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the authlib flow finishes within two minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the authlib flow failed ({}):\n{stderr}{stdout}",
        output.status
    );
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("the authlib flow printed no JSON summary:\n{stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["issuer"], server.issuer.as_str());
    assert_eq!(summary["sub"], "dev");
    println!("{summary}");
}
