//! Opening the configured store, for `serve` and the commands that work on the database.

use std::sync::Arc;

use anyhow::{Context, Result};
use tessera_store::{PostgresStore, SqliteStore, Store};

use crate::config::Storage;

/// Opens (and migrates) the configured store.
pub async fn open(storage: &Storage) -> Result<Arc<dyn Store>> {
    Ok(match storage {
        Storage::Sqlite { path, synchronous } => Arc::new(SqliteStore::open(path, *synchronous)?),
        Storage::Postgres(options) => Arc::new(
            PostgresStore::connect(options.clone())
                .await
                .context("cannot open the PostgreSQL store")?,
        ),
    })
}
