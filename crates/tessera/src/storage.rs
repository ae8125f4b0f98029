//! Opening the configured store, for `serve` and the commands that work on the database.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use tessera_store::{PostgresStore, SqliteStore, Store, StoreError, Synchronous};

use crate::config::Storage;

/// Opens (and migrates) the configured store.
pub async fn open(storage: &Storage) -> Result<Arc<dyn Store>> {
    Ok(match storage {
        Storage::Sqlite { path, synchronous } => Arc::new(open_sqlite(path, *synchronous)?),
        Storage::Postgres(options) => match PostgresStore::connect(options.clone()).await {
            Ok(store) => Arc::new(store),
            // Already the one sentence that names the setting to fix.
            Err(e @ StoreError::Tls { .. }) => return Err(e.into()),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot open the PostgreSQL store")),
        },
    })
}

/// Opens (creating and migrating) an SQLite database. It holds the signing, rotation and cookie
/// keys, so a database that other users may read or write is refused, its `-wal` and `-shm`
/// files (left behind by a crash, or made by an older tessera) included.
pub fn open_sqlite(path: &Path, synchronous: Synchronous) -> Result<SqliteStore> {
    let (wal, shm) = (beside(path, "-wal"), beside(path, "-shm"));
    crate::file_mode::require_private(&[path, &wal, &shm])?;
    Ok(SqliteStore::open(path, synchronous)?)
}

/// The file SQLite keeps beside `path`: its name with `suffix` appended.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
