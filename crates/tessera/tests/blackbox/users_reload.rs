//! The users file is reloaded without a restart, when it changes and on SIGHUP (issue 13):
//! removing someone ends each of their sessions at its next refresh and refuses their login;
//! a file that does not load leaves the users as they were.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::{AuthParams, PASSWORD, Server, text, write_private};

/// Waits until the server has logged `count` reloads of the users file (a bound for a stuck
/// watcher, not a timing assertion).
async fn reloads(server: &Server, count: usize) {
    for _ in 0..300 {
        let seen = server
            .log()
            .iter()
            .filter(|l| l.contains("reloaded the users file"))
            .count();
        if seen >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the users file was not reloaded {count} time(s): {:?}",
        server.log()
    );
}

#[tokio::test]
async fn removing_a_user_from_the_file_ends_their_sessions_at_the_next_refresh() {
    let server = Server::start_with(&[("TESSERA_LOG", "info")]).await;
    let users = server.dir.path().join("users.yaml");
    let original = std::fs::read_to_string(&users).unwrap();
    let tokens = server.kubernetes_tokens().await;

    // A broken edit is reported and changes nothing.
    write_private(&users, "users: [this is not a user\n");
    for _ in 0..300 {
        if server
            .log()
            .iter()
            .any(|l| l.contains("the users file did not load"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = server.refresh(&text(&tokens, "refresh_token")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a broken file removes no one: {body}"
    );

    write_private(&users, "users: []\n");
    reloads(&server, 1).await;
    let (status, body) = server.refresh(&text(&body, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["reason"], "user_removed", "{revoked:?}");
    let refused = server
        .submit_login(&server.new_browser(), &AuthParams::kubernetes(), PASSWORD)
        .await;
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the login is refused"
    );

    // Put back and signalled: `dev` signs in again.
    write_private(&users, &original);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    reloads(&server, 2).await;
    let welcomed = server
        .submit_login(&server.new_browser(), &AuthParams::kubernetes(), PASSWORD)
        .await;
    assert!(
        welcomed.status().is_redirection(),
        "signed in again: {}",
        welcomed.status()
    );
}
