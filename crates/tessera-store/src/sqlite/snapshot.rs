//! Copying a whole SQLite store out and in (`export_snapshot`, `import_snapshot`): each table
//! described once ([`crate::table`]), read by one SELECT made from its description and written
//! row by row with the writer the live path uses, so a copied row is stored exactly as the
//! live path stores it.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use super::connection::{immediate, query};
use super::row::{
    code_from_row, hash_at, insert_code_row, insert_proxy_session, insert_session_row,
    insert_signing_key, insert_sso, proxy_session_from_row, session_from_row,
};
use super::{identity, user};
use crate::model::*;
use crate::table::{SnapshotRow, Table};
use crate::{StoreError, TABLES};

/// Reads every row in one read transaction: in WAL mode every statement in it sees the same
/// snapshot, whatever the writer commits meanwhile.
pub(super) fn export(c: &Connection) -> Result<Snapshot, StoreError> {
    let tx = c
        .unchecked_transaction()
        .map_err(query("export_snapshot"))?;
    let snapshot = read_snapshot(&tx)?;
    tx.commit().map_err(query("export_snapshot"))?;
    Ok(snapshot)
}

/// Writes `snapshot` in one transaction if every table is empty, else writes nothing.
pub(super) fn import(c: &mut Connection, snapshot: &Snapshot) -> Result<CopyReport, StoreError> {
    let tx = immediate(c, "import_snapshot")?;
    // Under the write lock, so no other writer (of this process or another) can put a
    // row in between the check and the import.
    let tables = occupied_tables(&tx)?;
    if !tables.is_empty() {
        return Err(StoreError::NotEmpty { tables });
    }
    write_snapshot(&tx, snapshot).map_err(query("import_snapshot"))?;
    tx.commit().map_err(query("import_snapshot"))?;
    Ok(snapshot.counts())
}

/// Every row, each table in primary-key order (SQLite compares text byte by byte, and a hash's
/// lowercase hex sorts as its bytes do).
fn read_snapshot(c: &Connection) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        secrets: read_table(c)?,
        signing_keys: read_table(c)?,
        sso_sessions: read_table(c)?,
        auth_codes: read_table(c)?,
        sessions: read_table(c)?,
        refresh_tokens: read_table(c)?,
        proxy_sessions: read_table(c)?,
        identities: read_table(c)?,
        disabled_users: read_table(c)?,
    })
}

/// Inserts every row of `snapshot`, each table in [`TABLES`] order.
fn write_snapshot(c: &Connection, snapshot: &Snapshot) -> rusqlite::Result<()> {
    write_table(c, &snapshot.secrets)?;
    write_table(c, &snapshot.signing_keys)?;
    write_table(c, &snapshot.sso_sessions)?;
    write_table(c, &snapshot.auth_codes)?;
    write_table(c, &snapshot.sessions)?;
    write_table(c, &snapshot.refresh_tokens)?;
    write_table(c, &snapshot.proxy_sessions)?;
    write_table(c, &snapshot.identities)?;
    write_table(c, &snapshot.disabled_users)
}

/// The tables of [`TABLES`] that hold at least one row.
fn occupied_tables(c: &Connection) -> Result<Vec<&'static str>, StoreError> {
    let mut occupied = Vec::new();
    for table in TABLES {
        let any = c
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get::<_, bool>(0)
            })
            .map_err(query("import_snapshot"))?;
        if any {
            occupied.push(table);
        }
    }
    Ok(occupied)
}

/// A row type of a snapshot as SQLite reads and writes it.
trait SqliteCopy: SnapshotRow + Sized {
    /// Reads a row whose columns are [`Table::columns`], in order.
    fn read(r: &Row<'_>) -> rusqlite::Result<Self>;

    /// Inserts the row.
    fn write(&self, c: &Connection) -> rusqlite::Result<()>;
}

/// Every row of `T`'s table, in primary-key order; a value that does not decode makes the store
/// [`StoreError::Corrupt`].
fn read_table<T: SqliteCopy>(c: &Connection) -> Result<Vec<T>, StoreError> {
    let fail = |e: rusqlite::Error| match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt {
            what: T::TABLE.what,
        },
        other => query("export_snapshot")(other),
    };
    let mut stmt = c.prepare(&select(&T::TABLE)).map_err(fail)?;
    let rows = stmt.query_map([], |r| T::read(r)).map_err(fail)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(fail)
}

fn write_table<T: SqliteCopy>(c: &Connection, rows: &[T]) -> rusqlite::Result<()> {
    rows.iter().try_for_each(|row| row.write(c))
}

/// `SELECT` of every column, in primary-key order.
fn select(table: &Table) -> String {
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        table.column_list(),
        table.name,
        table.key
    )
}

impl SqliteCopy for SecretRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SecretRow {
            name: r.get(0)?,
            value: r.get(1)?,
        })
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        c.prepare_cached("INSERT INTO secrets (name, value) VALUES (?1, ?2)")?
            .execute(params![self.name, self.value])
            .map(drop)
    }
}

impl SqliteCopy for StoredKey {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(StoredKey {
            kid: r.get(0)?,
            alg: r.get(1)?,
            pkcs8: r.get(2)?,
            created_at: UnixMillis(r.get(3)?),
        })
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        insert_signing_key(c, self)
    }
}

impl SqliteCopy for SsoSession {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SsoSession {
            handle: hash_at(r, 0)?,
            id: SsoId::new(r.get::<_, String>(1)?),
            subject: Subject::new(r.get::<_, String>(2)?),
            auth_time: UnixMillis(r.get(3)?),
            expires_at: UnixMillis(r.get(4)?),
            revoked_at: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
            last_used_at: UnixMillis(r.get(6)?),
        })
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        insert_sso(c, self)
    }
}

impl SqliteCopy for AuthCodeRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(AuthCodeRow {
            code: code_from_row(hash_at(r, 10)?, r)?,
            used_at: r.get::<_, Option<i64>>(11)?.map(UnixMillis),
        })
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        insert_code_row(c, &self.code, self.used_at)
    }
}

impl SqliteCopy for SessionRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SessionRow {
            session: session_from_row(r, 0)?,
            revoked_reason: r.get(9)?,
            started_from: match (r.get::<_, Option<String>>(10)?, r.get(11)?) {
                (None, None) => None,
                (ip, user_agent) => Some(Origin {
                    ip: ip.unwrap_or_default(),
                    user_agent: user_agent.unwrap_or_default(),
                }),
            },
        })
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        insert_session_row(
            c,
            &self.session,
            self.revoked_reason.as_deref(),
            self.started_from.as_ref(),
        )
    }
}

impl SqliteCopy for RefreshTokenRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RefreshTokenRow {
            hash: hash_at(r, 0)?,
            session_id: SessionId::new(r.get::<_, String>(1)?),
            client_id: ClientId::new(r.get::<_, String>(2)?),
            issued_at: UnixMillis(r.get(3)?),
            expires_at: UnixMillis(r.get(4)?),
            used_at: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
            used_ip: r.get(6)?,
            successor_hash: match r.get_ref(7)? {
                ValueRef::Null => None,
                _ => Some(hash_at(r, 7)?),
            },
            used_user_agent: r.get(8)?,
        })
    }

    /// The whole row, first use and successor included (the live path inserts a token unused).
    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        c.prepare_cached(
            "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at,
             used_at, used_ip, successor_hash, used_user_agent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            self.hash.to_hex(),
            self.session_id.as_str(),
            self.client_id.as_str(),
            self.issued_at.0,
            self.expires_at.0,
            self.used_at.map(|t| t.0),
            self.used_ip,
            self.successor_hash.as_ref().map(TokenHash::to_hex),
            self.used_user_agent,
        ])
        .map(drop)
    }
}

impl SqliteCopy for ProxySession {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        proxy_session_from_row(r)
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        insert_proxy_session(c, self)
    }
}

impl SqliteCopy for DisabledUser {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(DisabledUser {
            subject: Subject::new(r.get::<_, String>(0)?),
            disabled_at: UnixMillis(r.get(1)?),
            disabled_by: r.get(2)?,
        })
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        user::insert(c, self)
    }
}

impl SqliteCopy for IdentityRecord {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        identity::identity_from_row(r)
    }

    fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        identity::save(c, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::row::{PROXY_SESSION_COLUMNS, SESSION_COLUMNS};

    #[test]
    fn a_table_is_read_in_primary_key_order() {
        assert_eq!(
            select(&StoredKey::TABLE),
            "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY kid"
        );
    }

    #[test]
    fn the_descriptions_read_what_the_row_readers_expect() {
        assert_eq!(ProxySession::TABLE.column_list(), PROXY_SESSION_COLUMNS);
        assert_eq!(
            IdentityRecord::TABLE.column_list(),
            identity::IDENTITY_COLUMNS
        );
        assert!(
            SessionRow::TABLE
                .column_list()
                .starts_with(&SESSION_COLUMNS.replace("s.", "")),
            "session_from_row reads the first columns"
        );
    }
}
