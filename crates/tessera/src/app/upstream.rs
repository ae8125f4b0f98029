//! A login at an upstream OpenID Connect provider (`type: oidc` connectors), from the login
//! page's button to the callback, and the upstream refresh token kept sealed for re-validation.
//!
//! The login under way (state, nonce, PKCE verifier, the authorization request to finish) is
//! sealed into a short-lived cookie of this browser, not stored: the callback accepts only the
//! `state` of the login this browser started, so a callback URL planted in another browser
//! logs nobody in (RFC 6749 §10.12). One login per browser at a time: a second start replaces
//! the first.
//!
//! The upstream refresh token is sealed with a key kept as a store secret (the same AES-GCM
//! sealing as the proxy's session cookies), bound to the person's subject, so a copied row of
//! one person opens for no other.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::UnixMillis;
use tessera_core::seal::{SealError, Sealer};
use tessera_core::token::constant_time_eq;
use tessera_oidc as oidc;
use tessera_store::{Store, StoreError};

use super::{App, AppError, LoginOutcome, RequestContext};
use crate::connector::{Connector, Identity, Kind, Oidc, Upstream};

/// The cookie carrying a login under way at an upstream provider.
pub const UPSTREAM_LOGIN_COOKIE: &str = "tessera_upstream_login";

/// How long a person may take at the upstream between the button and the callback.
pub const UPSTREAM_LOGIN_TTL: Duration = Duration::from_secs(600);

/// Name of the stored secret that seals upstream refresh tokens and logins under way.
const UPSTREAM_SEAL_SECRET: &str = "upstream_seal_key";

/// What the login cookie carries from the button to the callback.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    connector_id: String,
    state: String,
    nonce: String,
    verifier: String,
    /// The authorization request to finish, as the login form carries it (a query string).
    request: String,
    expires_at: UnixMillis,
}

/// What the store keeps of a person's upstream grant, sealed.
#[derive(Serialize, Deserialize)]
struct UpstreamGrant {
    /// Their subject at the upstream, which a refreshed id_token must name again.
    sub: String,
    refresh_token: String,
}

/// Where the browser goes to sign in upstream, and the cookie that remembers the login.
#[derive(Debug)]
pub struct UpstreamStart {
    /// The upstream's authorization URL.
    pub location: String,
    /// The sealed login, for [`UPSTREAM_LOGIN_COOKIE`].
    pub cookie: String,
}

/// What the upstream sent back to the callback.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The authorization code.
    pub code: Option<String>,
    /// The state of the login.
    pub state: Option<String>,
    /// The upstream's error (RFC 6749 §4.1.2.1), e.g. `access_denied`.
    pub error: Option<String>,
}

/// A finished upstream login: the SSO session, and the authorization request to finish.
pub struct UpstreamSignedIn {
    /// The SSO session.
    pub outcome: LoginOutcome,
    /// The authorization request the login began with, as a query string.
    pub request: String,
}

/// Why an upstream login did not start or finish. Each is a page; none starts a session.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// The connector is not a configured `oidc` one.
    UnknownConnector,
    /// This browser has no open login for this callback: no cookie, expired, another state,
    /// another connector, or no state at all.
    NoLogin,
    /// The upstream answered with an error (`access_denied`: the person or policy refused).
    Refused {
        /// The connector's name.
        name: String,
        /// The upstream's `error`.
        error: String,
    },
    /// The code was refused (spent, replayed, expired) or the id_token did not verify.
    Rejected {
        /// The connector's name.
        name: String,
    },
    /// The upstream could not be reached or answered nonsense.
    Unavailable {
        /// The connector's name.
        name: String,
    },
    /// The upstream vouched for the person, but an admin has disabled them here.
    Disabled,
    /// The store failed, or the login could not be sealed.
    Internal(AppError),
}

/// The sealer of upstream secrets: its key is stored once, the same on every replica.
pub(super) async fn upstream_sealer(store: &dyn Store) -> Result<Sealer, AppError> {
    let candidate: [u8; 32] = rand::random();
    let stored = store
        .secret_or_insert(UPSTREAM_SEAL_SECRET, candidate.to_vec())
        .await?;
    let key = <[u8; 32]>::try_from(stored.as_slice()).map_err(|_| {
        AppError::Store(StoreError::Corrupt {
            what: "upstream seal key",
        })
    })?;
    Ok(Sealer::new(key, Vec::new()))
}

impl App {
    /// The redirect URI of connector `id` at the upstream: `{issuer}/callback/{id}`, which the
    /// upstream must have registered for tessera's client.
    pub fn callback_uri(&self, connector_id: &str) -> String {
        format!("{}/callback/{connector_id}", self.issuer)
    }

    /// Starts a login at the `oidc` connector `connector_id` for the authorization request
    /// `request` (a query string): a fresh state, nonce and PKCE verifier, sealed for this
    /// browser's cookie.
    pub async fn start_upstream_login(
        &self,
        connector_id: &str,
        request: String,
        ctx: &RequestContext,
    ) -> Result<UpstreamStart, UpstreamFailure> {
        let (connector, oidc) = self.oidc_connector(connector_id)?;
        let pending = PendingLogin {
            connector_id: connector.id.clone(),
            state: oidc::random_token(),
            nonce: oidc::random_token(),
            verifier: oidc::random_token(),
            request,
            expires_at: self.now().plus(UPSTREAM_LOGIN_TTL),
        };
        let location = oidc
            .authorization_url(
                &self.callback_uri(&connector.id),
                &pending.state,
                &pending.nonce,
                &pending.verifier,
            )
            .await
            .map_err(|e| self.upstream_failed(&connector, &e, ctx))?;
        let cookie = self
            .seal_json(&pending, UPSTREAM_LOGIN_COOKIE.as_bytes())
            .map_err(UpstreamFailure::Internal)?;
        Ok(UpstreamStart { location, cookie })
    }

    /// Finishes the login this browser's cookie holds with what the upstream sent back:
    /// checks the state, redeems the code, verifies the id_token, keeps the person and their
    /// upstream refresh token, and starts the SSO session.
    pub async fn finish_upstream_login(
        &self,
        connector_id: &str,
        callback: &Callback,
        cookie: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<UpstreamSignedIn, UpstreamFailure> {
        let (connector, oidc) = self.oidc_connector(connector_id)?;
        let now = self.now();
        let who = Subjects {
            connector_id: Some(connector.id.clone()),
            ..ctx.subjects()
        };
        let failed = |reason: &str| Event::LoginFailed {
            reason: reason.into(),
        };
        let pending = cookie
            .and_then(|sealed| {
                self.upstream_sealer
                    .open(sealed, UPSTREAM_LOGIN_COOKIE.as_bytes())
                    .ok()
            })
            .and_then(|plain| serde_json::from_slice::<PendingLogin>(&plain).ok())
            .filter(|p| now < p.expires_at && p.connector_id == connector.id);
        let sent_state = callback.state.as_deref().unwrap_or_default();
        let Some(pending) = pending.filter(|p| {
            !sent_state.is_empty() && constant_time_eq(sent_state.as_bytes(), p.state.as_bytes())
        }) else {
            self.record(&failed("bad_state"), &who);
            return Err(UpstreamFailure::NoLogin);
        };
        if let Some(error) = &callback.error {
            self.record(&failed("upstream_refused"), &who);
            return Err(UpstreamFailure::Refused {
                name: connector.name.clone(),
                // RFC 6749 §4.1.2.1: an error code is printable ASCII; anything else is dropped.
                error: error
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect(),
            });
        }
        let Some(code) = callback.code.as_deref() else {
            self.record(&failed("no_code"), &who);
            return Err(UpstreamFailure::NoLogin);
        };
        let mapping = self.connectors.mapping();
        let redirect_uri = self.callback_uri(&connector.id);
        let finished = oidc
            .finish_login(
                code,
                &redirect_uri,
                &pending.verifier,
                &pending.nonce,
                mapping,
            )
            .await;
        let upstream = finished.map_err(|e| self.upstream_failed(&connector, &e, ctx))?;
        let Upstream {
            person,
            sub,
            refresh_token,
        } = upstream;
        let sealed = match refresh_token {
            Some(token) => Some(
                self.seal_grant(person.subject.as_str(), sub, token)
                    .map_err(UpstreamFailure::Internal)?,
            ),
            None => None,
        };
        let internal = |e: StoreError| UpstreamFailure::Internal(e.into());
        if self
            .is_disabled(&person.subject)
            .await
            .map_err(UpstreamFailure::Internal)?
        {
            self.record(&failed("user_disabled"), &who);
            return Err(UpstreamFailure::Disabled);
        }
        self.remember(&connector.id, &person, now, sealed)
            .await
            .map_err(internal)?;
        let outcome = self
            .start_session_of(person.subject, now, who)
            .await
            .map_err(internal)?;
        Ok(UpstreamSignedIn {
            outcome,
            request: pending.request,
        })
    }

    /// The `oidc` connector `id`.
    fn oidc_connector(
        &self,
        id: &str,
    ) -> Result<(std::sync::Arc<Connector>, &Oidc), UpstreamFailure> {
        let connector = self
            .connectors
            .find(id)
            .ok_or(UpstreamFailure::UnknownConnector)?;
        match &connector.kind {
            Kind::Oidc(oidc) => Ok((std::sync::Arc::clone(connector), oidc)),
            _ => Err(UpstreamFailure::UnknownConnector),
        }
    }

    /// Logs and audits why the upstream did not let a login through; the page says little.
    fn upstream_failed(
        &self,
        connector: &Connector,
        e: &oidc::Error,
        ctx: &RequestContext,
    ) -> UpstreamFailure {
        let who = Subjects {
            connector_id: Some(connector.id.clone()),
            ..ctx.subjects()
        };
        let name = connector.name.clone();
        tracing::warn!(connector = %connector.id, reason = %e, "a login at an upstream provider failed");
        if e.is_refusal() {
            self.record(
                &Event::LoginFailed {
                    reason: "upstream_rejected".into(),
                },
                &who,
            );
            UpstreamFailure::Rejected { name }
        } else {
            self.record(
                &Event::LoginFailed {
                    reason: "upstream_unavailable".into(),
                },
                &who,
            );
            UpstreamFailure::Unavailable { name }
        }
    }

    /// A person's upstream grant, sealed for the store and bound to their `subject`.
    fn seal_grant(
        &self,
        subject: &str,
        sub: String,
        refresh_token: String,
    ) -> Result<Vec<u8>, AppError> {
        let grant = UpstreamGrant { sub, refresh_token };
        Ok(self.seal_json(&grant, &grant_aad(subject))?.into_bytes())
    }

    /// `value` as JSON, sealed and bound to `aad`.
    fn seal_json(&self, value: &impl Serialize, aad: &[u8]) -> Result<String, AppError> {
        // Only strings and numbers: JSON serialisation cannot fail; were it to, it is as much a
        // fault as a failed seal.
        let plain = serde_json::to_vec(value).map_err(|_| SealError::Sealing)?;
        Ok(self.upstream_sealer.seal(&plain, aad)?)
    }

    /// Re-validates a person of an `oidc` connector: redeems their sealed upstream refresh
    /// token. `Ok(Some)`: the upstream still vouches for them; their claims as its new id_token
    /// says (`None` when it sent none: the stored ones stand), and the grant sealed again with
    /// the rotated token. `Ok(None)`: the upstream refused the token (`invalid_grant`) or the
    /// id_token it answered with. `Err`: it could not be asked (the reason for the audit, the
    /// detail for the log).
    pub(super) async fn recheck_upstream(
        &self,
        oidc: &Oidc,
        subject: &str,
        sealed: Option<&[u8]>,
    ) -> Result<Option<(Option<Identity>, Vec<u8>)>, (&'static str, String)> {
        let grant = sealed
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| self.upstream_sealer.open(s, &grant_aad(subject)).ok())
            .and_then(|plain| serde_json::from_slice::<UpstreamGrant>(&plain).ok())
            .ok_or((
                "no_upstream_refresh_token",
                "the person's upstream refresh token is missing or cannot be opened (was \
                 offline_access granted?)"
                    .to_owned(),
            ))?;
        let mapping = self.connectors.mapping();
        match oidc
            .recheck(&grant.refresh_token, &grant.sub, mapping)
            .await
        {
            Ok((person, rotated)) => {
                // A provider that does not rotate answers no new token: the old one stays good.
                let refresh_token = rotated.unwrap_or(grant.refresh_token);
                let sealed = self
                    .seal_grant(subject, grant.sub, refresh_token)
                    .map_err(|e| ("seal_failed", e.to_string()))?;
                Ok(Some((person.map(|p| p.identity), sealed)))
            }
            Err(e) if e.is_refusal() => {
                tracing::warn!(reason = %e, "the upstream refused a person's refresh token");
                Ok(None)
            }
            Err(e) => Err(("unreachable", e.to_string())),
        }
    }
}

/// What a sealed grant is bound to: its person.
fn grant_aad(subject: &str) -> Vec<u8> {
    format!("tessera upstream grant:{subject}").into_bytes()
}
