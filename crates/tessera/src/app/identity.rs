//! Who a session's subject is, as tokens say it: a local user from the users file, or a
//! directory person from what their connector last said, checked with the directory again on a
//! refresh once `revalidate_interval` has passed (DESIGN.md "Upstream identity"). The check runs
//! once per person across replicas and racing tools: a lease in the store decides who asks.

use std::time::Duration;

use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::UnixMillis;
use tessera_core::id::Subject;
use tessera_store::{IdentityRecord, RevalidationOutcome, Session};

use super::{App, AppError};
use crate::connector::{Connector, Identity, Kind, Recheck};

/// Added to the connector's timeout for the lease of one re-validation: a replica that dies
/// while it asks the directory holds the person's checks back no longer than this.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The reason sessions ended by their directory carry in the audit log and the store.
pub(crate) const REVOKED_UPSTREAM: &str = "upstream_revalidation";
/// Why a local user's session ends when they are gone from the users file.
pub(crate) const REVOKED_REMOVED: &str = "user_removed";

impl App {
    /// The connectors, in the login page's order.
    pub fn connectors(&self) -> &[std::sync::Arc<Connector>] {
        self.connectors.all()
    }

    /// Whether a directory connector (LDAP, upstream OpenID Connect) is configured.
    pub(crate) fn directories_configured(&self) -> bool {
        self.connectors.has_directories()
    }

    /// The connector `subject` signed in through, for audit lines.
    pub(crate) fn connector_id_of(&self, subject: &Subject) -> Option<String> {
        self.connectors.id_of(subject).map(str::to_owned)
    }

    /// What tokens say of `subject` now, without asking the directory.
    pub(crate) async fn identity_of(&self, subject: &Subject) -> Result<Identity, AppError> {
        match self.directory_record(subject).await? {
            Some((record, _)) => claims_of(&record),
            None => self.local_identity(subject),
        }
    }

    /// What a refresh of `session` says of its person: a directory person is checked again
    /// when their last check is older than the connector's `revalidate_interval`; one the
    /// directory no longer vouches for ends the session.
    pub(crate) async fn refreshed_identity(
        &self,
        session: &Session,
        who: &Subjects,
        now: UnixMillis,
    ) -> Result<Identity, AppError> {
        let Some((record, connector)) = self.directory_record(&session.subject).await? else {
            return self.refreshed_local_identity(session, who, now).await;
        };
        let Some((interval, max_staleness)) = connector.revalidation() else {
            return claims_of(&record);
        };
        if now.millis_since(record.checked_at) < millis(interval) {
            return claims_of(&record);
        }
        let timeout = match &connector.kind {
            Kind::Ldap(ldap) => ldap.timeout(),
            Kind::Oidc(oidc) => oidc.timeout(),
            Kind::Local => return claims_of(&record),
        };
        let lease_until = now.plus(timeout + LEASE_MARGIN);
        let subject = record.subject.clone();
        let claimed = self
            .store
            .claim_revalidation(subject.clone(), record.checked_at, now, lease_until)
            .await?;
        if !claimed {
            // Another refresh is asking, or has just asked: what it found is what counts.
            let latest = self.directory_record(&subject).await?;
            let (latest, _) = latest.ok_or(AppError::InvalidGrant {
                reason: "the person is no longer known",
            })?;
            return within_staleness(&latest, now, max_staleness);
        }
        let failed = |reason: &str| Event::UpstreamRevalidationFailed {
            reason: reason.into(),
        };
        match self.recheck(&connector, &record).await {
            Ok((Recheck::Confirmed(identity), upstream)) => {
                let confirmed = RevalidationOutcome::Confirmed {
                    claims: identity.to_json(),
                    checked_at: now,
                    upstream,
                };
                self.store.finish_revalidation(subject, confirmed).await?;
                self.record(&Event::UpstreamRevalidated, who);
                Ok(identity)
            }
            Ok((Recheck::Gone(reason), _)) => {
                let gone = RevalidationOutcome::Disabled(now);
                self.store.finish_revalidation(subject, gone).await?;
                self.record(&failed(reason), who);
                let revoked = self
                    .store
                    .revoke_session(session.id.clone(), now, REVOKED_UPSTREAM)
                    .await?;
                if revoked {
                    let reason = REVOKED_UPSTREAM.into();
                    self.record(&Event::SessionRevoked { reason }, who);
                }
                Err(AppError::InvalidGrant {
                    reason: "the directory no longer vouches for this person",
                })
            }
            Err((reason, e)) => {
                tracing::warn!(connector = %connector.id, reason = %e, "a refresh could not re-validate its person with the directory");
                let abandoned = RevalidationOutcome::Abandoned;
                self.store.finish_revalidation(subject, abandoned).await?;
                self.record(&failed(reason), who);
                within_staleness(&record, now, max_staleness)
            }
        }
    }

    /// Asks `record`'s connector about its person again: what it says now, and for an upstream
    /// provider the rotated refresh token, sealed. `Err`: it could not be asked (the reason for
    /// the audit, the detail for the log).
    async fn recheck(
        &self,
        connector: &Connector,
        record: &IdentityRecord,
    ) -> Result<(Recheck, Option<Vec<u8>>), (&'static str, String)> {
        let mapping = self.connectors.mapping();
        let subject = record.subject.as_str();
        match &connector.kind {
            Kind::Ldap(ldap) => {
                let username = claims_of(record)
                    .map_err(|e| ("unreachable", e.to_string()))?
                    .username;
                let recheck = ldap.recheck(&username, subject, mapping).await;
                recheck
                    .map(|r| (r, None))
                    .map_err(|e| ("unreachable", e.to_string()))
            }
            Kind::Oidc(oidc) => {
                let upstream = record.upstream.as_deref();
                let Some((found, sealed)) = self.recheck_upstream(oidc, subject, upstream).await?
                else {
                    return Ok((Recheck::Gone("upstream_refresh_rejected"), None));
                };
                // Without a new id_token, what the upstream said last stands.
                let identity = match found {
                    Some(identity) => identity,
                    None => claims_of(record).map_err(|e| ("unreachable", e.to_string()))?,
                };
                Ok((Recheck::Confirmed(identity), Some(sealed)))
            }
            Kind::Local => Err(("unreachable", "the users file has no directory".into())),
        }
    }

    /// The directory record of `subject` and its connector, when `subject` is a directory
    /// person's; `None` for a local user. A person the directory disabled, or whose connector
    /// is no longer configured, gets no tokens.
    async fn directory_record(
        &self,
        subject: &Subject,
    ) -> Result<Option<(IdentityRecord, std::sync::Arc<Connector>)>, AppError> {
        if self.connectors.directory_id_of(subject).is_none() {
            return Ok(None);
        }
        let record =
            self.store
                .find_identity(subject.clone())
                .await?
                .ok_or(AppError::InvalidGrant {
                    reason: "the person is no longer known",
                })?;
        if record.disabled_at.is_some() {
            return Err(AppError::InvalidGrant {
                reason: "the directory disabled this person",
            });
        }
        let connector =
            self.connectors
                .find(&record.connector_id)
                .cloned()
                .ok_or(AppError::InvalidGrant {
                    reason: "the person's connector is no longer configured",
                })?;
        Ok(Some((record, connector)))
    }

    /// A local user as tokens say them.
    fn local_identity(&self, subject: &Subject) -> Result<Identity, AppError> {
        let users = self.users();
        let user = users.find(subject.as_str()).ok_or(AppError::InvalidGrant {
            reason: "the user no longer exists",
        })?;
        Ok(Identity::of_local(user, self.connectors.mapping()))
    }

    /// A local user's identity at a refresh: one removed from the users file since ends the
    /// session (`user_removed`), so their every session ends at its next refresh.
    async fn refreshed_local_identity(
        &self,
        session: &Session,
        who: &Subjects,
        now: UnixMillis,
    ) -> Result<Identity, AppError> {
        let found = self.local_identity(&session.subject);
        if found.is_err() {
            let revoked = self
                .store
                .revoke_session(session.id.clone(), now, REVOKED_REMOVED)
                .await?;
            if revoked {
                let reason = REVOKED_REMOVED.into();
                self.record(&Event::SessionRevoked { reason }, who);
            }
        }
        found
    }
}

/// The claims `record` holds.
fn claims_of(record: &IdentityRecord) -> Result<Identity, AppError> {
    Identity::from_json(&record.claims).ok_or(AppError::InvalidGrant {
        reason: "the person's stored claims are unreadable",
    })
}

/// `record`'s claims while its last good check is at most `max_staleness` old: how long a
/// directory that cannot be asked is trusted.
fn within_staleness(
    record: &IdentityRecord,
    now: UnixMillis,
    max_staleness: Duration,
) -> Result<Identity, AppError> {
    if now.millis_since(record.checked_at) > millis(max_staleness) {
        return Err(AppError::InvalidGrant {
            reason: "the directory could not be asked for longer than revalidate_max_staleness",
        });
    }
    claims_of(record)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
