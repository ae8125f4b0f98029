//! The token endpoint's use cases on a real store with a hand-moved clock: the code exchange,
//! the refresh (rotation, grace, replay, expiry) and client authentication.

use std::time::Duration;

use serde_json::json;
use tessera_core::id::ClientId;

use crate::app::AppError;
use crate::app::testing::{
    CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET, ISSUER, PUBLIC_CLIENT, PUBLIC_REDIRECT, TestApp,
    USER, VERIFIER, claims_of, grant_refusal,
};
use crate::app::token::ClientCredentials;

const GRACE: (&str, &str) = ("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "5000");

#[tokio::test]
async fn a_code_exchange_signs_the_documented_claims_and_audits_the_issue() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let id = claims_of(&tokens.id_token);
    assert_eq!(id["iss"], ISSUER);
    assert_eq!(id["sub"], USER);
    assert_eq!(id["aud"], PUBLIC_CLIENT);
    assert_eq!(id["azp"], PUBLIC_CLIENT);
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["iat"], 1_700_000_000);
    assert_eq!(id["exp"], 1_700_000_060);
    assert_eq!(id["auth_time"], 1_700_000_000);
    assert_eq!(id["groups"], json!(["dev", "system:authenticated"]));
    let access = claims_of(&tokens.access_token);
    assert_eq!(access["sid"], id["sid"]);
    assert_eq!(access["client_id"], PUBLIC_CLIENT);
    assert_eq!(access["scope"], "openid profile email groups");
    assert_eq!((tokens.token_type, tokens.expires_in), ("Bearer", 60));
    assert!(tokens.refresh_token.starts_with("tsr1_"));
    assert_eq!(t.events(), ["LoginSucceeded", "TokenIssued"]);
    let issued = &t.audit()[1];
    assert_eq!(issued["grant_type"], "authorization_code");
    assert_eq!(issued["session_id"], id["sid"]);
    assert_eq!(issued["source_ip"], "192.0.2.1");
}

#[tokio::test]
async fn a_code_works_once_and_its_reuse_revokes_the_session_it_started() {
    let t = TestApp::start().await;
    let request = t.request(PUBLIC_CLIENT, "openid");
    let code = t.code(&request).await;
    let tokens = t.exchange(PUBLIC_CLIENT, &code).await.unwrap();
    assert_eq!(
        grant_refusal(t.exchange(PUBLIC_CLIENT, &code).await),
        "code reused"
    );
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &tokens.refresh_token).await),
        "session_revoked",
        "what the first exchange issued is revoked"
    );
    let revoked = t.audit().pop().unwrap();
    assert_eq!(revoked["event"], "SessionRevoked");
    assert_eq!(revoked["reason"], "code_reuse");
    assert_eq!(revoked["session_id"], claims_of(&tokens.id_token)["sid"]);
}

#[tokio::test]
async fn a_code_expires_a_minute_after_it_was_issued() {
    let t = TestApp::start().await;
    let request = t.request(PUBLIC_CLIENT, "openid");
    let (early, late) = (t.code(&request).await, t.code(&request).await);
    t.advance(Duration::from_millis(59_999));
    assert!(t.exchange(PUBLIC_CLIENT, &early).await.is_ok());
    t.advance(Duration::from_millis(1));
    assert_eq!(
        grant_refusal(t.exchange(PUBLIC_CLIENT, &late).await),
        "code expired"
    );
}

#[tokio::test]
async fn a_code_presented_with_the_wrong_verifier_or_redirect_is_refused_and_spent() {
    let t = TestApp::start().await;
    let request = t.request(PUBLIC_CLIENT, "openid");
    let client = t.client(PUBLIC_CLIENT);
    let attempts: [(Option<&str>, Option<&str>, &str); 4] = [
        (
            Some(PUBLIC_REDIRECT),
            Some("another-verifier-of-enough-length-0123456789abcdef"),
            "PKCE verification failed",
        ),
        (Some(PUBLIC_REDIRECT), None, "PKCE verification failed"),
        (
            None,
            Some(VERIFIER),
            "redirect_uri differs from the authorization request",
        ),
        (
            Some("http://127.0.0.1:9/callback"),
            Some(VERIFIER),
            "redirect_uri differs from the authorization request",
        ),
    ];
    for (redirect, verifier, reason) in attempts {
        let code = t.code(&request).await;
        let refused = t
            .app
            .exchange_code(client, &code, redirect, verifier, &t.ctx)
            .await;
        assert_eq!(grant_refusal(refused), reason);
        assert_eq!(
            grant_refusal(t.exchange(PUBLIC_CLIENT, &code).await),
            "code reused",
            "a refused code is spent all the same"
        );
    }
}

#[tokio::test]
async fn a_code_is_refused_to_another_client_unknown_codes_and_oversized_ones() {
    let t = TestApp::start().await;
    let code = t.code(&t.request(PUBLIC_CLIENT, "openid")).await;
    let demo = t.client(CONFIDENTIAL_CLIENT);
    let refused = t
        .app
        .exchange_code(demo, &code, Some(PUBLIC_REDIRECT), Some(VERIFIER), &t.ctx)
        .await;
    assert_eq!(grant_refusal(refused), "code of another client");
    assert_eq!(
        grant_refusal(t.exchange(PUBLIC_CLIENT, "tsc1_unknown").await),
        "unknown code"
    );
    let oversized = "c".repeat(4097);
    assert_eq!(
        grant_refusal(t.exchange(PUBLIC_CLIENT, &oversized).await),
        "oversized code"
    );
}

#[tokio::test]
async fn a_refresh_rotates_and_the_spent_token_is_a_replay_that_revokes_the_session() {
    let t = TestApp::start().await;
    let first = t.tokens().await;
    t.advance(Duration::from_secs(30));
    let second = t
        .refresh(PUBLIC_CLIENT, &first.refresh_token)
        .await
        .unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    let id = claims_of(&second.id_token);
    assert_eq!(id["iat"], 1_700_000_030);
    assert_eq!(
        id["auth_time"], 1_700_000_000,
        "a refresh is no new sign-in"
    );
    assert!(
        id.get("nonce").is_none(),
        "the nonce belongs to the exchange"
    );
    t.advance(Duration::from_secs(1));
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &first.refresh_token).await),
        "refresh token replayed"
    );
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &second.refresh_token).await),
        "session_revoked",
        "the replay ended the whole family"
    );
    let audit = t.audit();
    let replay = audit
        .iter()
        .find(|e| e["event"] == "RefreshTokenReplayDetected")
        .unwrap();
    assert_eq!(replay["first_used_ms_ago"], 1000);
    assert_eq!(replay["session_revoked"], true);
    assert_eq!(
        &t.events()[2..],
        [
            "TokenRefreshed",
            "RefreshTokenReplayDetected",
            "SessionRevoked"
        ]
    );
}

#[tokio::test]
async fn inside_the_grace_period_a_reused_token_gets_the_same_successor() {
    let t = TestApp::start_with(&[GRACE]).await;
    let first = t.tokens().await;
    let rotated = t
        .refresh(PUBLIC_CLIENT, &first.refresh_token)
        .await
        .unwrap();
    t.advance(Duration::from_millis(4_999));
    let again = t
        .refresh(PUBLIC_CLIENT, &first.refresh_token)
        .await
        .unwrap();
    assert_eq!(again.refresh_token, rotated.refresh_token);
    let grace = t.audit().pop().unwrap();
    assert_eq!(grace["event"], "ExpiredRefreshTokenUsed");
    assert_eq!(grace["first_used_ms_ago"], 4_999);
    assert_eq!(grace["first_used_ip"], "192.0.2.1");
    t.advance(Duration::from_millis(1));
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &first.refresh_token).await),
        "refresh token replayed",
        "past the grace period the same token is a replay"
    );
}

#[tokio::test]
async fn with_on_replay_reject_a_replay_is_refused_and_the_session_lives_on() {
    let t = TestApp::start_with(&[("TESSERA_REFRESH_TOKEN__ON_REPLAY", "reject")]).await;
    let first = t.tokens().await;
    let second = t
        .refresh(PUBLIC_CLIENT, &first.refresh_token)
        .await
        .unwrap();
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &first.refresh_token).await),
        "refresh token replayed"
    );
    assert!(
        t.refresh(PUBLIC_CLIENT, &second.refresh_token)
            .await
            .is_ok()
    );
    let replay = t.audit().into_iter().rev().nth(1).unwrap();
    assert_eq!(replay["event"], "RefreshTokenReplayDetected");
    assert_eq!(replay["session_revoked"], false);
}

#[tokio::test]
async fn a_refresh_token_expires_after_its_sliding_lifetime() {
    let t = TestApp::start().await;
    let first = t.tokens().await;
    t.advance(Duration::from_secs(14 * 60));
    let second = t
        .refresh(PUBLIC_CLIENT, &first.refresh_token)
        .await
        .unwrap();
    t.advance(Duration::from_secs(15 * 60));
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &second.refresh_token).await),
        "token_expired"
    );
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_end_however_often_it_is_refreshed() {
    let t = TestApp::start_with(&[("TESSERA_SESSION__MAX_LIFETIME", "30m")]).await;
    let mut token = t.tokens().await.refresh_token;
    for _ in 0..2 {
        t.advance(Duration::from_secs(14 * 60));
        token = t
            .refresh(PUBLIC_CLIENT, &token)
            .await
            .unwrap()
            .refresh_token;
    }
    t.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &token).await),
        "session_ended"
    );
    assert_eq!(t.events().last().unwrap(), "SessionExpired");
}

#[tokio::test]
async fn a_refresh_may_narrow_the_scope_but_a_wider_one_consumes_nothing() {
    let t = TestApp::start().await;
    let first = t.tokens().await;
    let client = t.client(PUBLIC_CLIENT);
    let wider = t
        .app
        .refresh(client, &first.refresh_token, Some("openid admin"), &t.ctx)
        .await;
    match wider {
        Err(AppError::InvalidScope(message)) => {
            assert_eq!(message, "scope `admin` was not granted to this session");
        }
        other => panic!("expected invalid_scope, got {other:?}"),
    }
    let narrowed = t
        .app
        .refresh(client, &first.refresh_token, Some("groups openid"), &t.ctx)
        .await
        .unwrap();
    assert_eq!(narrowed.scope, "openid groups");
    let id = claims_of(&narrowed.id_token);
    assert!(id.get("email").is_none() && id.get("groups").is_some());
    let next = t.refresh(PUBLIC_CLIENT, &narrowed.refresh_token).await;
    assert_eq!(
        next.unwrap().scope,
        "openid profile email groups",
        "the session keeps its scope"
    );
}

#[tokio::test]
async fn a_refresh_token_of_another_client_is_refused_and_stays_good_for_its_own() {
    let t = TestApp::start().await;
    let first = t.tokens().await;
    assert_eq!(
        grant_refusal(t.refresh(CONFIDENTIAL_CLIENT, &first.refresh_token).await),
        "other_client"
    );
    assert!(t.refresh(PUBLIC_CLIENT, &first.refresh_token).await.is_ok());
    let unknown = t.refresh(PUBLIC_CLIENT, "tsr1_unknown").await;
    assert_eq!(grant_refusal(unknown), "unknown refresh token");
    let oversized = "t".repeat(4097);
    assert_eq!(
        grant_refusal(t.refresh(PUBLIC_CLIENT, &oversized).await),
        "oversized refresh token"
    );
}

#[tokio::test]
async fn clients_authenticate_with_their_secret_or_as_public_and_nothing_else() {
    let t = TestApp::start().await;
    let credentials = |id: &str, secret: Option<&str>| ClientCredentials {
        id: ClientId::new(id),
        secret: secret.map(str::to_owned),
    };
    let table = [
        (
            credentials(CONFIDENTIAL_CLIENT, Some(CONFIDENTIAL_SECRET)),
            true,
        ),
        (credentials(PUBLIC_CLIENT, None), true),
        (credentials(CONFIDENTIAL_CLIENT, Some("wrong")), false),
        (credentials(CONFIDENTIAL_CLIENT, None), false),
        (credentials(PUBLIC_CLIENT, Some("anything")), false),
        (credentials("nobody", None), false),
    ];
    for (presented, accepted) in table {
        let answer = t.app.authenticate_client(&presented, &t.ctx).await;
        match answer {
            Ok(client) if accepted => assert_eq!(client.id, presented.id),
            Err(AppError::InvalidClient) if !accepted => {}
            other => panic!("{presented:?}: {other:?}"),
        }
    }
    let failed = t.audit();
    assert_eq!(failed.len(), 1, "only the wrong secret is audited");
    assert_eq!(failed[0]["event"], "ClientAuthenticationFailed");
    assert_eq!(failed[0]["reason"], "bad_secret");
    assert_eq!(failed[0]["client_id"], CONFIDENTIAL_CLIENT);
}

#[tokio::test]
async fn wrong_secrets_are_limited_per_window_but_a_verified_secret_still_passes() {
    let t = TestApp::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "2")]).await;
    let right = TestApp::confidential_credentials();
    let wrong = ClientCredentials {
        secret: Some("wrong".into()),
        ..right.clone()
    };
    assert!(t.app.authenticate_client(&right, &t.ctx).await.is_ok());
    for _ in 0..2 {
        let refused = t.app.authenticate_client(&wrong, &t.ctx).await;
        assert!(
            matches!(refused, Err(AppError::InvalidClient)),
            "{refused:?}"
        );
    }
    for _ in 0..2 {
        let limited = t.app.authenticate_client(&wrong, &t.ctx).await;
        assert!(
            matches!(
                limited,
                Err(AppError::ClientRateLimited { retry_after: 301 })
            ),
            "{limited:?}"
        );
    }
    assert!(
        t.app.authenticate_client(&right, &t.ctx).await.is_ok(),
        "a secret verified before is not held up by others' failures"
    );
    let reasons: Vec<_> = t.audit().iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons, ["bad_secret", "bad_secret", "rate_limited"]);
    t.advance(Duration::from_secs(5 * 60));
    t.app.close_rate_limit_windows();
    let ended = t.audit().pop().unwrap();
    assert_eq!(ended["event"], "RateLimitEnded");
    assert_eq!(ended["limiter"], "client_authentication");
    assert_eq!(ended["refused"], 2);
    let retried = t.app.authenticate_client(&wrong, &t.ctx).await;
    assert!(
        matches!(retried, Err(AppError::InvalidClient)),
        "{retried:?}"
    );
}

#[test]
fn a_narrowed_scope_keeps_the_granted_order_and_never_adds_a_scope() {
    let granted = "openid profile email groups";
    let table = [
        ("openid", Ok("openid")),
        ("groups openid", Ok("openid groups")),
        ("  email   openid ", Ok("openid email")),
        ("", Ok("")),
        (
            "openid admin",
            Err("scope `admin` was not granted to this session"),
        ),
        (
            "offline_access",
            Err("scope `offline_access` was not granted to this session"),
        ),
    ];
    for (requested, expected) in table {
        let narrowed = super::narrow_scope(requested, granted).map_err(|e| e.to_string());
        assert_eq!(
            narrowed.as_deref(),
            expected.map_err(str::to_owned).as_deref(),
            "{requested:?}"
        );
    }
}
