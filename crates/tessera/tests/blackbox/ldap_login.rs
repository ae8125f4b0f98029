//! People from a real OpenLDAP directory ([`Directory`]): the login page's choice, groups in
//! both membership styles, Active Directory's binary ids and disabled flag, refusals that create
//! nothing, and the re-validation on refresh that keeps the directory in charge.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::ldap::{
    ALICE_PASSWORD, BOB, BOB_PASSWORD, CAROL_GUID, CAROL_PASSWORD, DAVE_PASSWORD, Directory,
};
use crate::support::{
    AuthParams, PASSWORD, Server, claims, code_from, hidden_fields, location, text,
};

/// The connectors of these tests: OpenLDAP people (`member` on groups) over LDAPS, Active
/// Directory-like people (`memberOf`, `sAMAccountName`, `objectGUID`) over StartTLS, and the
/// users file.
pub(crate) fn connectors(directory: &Directory, revalidate: &str, staleness: &str) -> String {
    let common = format!(
        "    certificate_authority: {ca}\n    bind_dn: \"{bind}\"\n    bind_password_file: {pw}\n\
         \x20   timeout: 2s\n    revalidate_interval: {revalidate}\n    revalidate_max_staleness: {staleness}\n",
        ca = directory.ca_file().display(),
        bind = directory.bind_dn(),
        pw = directory.bind_password_file().display(),
    );
    format!(
        "connectors:\n\
         \x20 - id: corp\n    type: ldap\n    name: Corporate LDAP\n    url: {ldaps}\n{common}\
         \x20   user_search: {{base_dn: \"{people}\", filter: \"(objectClass=inetOrgPerson)\", username_attribute: uid, id_attribute: entryUUID, email_attribute: mail, name_attribute: displayName}}\n\
         \x20   group_search: {{base_dn: \"{groups}\", filter: \"(objectClass=groupOfNames)\", user_matchers: [{{user_attribute: distinguishedName, group_attribute: member}}], name_attribute: cn}}\n\
         \x20 - id: ad\n    type: ldap\n    name: Corporate AD\n    url: {ldap}\n    start_tls: true\n{common}\
         \x20   user_search: {{base_dn: \"{people}\", filter: \"(objectClass=adAccount)\", username_attribute: sAMAccountName, id_attribute: objectGUID}}\n\
         \x20   group_search: {{base_dn: \"{groups}\", user_matchers: [{{user_attribute: memberOf, group_attribute: distinguishedName}}], name_attribute: cn}}\n\
         \x20 - id: local\n    type: local\n    name: Break-glass account\n\
         groups:\n  include: [\"^k8s-\", \"^cluster-admins$\"]\n  rename: {{\"Domain Admins\": cluster-admins}}\n",
        ldaps = directory.ldaps_url(),
        ldap = directory.ldap_url(),
        people = directory.people_base(),
        groups = directory.groups_base(),
    )
}

/// `tessera serve --dev` with [`connectors`] added to its configuration.
async fn server_with(directory: &Directory, revalidate: &str, staleness: &str) -> Server {
    server_with_env(directory, revalidate, staleness, &[]).await
}

/// [`server_with`], with `TESSERA_*` overrides.
pub(crate) async fn server_with_env(
    directory: &Directory,
    revalidate: &str,
    staleness: &str,
    env: &[(&str, &str)],
) -> Server {
    let dir = Server::start().await.stop();
    let config = dir.path().join("tessera.yaml");
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&connectors(directory, revalidate, staleness));
    std::fs::write(&config, yaml).unwrap();
    Server::start_in(dir, env).await
}

/// Shows the login page in a fresh browser and submits the form of `connector`.
async fn sign_in(
    server: &Server,
    auth: &AuthParams<'_>,
    connector: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    sign_in_from(
        server,
        &server.new_browser(),
        auth,
        connector,
        username,
        password,
    )
    .await
}

/// [`sign_in`] from `browser`.
async fn sign_in_from(
    server: &Server,
    browser: &reqwest::Client,
    auth: &AuthParams<'_>,
    connector: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let page = server.authorize_raw(browser, &auth.pairs()).await;
    assert_eq!(page.status(), StatusCode::OK, "the login page is shown");
    let html = page.text().await.unwrap();
    let form = connector_form(&html, connector);
    let mut fields = hidden_fields(&form);
    fields.push(("username".into(), username.into()));
    fields.push(("password".into(), password.into()));
    browser
        .post(server.url("/login"))
        .form(&fields)
        .send()
        .await
        .unwrap()
}

/// The markup of the one form on the page that carries `connector_id=connector`.
fn connector_form(html: &str, connector: &str) -> String {
    let marker = format!("name=\"connector_id\" value=\"{connector}\"");
    let forms: Vec<&str> = html
        .split("<form")
        .skip(1)
        .filter(|form| form.contains(&marker))
        .collect();
    assert_eq!(forms.len(), 1, "one form for {connector} in {html}");
    forms[0].to_owned()
}

/// Signs in through `connector` and exchanges the code: the token response.
async fn tokens(server: &Server, connector: &str, username: &str, password: &str) -> Value {
    let auth = AuthParams::kubernetes();
    let answer = sign_in(server, &auth, connector, username, password).await;
    assert!(
        answer.status().is_redirection(),
        "{username} signs in through {connector}: {}",
        answer.status()
    );
    let code = code_from(&location(&answer));
    server.exchange(&code, &auth).await
}

fn groups(id_token: &Value) -> Vec<String> {
    let list = id_token["groups"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|g| g.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_person_signs_in_at_the_form_and_their_groups_reach_the_id_token() {
    let directory = Directory::start().await;
    let server = server_with(&directory, "5m", "15m").await;

    // The page offers every connector, each by the name the company gave it.
    let browser = server.new_browser();
    let page = server
        .authorize_raw(&browser, &AuthParams::kubernetes().pairs())
        .await;
    let html = page.text().await.unwrap();
    for name in ["Corporate LDAP", "Corporate AD", "Break-glass account"] {
        assert!(html.contains(name), "{name} on the page: {html}");
    }

    let alice = tokens(&server, "corp", "alice", ALICE_PASSWORD).await;
    let id = claims(&text(&alice, "id_token"));
    let sub = id["sub"].as_str().unwrap();
    assert!(sub.starts_with("corp:"), "{id}");
    assert_ne!(
        sub, "corp:alice",
        "the subject is the directory's id, not the name"
    );
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["email"], "alice@corp.example");
    assert_eq!(
        groups(&id),
        ["k8s-admins", "k8s-dev"],
        "staff is not included"
    );

    // The same person again: the same subject.
    let again = tokens(&server, "corp", "alice", ALICE_PASSWORD).await;
    assert_eq!(claims(&text(&again, "id_token"))["sub"], sub);

    // The users file is a connector like the others.
    let dev = tokens(&server, "local", "dev", PASSWORD).await;
    let dev = claims(&text(&dev, "id_token"));
    assert_eq!(dev["sub"], "dev");

    let logins = server.audit_events("LoginSucceeded", 3).await;
    let connectors: Vec<&str> = logins
        .iter()
        .map(|l| l["connector_id"].as_str().unwrap())
        .collect();
    assert_eq!(connectors, ["corp", "corp", "local"]);
    assert_eq!(logins[0]["uid"], sub);
    let issued = server.audit_events("TokenIssued", 3).await;
    assert_eq!(issued[0]["connector_id"], "corp");
    assert_eq!(issued[0]["uid"], sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_directory_person_has_an_encoded_guid_and_renamed_member_of_groups() {
    let directory = Directory::start().await;
    let server = server_with(&directory, "5m", "15m").await;

    let carol = tokens(&server, "ad", "carol", CAROL_PASSWORD).await;
    let id = claims(&text(&carol, "id_token"));
    let guid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(CAROL_GUID);
    assert_eq!(id["sub"], format!("ad:{guid}"));
    assert_eq!(id["preferred_username"], "carol");
    assert_eq!(groups(&id), ["cluster-admins"], "Domain Admins, renamed");

    // A disabled account (userAccountControl 514) does not sign in, even with its password.
    let auth = AuthParams::kubernetes();
    let refused = sign_in(&server, &auth, "ad", "dave", DAVE_PASSWORD).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let failed = server.audit_events("LoginFailed", 1).await;
    assert_eq!(failed[0]["reason"], "account_disabled");
    assert_eq!(failed[0]["connector_id"], "ad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_empty_passwords_and_filter_injection_sign_nobody_in() {
    let directory = Directory::start().await;
    let server = server_with(&directory, "5m", "15m").await;
    let auth = AuthParams::kubernetes();
    let attempts = [
        ("alice", "wrong-password"),
        ("alice", ""),
        ("nopassword", ""),
        ("nopassword", "anything"),
        ("*", ALICE_PASSWORD),
        ("al*", ALICE_PASSWORD),
        ("alice)(uid=*", ALICE_PASSWORD),
        ("*)(|(uid=*", ALICE_PASSWORD),
        ("nobody", "nobody-password"),
    ];
    for (n, (username, password)) in (10u8..).zip(attempts) {
        // Each from an address of its own, so the per-address login limit does not answer.
        let browser = server.browser_from(IpAddr::from([127, 0, 0, n]));
        let answer = sign_in_from(&server, &browser, &auth, "corp", username, password).await;
        assert_eq!(
            answer.status(),
            StatusCode::UNAUTHORIZED,
            "{username:?} / {password:?}"
        );
        let html = answer.text().await.unwrap();
        assert!(html.contains("Wrong user name or password."), "{html}");
    }
    let audit = server.audit();
    assert!(!audit.iter().any(|l| l["event"] == "LoginSucceeded"));
    let failures = audit.iter().filter(|l| l["event"] == "LoginFailed").count();
    assert!(failures >= 5, "failures are audited: {audit:?}");
    let written = std::fs::read_to_string(server.dir.path().join("audit.log")).unwrap();
    assert!(!written.contains(ALICE_PASSWORD) && !written.contains("wrong-password"));
    assert!(!server.log().iter().any(|l| l.contains(ALICE_PASSWORD)));

    // Unknown connectors are refused at /authorize, before any form.
    let mut query = auth.pairs();
    query.push(("connector_id", "nowhere".into()));
    let refused = server.authorize_raw(&server.new_browser(), &query).await;
    assert!(refused.status().is_redirection());
    let to = location(&refused);
    assert!(to.contains("error=invalid_request"), "{to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_decides_at_each_refresh_past_revalidate_interval() {
    let directory = Directory::start().await;
    let server = server_with(&directory, "1s", "10s").await;
    let bob = tokens(&server, "corp", "bob", BOB_PASSWORD).await;
    assert_eq!(groups(&claims(&text(&bob, "id_token"))), ["k8s-dev"]);

    // Taken out of the group: the next token past the interval lacks it.
    directory.remove_member("k8s-dev", BOB);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, refreshed) = server.refresh(&text(&bob, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert!(groups(&claims(&text(&refreshed, "id_token"))).is_empty());
    let checked = server.audit_events("UpstreamRevalidated", 1).await;
    assert_eq!(checked[0]["connector_id"], "corp");

    // Deleted: the next refresh past the interval ends the session.
    directory.delete(BOB);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = server.refresh(&text(&refreshed, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let failed = server.audit_events("UpstreamRevalidationFailed", 1).await;
    assert_eq!(failed[0]["reason"], "not_found");
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["reason"], "upstream_revalidation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_directory_is_a_sentence_on_the_form_and_tolerated_until_max_staleness() {
    let directory = Directory::start().await;
    let server = server_with(&directory, "1s", "4s").await;
    let alice = tokens(&server, "corp", "alice", ALICE_PASSWORD).await;

    directory.pause();
    let auth = AuthParams::kubernetes();
    let answer = sign_in(&server, &auth, "corp", "alice", ALICE_PASSWORD).await;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let html = answer.text().await.unwrap();
    assert!(
        html.contains("Corporate LDAP cannot be reached right now"),
        "{html}"
    );

    // Past the interval the check fails, and the last good check still counts for a while.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, refreshed) = server.refresh(&text(&alice, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let failed = server.audit_events("UpstreamRevalidationFailed", 1).await;
    assert_eq!(failed[0]["reason"], "unreachable");

    // Past revalidate_max_staleness: no more tokens until the directory answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = server.refresh(&text(&refreshed, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    directory.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_racing_one_refresh_token_check_the_directory_once() {
    let directory = Directory::start().await;
    let grace = [("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "10000")];
    let server = server_with_env(&directory, "1s", "10s", &grace).await;
    let alice = tokens(&server, "corp", "alice", ALICE_PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // kubectl, k9s and helm refreshing the same cached token at once, past the interval.
    let token = text(&alice, "refresh_token");
    let racers = (0..8).map(|_| server.refresh(&token));
    let answers = futures_util::future::join_all(racers).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    server.audit_events("TokenRefreshed", 1).await;
    server.audit_events("UpstreamRevalidated", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let checks = server
        .audit()
        .into_iter()
        .filter(|l| l["event"] == "UpstreamRevalidated")
        .count();
    assert_eq!(checks, 1, "one check for eight racing refreshes");
}
