//! The authorization code at the token endpoint (RFC 6749 §4.1.3, RFC 7636 §4.6): the checks a
//! claimed code must pass, and the session and first refresh token it starts. Pure: the caller
//! has already claimed the code in the store (so it is spent whatever these checks say) and
//! passes the clock's reading.

use std::time::Duration;

use tessera_core::clock::UnixMillis;
use tessera_core::id::ClientId;
use tessera_core::pkce;
use tessera_core::redeem::successor_expiry;
use tessera_core::token::Secret;
use tessera_store::{AuthCode, NewRefreshToken, Session};

use crate::app::AppError;

/// What the client presented along with the code.
#[derive(Clone, Copy, Debug)]
pub(super) struct Presentation<'a> {
    /// The authenticated client.
    pub(super) client_id: &'a ClientId,
    /// The `redirect_uri` parameter, if sent.
    pub(super) redirect_uri: Option<&'a str>,
    /// The `code_verifier` parameter, if sent.
    pub(super) code_verifier: Option<&'a str>,
}

/// Checks a claimed code against what was presented with it, at `now`. The reason of a
/// refusal goes to the log only: the client learns `invalid_grant` whatever it was.
pub(super) fn check_redemption(
    code: &AuthCode,
    presented: Presentation<'_>,
    now: UnixMillis,
) -> Result<(), AppError> {
    let refuse = |reason| Err(AppError::InvalidGrant { reason });
    if now >= code.expires_at {
        return refuse("code expired");
    }
    if code.client_id != *presented.client_id {
        return refuse("code of another client");
    }
    // RFC 6749 §4.1.3: the exact `redirect_uri` of the authorization request, and required.
    if presented.redirect_uri != Some(code.redirect_uri.as_str()) {
        return refuse("redirect_uri differs from the authorization request");
    }
    if !pkce_holds(code.code_challenge.as_deref(), presented.code_verifier) {
        return refuse("PKCE verification failed");
    }
    Ok(())
}

/// The session a code starts. Its absolute end counts from the user's authentication, not
/// from the exchange: an SSO sign-in does not lengthen with each new client.
pub(super) fn session_from(code: &AuthCode, now: UnixMillis, max_lifetime: Duration) -> Session {
    Session {
        id: code.session_id.clone(),
        subject: code.subject.clone(),
        client_id: code.client_id.clone(),
        sso_id: code.sso_id.clone(),
        scope: code.scope.clone(),
        auth_time: code.auth_time,
        created_at: now,
        absolute_end: code.auth_time.plus(max_lifetime),
        revoked_at: None,
    }
}

/// The first refresh token of `session`, expiring like every successor after it.
pub(super) fn first_refresh_token(
    refresh: &Secret,
    session: &Session,
    now: UnixMillis,
    ttl: Duration,
) -> NewRefreshToken {
    NewRefreshToken {
        hash: refresh.hash(),
        issued_at: now,
        expires_at: successor_expiry(now, ttl, session.bounds()),
    }
}

/// PKCE (RFC 7636 §4.6): a code issued with a challenge needs its verifier; one issued without
/// takes none, so a verifier cannot be added after the fact.
fn pkce_holds(challenge: Option<&str>, verifier: Option<&str>) -> bool {
    match (challenge, verifier) {
        (Some(challenge), Some(verifier)) => pkce::verify_s256(verifier, challenge),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::id::{SessionId, SsoId, Subject};
    use tessera_core::token::TokenHash;

    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const ISSUED: UnixMillis = UnixMillis(1_000_000);

    fn code(challenge: Option<&str>) -> AuthCode {
        AuthCode {
            hash: TokenHash([7; 32]),
            client_id: ClientId::new("kubernetes"),
            redirect_uri: "http://127.0.0.1:5000/callback".into(),
            code_challenge: challenge.map(str::to_owned),
            nonce: Some("n".into()),
            scope: "openid groups".into(),
            session_id: SessionId::new("s1"),
            sso_id: Some(SsoId::new("sso1")),
            subject: Subject::new("dev"),
            auth_time: UnixMillis(400_000),
            expires_at: ISSUED.plus(Duration::from_secs(60)),
        }
    }

    fn reason(result: Result<(), AppError>) -> Option<&'static str> {
        match result {
            Ok(()) => None,
            Err(AppError::InvalidGrant { reason }) => Some(reason),
            Err(other) => panic!("only invalid_grant is expected, got {other:?}"),
        }
    }

    #[test]
    fn a_code_is_checked_for_expiry_client_redirect_and_pkce_in_that_order() {
        let challenge = pkce::s256_challenge(VERIFIER);
        let with_pkce = code(Some(&challenge));
        let without_pkce = code(None);
        let (own, other) = (ClientId::new("kubernetes"), ClientId::new("demo"));
        let redirect = Some("http://127.0.0.1:5000/callback");
        let expired = ISSUED.plus(Duration::from_secs(60));
        let fresh = ISSUED.plus(Duration::from_millis(59_999));
        #[rustfmt::skip]
        let table = [
            (&with_pkce, &own, redirect, Some(VERIFIER), fresh, None),
            (&without_pkce, &own, redirect, None, fresh, None),
            (&with_pkce, &own, redirect, Some(VERIFIER), expired, Some("code expired")),
            (&with_pkce, &other, None, None, expired, Some("code expired")),
            (&with_pkce, &other, redirect, Some(VERIFIER), fresh, Some("code of another client")),
            (&with_pkce, &other, None, None, fresh, Some("code of another client")),
            (&with_pkce, &own, None, Some(VERIFIER), fresh,
                Some("redirect_uri differs from the authorization request")),
            (&with_pkce, &own, Some("http://127.0.0.1:5001/callback"), Some(VERIFIER), fresh,
                Some("redirect_uri differs from the authorization request")),
            (&with_pkce, &own, redirect, None, fresh, Some("PKCE verification failed")),
            (&with_pkce, &own, redirect, Some(&VERIFIER[1..]), fresh, Some("PKCE verification failed")),
            (&without_pkce, &own, redirect, Some(VERIFIER), fresh, Some("PKCE verification failed")),
        ];
        for (i, (code, client_id, redirect_uri, code_verifier, now, expected)) in
            table.into_iter().enumerate()
        {
            let presented = Presentation {
                client_id,
                redirect_uri,
                code_verifier,
            };
            assert_eq!(
                reason(check_redemption(code, presented, now)),
                expected,
                "row {i}"
            );
        }
    }

    #[test]
    fn the_session_ends_a_lifetime_after_the_sign_in_not_after_the_exchange() {
        let code = code(None);
        let now = UnixMillis(1_030_000);
        let session = session_from(&code, now, Duration::from_secs(3600));
        assert_eq!(session.absolute_end, UnixMillis(400_000 + 3_600_000));
        assert_eq!(session.created_at, now);
        assert_eq!(session.auth_time, code.auth_time);
        assert_eq!(
            (session.id, session.client_id, session.sso_id, session.scope),
            (code.session_id, code.client_id, code.sso_id, code.scope)
        );
        assert_eq!(session.revoked_at, None);
    }

    #[test]
    fn the_first_refresh_token_expires_at_its_ttl_or_the_sessions_end_whichever_is_first() {
        let session = session_from(&code(None), UnixMillis(1_000_000), Duration::from_secs(900));
        let refresh = Secret::from_random("tsr1_", [1; 32]);
        let early = first_refresh_token(
            &refresh,
            &session,
            UnixMillis(500_000),
            Duration::from_secs(60),
        );
        assert_eq!(early.expires_at, UnixMillis(560_000));
        assert_eq!(early.issued_at, UnixMillis(500_000));
        assert_eq!(early.hash, refresh.hash());
        let late = first_refresh_token(
            &refresh,
            &session,
            UnixMillis(1_000_000),
            Duration::from_secs(900),
        );
        assert_eq!(late.expires_at, session.absolute_end);
    }
}
