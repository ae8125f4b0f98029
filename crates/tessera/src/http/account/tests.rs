//! The account page on the wire, in process through the router: the way in for a person who is
//! not signed in, the CSRF check of both forms, someone else's session id, what "sign out
//! everywhere" ends, and user agents shown as text.

use axum::http::StatusCode;
use tessera_core::id::SessionId;

use crate::app::RequestContext;
use crate::app::testing::{
    Answer, PASSWORD, PUBLIC_CLIENT, PUBLIC_REDIRECT, TestApp, USER, VERIFIER, claims_of,
    query_value, request,
};
use crate::users::{Users, UsersFile};

/// The CSRF token the forms of these tests send, and the cookie that goes with it.
const CSRF: &str = "the-csrf-token-of-the-account-tests";

/// One person's sign-in: their SSO cookie, and a kubectl session started from it.
struct SignedIn {
    sso: String,
    session: SessionId,
    refresh_token: String,
}

impl SignedIn {
    /// The `Cookie` header of this person's browser, with the CSRF cookie.
    fn cookie(&self) -> String {
        format!("tessera_sso={}; tessera_csrf={CSRF}", self.sso)
    }
}

/// `username` signs in and starts a session of the public client, its code exchanged from
/// `ctx`.
async fn sign_in(t: &TestApp, username: &str, ctx: &RequestContext) -> SignedIn {
    let outcome = t.app.login(None, username, PASSWORD, &t.ctx).await.unwrap();
    let request = t.request(PUBLIC_CLIENT, "openid");
    let location = t.app.issue_code(&request, &outcome.sso).await.unwrap();
    let code = query_value(&location, "code").unwrap();
    let client = t.client(PUBLIC_CLIENT);
    let tokens = t
        .app
        .exchange_code(client, &code, Some(PUBLIC_REDIRECT), Some(VERIFIER), ctx)
        .await
        .unwrap();
    let sid = claims_of(&tokens.id_token)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    SignedIn {
        sso: outcome.handle.expose().to_owned(),
        session: SessionId::new(sid),
        refresh_token: tokens.refresh_token,
    }
}

/// Adds `eve`, with dev's password, to the local users.
fn add_eve(t: &TestApp) {
    let dev = t.app.users().find(USER).unwrap().clone();
    let eve = crate::users::User {
        username: "eve".into(),
        ..dev.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.yaml");
    let file = UsersFile {
        users: vec![dev, eve],
    };
    std::fs::write(&path, yaml_serde::to_string(&file).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    t.app.replace_users(Users::load(&path).unwrap());
}

async fn get(t: &TestApp, uri: &str, cookie: &str) -> Answer {
    t.send(request("GET", uri, &[("cookie", cookie)], None))
        .await
}

async fn post(t: &TestApp, uri: &str, cookie: &str, csrf: &str) -> Answer {
    let body = format!("csrf={csrf}");
    t.send(request("POST", uri, &[("cookie", cookie)], Some(&body)))
        .await
}

fn end_uri(session: &SessionId) -> String {
    format!("/account/sessions/{session}/end")
}

/// The ids of the sessions the account page lists.
fn listed(page: &Answer) -> Vec<String> {
    page.body
        .split("data-session=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn without_a_live_sso_session_the_page_sends_to_the_login_form_which_comes_back() {
    let t = TestApp::start().await;
    let anonymous = get(&t, "/account", "").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(
        anonymous.header("location"),
        Some("/login?return_to=account")
    );
    assert_eq!(anonymous.header("cache-control"), Some("no-store"));

    for elsewhere in ["/login", "/login?client_id=kubernetes&return_to=account"] {
        let refused = get(&t, elsewhere, "").await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{elsewhere}");
    }
    let form = get(&t, "/login?return_to=account", "").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("to see your sessions"), "{}", form.body);
    assert!(
        form.body
            .contains("<input type=\"hidden\" name=\"return_to\" value=\"account\">")
    );
    assert!(!form.body.contains("name=\"client_id\""), "{}", form.body);
    let body = format!("return_to=account&csrf={CSRF}&username={USER}&password=wrong");
    let csrf_cookie = format!("tessera_csrf={CSRF}");
    let cookie = [("cookie", csrf_cookie.as_str())];
    let wrong = t
        .send(request("POST", "/login", &cookie, Some(&body)))
        .await;
    assert_eq!(
        wrong.status,
        StatusCode::UNAUTHORIZED,
        "the form's checks hold"
    );
    assert!(wrong.body.contains("name=\"return_to\" value=\"account\""));
    let body = body.replace(
        "wrong",
        &url::form_urlencoded::byte_serialize(PASSWORD.as_bytes()).collect::<String>(),
    );
    let signed_in = t
        .send(request("POST", "/login", &cookie, Some(&body)))
        .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    assert_eq!(signed_in.header("location"), Some("/account"));
    let sso = signed_in.header("set-cookie").unwrap();
    let sso = sso.split(';').next().unwrap().to_owned();
    assert!(sso.starts_with("tessera_sso=tss1_"), "{sso}");
    assert!(
        t.events().iter().all(|e| e != "TokenIssued"),
        "no code, no session: only the SSO session"
    );

    let page = get(&t, "/account", &sso).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.body.contains("Signed in as <strong>dev</strong>"),
        "{}",
        page.body
    );
    // Each visit is a use of the SSO session; past the idle timeout it no longer counts.
    for _ in 0..2 {
        t.advance(std::time::Duration::from_secs(29 * 60));
        assert_eq!(get(&t, "/account", &sso).await.status, StatusCode::OK);
    }
    t.advance(std::time::Duration::from_secs(30 * 60 + 1));
    let idle = get(&t, "/account", &sso).await;
    assert_eq!(idle.status, StatusCode::SEE_OTHER, "idle past 30m");
}

#[tokio::test]
async fn the_page_lists_the_persons_sessions_and_shows_user_agents_as_text() {
    let t = TestApp::start().await;
    let kubectl = RequestContext {
        ip: "198.51.100.4".into(),
        user_agent: Some("<script>alert(1)</script>".into()),
    };
    let dev = sign_in(&t, USER, &kubectl).await;
    let page = get(&t, "/account", &dev.cookie()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(listed(&page), [dev.session.as_str()]);
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(
        page.body
            .contains("from 198.51.100.4<br><small class=\"agent\">&lt;script&gt;alert(1)&lt;/script&gt;</small>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("(signed in from this browser)"));
    assert!(
        page.body
            .contains(&format!("action=\"/account/sessions/{}/end\"", dev.session))
    );
    let cookie = page.header("set-cookie").unwrap();
    let csrf = cookie
        .strip_prefix("tessera_csrf=")
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    let field = format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">");
    assert_eq!(page.body.matches(&field).count(), 2, "both forms carry it");
}

#[tokio::test]
async fn a_form_without_this_browsers_csrf_token_ends_nothing() {
    let t = TestApp::start().await;
    let dev = sign_in(&t, USER, &t.ctx).await;
    let forged = [
        post(&t, &end_uri(&dev.session), &dev.cookie(), "another").await,
        post(
            &t,
            &end_uri(&dev.session),
            &format!("tessera_sso={}", dev.sso),
            CSRF,
        )
        .await,
        post(&t, "/account/sign-out-everywhere", &dev.cookie(), "").await,
    ];
    for answer in forged {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert!(answer.body.contains("nothing was ended"), "{}", answer.body);
        assert!(answer.header("set-cookie").is_none());
    }
    assert!(!t.events().iter().any(|e| e == "SessionRevoked"));
    assert!(t.refresh(PUBLIC_CLIENT, &dev.refresh_token).await.is_ok());
    assert_eq!(
        get(&t, "/account", &dev.cookie()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn someone_elses_session_id_ends_nothing_and_answers_like_an_unknown_one() {
    let t = TestApp::start().await;
    add_eve(&t);
    let dev = sign_in(&t, USER, &t.ctx).await;
    let eve = sign_in(&t, "eve", &t.ctx).await;
    let page = get(&t, "/account", &dev.cookie()).await;
    assert_eq!(listed(&page), [dev.session.as_str()], "only dev's own");

    let theirs = post(&t, &end_uri(&eve.session), &dev.cookie(), CSRF).await;
    let unknown = post(&t, &end_uri(&SessionId::new("0123")), &dev.cookie(), CSRF).await;
    for answer in [&theirs, &unknown] {
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.header("location"), Some("/account"));
        assert_eq!(answer.body, theirs.body);
    }
    assert!(!t.events().iter().any(|e| e == "SessionRevoked"));
    assert!(t.refresh(PUBLIC_CLIENT, &eve.refresh_token).await.is_ok());

    let own = post(&t, &end_uri(&dev.session), &dev.cookie(), CSRF).await;
    assert_eq!(own.status, StatusCode::SEE_OTHER);
    assert_eq!(own.header("location"), Some("/account"));
    let revoked: Vec<_> = t
        .audit()
        .into_iter()
        .filter(|line| line["event"] == "SessionRevoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["reason"], "user_ended");
    assert_eq!(revoked[0]["session_id"], dev.session.as_str());
    assert!(t.refresh(PUBLIC_CLIENT, &dev.refresh_token).await.is_err());
    let page = get(&t, "/account", &dev.cookie()).await;
    assert_eq!(page.status, StatusCode::OK, "the SSO session lives on");
    assert!(listed(&page).is_empty());
}

#[tokio::test]
async fn sign_out_everywhere_ends_every_session_and_this_browsers_sso_session() {
    let t = TestApp::start().await;
    let dev = sign_in(&t, USER, &t.ctx).await;
    let laptop = sign_in(&t, USER, &t.ctx).await;
    let page = get(&t, "/account", &dev.cookie()).await;
    assert_eq!(listed(&page).len(), 2);

    let answer = post(&t, "/account/sign-out-everywhere", &dev.cookie(), CSRF).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.body.contains("signed out everywhere"),
        "{}",
        answer.body
    );
    let cleared = answer.header("set-cookie").unwrap();
    assert!(cleared.starts_with("tessera_sso=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    for signed_in in [&dev, &laptop] {
        assert!(
            t.refresh(PUBLIC_CLIENT, &signed_in.refresh_token)
                .await
                .is_err()
        );
        let page = get(&t, "/account", &signed_in.cookie()).await;
        assert_eq!(
            page.status,
            StatusCode::SEE_OTHER,
            "both SSO sessions ended"
        );
    }
    let reasons: Vec<_> = t
        .audit()
        .into_iter()
        .filter(|line| line["event"] == "SessionRevoked")
        .map(|line| line["reason"].clone())
        .collect();
    assert_eq!(reasons, ["sign_out_everywhere", "sign_out_everywhere"]);
}
