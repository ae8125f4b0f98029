//! People an admin disabled: recorded with every session and SSO session of theirs ended in the
//! same transaction, so no refresh slips between the two.

use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::Subject;

use super::connection::{immediate, query};
use super::session::revoke_matching;
use crate::StoreError;
use crate::model::{DisabledUser, Ended, SessionFilter};

/// Records `user` as disabled (an earlier record stays) and ends all they have.
pub(super) fn disable(c: &mut Connection, user: &DisabledUser) -> Result<Ended, StoreError> {
    let op = "disable_user";
    let tx = immediate(c, op)?;
    insert(&tx, user).map_err(query(op))?;
    let everything = SessionFilter {
        subject: Some(user.subject.clone()),
        client_id: None,
    };
    let ended =
        revoke_matching(&tx, &everything, user.disabled_at, "user_disabled").map_err(query(op))?;
    tx.commit().map_err(query(op))?;
    Ok(ended)
}

/// Writes the row unless the person is disabled already: shared with the snapshot copy.
pub(super) fn insert(c: &Connection, user: &DisabledUser) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO disabled_users (subject, disabled_at, disabled_by) VALUES (?1, ?2, ?3)
         ON CONFLICT (subject) DO NOTHING",
    )?
    .execute(params![
        user.subject.as_str(),
        user.disabled_at.0,
        user.disabled_by
    ])
    .map(drop)
}

pub(super) fn enable(c: &Connection, subject: &Subject) -> Result<bool, StoreError> {
    c.prepare_cached("DELETE FROM disabled_users WHERE subject = ?1")
        .and_then(|mut s| s.execute([subject.as_str()]))
        .map(|n| n == 1)
        .map_err(query("enable_user"))
}

pub(super) fn find(c: &Connection, subject: &Subject) -> Result<Option<DisabledUser>, StoreError> {
    c.prepare_cached("SELECT disabled_at, disabled_by FROM disabled_users WHERE subject = ?1")
        .and_then(|mut s| {
            s.query_row([subject.as_str()], |r| {
                Ok(DisabledUser {
                    subject: subject.clone(),
                    disabled_at: UnixMillis(r.get(0)?),
                    disabled_by: r.get(1)?,
                })
            })
            .optional()
        })
        .map_err(query("find_disabled_user"))
}
