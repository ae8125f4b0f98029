//! `tessera storage copy`: an embedded installation moves to PostgreSQL without losing a session.

use reqwest::StatusCode;

use crate::cluster::Database;
use crate::support::{Server, tessera_cli, write_private};

#[tokio::test]
async fn storage_copy_moves_an_embedded_installation_to_postgres_without_losing_a_session() {
    let server = Server::start().await;
    let spent = server.kubernetes_tokens().await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, rotated) = server.refresh(&spent).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let live = rotated["refresh_token"].as_str().unwrap().to_owned();
    let jwks_before = server.jwks().await;
    let dir = server.stop();

    let db = Database::create();
    let from = format!("sqlite://{}", dir.path().join("tessera.db").display());
    let to = db.url(5432);
    let copy = || {
        tessera_cli(&[
            "storage".into(),
            "copy".into(),
            "--from".into(),
            from.clone().into(),
            "--to".into(),
            to.clone().into(),
        ])
    };
    let output = copy();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 session,"), "{stdout}");
    assert!(stdout.contains("2 refresh tokens"), "{stdout}");

    // A second copy would merge two installations: refused, naming why.
    let again = copy();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");

    let server = Server::start_in(dir, &[("TESSERA_STORAGE__URL", to.as_str())]).await;
    assert_eq!(server.jwks().await, jwks_before, "the same signing keys");
    let (status, body) = server.refresh(&live).await;
    assert_eq!(status, StatusCode::OK, "the live token moved along: {body}");
    let (status, body) = server.refresh(&spent).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "a spent token stays spent");
}

#[tokio::test]
async fn migrate_applies_the_schema_once_then_has_nothing_to_do() {
    let db = Database::create();
    let dir = tempfile::tempdir().unwrap();
    write_private(
        &dir.path().join("tessera.yaml"),
        format!("storage:\n  url: {}\n", db.url(5432)),
    );
    let config = dir.path().join("tessera.yaml");
    let migrate = || tessera_cli(&["migrate".into(), "--config".into(), config.clone().into()]);
    let first = migrate();
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(said.contains("from schema version 0 to 5"), "{said}");
    let second = migrate();
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(said.contains("nothing to do"), "{said}");
}
