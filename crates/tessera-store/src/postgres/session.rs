//! Sessions (one login of one client) and the lookups of their refresh tokens; the redeem itself
//! is [`super::redeem`].

use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Postgres, Row};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId};
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::{SESSION_COLUMNS, revoke_session_row, session_from_row};
use crate::StoreError;
use crate::model::{
    Ended, ListedSession, NewRefreshToken, Origin, RefreshTokenInfo, Session, SessionFilter,
    SessionPage, SessionStart, SessionUse,
};

/// Starts `session` with its `first` refresh token, unless a reuse of its code revoked it in
/// advance.
pub(super) async fn start(
    pool: &PgPool,
    session: &Session,
    first: &NewRefreshToken,
    started_from: &Origin,
) -> Result<SessionStart, StoreError> {
    // One statement, so atomic. Session ids are fresh random values: a row with this id is
    // the revoked tombstone a reuse of the code put in (`redeem_code`), and then nothing is
    // inserted at all.
    let inserted = sqlx::query(
        "WITH started AS (
             INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
                 created_at, absolute_end, revoked_at, created_ip, created_user_agent)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $13, $14)
             ON CONFLICT (id) DO NOTHING
             RETURNING id, client_id
         )
         INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
         SELECT $10, id, client_id, $11, $12 FROM started",
    )
    .bind(session.id.as_str())
    .bind(session.subject.as_str())
    .bind(session.client_id.as_str())
    .bind(session.sso_id.as_ref().map(SsoId::as_str))
    .bind(&session.scope)
    .bind(session.auth_time.0)
    .bind(session.created_at.0)
    .bind(session.absolute_end.0)
    .bind(session.revoked_at.map(|t| t.0))
    .bind(&first.hash.0[..])
    .bind(first.issued_at.0)
    .bind(first.expires_at.0)
    .bind(&started_from.ip)
    .bind(&started_from.user_agent)
    .execute(pool)
    .await
    .map_err(query("start_session"))?
    .rows_affected();
    Ok(if inserted == 1 {
        SessionStart::Started
    } else {
        SessionStart::CodeReused
    })
}

/// The refresh token with this hash, with its session.
pub(super) async fn find_refresh_token(
    pool: &PgPool,
    hash: TokenHash,
) -> Result<Option<RefreshTokenInfo>, StoreError> {
    let op = "find_refresh_token";
    let row = sqlx::query(&format!(
        "SELECT t.client_id, t.issued_at, t.expires_at, t.used_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = $1"
    ))
    .bind(&hash.0[..])
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.map(|r| {
        Ok(RefreshTokenInfo {
            client_id: ClientId::new(r.try_get::<String, _>(0)?),
            issued_at: UnixMillis(r.try_get(1)?),
            expires_at: UnixMillis(r.try_get(2)?),
            used_at: r.try_get::<Option<i64>, _>(3)?.map(UnixMillis),
            session: session_from_row(&r, 4)?,
        })
    })
    .transpose()
    .map_err(query(op))
}

pub(super) async fn find(pool: &PgPool, id: &SessionId) -> Result<Option<Session>, StoreError> {
    let op = "find_session";
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.map(|r| session_from_row(&r, 0))
        .transpose()
        .map_err(query(op))
}

/// Revokes a live session and deletes the proxy sessions holding its tokens; whether it was
/// live until now.
pub(super) async fn revoke(
    pool: &PgPool,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> Result<bool, StoreError> {
    let op = "revoke_session";
    let mut tx = pool.begin().await.map_err(query(op))?;
    let was_live = revoke_session_row(&mut *tx, id, now, reason)
        .await
        .map_err(query(op))?;
    delete_proxy_sessions_of(&mut tx, std::slice::from_ref(id))
        .await
        .map_err(query(op))?;
    tx.commit().await.map_err(query(op))?;
    Ok(was_live)
}

/// Deletes the proxy sessions holding tokens of `sessions`: their browsers sign in again at
/// their next request instead of at their next refresh.
async fn delete_proxy_sessions_of(
    c: &mut PgConnection,
    sessions: &[SessionId],
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
    sqlx::query("DELETE FROM proxy_sessions WHERE session_id = ANY($1)")
        .bind(ids)
        .execute(c)
        .await
        .map(drop)
}

/// Parameters of a statement built at run time, bound in order.
enum Param {
    Millis(i64),
    Text(String),
}

fn bind_all<'q>(
    mut statement: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    params: &'q [Param],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for param in params {
        statement = match param {
            Param::Millis(n) => statement.bind(*n),
            Param::Text(t) => statement.bind(t.as_str()),
        };
    }
    statement
}

/// `WHERE` conditions naming the live sessions `filter` names, and their parameters after the
/// leading `now` (`$1`). Built per filter, so each shape gets the plan of its own index.
fn live_where(filter: &SessionFilter, now: UnixMillis) -> (String, Vec<Param>) {
    let mut conditions = vec!["s.revoked_at IS NULL AND s.absolute_end > $1".to_owned()];
    let mut params = vec![Param::Millis(now.0)];
    if let Some(subject) = &filter.subject {
        params.push(Param::Text(subject.as_str().to_owned()));
        conditions.push(format!("s.subject = ${}", params.len()));
    }
    if let Some(client) = &filter.client_id {
        params.push(Param::Text(client.as_str().to_owned()));
        conditions.push(format!("s.client_id = ${}", params.len()));
    }
    (conditions.join(" AND "), params)
}

/// One page of the live sessions `filter` names, in id order after `after`: byte order
/// (`COLLATE "C"`), as SQLite's whatever the database's collation, which the indexes by person
/// and by client (schema 5) hold, so a page is read in index order without a sort.
pub(super) async fn list(
    pool: &PgPool,
    filter: &SessionFilter,
    now: UnixMillis,
    after: Option<&SessionId>,
    limit: u32,
) -> Result<SessionPage, StoreError> {
    let op = "list_sessions";
    let (sql, params) = list_statement(filter, now, after, limit);
    let rows = bind_all(sqlx::query(&sql), &params)
        .fetch_all(pool)
        .await
        .map_err(query(op))?;
    let sessions = rows
        .iter()
        .map(listed_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(query(op))?;
    Ok(SessionPage::cut(sessions, limit))
}

/// The statement [`list`] runs, and its parameters: `now`, the filter's subject and client,
/// `after`, and one more than `limit` (whether there is a next page).
fn list_statement(
    filter: &SessionFilter,
    now: UnixMillis,
    after: Option<&SessionId>,
    limit: u32,
) -> (String, Vec<Param>) {
    let (mut conditions, mut params) = live_where(filter, now);
    if let Some(after) = after {
        params.push(Param::Text(after.as_str().to_owned()));
        conditions.push_str(&format!(" AND s.id COLLATE \"C\" > ${}", params.len()));
    }
    params.push(Param::Millis(i64::from(limit) + 1));
    let limit_at = params.len();
    // A session whose every refresh token has expired can never be refreshed again: it is
    // over, though the sweep keeps it until its absolute end.
    let sql = format!(
        "SELECT {SESSION_COLUMNS}, s.created_ip, s.created_user_agent,
             (SELECT MAX(t.expires_at) FROM refresh_tokens t WHERE t.session_id = s.id),
             l.used_at, l.used_ip, l.used_user_agent
         FROM sessions s
         LEFT JOIN LATERAL (
             SELECT t.used_at, t.used_ip, t.used_user_agent FROM refresh_tokens t
             WHERE t.session_id = s.id AND t.used_at IS NOT NULL
             ORDER BY t.used_at DESC LIMIT 1) l ON TRUE
         WHERE {conditions}
           AND EXISTS (SELECT 1 FROM refresh_tokens t
                       WHERE t.session_id = s.id AND t.expires_at > $1)
         ORDER BY s.id COLLATE \"C\" LIMIT ${limit_at}"
    );
    (sql, params)
}

/// The text of [`list_statement`], for `EXPLAIN` (see [`crate::list_sessions_sql`]).
pub(crate) fn list_sql(filter: &SessionFilter, after: Option<&SessionId>) -> String {
    list_statement(filter, UnixMillis(0), after, 0).0
}

fn listed_from_row(r: &PgRow) -> Result<ListedSession, sqlx::Error> {
    let session = session_from_row(r, 0)?;
    let first_use = SessionUse {
        at: session.created_at,
        from: Origin {
            ip: r.try_get::<Option<String>, _>(9)?.unwrap_or_default(),
            user_agent: r.try_get::<Option<String>, _>(10)?.unwrap_or_default(),
        },
    };
    let token_end = r
        .try_get::<Option<i64>, _>(11)?
        .map_or(session.absolute_end, UnixMillis);
    let last_use = match r.try_get::<Option<i64>, _>(12)? {
        Some(at) => SessionUse {
            at: UnixMillis(at),
            from: Origin {
                ip: r.try_get::<Option<String>, _>(13)?.unwrap_or_default(),
                user_agent: r.try_get::<Option<String>, _>(14)?.unwrap_or_default(),
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
pub(super) async fn revoke_matching(
    tx: &mut PgConnection,
    filter: &SessionFilter,
    now: UnixMillis,
    reason: &str,
) -> Result<Ended, sqlx::Error> {
    if filter.subject.is_none() && filter.client_id.is_none() {
        return Ok(Ended::default());
    }
    let (conditions, mut params) = live_where(filter, now);
    params.push(Param::Text(reason.to_owned()));
    let sql = format!(
        "UPDATE sessions s SET revoked_at = $1, revoked_reason = ${}
         WHERE {conditions} RETURNING {SESSION_COLUMNS}",
        params.len()
    );
    let rows = bind_all(sqlx::query(&sql), &params)
        .fetch_all(&mut *tx)
        .await?;
    let sessions = rows
        .iter()
        .map(|r| session_from_row(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<SessionId> = sessions.iter().map(|s| s.id.clone()).collect();
    delete_proxy_sessions_of(tx, &ids).await?;
    let sso_sessions = match (&filter.subject, &filter.client_id) {
        (Some(subject), None) => sqlx::query(
            "UPDATE sso_sessions SET revoked_at = $2
             WHERE subject = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(subject.as_str())
        .bind(now.0)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        _ => 0,
    };
    Ok(Ended {
        sessions,
        sso_sessions,
    })
}

/// [`revoke_matching`] in a transaction of its own.
pub(super) async fn revoke_many(
    pool: &PgPool,
    filter: &SessionFilter,
    now: UnixMillis,
    reason: &str,
) -> Result<Ended, StoreError> {
    let op = "revoke_sessions";
    let mut tx = pool.begin().await.map_err(query(op))?;
    let ended = revoke_matching(&mut tx, filter, now, reason)
        .await
        .map_err(query(op))?;
    tx.commit().await.map_err(query(op))?;
    Ok(ended)
}

/// Sessions neither revoked nor past their absolute end.
pub(super) async fn count_active(pool: &PgPool, now: UnixMillis) -> Result<u64, StoreError> {
    sqlx::query("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND absolute_end > $1")
        .bind(now.0)
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(query("count_active_sessions"))
}
