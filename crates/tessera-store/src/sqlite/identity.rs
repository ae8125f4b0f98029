//! What directory connectors said about people: saved at login, read at every refresh of
//! their sessions, re-validated under a lease that one caller holds at a time.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::Subject;

use super::connection::query;
use crate::StoreError;
use crate::model::{IdentityRecord, RevalidationOutcome};

/// The columns [`identity_from_row`] reads, in its order.
pub(super) const IDENTITY_COLUMNS: &str =
    "subject, connector_id, claims, checked_at, check_lease_until, upstream, disabled_at";

/// Writes `identity` whole, replacing a row of the same subject (a new login).
pub(super) fn save(c: &Connection, identity: &IdentityRecord) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT OR REPLACE INTO identities ({IDENTITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        identity.subject.as_str(),
        identity.connector_id,
        identity.claims,
        identity.checked_at.0,
        identity.check_lease_until.map(|t| t.0),
        identity.upstream,
        identity.disabled_at.map(|t| t.0),
    ])
    .map(drop)
}

/// A row of [`IDENTITY_COLUMNS`].
pub(super) fn identity_from_row(r: &Row<'_>) -> rusqlite::Result<IdentityRecord> {
    Ok(IdentityRecord {
        subject: Subject::new(r.get::<_, String>(0)?),
        connector_id: r.get(1)?,
        claims: r.get(2)?,
        checked_at: UnixMillis(r.get(3)?),
        check_lease_until: r.get::<_, Option<i64>>(4)?.map(UnixMillis),
        upstream: r.get(5)?,
        disabled_at: r.get::<_, Option<i64>>(6)?.map(UnixMillis),
    })
}

pub(super) fn find(
    c: &Connection,
    subject: &Subject,
) -> Result<Option<IdentityRecord>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE subject = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([subject.as_str()], identity_from_row)
            .optional()
    })
    .map_err(query("find_identity"))
}

/// Takes the re-validation lease until `lease_until` if the row is still as checked at
/// `checked_at`, not disabled, and without an unexpired lease; whether it did.
pub(super) fn claim(
    c: &Connection,
    subject: &Subject,
    checked_at: UnixMillis,
    now: UnixMillis,
    lease_until: UnixMillis,
) -> Result<bool, StoreError> {
    // One conditional UPDATE, as for the proxy's refresh lease: the first claim's lease makes
    // every later one's WHERE false.
    c.prepare_cached(
        "UPDATE identities SET check_lease_until = ?4
         WHERE subject = ?1 AND checked_at = ?2 AND disabled_at IS NULL
         AND (check_lease_until IS NULL OR check_lease_until <= ?3)",
    )
    .and_then(|mut s| {
        s.execute(params![
            subject.as_str(),
            checked_at.0,
            now.0,
            lease_until.0
        ])
    })
    .map(|n| n == 1)
    .map_err(query("claim_revalidation"))
}

/// Stores what the re-validation found and releases the lease.
pub(super) fn finish(
    c: &Connection,
    subject: &Subject,
    outcome: &RevalidationOutcome,
) -> Result<(), StoreError> {
    match outcome {
        // COALESCE: a connector without an upstream token to rotate keeps what is stored.
        RevalidationOutcome::Confirmed {
            claims,
            checked_at,
            upstream,
        } => c
            .prepare_cached(
                "UPDATE identities SET claims = ?2, checked_at = ?3,
                 upstream = COALESCE(?4, upstream), check_lease_until = NULL
                 WHERE subject = ?1",
            )
            .and_then(|mut s| s.execute(params![subject.as_str(), claims, checked_at.0, upstream])),
        RevalidationOutcome::Disabled(at) => c
            .prepare_cached(
                "UPDATE identities SET disabled_at = ?2, check_lease_until = NULL
                 WHERE subject = ?1",
            )
            .and_then(|mut s| s.execute(params![subject.as_str(), at.0])),
        RevalidationOutcome::Abandoned => c
            .prepare_cached("UPDATE identities SET check_lease_until = NULL WHERE subject = ?1")
            .and_then(|mut s| s.execute([subject.as_str()])),
    }
    .map(drop)
    .map_err(query("finish_revalidation"))
}
