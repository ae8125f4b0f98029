//! Copying a whole PostgreSQL store out and in (`export_snapshot`, `import_snapshot`): each
//! table described once ([`crate::table`]), read by one SELECT and written by one `UNNEST`
//! INSERT per batch, both made from its description.

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};

use super::connection::query;
use super::row::{code_from_row, hash_at, hash_from, proxy_session_from_row, session_from_row};
use crate::model::*;
use crate::table::{Kind, SnapshotRow, Table};
use crate::{StoreError, TABLES};

/// Rows per INSERT of an import: each column goes as one array parameter (`UNNEST`), so a batch
/// is one round trip whatever its size; this bounds the size of one message.
const IMPORT_BATCH: usize = 5_000;

/// Reads every row in one consistent snapshot of the database, whatever replicas commit
/// meanwhile.
pub(super) async fn export(pool: &PgPool) -> Result<Snapshot, StoreError> {
    let op = "export_snapshot";
    let mut tx = pool.begin().await.map_err(query(op))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(query(op))?;
    let snapshot = read_snapshot(&mut tx).await?;
    // Read only: ending it either way is the same; a failure to end it changes nothing.
    let _ = tx.rollback().await;
    Ok(snapshot)
}

/// Writes `snapshot` in one transaction if every table is empty, else writes nothing.
pub(super) async fn import(pool: &PgPool, snapshot: Snapshot) -> Result<CopyReport, StoreError> {
    let op = "import_snapshot";
    let mut tx = pool.begin().await.map_err(query(op))?;
    // Readers go on, writers (a replica started too early, a second copy) wait until this
    // commits: no row can come in between the check and the import. A second copy then
    // finds the tables full and refuses.
    sqlx::query(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        TABLES.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .map_err(query(op))?;
    let tables = occupied_tables(&mut tx).await?;
    if !tables.is_empty() {
        let _ = tx.rollback().await;
        return Err(StoreError::NotEmpty { tables });
    }
    // A failure drops the transaction, which rolls it back.
    write_snapshot(&mut tx, &snapshot)
        .await
        .map_err(query(op))?;
    tx.commit().await.map_err(query(op))?;
    Ok(snapshot.counts())
}

/// Every row, each table in primary-key order, text compared byte by byte as SQLite does
/// (`COLLATE "C"`) and hashes by their bytes.
async fn read_snapshot(c: &mut PgConnection) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        secrets: read_table(c).await?,
        signing_keys: read_table(c).await?,
        sso_sessions: read_table(c).await?,
        auth_codes: read_table(c).await?,
        sessions: read_table(c).await?,
        refresh_tokens: read_table(c).await?,
        proxy_sessions: read_table(c).await?,
        identities: read_table(c).await?,
        disabled_users: read_table(c).await?,
    })
}

/// Inserts every row of `snapshot`, each table in [`TABLES`] order, [`IMPORT_BATCH`] rows a
/// statement.
async fn write_snapshot(c: &mut PgConnection, snapshot: &Snapshot) -> Result<(), sqlx::Error> {
    write_table(c, &snapshot.secrets).await?;
    write_table(c, &snapshot.signing_keys).await?;
    write_table(c, &snapshot.sso_sessions).await?;
    write_table(c, &snapshot.auth_codes).await?;
    write_table(c, &snapshot.sessions).await?;
    write_table(c, &snapshot.refresh_tokens).await?;
    write_table(c, &snapshot.proxy_sessions).await?;
    write_table(c, &snapshot.identities).await?;
    write_table(c, &snapshot.disabled_users).await
}

/// The tables of [`TABLES`] that hold at least one row, asked in one statement.
async fn occupied_tables(c: &mut PgConnection) -> Result<Vec<&'static str>, StoreError> {
    let op = "import_snapshot";
    let exists: Vec<String> = TABLES
        .iter()
        .map(|table| format!("EXISTS (SELECT 1 FROM {table})"))
        .collect();
    let row = sqlx::query(&format!("SELECT {}", exists.join(", ")))
        .fetch_one(&mut *c)
        .await
        .map_err(query(op))?;
    let mut occupied = Vec::new();
    for (i, table) in TABLES.iter().enumerate() {
        if row.try_get::<bool, _>(i).map_err(query(op))? {
            occupied.push(*table);
        }
    }
    Ok(occupied)
}

/// A row type of a snapshot as PostgreSQL reads and writes it: one row of [`SnapshotRow::TABLE`]
/// from a SELECT of its columns, and a batch of rows as one array parameter per column.
trait PgCopy: SnapshotRow + Sized {
    /// Reads a row whose columns are [`Table::columns`], in order.
    fn read(r: &PgRow) -> Result<Self, sqlx::Error>;

    /// Binds `batch` to `insert`, one array per column of [`Table::columns`], in order.
    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments>;
}

/// Every row of `T`'s table, in primary-key order; a value that does not decode makes the store
/// [`StoreError::Corrupt`].
async fn read_table<T: PgCopy>(c: &mut PgConnection) -> Result<Vec<T>, StoreError> {
    let rows = sqlx::query(&select(&T::TABLE))
        .fetch_all(&mut *c)
        .await
        .map_err(query("export_snapshot"))?;
    rows.iter()
        .map(|r| {
            T::read(r).map_err(|e| match e {
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Corrupt {
                    what: T::TABLE.what,
                },
                other => query("export_snapshot")(other),
            })
        })
        .collect()
}

/// Inserts `rows`, [`IMPORT_BATCH`] a statement.
async fn write_table<T: PgCopy>(c: &mut PgConnection, rows: &[T]) -> Result<(), sqlx::Error> {
    let insert = unnest_insert(&T::TABLE);
    for batch in rows.chunks(IMPORT_BATCH) {
        T::bind(sqlx::query(&insert), batch)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// `SELECT` of every column, in primary-key order; a text key compares byte by byte.
fn select(table: &Table) -> String {
    let collation = match table.key_kind() {
        Kind::Text => " COLLATE \"C\"",
        Kind::Bytes | Kind::Hash | Kind::Millis => "",
    };
    format!(
        "SELECT {} FROM {} ORDER BY {}{collation}",
        table.column_list(),
        table.name,
        table.key
    )
}

/// `INSERT … SELECT * FROM UNNEST($1::TYPE[], …)`: every column as one array parameter.
fn unnest_insert(table: &Table) -> String {
    let arrays: Vec<String> = (1..)
        .zip(table.columns)
        .map(|(n, column)| format!("${n}::{}[]", array_type(column.kind)))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
        table.name,
        table.column_list(),
        arrays.join(", ")
    )
}

fn array_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "TEXT",
        Kind::Bytes | Kind::Hash => "BYTEA",
        Kind::Millis => "BIGINT",
    }
}

/// One column of `batch`: `value` of every row.
fn column<'a, T, V>(batch: &'a [T], value: impl Fn(&'a T) -> V) -> Vec<V> {
    batch.iter().map(value).collect()
}

fn millis(at: Option<UnixMillis>) -> Option<i64> {
    at.map(|t| t.0)
}

impl PgCopy for SecretRow {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(SecretRow {
            name: r.try_get(0)?,
            value: r.try_get(1)?,
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |s| s.name.as_str()))
            .bind(column(batch, |s| s.value.as_slice()))
    }
}

impl PgCopy for StoredKey {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(StoredKey {
            kid: r.try_get(0)?,
            alg: r.try_get(1)?,
            pkcs8: r.try_get(2)?,
            created_at: UnixMillis(r.try_get(3)?),
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |k| k.kid.as_str()))
            .bind(column(batch, |k| k.alg.as_str()))
            .bind(column(batch, |k| k.pkcs8.as_slice()))
            .bind(column(batch, |k| k.created_at.0))
    }
}

impl PgCopy for SsoSession {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(SsoSession {
            handle: hash_at(r, 0)?,
            id: SsoId::new(r.try_get::<String, _>(1)?),
            subject: Subject::new(r.try_get::<String, _>(2)?),
            auth_time: UnixMillis(r.try_get(3)?),
            expires_at: UnixMillis(r.try_get(4)?),
            revoked_at: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
            last_used_at: UnixMillis(r.try_get(6)?),
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |s| &s.handle.0[..]))
            .bind(column(batch, |s| s.id.as_str()))
            .bind(column(batch, |s| s.subject.as_str()))
            .bind(column(batch, |s| s.auth_time.0))
            .bind(column(batch, |s| s.expires_at.0))
            .bind(column(batch, |s| millis(s.revoked_at)))
            .bind(column(batch, |s| s.last_used_at.0))
    }
}

impl PgCopy for AuthCodeRow {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(AuthCodeRow {
            code: code_from_row(hash_at(r, 10)?, r)?,
            used_at: r.try_get::<Option<i64>, _>(11)?.map(UnixMillis),
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |r| r.code.client_id.as_str()))
            .bind(column(batch, |r| r.code.redirect_uri.as_str()))
            .bind(column(batch, |r| r.code.code_challenge.as_deref()))
            .bind(column(batch, |r| r.code.nonce.as_deref()))
            .bind(column(batch, |r| r.code.scope.as_str()))
            .bind(column(batch, |r| r.code.session_id.as_str()))
            .bind(column(batch, |r| r.code.sso_id.as_ref().map(SsoId::as_str)))
            .bind(column(batch, |r| r.code.subject.as_str()))
            .bind(column(batch, |r| r.code.auth_time.0))
            .bind(column(batch, |r| r.code.expires_at.0))
            .bind(column(batch, |r| &r.code.hash.0[..]))
            .bind(column(batch, |r| millis(r.used_at)))
    }
}

impl PgCopy for SessionRow {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(SessionRow {
            session: session_from_row(r, 0)?,
            revoked_reason: r.try_get(9)?,
            started_from: match (r.try_get::<Option<String>, _>(10)?, r.try_get(11)?) {
                (None, None) => None,
                (ip, user_agent) => Some(Origin {
                    ip: ip.unwrap_or_default(),
                    user_agent: user_agent.unwrap_or_default(),
                }),
            },
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |r| r.session.id.as_str()))
            .bind(column(batch, |r| r.session.subject.as_str()))
            .bind(column(batch, |r| r.session.client_id.as_str()))
            .bind(column(batch, |r| {
                r.session.sso_id.as_ref().map(SsoId::as_str)
            }))
            .bind(column(batch, |r| r.session.scope.as_str()))
            .bind(column(batch, |r| r.session.auth_time.0))
            .bind(column(batch, |r| r.session.created_at.0))
            .bind(column(batch, |r| r.session.absolute_end.0))
            .bind(column(batch, |r| millis(r.session.revoked_at)))
            .bind(column(batch, |r| r.revoked_reason.as_deref()))
            .bind(column(batch, |r| {
                r.started_from.as_ref().map(|o| o.ip.as_str())
            }))
            .bind(column(batch, |r| {
                r.started_from.as_ref().map(|o| o.user_agent.as_str())
            }))
    }
}

impl PgCopy for RefreshTokenRow {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
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
            used_user_agent: r.try_get(8)?,
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |t| &t.hash.0[..]))
            .bind(column(batch, |t| t.session_id.as_str()))
            .bind(column(batch, |t| t.client_id.as_str()))
            .bind(column(batch, |t| t.issued_at.0))
            .bind(column(batch, |t| t.expires_at.0))
            .bind(column(batch, |t| millis(t.used_at)))
            .bind(column(batch, |t| t.used_ip.as_deref()))
            .bind(column(batch, |t| {
                t.successor_hash.as_ref().map(|h| &h.0[..])
            }))
            .bind(column(batch, |t| t.used_user_agent.as_deref()))
    }
}

impl PgCopy for ProxySession {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        proxy_session_from_row(r)
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |s| &s.handle.0[..]))
            .bind(column(batch, |s| s.created_at.0))
            .bind(column(batch, |s| s.last_seen_at.0))
            .bind(column(batch, |s| s.absolute_end.0))
            .bind(column(batch, |s| s.refreshed_at.0))
            .bind(column(batch, |s| millis(s.refresh_lease_until)))
            .bind(column(batch, |s| s.sealed.as_slice()))
            .bind(column(batch, |s| {
                s.session_id.as_ref().map(SessionId::as_str)
            }))
    }
}

impl PgCopy for DisabledUser {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(DisabledUser {
            subject: Subject::new(r.try_get::<String, _>(0)?),
            disabled_at: UnixMillis(r.try_get(1)?),
            disabled_by: r.try_get(2)?,
        })
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |u| u.subject.as_str()))
            .bind(column(batch, |u| u.disabled_at.0))
            .bind(column(batch, |u| u.disabled_by.as_str()))
    }
}

impl PgCopy for IdentityRecord {
    fn read(r: &PgRow) -> Result<Self, sqlx::Error> {
        super::identity::identity_from_row(r)
    }

    fn bind<'q>(
        insert: Query<'q, Postgres, PgArguments>,
        batch: &'q [Self],
    ) -> Query<'q, Postgres, PgArguments> {
        insert
            .bind(column(batch, |i| i.subject.as_str()))
            .bind(column(batch, |i| i.connector_id.as_str()))
            .bind(column(batch, |i| i.claims.as_str()))
            .bind(column(batch, |i| i.checked_at.0))
            .bind(column(batch, |i| millis(i.check_lease_until)))
            .bind(column(batch, |i| i.upstream.as_deref()))
            .bind(column(batch, |i| millis(i.disabled_at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::row::{PROXY_SESSION_COLUMNS, SESSION_COLUMNS};

    #[test]
    fn text_keys_are_ordered_byte_by_byte_and_hashes_by_their_bytes() {
        assert_eq!(
            select(&SessionRow::TABLE),
            "SELECT id, subject, client_id, sso_id, scope, auth_time, created_at, absolute_end, \
             revoked_at, revoked_reason, created_ip, created_user_agent FROM sessions \
             ORDER BY id COLLATE \"C\""
        );
        assert_eq!(
            select(&SsoSession::TABLE),
            "SELECT handle_hash, id, subject, auth_time, expires_at, revoked_at, last_used_at \
             FROM sso_sessions ORDER BY handle_hash"
        );
    }

    #[test]
    fn an_import_sends_each_column_as_one_typed_array() {
        assert_eq!(
            unnest_insert(&StoredKey::TABLE),
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) \
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BIGINT[])"
        );
    }

    #[test]
    fn the_descriptions_read_what_the_row_readers_expect() {
        assert_eq!(ProxySession::TABLE.column_list(), PROXY_SESSION_COLUMNS);
        assert_eq!(
            IdentityRecord::TABLE.column_list(),
            crate::postgres::identity::IDENTITY_COLUMNS
        );
        assert!(
            SessionRow::TABLE
                .column_list()
                .starts_with(&SESSION_COLUMNS.replace("s.", "")),
            "session_from_row reads the first columns"
        );
    }
}
