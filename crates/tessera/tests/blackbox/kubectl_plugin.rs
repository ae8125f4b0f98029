//! Issue 15: `kubectl-tessera`, the kubectl side alone, run as itself and as a kubectl plugin
//! (`kubectl tessera …`, the real kubectl finding it on PATH): login through the login form,
//! the kubeconfig it writes calling itself, credentials from its cache and by a refresh, the
//! real kubectl against the stand-in API server, logout, and one cache shared with
//! `tessera credential`.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;

use crate::kubectl::{
    Client, DISPATCHER, Home, KUBECTL, TTL, assert_one_clear_error, cluster, count,
    kubectl_version, login_with, mode, output, read_yaml, sleep_until_wall,
};
use crate::support::Server;

/// Logs in through `client` and asserts it worked.
async fn logged_in_with(client: Client, server: &Server, home: &Home) {
    let finished = login_with(client, server, home, &[], || {}).await;
    assert!(
        finished.success,
        "{client:?} login failed:\n{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("Logged in"), "{}", finished.stderr);
    assert_eq!(mode(&home.kubeconfig()), 0o600, "the kubeconfig is private");
}

/// The exec entry of the kubeconfig's only tessera user.
fn exec_entry(home: &Home) -> yaml_serde::Value {
    let doc = read_yaml(&home.kubeconfig());
    doc["users"][0]["user"]["exec"].clone()
}

/// The ExecCredential a credential command printed, and its token.
fn credential_token(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credential: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(credential["kind"], "ExecCredential");
    credential["status"]["token"].as_str().unwrap().to_owned()
}

fn kubectl_works(home: &std::sync::Arc<Home>, kubectl: &'static str) {
    if let Err(e) = kubectl_version(home, kubectl) {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_tessera_logs_in_serves_kubectl_refreshes_and_logs_out() {
    let cluster = cluster(&[TTL]).await;
    let server = &cluster.server;
    let home = Home::new();
    logged_in_with(Client::Plugin, server, &home).await;

    // The kubeconfig calls the binary that wrote it, and says how to get it.
    let exec = exec_entry(&home);
    let command = PathBuf::from(exec["command"].as_str().unwrap());
    assert_eq!(
        std::fs::canonicalize(&command).unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_kubectl-tessera")).unwrap()
    );
    assert_eq!(exec["args"][0], "credential");
    let hint = exec["installHint"].as_str().unwrap();
    assert!(
        hint.starts_with("kubectl-tessera is needed") && hint.contains("`kubectl tessera login`"),
        "{hint}"
    );

    // The real kubectl runs it as its exec plugin.
    let loop_home = std::sync::Arc::clone(&home);
    tokio::task::spawn_blocking(move || kubectl_works(&loop_home, KUBECTL))
        .await
        .unwrap();
    assert!(cluster.api.accepted() >= 1, "the API saw its bearer token");

    // From the cache, then by one refresh once the token has run out.
    let cached = credential_token(&output(home.credential_with(Client::Plugin, server)).await);
    server.verify(&cached, "kubernetes").await.unwrap();
    let expires = home.cache_entry()["expires_at"].as_i64().unwrap();
    sleep_until_wall(expires * 1000 + 50).await;
    let refreshed = credential_token(&output(home.credential_with(Client::Plugin, server)).await);
    assert_ne!(refreshed, cached);
    server.verify(&refreshed, "kubernetes").await.unwrap();
    // The audit line is written after the answer: wait for it, then exactly one.
    assert_eq!(server.audit_events("TokenRefreshed", 1).await.len(), 1);

    // Logout revokes the session and deletes the cache; the next credential says how to log in.
    let file = home.cache_file();
    let refresh = home.cache_entry()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut logout = home.client(Client::Plugin, &["logout", "--kubeconfig"]);
    logout.arg(home.kubeconfig());
    let out = output(logout).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!file.exists(), "the cache file is gone");
    let (status, body) = server.refresh(&refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let out = output(home.credential_with(Client::Plugin, server)).await;
    assert_one_clear_error(&out, &["run `kubectl tessera login --issuer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_tessera_works_as_a_kubectl_plugin_found_on_path() {
    let cluster = cluster(&[]).await;
    let server = &cluster.server;
    let home = Home::new();
    logged_in_with(Client::ThroughKubectl, server, &home).await;
    let command = PathBuf::from(exec_entry(&home)["command"].as_str().unwrap());
    assert_eq!(
        std::fs::canonicalize(&command).unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_kubectl-tessera")).unwrap(),
        "the plugin, not kubectl, is what the kubeconfig runs"
    );

    let token =
        credential_token(&output(home.credential_with(Client::ThroughKubectl, server)).await);
    server.verify(&token, "kubernetes").await.unwrap();
    for kubectl in [KUBECTL, DISPATCHER] {
        let loop_home = std::sync::Arc::clone(&home);
        tokio::task::spawn_blocking(move || kubectl_works(&loop_home, kubectl))
            .await
            .unwrap();
    }

    let mut logout = home.client(Client::ThroughKubectl, &["logout", "--kubeconfig"]);
    logout.arg(home.kubeconfig());
    let out = output(logout).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Logged out of"), "{said}");
    let cache_files = std::fs::read_dir(home.cache_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(cache_files, 0, "the cache file is gone");
}

/// Existing kubeconfigs keep `tessera credential`; a machine that also has the plugin shares
/// the one cache between both, so neither refreshes the other's session away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_and_kubectl_tessera_share_one_token_cache() {
    let server = Server::start().await;
    let home = Home::new();
    logged_in_with(Client::Tessera, &server, &home).await;
    let by_tessera = credential_token(&output(home.credential(&server)).await);
    let by_plugin = credential_token(&output(home.credential_with(Client::Plugin, &server)).await);
    assert_eq!(by_plugin, by_tessera, "answered from the same cache file");
    assert_eq!(count(&server, "TokenRefreshed"), 0);
}
