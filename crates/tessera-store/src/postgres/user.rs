//! People an admin disabled: recorded with every session and SSO session of theirs ended in the
//! same transaction, so no refresh slips between the two.

use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::Subject;

use super::connection::query;
use super::session::revoke_matching;
use crate::StoreError;
use crate::model::{DisabledUser, Ended, SessionFilter};

/// Records `user` as disabled (an earlier record stays) and ends all they have.
pub(super) async fn disable(pool: &PgPool, user: &DisabledUser) -> Result<Ended, StoreError> {
    let op = "disable_user";
    let mut tx = pool.begin().await.map_err(query(op))?;
    sqlx::query(
        "INSERT INTO disabled_users (subject, disabled_at, disabled_by) VALUES ($1, $2, $3)
         ON CONFLICT (subject) DO NOTHING",
    )
    .bind(user.subject.as_str())
    .bind(user.disabled_at.0)
    .bind(&user.disabled_by)
    .execute(&mut *tx)
    .await
    .map_err(query(op))?;
    let everything = SessionFilter {
        subject: Some(user.subject.clone()),
        client_id: None,
    };
    let ended = revoke_matching(&mut tx, &everything, user.disabled_at, "user_disabled")
        .await
        .map_err(query(op))?;
    tx.commit().await.map_err(query(op))?;
    Ok(ended)
}

pub(super) async fn enable(pool: &PgPool, subject: &Subject) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM disabled_users WHERE subject = $1")
        .bind(subject.as_str())
        .execute(pool)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(query("enable_user"))
}

pub(super) async fn find(
    pool: &PgPool,
    subject: &Subject,
) -> Result<Option<DisabledUser>, StoreError> {
    let op = "find_disabled_user";
    let row = sqlx::query("SELECT disabled_at, disabled_by FROM disabled_users WHERE subject = $1")
        .bind(subject.as_str())
        .fetch_optional(pool)
        .await
        .map_err(query(op))?;
    row.map(|r| {
        Ok(DisabledUser {
            subject: subject.clone(),
            disabled_at: UnixMillis(r.try_get(0)?),
            disabled_by: r.try_get(1)?,
        })
    })
    .transpose()
    .map_err(query(op))
}
