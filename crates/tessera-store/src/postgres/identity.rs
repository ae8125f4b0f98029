//! What directory connectors said about people: saved at login, read at every refresh of
//! their sessions, re-validated under a lease that one replica holds at a time.

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use tessera_core::clock::UnixMillis;
use tessera_core::id::Subject;

use super::connection::query;
use crate::StoreError;
use crate::model::{IdentityRecord, RevalidationOutcome};

/// The columns [`identity_from_row`] reads, in its order.
pub(super) const IDENTITY_COLUMNS: &str =
    "subject, connector_id, claims, checked_at, check_lease_until, upstream, disabled_at";

/// Writes `identity` whole, replacing a row of the same subject (a new login).
pub(super) async fn save(pool: &PgPool, identity: &IdentityRecord) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO identities ({IDENTITY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (subject) DO UPDATE SET connector_id = EXCLUDED.connector_id,
         claims = EXCLUDED.claims, checked_at = EXCLUDED.checked_at,
         check_lease_until = EXCLUDED.check_lease_until, upstream = EXCLUDED.upstream,
         disabled_at = EXCLUDED.disabled_at"
    ))
    .bind(identity.subject.as_str())
    .bind(&identity.connector_id)
    .bind(&identity.claims)
    .bind(identity.checked_at.0)
    .bind(identity.check_lease_until.map(|t| t.0))
    .bind(identity.upstream.as_deref())
    .bind(identity.disabled_at.map(|t| t.0))
    .execute(pool)
    .await
    .map(drop)
    .map_err(query("save_identity"))
}

/// A row of [`IDENTITY_COLUMNS`].
pub(super) fn identity_from_row(r: &PgRow) -> Result<IdentityRecord, sqlx::Error> {
    Ok(IdentityRecord {
        subject: Subject::new(r.try_get::<String, _>(0)?),
        connector_id: r.try_get(1)?,
        claims: r.try_get(2)?,
        checked_at: UnixMillis(r.try_get(3)?),
        check_lease_until: r.try_get::<Option<i64>, _>(4)?.map(UnixMillis),
        upstream: r.try_get(5)?,
        disabled_at: r.try_get::<Option<i64>, _>(6)?.map(UnixMillis),
    })
}

pub(super) async fn find(
    pool: &PgPool,
    subject: &Subject,
) -> Result<Option<IdentityRecord>, StoreError> {
    let op = "find_identity";
    let row = sqlx::query(&format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE subject = $1"
    ))
    .bind(subject.as_str())
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.as_ref()
        .map(identity_from_row)
        .transpose()
        .map_err(query(op))
}

/// Takes the re-validation lease until `lease_until` if the row is still as checked at
/// `checked_at`, not disabled, and without an unexpired lease; whether it did.
pub(super) async fn claim(
    pool: &PgPool,
    subject: &Subject,
    checked_at: UnixMillis,
    now: UnixMillis,
    lease_until: UnixMillis,
) -> Result<bool, StoreError> {
    // One statement, as for the proxy's refresh lease: exactly one of any number of
    // concurrent claims, on any replica, updates the row (see `postgres/mod.rs`).
    sqlx::query(
        "UPDATE identities SET check_lease_until = $4
         WHERE subject = $1 AND checked_at = $2 AND disabled_at IS NULL
         AND (check_lease_until IS NULL OR check_lease_until <= $3)",
    )
    .bind(subject.as_str())
    .bind(checked_at.0)
    .bind(now.0)
    .bind(lease_until.0)
    .execute(pool)
    .await
    .map(|done| done.rows_affected() == 1)
    .map_err(query("claim_revalidation"))
}

/// Stores what the re-validation found and releases the lease.
pub(super) async fn finish(
    pool: &PgPool,
    subject: &Subject,
    outcome: &RevalidationOutcome,
) -> Result<(), StoreError> {
    let finish = match outcome {
        // COALESCE: a connector without an upstream token to rotate keeps what is stored.
        RevalidationOutcome::Confirmed {
            claims,
            checked_at,
            upstream,
        } => sqlx::query(
            "UPDATE identities SET claims = $2, checked_at = $3,
             upstream = COALESCE($4, upstream), check_lease_until = NULL
             WHERE subject = $1",
        )
        .bind(subject.as_str())
        .bind(claims)
        .bind(checked_at.0)
        .bind(upstream.as_deref()),
        RevalidationOutcome::Disabled(at) => sqlx::query(
            "UPDATE identities SET disabled_at = $2, check_lease_until = NULL WHERE subject = $1",
        )
        .bind(subject.as_str())
        .bind(at.0),
        RevalidationOutcome::Abandoned => {
            sqlx::query("UPDATE identities SET check_lease_until = NULL WHERE subject = $1")
                .bind(subject.as_str())
        }
    };
    finish
        .execute(pool)
        .await
        .map(drop)
        .map_err(query("finish_revalidation"))
}
