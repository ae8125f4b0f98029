//! Ending and inspecting sessions: the introspection answers as pure functions of what the
//! store found, then revocation, introspection, userinfo and logout as the provider runs them.

use std::time::Duration;

use tessera_core::id::{ClientId, Subject};

use super::*;
use crate::app::testing::{
    CONFIDENTIAL_CLIENT, PASSWORD, PUBLIC_CLIENT, TestApp, USER, grant_refusal, query_value,
};

const NOW: UnixMillis = UnixMillis(10_000_000);

fn session(revoked_at: Option<UnixMillis>, absolute_end: UnixMillis) -> Session {
    Session {
        id: SessionId::new("s1"),
        subject: Subject::new("dev"),
        client_id: ClientId::new("demo"),
        sso_id: None,
        scope: "openid groups".into(),
        auth_time: UnixMillis(1_000_000),
        created_at: UnixMillis(1_000_000),
        absolute_end,
        revoked_at,
    }
}

fn live() -> Session {
    session(None, UnixMillis(20_000_000))
}

fn refresh_token(
    used_at: Option<UnixMillis>,
    expires_at: UnixMillis,
    s: Session,
) -> RefreshTokenInfo {
    RefreshTokenInfo {
        client_id: ClientId::new("demo"),
        issued_at: UnixMillis(9_000_000),
        expires_at,
        used_at,
        session: s,
    }
}

#[test]
fn a_refresh_token_is_active_while_unused_unexpired_and_its_session_live() {
    let later = UnixMillis(10_000_001);
    let table = [
        (refresh_token(None, later, live()), true),
        (
            refresh_token(Some(UnixMillis(9_500_000)), later, live()),
            false,
        ),
        (refresh_token(None, NOW, live()), false),
        (
            refresh_token(None, later, session(Some(UnixMillis(1)), later)),
            false,
        ),
        (refresh_token(None, later, session(None, NOW)), false),
    ];
    for (i, (info, active)) in table.into_iter().enumerate() {
        let answer = refresh_token_introspection(&info, "https://tessera.test", NOW);
        assert_eq!(answer["active"], active, "row {i}");
        if !active {
            assert_eq!(
                answer,
                json!({"active": false}),
                "row {i}: nothing else is told"
            );
        }
    }
    let info = refresh_token(None, UnixMillis(10_900_000), live());
    assert_eq!(
        refresh_token_introspection(&info, "https://tessera.test", NOW),
        json!({
            "active": true, "token_type": "refresh_token", "client_id": "demo",
            "sub": "dev", "scope": "openid groups", "exp": 10_900, "iat": 9_000,
            "iss": "https://tessera.test", "sid": "s1",
        })
    );
}

#[test]
fn an_access_token_is_active_only_while_its_session_is_live() {
    let claims = OwnClaims {
        sub: "dev".into(),
        sid: "s1".into(),
        aud: ClientId::new("demo"),
        exp: 10_060,
        iat: 10_000,
        scope: Some("openid".into()),
    };
    let revoked = session(Some(UnixMillis(9_999_999)), UnixMillis(20_000_000));
    let ended = session(None, NOW);
    let table = [
        (Some(live()), true),
        (Some(revoked), false),
        (Some(ended), false),
        (None, false),
    ];
    for (i, (session, active)) in table.into_iter().enumerate() {
        let answer = access_token_introspection(&claims, session.as_ref(), "https://i", NOW);
        assert_eq!(answer["active"], active, "row {i}");
        if !active {
            assert_eq!(
                answer,
                json!({"active": false}),
                "row {i}: nothing else is told"
            );
        }
    }
    assert_eq!(
        access_token_introspection(&claims, Some(&live()), "https://i", NOW),
        json!({
            "active": true, "token_type": "Bearer", "client_id": "demo", "sub": "dev",
            "scope": "openid", "exp": 10_060, "iat": 10_000, "iss": "https://i", "sid": "s1",
        })
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_whole_session_once() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let client = t.client(PUBLIC_CLIENT);
    t.app
        .revoke(client, &tokens.refresh_token, &t.ctx)
        .await
        .unwrap();
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &tokens.refresh_token).await),
        "session_revoked"
    );
    let userinfo = t.app.userinfo(&tokens.access_token).await;
    assert!(
        matches!(userinfo, Err(AppError::InvalidToken)),
        "{userinfo:?}"
    );
    t.app
        .revoke(client, &tokens.refresh_token, &t.ctx)
        .await
        .unwrap();
    let revoked: Vec<_> = t
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "SessionRevoked")
        .collect();
    assert_eq!(revoked.len(), 1, "a second revocation changes nothing");
    assert_eq!(revoked[0]["reason"], "revocation_endpoint");
}

#[tokio::test]
async fn revoking_an_access_token_ends_its_session_too() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let client = t.client(PUBLIC_CLIENT);
    t.app
        .revoke(client, &tokens.access_token, &t.ctx)
        .await
        .unwrap();
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &tokens.refresh_token).await),
        "session_revoked"
    );
}

#[tokio::test]
async fn tokens_of_another_client_and_unknown_tokens_are_ignored() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let other = t.client(CONFIDENTIAL_CLIENT);
    for token in [
        tokens.refresh_token.as_str(),
        tokens.access_token.as_str(),
        tokens.id_token.as_str(),
        "tsr1_unknown",
        "garbage",
    ] {
        t.app.revoke(other, token, &t.ctx).await.unwrap();
    }
    let oversized = "t".repeat(4097);
    t.app.revoke(other, &oversized, &t.ctx).await.unwrap();
    assert!(
        t.refresh(PUBLIC_CLIENT, &tokens.refresh_token)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn introspection_is_for_confidential_clients_and_follows_the_tokens_life() {
    let t = TestApp::start().await;
    let public = t.client(PUBLIC_CLIENT);
    let tokens = t.tokens_for(CONFIDENTIAL_CLIENT).await;
    let refused = t.app.introspect(public, &tokens.access_token).await;
    assert!(
        matches!(refused, Err(AppError::InvalidClient)),
        "{refused:?}"
    );
    let demo = t.client(CONFIDENTIAL_CLIENT);
    let access = t.app.introspect(demo, &tokens.access_token).await.unwrap();
    assert_eq!(access["active"], true);
    assert_eq!(access["token_type"], "Bearer");
    assert_eq!(access["sub"], USER);
    let refresh = t.app.introspect(demo, &tokens.refresh_token).await.unwrap();
    assert_eq!(refresh["active"], true);
    assert_eq!(refresh["token_type"], "refresh_token");
    t.advance(Duration::from_secs(60));
    let expired = t.app.introspect(demo, &tokens.access_token).await.unwrap();
    assert_eq!(
        expired,
        json!({"active": false}),
        "the access token lived 60 s"
    );
    t.refresh(CONFIDENTIAL_CLIENT, &tokens.refresh_token)
        .await
        .unwrap();
    let used = t.app.introspect(demo, &tokens.refresh_token).await.unwrap();
    assert_eq!(used, json!({"active": false}), "a spent refresh token");
    for token in ["tsr1_unknown", "not-a-jwt", &tokens.id_token] {
        let answer = t.app.introspect(demo, token).await.unwrap();
        assert_eq!(answer, json!({"active": false}), "{token}");
    }
}

#[tokio::test]
async fn userinfo_answers_the_scopes_claims_while_the_access_token_lives() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let info = t.app.userinfo(&tokens.access_token).await.unwrap();
    assert_eq!(
        info,
        json!({
            "sub": "dev", "preferred_username": "dev", "name": "dev",
            "email": "dev@example.com", "email_verified": true,
            "groups": ["dev", "system:authenticated"],
        })
    );
    let id_token = t.app.userinfo(&tokens.id_token).await;
    assert!(
        matches!(id_token, Err(AppError::InvalidToken)),
        "an id_token is no access token"
    );
    t.advance(Duration::from_secs(60));
    let expired = t.app.userinfo(&tokens.access_token).await;
    assert!(
        matches!(expired, Err(AppError::InvalidToken)),
        "{expired:?}"
    );
}

#[tokio::test]
async fn logout_ends_the_sso_session_and_the_hinted_session_only() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let mut issued = Vec::new();
    for client in [PUBLIC_CLIENT, CONFIDENTIAL_CLIENT] {
        let request = t.request(client, "openid");
        let location = t.app.issue_code(&request, &outcome.sso).await.unwrap();
        let code = query_value(&location, "code").unwrap();
        issued.push(t.exchange(client, &code).await.unwrap());
    }
    let (app_signing_out, kubectl) = (&issued[0], &issued[1]);
    let hint = t.app.logout_hint(&app_signing_out.id_token).unwrap();
    assert_eq!(hint.client_id, ClientId::new(PUBLIC_CLIENT));
    let session = t.app.store.find_session(hint.session_id.clone()).await;
    let sso = session.unwrap().unwrap().sso_id.unwrap();
    assert_eq!(sso, outcome.sso.id);
    assert!(t.app.hint_names_sso(&hint, &sso).await.unwrap());
    assert!(
        !t.app
            .hint_names_sso(&hint, &SsoId::new("another"))
            .await
            .unwrap()
    );
    t.app
        .logout(Some(sso), Some(hint.session_id), &t.ctx)
        .await
        .unwrap();
    assert_eq!(
        grant_refusal(
            t.refresh(PUBLIC_CLIENT, &app_signing_out.refresh_token)
                .await
        ),
        "session_revoked"
    );
    // The same person's other session, started through the same SSO session, lives on.
    t.refresh(CONFIDENTIAL_CLIENT, &kubectl.refresh_token)
        .await
        .unwrap();
    let reasons: Vec<_> = t
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "SessionRevoked")
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, ["logout"]);
    let handle = outcome.handle.expose();
    assert_eq!(t.app.sso_session(Some(handle)).await.unwrap(), None);
}

#[tokio::test]
async fn an_expired_id_token_still_names_its_session_for_logout() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    t.advance(Duration::from_secs(3600));
    let hint = t.app.logout_hint(&tokens.id_token).unwrap();
    t.app
        .logout(None, Some(hint.session_id), &t.ctx)
        .await
        .unwrap();
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &tokens.refresh_token).await),
        "session_revoked"
    );
    assert!(t.app.logout_hint(&tokens.access_token).is_none());
    assert!(t.app.logout_hint("garbage").is_none());
}
