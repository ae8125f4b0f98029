//! Opening, migrating and locking connections; running blocking work off the async workers.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{MIGRATIONS, Synchronous};
use crate::StoreError;

/// Creates an empty database file with mode 0600 unless one exists. SQLite would create it
/// with 0644 under the usual umask, and it gives the `-wal` and `-shm` files it makes later the
/// main file's mode, so creating the main file first keeps all three private. (An empty file is
/// an empty database to SQLite.)
pub(super) fn create_private(path: &Path) -> std::io::Result<()> {
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn connect(path: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    let level = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    c.pragma_update(None, "synchronous", level)?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

pub(super) fn migrate(c: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let fail = |source: rusqlite::Error| StoreError::Open {
        location: PathBuf::from(path).display().to_string(),
        source: Box::new(source),
    };
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(fail)?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (version, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(fail)?;
    }
    tx.commit().map_err(fail)
}

pub(super) fn immediate<'c>(
    c: &'c mut Connection,
    operation: &'static str,
) -> Result<Transaction<'c>, StoreError> {
    c.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(query(operation))
}

pub(super) fn query(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query {
        operation,
        source: Box::new(source),
    }
}

pub(super) fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection cannot leave a transaction open (it rolls back on
    // drop), so the connection is still good: take it back from the poison.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) async fn blocking<T, F>(operation: &'static str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|join| StoreError::Query {
            operation,
            source: Box::new(join),
        })?
}
