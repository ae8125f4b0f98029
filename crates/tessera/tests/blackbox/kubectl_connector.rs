//! Issue 16 on the kubectl side: `tessera login --connector corp` signs a person of the real
//! OpenLDAP directory in, the real kubectl presents their id_token through the credential
//! plugin, and the login the plugin starts once the session has ended goes to the same
//! connector.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::kube_api::KubeApi;
use crate::kubectl::{
    Client, Guard, Home, KUBECTL, TTL, kubectl_version, lines_of, login_as, read_yaml, sign_in_as,
    sleep_until_wall,
};
use crate::ldap::{ALICE_PASSWORD, Directory};
use crate::ldap_login::server_with_env;
use crate::support::query_param;

/// `kubectl auth whoami -o json` with the kubeconfig of `home`: the user the API server
/// made of the presented id_token.
fn whoami(home: &Home) -> Value {
    let out = home
        .kubectl(KUBECTL, &["auth", "whoami", "-o", "json"])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl auth whoami: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_acts_as_the_directory_person_who_logged_in_through_the_connector() {
    let directory = Directory::start().await;
    let api = KubeApi::start();
    let ca = api.ca.display().to_string();
    let env = [
        ("TESSERA_KUBERNETES__SERVER", api.url.as_str()),
        ("TESSERA_KUBERNETES__CERTIFICATE_AUTHORITY", ca.as_str()),
        TTL,
    ];
    let server = server_with_env(&directory, "5m", "15m", &env).await;
    api.trust(&server.issuer, &server.jwks().await);
    let home = Home::new();

    let alice = ("alice", ALICE_PASSWORD);
    let finished = login_as(
        Client::Tessera,
        &server,
        &home,
        &["--connector", "corp"],
        || {},
        alice,
    )
    .await;
    assert!(finished.success, "tessera login: {}", finished.stderr);
    assert!(finished.stderr.contains("as alice."), "{}", finished.stderr);
    let url = finished.url.expect("tessera login printed its URL");
    assert_eq!(query_param(&url, "connector_id").as_deref(), Some("corp"));

    // The kubeconfig keeps the connector for the logins the plugin starts.
    let kubeconfig = read_yaml(&home.kubeconfig());
    let args: Vec<&str> = kubeconfig["users"][0]["user"]["exec"]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "--connector");
    assert_eq!(at.map(|i| args[i + 1]), Some("corp"), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--user", "alice"]),
        "{args:?}"
    );

    // The real kubectl runs the plugin and the API server sees alice of the directory.
    let kubectl_home = std::sync::Arc::clone(&home);
    let review = tokio::task::spawn_blocking(move || {
        kubectl_version(&kubectl_home, KUBECTL).unwrap_or_else(|e| panic!("{e}"));
        whoami(&kubectl_home)
    })
    .await
    .unwrap();
    let user = &review["status"]["userInfo"];
    let sub = user["username"].as_str().unwrap();
    assert!(sub.starts_with("corp:"), "{review}");
    assert_ne!(sub, "corp:alice", "the directory's id, not the name");
    assert_eq!(
        user["groups"],
        serde_json::json!(["k8s-admins", "k8s-dev", "system:authenticated"]),
        "{review}"
    );
    assert_eq!(api.refused(), 0, "{:?}", api.refusals());

    // Once the session has ended, the plugin's new login goes to the same connector.
    let entry = home.cache_entry();
    let answer = server
        .post(
            "/revoke",
            &[
                ("token", entry["refresh_token"].as_str().unwrap()),
                ("token_type_hint", "refresh_token"),
                ("client_id", "kubernetes"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    sleep_until_wall(entry["expires_at"].as_i64().unwrap() * 1000 + 50).await;
    let mut credential = home.tessera(&[]);
    credential
        .args(&args)
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":true}}"#,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard::spawn(credential);
    let mut stdout = lines_of(child.0.stdout.take().unwrap());
    let mut stderr = lines_of(child.0.stderr.take().unwrap());
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stderr.recv())
            .await
            .expect("tessera credential prints a login URL")
            .expect("tessera credential prints a login URL before exiting");
        let text = line.trim();
        if text.starts_with("https://") && text.contains("/authorize?") {
            break text.to_owned();
        }
    };
    assert_eq!(query_param(&url, "connector_id").as_deref(), Some("corp"));
    sign_in_as(&server, &url, alice.0, alice.1).await;
    assert!(child.wait(Duration::from_secs(30)).await.success());
    let answer: Value =
        serde_json::from_str(&stdout.recv().await.expect("an ExecCredential on stdout")).unwrap();
    let token = answer["status"]["token"].as_str().unwrap();
    let claims = server.verify(token, "kubernetes").await.unwrap();
    assert_eq!(claims["sub"], sub);
}
