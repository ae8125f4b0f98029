//! Sessions (one login of one client) and the lookups of their refresh tokens; the redeem itself
//! is [`super::redeem`]. Rows are written by `row`'s writers, shared with the snapshot copy.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params_from_iter};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId};
use tessera_core::token::TokenHash;

use super::connection::{immediate, query};
use super::row::{
    SESSION_COLUMNS, delete_proxy_sessions_of, insert_refresh_token, insert_session_row,
    session_from_row,
};
use crate::StoreError;
use crate::model::{
    Ended, ListedSession, NewRefreshToken, Origin, RefreshTokenInfo, Session, SessionFilter,
    SessionPage, SessionStart, SessionUse,
};

/// Starts `session` with its `first` refresh token, unless a reuse of its code revoked it in
/// advance.
pub(super) fn start(
    c: &mut Connection,
    session: &Session,
    first: &NewRefreshToken,
    started_from: &Origin,
) -> Result<SessionStart, StoreError> {
    let tx = immediate(c, "start_session")?;
    // Session ids are fresh random values: a row that is there already was put in,
    // revoked, by a reuse of the code that names it (`redeem_code`).
    let revoked_in_advance = tx
        .query_row(
            "SELECT 1 FROM sessions WHERE id = ?1",
            [session.id.as_str()],
            |_| Ok(()),
        )
        .optional()
        .map_err(query("start_session"))?
        .is_some();
    if revoked_in_advance {
        return Ok(SessionStart::CodeReused);
    }
    insert_session_row(&tx, session, None, Some(started_from)).map_err(query("start_session"))?;
    insert_refresh_token(&tx, first, &session.id, &session.client_id)?;
    tx.commit().map_err(query("start_session"))?;
    Ok(SessionStart::Started)
}

/// The refresh token with this hash, with its session.
pub(super) fn find_refresh_token(
    c: &Connection,
    hash: TokenHash,
) -> Result<Option<RefreshTokenInfo>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT t.client_id, t.issued_at, t.expires_at, t.used_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([hash.to_hex()], |r| {
            Ok(RefreshTokenInfo {
                client_id: ClientId::new(r.get::<_, String>(0)?),
                issued_at: UnixMillis(r.get(1)?),
                expires_at: UnixMillis(r.get(2)?),
                used_at: r.get::<_, Option<i64>>(3)?.map(UnixMillis),
                session: session_from_row(r, 4)?,
            })
        })
        .optional()
    })
    .map_err(query("find_refresh_token"))
}

pub(super) fn find(c: &Connection, id: &SessionId) -> Result<Option<Session>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([id.as_str()], |r| session_from_row(r, 0))
            .optional()
    })
    .map_err(query("find_session"))
}

/// Sessions neither revoked nor past their absolute end.
pub(super) fn count_active(c: &Connection, now: UnixMillis) -> Result<u64, StoreError> {
    c.query_row(
        "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND absolute_end > ?1",
        [now.0],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| u64::try_from(n).unwrap_or(0))
    .map_err(query("count_active_sessions"))
}

/// Revokes the session and deletes the proxy sessions holding its tokens; whether it was live.
pub(super) fn revoke(
    c: &mut Connection,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> Result<bool, StoreError> {
    let tx = immediate(c, "revoke_session")?;
    let was_live = super::row::revoke_session_row(&tx, id, now, reason)
        .and_then(|live| delete_proxy_sessions_of(&tx, id).map(|()| live))
        .map_err(query("revoke_session"))?;
    tx.commit().map_err(query("revoke_session"))?;
    Ok(was_live)
}

/// `WHERE` conditions naming the live sessions `filter` names, and their parameters after the
/// leading `now` (`?1`). Built per filter rather than with `(?n IS NULL OR …)`, which would keep
/// SQLite from choosing the index by subject or client.
fn live_where(filter: &SessionFilter, now: UnixMillis) -> (String, Vec<Value>) {
    let mut conditions = vec!["s.revoked_at IS NULL AND s.absolute_end > ?1".to_owned()];
    let mut values = vec![Value::Integer(now.0)];
    if let Some(subject) = &filter.subject {
        values.push(Value::Text(subject.as_str().to_owned()));
        conditions.push(format!("s.subject = ?{}", values.len()));
    }
    if let Some(client) = &filter.client_id {
        values.push(Value::Text(client.as_str().to_owned()));
        conditions.push(format!("s.client_id = ?{}", values.len()));
    }
    (conditions.join(" AND "), values)
}

/// One page of the live sessions `filter` names, in id order after `after`.
pub(super) fn list(
    c: &Connection,
    filter: &SessionFilter,
    now: UnixMillis,
    after: Option<&SessionId>,
    limit: u32,
) -> Result<SessionPage, StoreError> {
    let (sql, values) = list_statement(filter, now, after, limit);
    let sessions = c
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_map(params_from_iter(values), listed_from_row)?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(query("list_sessions"))?;
    Ok(SessionPage::cut(sessions, limit))
}

/// The statement [`list`] runs, and its parameters: `now`, the filter's subject and client,
/// `after`, and one more than `limit` (whether there is a next page).
fn list_statement(
    filter: &SessionFilter,
    now: UnixMillis,
    after: Option<&SessionId>,
    limit: u32,
) -> (String, Vec<Value>) {
    let (mut conditions, mut values) = live_where(filter, now);
    if let Some(after) = after {
        values.push(Value::Text(after.as_str().to_owned()));
        conditions.push_str(&format!(" AND s.id > ?{}", values.len()));
    }
    values.push(Value::Integer(i64::from(limit) + 1));
    let limit_at = values.len();
    // A session whose every refresh token has expired can never be refreshed again: it is
    // over, though the sweep keeps it until its absolute end.
    let sql = format!(
        "SELECT {SESSION_COLUMNS}, s.created_ip, s.created_user_agent,
             (SELECT MAX(t.expires_at) FROM refresh_tokens t WHERE t.session_id = s.id),
             l.used_at, l.used_ip, l.used_user_agent
         FROM sessions s
         LEFT JOIN refresh_tokens l ON l.hash = (
             SELECT t.hash FROM refresh_tokens t
             WHERE t.session_id = s.id AND t.used_at IS NOT NULL
             ORDER BY t.used_at DESC LIMIT 1)
         WHERE {conditions}
           AND EXISTS (SELECT 1 FROM refresh_tokens t
                       WHERE t.session_id = s.id AND t.expires_at > ?1)
         ORDER BY s.id LIMIT ?{limit_at}"
    );
    (sql, values)
}

/// The text of [`list_statement`], for `EXPLAIN QUERY PLAN` (see
/// [`crate::list_sessions_sql`]).
pub(crate) fn list_sql(filter: &SessionFilter, after: Option<&SessionId>) -> String {
    list_statement(filter, UnixMillis(0), after, 0).0
}

fn listed_from_row(r: &Row<'_>) -> rusqlite::Result<ListedSession> {
    let session = session_from_row(r, 0)?;
    let started_from = Origin {
        ip: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
        user_agent: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
    };
    let token_end = r
        .get::<_, Option<i64>>(11)?
        .map_or(session.absolute_end, UnixMillis);
    let first_use = SessionUse {
        at: session.created_at,
        from: started_from,
    };
    let last_use = match r.get::<_, Option<i64>>(12)? {
        Some(at) => SessionUse {
            at: UnixMillis(at),
            from: Origin {
                ip: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
                user_agent: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
            },
        },
        None => first_use.clone(),
    };
    Ok(ListedSession {
        expires_at: token_end.min(session.absolute_end),
        session,
        first_use,
        last_use,
    })
}

/// Revokes every live session `filter` names, deletes the proxy sessions holding their tokens,
/// and, for a whole person, ends their SSO sessions; in the caller's transaction.
pub(super) fn revoke_matching(
    tx: &Transaction<'_>,
    filter: &SessionFilter,
    now: UnixMillis,
    reason: &str,
) -> rusqlite::Result<Ended> {
    if filter.subject.is_none() && filter.client_id.is_none() {
        return Ok(Ended::default());
    }
    let (conditions, mut values) = live_where(filter, now);
    values.push(Value::Text(reason.to_owned()));
    let reason_at = values.len();
    // RETURNING names columns unqualified in SQLite.
    let sql = format!(
        "UPDATE sessions AS s SET revoked_at = ?1, revoked_reason = ?{reason_at}
         WHERE {conditions} RETURNING {}",
        SESSION_COLUMNS.replace("s.", "")
    );
    let sessions = tx
        .prepare(&sql)?
        .query_map(params_from_iter(values), |r| session_from_row(r, 0))?
        .collect::<Result<Vec<_>, _>>()?;
    for session in &sessions {
        delete_proxy_sessions_of(tx, &session.id)?;
    }
    let sso_sessions = match (&filter.subject, &filter.client_id) {
        (Some(subject), None) => tx
            .prepare_cached(
                "UPDATE sso_sessions SET revoked_at = ?2
                 WHERE subject = ?1 AND revoked_at IS NULL AND expires_at > ?2",
            )?
            .execute(rusqlite::params![subject.as_str(), now.0])?,
        _ => 0,
    };
    Ok(Ended {
        sessions,
        sso_sessions: u64::try_from(sso_sessions).unwrap_or(u64::MAX),
    })
}

/// [`revoke_matching`] in a transaction of its own.
pub(super) fn revoke_many(
    c: &mut Connection,
    filter: &SessionFilter,
    now: UnixMillis,
    reason: &str,
) -> Result<Ended, StoreError> {
    let tx = immediate(c, "revoke_sessions")?;
    let ended = revoke_matching(&tx, filter, now, reason).map_err(query("revoke_sessions"))?;
    tx.commit().map_err(query("revoke_sessions"))?;
    Ok(ended)
}
