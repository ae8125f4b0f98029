//! Copying a whole PostgreSQL store out and in (`export_snapshot`, `import_snapshot`).

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};

use super::connection::query;
use super::row::{
    PROXY_SESSION_COLUMNS, SESSION_COLUMNS, code_from_row, hash_at, hash_from,
    proxy_session_from_row, session_from_row,
};
use crate::StoreError;
use crate::model::*;

/// Rows per INSERT of an import: each column goes as one array parameter (`UNNEST`), so a batch
/// is one round trip whatever its size; this bounds the size of one message.
pub(super) const IMPORT_BATCH: usize = 5_000;

/// Every row, each table in primary-key order, text compared byte by byte as SQLite does
/// (`COLLATE "C"`) and hashes by their bytes.
pub(super) async fn read_snapshot(c: &mut PgConnection) -> Result<Snapshot, StoreError> {
    let secrets = select(
        c,
        "secret",
        "SELECT name, value FROM secrets ORDER BY name COLLATE \"C\"",
        |r| {
            Ok(SecretRow {
                name: r.try_get(0)?,
                value: r.try_get(1)?,
            })
        },
    )
    .await?;
    let signing_keys = select(
        c,
        "signing key",
        "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY kid COLLATE \"C\"",
        |r| {
            Ok(StoredKey {
                kid: r.try_get(0)?,
                alg: r.try_get(1)?,
                pkcs8: r.try_get(2)?,
                created_at: UnixMillis(r.try_get(3)?),
            })
        },
    )
    .await?;
    let sso_sessions = select(
        c,
        "SSO session",
        "SELECT handle_hash, id, subject, auth_time, expires_at, revoked_at FROM sso_sessions
         ORDER BY handle_hash",
        |r| {
            Ok(SsoSession {
                handle: hash_at(r, 0)?,
                id: SsoId::new(r.try_get::<String, _>(1)?),
                subject: Subject::new(r.try_get::<String, _>(2)?),
                auth_time: UnixMillis(r.try_get(3)?),
                expires_at: UnixMillis(r.try_get(4)?),
                revoked_at: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
            })
        },
    )
    .await?;
    let auth_codes = select(
        c,
        "authorization code",
        "SELECT client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
         subject, auth_time, expires_at, hash, used_at FROM auth_codes ORDER BY hash",
        |r| {
            Ok(AuthCodeRow {
                code: code_from_row(hash_at(r, 10)?, r)?,
                used_at: r.try_get::<Option<i64>, _>(11)?.map(UnixMillis),
            })
        },
    )
    .await?;
    let sessions = select(
        c,
        "session",
        &format!(
            "SELECT {SESSION_COLUMNS}, s.revoked_reason FROM sessions s ORDER BY s.id COLLATE \"C\""
        ),
        |r| {
            Ok(SessionRow {
                session: session_from_row(r, 0)?,
                revoked_reason: r.try_get(9)?,
            })
        },
    )
    .await?;
    let refresh_tokens = select(
        c,
        "refresh token",
        "SELECT hash, session_id, client_id, issued_at, expires_at, used_at, used_ip,
         successor_hash FROM refresh_tokens ORDER BY hash",
        |r| {
            Ok(RefreshTokenRow {
                hash: hash_at(r, 0)?,
                session_id: SessionId::new(r.try_get::<String, _>(1)?),
                client_id: ClientId::new(r.try_get::<String, _>(2)?),
                issued_at: UnixMillis(r.try_get(3)?),
                expires_at: UnixMillis(r.try_get(4)?),
                used_at: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
                used_ip: r.try_get(6)?,
                successor_hash: r
                    .try_get::<Option<Vec<u8>>, _>(7)?
                    .map(|bytes| hash_from(&bytes, 7))
                    .transpose()?,
            })
        },
    )
    .await?;
    let proxy_sessions = select(
        c,
        "proxy session",
        &format!("SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions ORDER BY handle_hash"),
        proxy_session_from_row,
    )
    .await?;
    Ok(Snapshot {
        secrets,
        signing_keys,
        sso_sessions,
        auth_codes,
        sessions,
        refresh_tokens,
        proxy_sessions,
    })
}

/// All rows `sql` selects, each made by `row`; a value that does not decode makes the store
/// [`StoreError::Corrupt`] with `what`.
async fn select<T>(
    c: &mut PgConnection,
    what: &'static str,
    sql: &str,
    row: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    let rows = sqlx::query(sql)
        .fetch_all(&mut *c)
        .await
        .map_err(query("export_snapshot"))?;
    rows.iter()
        .map(|r| {
            row(r).map_err(|e| match e {
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                    StoreError::Corrupt { what }
                }
                other => query("export_snapshot")(other),
            })
        })
        .collect()
}

/// Inserts every row of `snapshot`, each table in [`TABLES`] order, [`IMPORT_BATCH`] rows a
/// statement.
pub(super) async fn write_snapshot(
    c: &mut PgConnection,
    snapshot: &Snapshot,
) -> Result<(), sqlx::Error> {
    for batch in snapshot.secrets.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO secrets (name, value) SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[])",
        )
        .bind(batch.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.value.as_slice()).collect::<Vec<_>>())
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.signing_keys.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BIGINT[])",
        )
        .bind(batch.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.alg.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.pkcs8.as_slice()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.created_at.0).collect::<Vec<_>>())
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.sso_sessions.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO sso_sessions (handle_hash, id, subject, auth_time, expires_at, revoked_at)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                 $5::BIGINT[], $6::BIGINT[])",
        )
        .bind(batch.iter().map(|s| &s.handle.0[..]).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.auth_time.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.expires_at.0).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|s| s.revoked_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.auth_codes.chunks(IMPORT_BATCH) {
        let codes: Vec<&AuthCode> = batch.iter().map(|r| &r.code).collect();
        sqlx::query(
            "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, nonce, scope,
                 session_id, sso_id, subject, auth_time, expires_at, used_at)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                 $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[],
                 $12::BIGINT[])",
        )
        .bind(codes.iter().map(|c| &c.hash.0[..]).collect::<Vec<_>>())
        .bind(
            codes
                .iter()
                .map(|c| c.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            codes
                .iter()
                .map(|c| c.redirect_uri.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            codes
                .iter()
                .map(|c| c.code_challenge.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(codes.iter().map(|c| c.nonce.as_deref()).collect::<Vec<_>>())
        .bind(codes.iter().map(|c| c.scope.as_str()).collect::<Vec<_>>())
        .bind(
            codes
                .iter()
                .map(|c| c.session_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            codes
                .iter()
                .map(|c| c.sso_id.as_ref().map(SsoId::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(codes.iter().map(|c| c.subject.as_str()).collect::<Vec<_>>())
        .bind(codes.iter().map(|c| c.auth_time.0).collect::<Vec<_>>())
        .bind(codes.iter().map(|c| c.expires_at.0).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|r| r.used_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.sessions.chunks(IMPORT_BATCH) {
        let sessions: Vec<&Session> = batch.iter().map(|r| &r.session).collect();
        sqlx::query(
            "INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time, created_at,
                 absolute_end, revoked_at, revoked_reason)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                 $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[])",
        )
        .bind(sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
        .bind(
            sessions
                .iter()
                .map(|s| s.subject.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.sso_id.as_ref().map(SsoId::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.scope.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(sessions.iter().map(|s| s.auth_time.0).collect::<Vec<_>>())
        .bind(sessions.iter().map(|s| s.created_at.0).collect::<Vec<_>>())
        .bind(
            sessions
                .iter()
                .map(|s| s.absolute_end.0)
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.revoked_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|r| r.revoked_reason.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.refresh_tokens.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at,
                 used_at, used_ip, successor_hash)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                 $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::BYTEA[])",
        )
        .bind(batch.iter().map(|t| &t.hash.0[..]).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|t| t.session_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|t| t.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|t| t.issued_at.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|t| t.expires_at.0).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|t| t.used_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|t| t.used_ip.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|t| t.successor_hash.as_ref().map(|h| &h.0[..]))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.proxy_sessions.chunks(IMPORT_BATCH) {
        insert_proxy_sessions(c, batch).await?;
    }
    Ok(())
}

/// Inserts `batch` in one statement, one array parameter a column.
async fn insert_proxy_sessions(
    c: &mut PgConnection,
    batch: &[ProxySession],
) -> Result<(), sqlx::Error> {
    let times = |at: fn(&ProxySession) -> UnixMillis| -> Vec<i64> {
        batch.iter().map(|s| at(s).0).collect()
    };
    sqlx::query(&format!(
        "INSERT INTO proxy_sessions ({PROXY_SESSION_COLUMNS})
         SELECT * FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
             $5::BIGINT[], $6::BIGINT[], $7::BYTEA[])"
    ))
    .bind(batch.iter().map(|s| &s.handle.0[..]).collect::<Vec<_>>())
    .bind(times(|s| s.created_at))
    .bind(times(|s| s.last_seen_at))
    .bind(times(|s| s.absolute_end))
    .bind(times(|s| s.refreshed_at))
    .bind(
        batch
            .iter()
            .map(|s| s.refresh_lease_until.map(|t| t.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|s| s.sealed.as_slice())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *c)
    .await
    .map(drop)
}
