//! Refresh-token rotation through the real binary: one use per token, the grace period, replay
//! detection and its two policies, concurrent redemptions, expiry, the absolute session end, and
//! authorization-code reuse (DESIGN.md, "Redeeming a refresh token").

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use tessera_core::clock::monotonic_now;

use crate::support::{AuthParams, Server, claims, sample};

/// The refresh token of a token response.
fn refresh_token(tokens: &Value) -> String {
    tokens["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh_token in {tokens}"))
        .to_owned()
}

/// Asserts an `invalid_grant` answer.
fn assert_invalid_grant(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

#[tokio::test]
async fn a_refresh_token_works_once_and_its_reuse_revokes_the_whole_session() {
    let server = Server::start().await;
    let first = refresh_token(&server.kubernetes_tokens().await);
    // Another login of the same user (through the same browser sign-in) is another session.
    let other = refresh_token(&server.kubernetes_tokens().await);
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = refresh_token(&rotated);
    let sid = claims(rotated["id_token"].as_str().unwrap())["sid"].clone();

    let (status, body) = server.refresh(&first).await;
    assert_invalid_grant(status, &body);
    let (status, body) = server.refresh(&second).await;
    assert_invalid_grant(status, &body);
    let (status, body) = server.refresh(&other).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the other session is untouched: {body}"
    );

    let replays = server.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0]["severity"], "alert");
    assert_eq!(replays[0]["session_revoked"], true);
    assert_eq!(replays[0]["session_id"], sid);
    assert_eq!(replays[0]["first_used_ip"], "127.0.0.1");
    assert!(replays[0]["first_used_ms_ago"].as_i64().unwrap() >= 0);
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["reason"], "replay");
    assert_eq!(revoked[0]["session_id"], sid);
}

#[tokio::test]
async fn reuse_after_the_grace_period_is_a_replay_that_revokes_the_session() {
    let grace = Duration::from_millis(300);
    let server = Server::start_with(&[("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "300")]).await;
    let first = refresh_token(&server.kubernetes_tokens().await);
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    tokio::time::sleep(grace + Duration::from_millis(100)).await;

    let (status, body) = server.refresh(&first).await;
    assert_invalid_grant(status, &body);
    let (status, body) = server.refresh(&refresh_token(&rotated)).await;
    assert_invalid_grant(status, &body);
    let replays = server.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert!(replays[0]["first_used_ms_ago"].as_i64().unwrap() >= 300);
    assert_eq!(server.audit_events("SessionRevoked", 1).await.len(), 1);
    assert!(
        server
            .audit_events("ExpiredRefreshTokenUsed", 0)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn with_on_replay_reject_a_replay_refuses_only_the_token_and_the_successor_keeps_working() {
    let server = Server::start_with(&[("TESSERA_REFRESH_TOKEN__ON_REPLAY", "reject")]).await;
    let first = refresh_token(&server.kubernetes_tokens().await);
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = refresh_token(&rotated);

    let (status, body) = server.refresh(&first).await;
    assert_invalid_grant(status, &body);
    let (status, body) = server.refresh(&second).await;
    assert_eq!(status, StatusCode::OK, "the successor still works: {body}");

    let replays = server.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0]["severity"], "alert");
    assert_eq!(replays[0]["session_revoked"], false);
    // One writer keeps the order: once the last refresh is logged, nothing earlier is missing.
    assert_eq!(server.audit_events("TokenRefreshed", 2).await.len(), 2);
    assert!(server.audit_events("SessionRevoked", 0).await.is_empty());
}

#[tokio::test]
async fn reuse_inside_the_grace_period_answers_the_same_successor_and_is_audited() {
    let server =
        Server::start_with(&[("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "5000")]).await;
    let first = refresh_token(&server.kubernetes_tokens().await);
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, again) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(refresh_token(&again), refresh_token(&rotated));
    assert!(again["id_token"].is_string() && again["access_token"].is_string());
    let id = claims(again["id_token"].as_str().unwrap());
    assert_eq!(id["sub"], "dev");
    assert!(
        id["nonce"].is_null(),
        "a refreshed id_token carries no nonce"
    );

    let reuses = server.audit_events("ExpiredRefreshTokenUsed", 1).await;
    assert_eq!(reuses.len(), 1, "{reuses:?}");
    assert_eq!(reuses[0]["severity"], "warning");
    assert_eq!(reuses[0]["first_used_ip"], "127.0.0.1");
    let ago = reuses[0]["first_used_ms_ago"].as_i64().unwrap();
    assert!((0..5000).contains(&ago), "first_used_ms_ago = {ago}");

    // The one chain goes on: the successor rotates normally.
    let (status, next) = server.refresh(&refresh_token(&rotated)).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_ne!(refresh_token(&next), refresh_token(&rotated));
    assert_eq!(server.audit_events("TokenRefreshed", 2).await.len(), 2);
    assert!(
        server
            .audit_events("RefreshTokenReplayDetected", 0)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn with_grace_requires_same_ip_reuse_from_another_address_is_a_replay() {
    let server = Server::start_with(&[
        ("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "30000"),
        ("TESSERA_REFRESH_TOKEN__GRACE_REQUIRES_SAME_IP", "true"),
    ])
    .await;
    let elsewhere = server.client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let first = refresh_token(&server.kubernetes_tokens().await);
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = refresh_token(&rotated);

    // The first user's own address gets the grace ...
    let (status, again) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(refresh_token(&again), second);

    // ... another address does not, though it is well inside the grace period.
    let answer = server.refresh_from(&elsewhere, &first).await;
    assert_invalid_grant(answer.status, &answer.body);
    let replays = server.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0]["source_ip"], "127.0.0.2");
    assert_eq!(replays[0]["first_used_ip"], "127.0.0.1");
    assert_eq!(replays[0]["session_revoked"], true);
    assert!(replays[0]["first_used_ms_ago"].as_i64().unwrap() < 30_000);

    // A replay under the default policy ends the session for everyone.
    let (status, body) = server.refresh(&second).await;
    assert_invalid_grant(status, &body);
}

/// Fifty redemptions of one token, all in flight at once.
async fn redeem_fifty_times(server: &Server, token: &str) -> Vec<(StatusCode, Value)> {
    let requests = (0..50).map(|_| server.refresh(token));
    join_all(requests).await
}

#[tokio::test]
async fn fifty_simultaneous_redemptions_without_grace_give_one_success_and_revoke_the_session() {
    let server = Server::start().await;
    let token = refresh_token(&server.kubernetes_tokens().await);
    let answers = redeem_fifty_times(&server, &token).await;

    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one fresh success: {answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_invalid_grant(*status, body);
    }
    let successor = refresh_token(winners[0]);
    let (status, body) = server.refresh(&successor).await;
    assert_invalid_grant(status, &body);

    assert_eq!(server.audit_events("TokenRefreshed", 1).await.len(), 1);
    let replays = server.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "later ones find the session revoked");
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["reason"], "replay");
    let metrics = server.metrics().await;
    let outcome = |o: &str| {
        sample(
            &metrics,
            &format!("tessera_refresh_token_redemptions_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("rotated"), Some(1.0), "{metrics}");
    assert_eq!(outcome("replay"), Some(1.0), "{metrics}");
    assert_eq!(outcome("rejected"), Some(49.0), "{metrics}");
}

#[tokio::test]
async fn fifty_simultaneous_redemptions_with_grace_all_get_the_same_successor() {
    let server =
        Server::start_with(&[("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "60000")]).await;
    let token = refresh_token(&server.kubernetes_tokens().await);
    let answers = redeem_fifty_times(&server, &token).await;

    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    let successor = refresh_token(&answers[0].1);
    assert_ne!(successor, token);
    assert!(
        answers.iter().all(|(_, b)| refresh_token(b) == successor),
        "one chain, not fifty: {answers:?}"
    );
    assert_eq!(
        server.audit_events("TokenRefreshed", 1).await.len(),
        1,
        "exactly one redemption rotated"
    );
    assert_eq!(
        server
            .audit_events("ExpiredRefreshTokenUsed", 49)
            .await
            .len(),
        49
    );
    let metrics = server.metrics().await;
    let outcome = |o: &str| {
        sample(
            &metrics,
            &format!("tessera_refresh_token_redemptions_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("rotated"), Some(1.0), "{metrics}");
    assert_eq!(outcome("grace_reuse"), Some(49.0), "{metrics}");
    let (status, body) = server.refresh(&successor).await;
    assert_eq!(status, StatusCode::OK, "the shared successor works: {body}");
}

#[tokio::test]
async fn an_unused_refresh_token_expires_after_its_ttl_while_each_refresh_slides_the_window() {
    let server = Server::start_with(&[("TESSERA_REFRESH_TOKEN__TTL", "3s")]).await;
    let idle = refresh_token(&server.kubernetes_tokens().await);
    let active = refresh_token(&server.kubernetes_tokens().await);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, rotated) = server.refresh(&active).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let slid = refresh_token(&rotated);

    // Past the idle token's 3 s, well inside the successor's fresh 3 s.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (status, body) = server.refresh(&idle).await;
    assert_invalid_grant(status, &body);
    let (status, body) = server.refresh(&slid).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the slid window is still open: {body}"
    );
}

#[tokio::test]
async fn refreshes_stop_at_the_absolute_session_end_with_a_session_expired_event() {
    let session_lifetime = Duration::from_secs(2);
    let server = Server::start_with(&[("TESSERA_SESSION__MAX_LIFETIME", "2s")]).await;
    let auth = AuthParams::kubernetes();
    let code = server.login(&auth).await;
    // The session's clock started at the login, which was before this instant.
    let logged_in = monotonic_now();
    let tokens = server.exchange(&code, &auth).await;

    let (status, rotated) = server.refresh(&refresh_token(&tokens)).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, rotated) = server.refresh(&refresh_token(&rotated)).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");

    let past_the_end =
        (session_lifetime + Duration::from_millis(300)).saturating_sub(logged_in.elapsed());
    tokio::time::sleep(past_the_end).await;
    let (status, body) = server.refresh(&refresh_token(&rotated)).await;
    assert_invalid_grant(status, &body);
    let expired = server.audit_events("SessionExpired", 1).await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["uid"], "dev");
    assert_eq!(expired[0]["client_id"], "kubernetes");
}

#[tokio::test]
async fn a_reused_authorization_code_fails_and_revokes_the_session_it_started() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let code = server.login(&auth).await;
    let tokens = server.exchange(&code, &auth).await;

    let (status, body) = server
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", auth.redirect_uri),
            ("client_id", auth.client_id),
            ("code_verifier", auth.verifier),
        ])
        .await;
    assert_invalid_grant(status, &body);
    let (status, body) = server.refresh(&refresh_token(&tokens)).await;
    assert_invalid_grant(status, &body);
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["reason"], "code_reuse");
    assert_eq!(
        revoked[0]["session_id"],
        claims(tokens["id_token"].as_str().unwrap())["sid"]
    );
}

#[tokio::test]
async fn simultaneous_uses_of_one_code_never_leave_a_working_session() {
    // The reuse may reach the store between the first use's claim of the code and the start of
    // its session, when there is nothing yet to revoke. Many rounds make that window likely.
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    for round in 0..30 {
        let code = server.login(&auth).await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", auth.redirect_uri),
            ("client_id", auth.client_id),
            ("code_verifier", auth.verifier),
        ];
        let answers = join_all((0..2).map(|_| server.token(&form))).await;
        let issued: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, body)| body)
            .collect();
        assert!(issued.len() <= 1, "round {round}: {answers:?}");
        for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
            assert_invalid_grant(*status, body);
        }
        for tokens in issued {
            let (status, body) = server.refresh(&refresh_token(tokens)).await;
            assert_invalid_grant(status, &body);
        }
    }
}

/// Behind a load balancer every request comes from the balancer: with `http.trusted_proxies`
/// the client's address is read from `X-Forwarded-For`, so the same-IP grace and the audit see
/// the real client; a header from an untrusted peer is ignored.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_address_counts() {
    let server = Server::start_with(&[
        ("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "30000"),
        ("TESSERA_REFRESH_TOKEN__GRACE_REQUIRES_SAME_IP", "true"),
        ("TESSERA_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
    ])
    .await;
    let refresh_as = |token: String, forwarded: &'static str, from: Option<IpAddr>| {
        let client = match from {
            Some(local) => server.client_from(local),
            None => server.http.clone(),
        };
        let url = server.url("/token");
        async move {
            let response = client
                .post(url)
                .header("x-forwarded-for", forwarded)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                    ("client_id", "kubernetes"),
                ])
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let first = refresh_token(&server.kubernetes_tokens().await);
    let (status, rotated) = refresh_as(first.clone(), "203.0.113.7", None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    // The same client again through the balancer: inside the grace.
    let (status, again) = refresh_as(first.clone(), "203.0.113.7", None).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    // An untrusted peer (127.0.0.2) claiming to be that client is not believed.
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (status, body) = refresh_as(first.clone(), "203.0.113.7", elsewhere).await;
    assert_invalid_grant(status, &body);
    let replays = server.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0]["source_ip"], "127.0.0.2");
    assert_eq!(replays[0]["first_used_ip"], "203.0.113.7");
}
