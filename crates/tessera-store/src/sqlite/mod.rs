//! The embedded SQLite backend: one writer connection (SQLite allows one writer; several writer
//! connections only stall each other on the lock) and a few reader connections, WAL mode.
//! The writer connection lives on its own thread and runs queued writes one after another;
//! reads run on Tokio's blocking pool. Either way the async workers never wait on disk.
//!
//! Why a thread rather than the blocking pool for writes: under load, every concurrent write on
//! the pool took a pool thread only to sleep on the writer's mutex, so N waiting requests meant N
//! threads woken one by one; a queue drained by one thread costs no wake-up while it stays busy.
//!
//! Durability: WAL with `synchronous=NORMAL` keeps every committed transaction across a crash
//! of the process (SIGKILL); `FULL` also across power loss.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use crate::model::*;
use crate::{Store, StoreError};

mod connection;
mod redeem;
mod row;
mod snapshot;

use connection::{blocking, connect, create_private, immediate, lock, migrate, query};
use redeem::redeem_in_transaction;
use row::{
    PROXY_SESSION_COLUMNS, SESSION_COLUMNS, code_from_row, finish_proxy_refresh_row,
    insert_code_row, insert_proxy_session, insert_refresh_token, insert_session_row,
    insert_signing_key, insert_sso, proxy_session_from_row, revoke_session_row, session_from_row,
};
use snapshot::{occupied_tables, read_snapshot, write_snapshot};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_proxy_sessions.sql"),
];
const READERS: usize = 4;

/// How hard SQLite syncs a commit to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Survives a crash of the process: the default.
    #[default]
    Normal,
    /// Also survives power loss, at the cost of an fsync per commit.
    Full,
}

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Writer,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// A write, run on the writer thread; it sends its own answer.
type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The queue of the writer thread, which owns the writer connection. Dropping it lets the
/// thread finish the queued writes, close the connection and end; the drop waits for that, so
/// the database is closed once the store is gone, as with a connection dropped in place.
struct Writer {
    jobs: Option<mpsc::Sender<WriteJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(mut connection: Connection) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<WriteJob>();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                for job in queue {
                    // A panicking write rolls its transaction back while unwinding, so the
                    // connection is still good; its caller learns of it from the dropped answer.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut connection)));
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed, readable by its owner only) the database at `path` and runs
    /// its migrations.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<SqliteStore, StoreError> {
        let open_error = |source: rusqlite::Error| StoreError::Open {
            location: path.display().to_string(),
            source: Box::new(source),
        };
        create_private(path).map_err(|e| StoreError::Open {
            location: path.display().to_string(),
            source: Box::new(e),
        })?;
        let mut writer = connect(path, synchronous).map_err(open_error)?;
        migrate(&mut writer, path)?;
        let writer = Writer::start(writer).map_err(|e| StoreError::Open {
            location: path.display().to_string(),
            source: Box::new(e),
        })?;
        let readers = (0..READERS)
            .map(|_| connect(path, synchronous).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(open_error)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer,
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// Runs `f` with the writer connection on the writer thread, after the writes queued before.
    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move |c| {
            // The caller may have gone away (its request was cancelled); the write stands.
            let _ = answer.send(f(c));
        });
        let lost = || StoreError::Query {
            operation,
            source: "the SQLite writer thread dropped the write (it panicked or has stopped)"
                .into(),
        };
        self.inner
            .writer
            .jobs
            .as_ref()
            .ok_or_else(lost)?
            .send(job)
            .map_err(|_| lost())?;
        answered.await.map_err(|_| lost())?
    }

    /// Runs `f` with one of the reader connections on the blocking pool.
    async fn read<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(operation, move || {
            let index = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            f(&lock(&inner.readers[index]))
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn secret_or_insert(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let name = name.to_owned();
        self.write("secret_or_insert", move |c| {
            c.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![name, candidate],
            )
            .map_err(query("secret_or_insert"))?;
            c.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .map_err(query("secret_or_insert"))
        })
        .await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read("signing_keys", |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY created_at, kid",
                )
                .map_err(query("signing_keys"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredKey {
                        kid: r.get(0)?,
                        alg: r.get(1)?,
                        pkcs8: r.get(2)?,
                        created_at: UnixMillis(r.get(3)?),
                    })
                })
                .map_err(query("signing_keys"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(query("signing_keys"))
        })
        .await
    }

    async fn add_signing_key(&self, key: StoredKey) -> Result<(), StoreError> {
        self.write("add_signing_key", move |c| {
            insert_signing_key(c, &key).map_err(query("add_signing_key"))
        })
        .await
    }

    async fn create_sso(&self, sso: SsoSession) -> Result<(), StoreError> {
        self.write("create_sso", move |c| {
            insert_sso(c, &sso).map_err(query("create_sso"))
        })
        .await
    }

    async fn find_sso(&self, handle: TokenHash) -> Result<Option<SsoSession>, StoreError> {
        self.read("find_sso", move |c| {
            c.prepare_cached(
                "SELECT id, subject, auth_time, expires_at, revoked_at FROM sso_sessions WHERE handle_hash = ?1",
            )
            .and_then(|mut s| {
                s.query_row([handle.to_hex()], |r| {
                    Ok(SsoSession {
                        handle,
                        id: SsoId::new(r.get::<_, String>(0)?),
                        subject: Subject::new(r.get::<_, String>(1)?),
                        auth_time: UnixMillis(r.get(2)?),
                        expires_at: UnixMillis(r.get(3)?),
                        revoked_at: r.get::<_, Option<i64>>(4)?.map(UnixMillis),
                    })
                })
                .optional()
            })
            .map_err(query("find_sso"))
        })
        .await
    }

    async fn revoke_sso(
        &self,
        id: SsoId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<Vec<SessionId>, StoreError> {
        let reason = reason.to_owned();
        self.write("revoke_sso", move |c| {
            let tx = immediate(c, "revoke_sso")?;
            tx.execute(
                "UPDATE sso_sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.as_str(), now.0],
            )
            .map_err(query("revoke_sso"))?;
            let ids = {
                let mut stmt = tx
                    .prepare(
                        "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3
                         WHERE sso_id = ?1 AND revoked_at IS NULL RETURNING id",
                    )
                    .map_err(query("revoke_sso"))?;
                let rows = stmt
                    .query_map(params![id.as_str(), now.0, reason], |r| {
                        r.get::<_, String>(0).map(SessionId::new)
                    })
                    .map_err(query("revoke_sso"))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(query("revoke_sso"))?
            };
            tx.commit().map_err(query("revoke_sso"))?;
            Ok(ids)
        })
        .await
    }

    async fn insert_code(&self, code: AuthCode) -> Result<(), StoreError> {
        self.write("insert_code", move |c| {
            insert_code_row(c, &code, None).map_err(query("insert_code"))
        })
        .await
    }

    async fn redeem_code(
        &self,
        hash: TokenHash,
        now: UnixMillis,
    ) -> Result<CodeRedemption, StoreError> {
        self.write("redeem_code", move |c| {
            let tx = immediate(c, "redeem_code")?;
            let claimed = tx
                .execute(
                    "UPDATE auth_codes SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
                    params![hash.to_hex(), now.0],
                )
                .map_err(query("redeem_code"))?
                == 1;
            if !claimed {
                // The first use may not have started its session yet, and then revoking it would
                // find nothing: put it in revoked already, so that its start is refused. The row
                // lives as long as the code's (see `sweep`).
                tx.execute(
                    "INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
                     created_at, absolute_end, revoked_at, revoked_reason)
                     SELECT session_id, subject, client_id, sso_id, scope, auth_time,
                     ?2, expires_at + 3600000, ?2, 'code_reuse' FROM auth_codes WHERE hash = ?1
                     ON CONFLICT (id) DO NOTHING",
                    params![hash.to_hex(), now.0],
                )
                .map_err(query("redeem_code"))?;
            }
            let code = tx
                .query_row(
                    "SELECT client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
                     subject, auth_time, expires_at FROM auth_codes WHERE hash = ?1",
                    [hash.to_hex()],
                    |r| code_from_row(hash, r),
                )
                .optional()
                .map_err(query("redeem_code"))?;
            tx.commit().map_err(query("redeem_code"))?;
            Ok(match code {
                None => CodeRedemption::Unknown,
                Some(code) if claimed => CodeRedemption::Claimed(Box::new(code)),
                Some(code) => CodeRedemption::AlreadyUsed {
                    session_id: code.session_id,
                },
            })
        })
        .await
    }

    async fn start_session(
        &self,
        session: Session,
        first: NewRefreshToken,
    ) -> Result<SessionStart, StoreError> {
        self.write("start_session", move |c| {
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
            insert_session_row(&tx, &session, None).map_err(query("start_session"))?;
            insert_refresh_token(&tx, &first, &session.id, &session.client_id)?;
            tx.commit().map_err(query("start_session"))?;
            Ok(SessionStart::Started)
        })
        .await
    }

    async fn redeem_refresh_token(&self, request: RedeemRequest) -> Result<Redemption, StoreError> {
        self.write("redeem_refresh_token", move |c| {
            redeem_in_transaction(c, &request)
        })
        .await
    }

    async fn find_refresh_token(
        &self,
        hash: TokenHash,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        self.read("find_refresh_token", move |c| {
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
        })
        .await
    }

    async fn find_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        self.read("find_session", move |c| {
            c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1"
            ))
            .and_then(|mut s| {
                s.query_row([id.as_str()], |r| session_from_row(r, 0))
                    .optional()
            })
            .map_err(query("find_session"))
        })
        .await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let reason = reason.to_owned();
        self.write("revoke_session", move |c| {
            revoke_session_row(c, &id, now, &reason).map_err(query("revoke_session"))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read("ping", |c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(query("ping"))
        })
        .await
    }

    async fn count_active_sessions(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.read("count_active_sessions", move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND absolute_end > ?1",
                [now.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(query("count_active_sessions"))
        })
        .await
    }

    async fn sweep(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.write("sweep", move |c| {
            let tx = immediate(c, "sweep")?;
            let mut removed = 0;
            // Ended sessions go with their tokens (ON DELETE CASCADE). Revoked ones are kept until
            // their absolute end, so a replay of their tokens is still recognised and audited.
            for sql in [
                "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE absolute_end <= ?1)",
                "DELETE FROM sessions WHERE absolute_end <= ?1",
                "DELETE FROM auth_codes WHERE expires_at <= ?1 - 3600000",
                "DELETE FROM sso_sessions WHERE expires_at <= ?1",
                "DELETE FROM proxy_sessions WHERE absolute_end <= ?1",
            ] {
                removed += tx.execute(sql, [now.0]).map_err(query("sweep"))?;
            }
            tx.commit().map_err(query("sweep"))?;
            Ok(u64::try_from(removed).unwrap_or(u64::MAX))
        })
        .await
    }

    async fn create_proxy_session(&self, session: ProxySession) -> Result<(), StoreError> {
        self.write("create_proxy_session", move |c| {
            insert_proxy_session(c, &session).map_err(query("create_proxy_session"))
        })
        .await
    }

    async fn find_proxy_session(
        &self,
        handle: TokenHash,
    ) -> Result<Option<ProxySession>, StoreError> {
        self.read("find_proxy_session", move |c| {
            c.prepare_cached(&format!(
                "SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions WHERE handle_hash = ?1"
            ))
            .and_then(|mut s| {
                s.query_row([handle.to_hex()], proxy_session_from_row)
                    .optional()
            })
            .map_err(query("find_proxy_session"))
        })
        .await
    }

    async fn touch_proxy_session(
        &self,
        handle: TokenHash,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        // MAX: a touch queued behind a later one must not bring the idle timeout closer. A
        // session gone meanwhile is nothing to touch.
        self.write("touch_proxy_session", move |c| {
            c.prepare_cached(
                "UPDATE proxy_sessions SET last_seen_at = MAX(last_seen_at, ?2)
                 WHERE handle_hash = ?1",
            )
            .and_then(|mut s| s.execute(params![handle.to_hex(), now.0]))
            .map(drop)
            .map_err(query("touch_proxy_session"))
        })
        .await
    }

    async fn claim_proxy_refresh(
        &self,
        handle: TokenHash,
        refreshed_at: UnixMillis,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError> {
        // One conditional UPDATE: the writer runs claims one after another, and the first
        // leaves a lease that every later one's WHERE refuses.
        self.write("claim_proxy_refresh", move |c| {
            c.prepare_cached(
                "UPDATE proxy_sessions SET refresh_lease_until = ?4
                 WHERE handle_hash = ?1 AND refreshed_at = ?2
                 AND (refresh_lease_until IS NULL OR refresh_lease_until <= ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    handle.to_hex(),
                    refreshed_at.0,
                    now.0,
                    lease_until.0
                ])
            })
            .map(|n| n == 1)
            .map_err(query("claim_proxy_refresh"))
        })
        .await
    }

    async fn finish_proxy_refresh(
        &self,
        handle: TokenHash,
        outcome: ProxyRefreshOutcome,
    ) -> Result<(), StoreError> {
        self.write("finish_proxy_refresh", move |c| {
            finish_proxy_refresh_row(c, &handle, &outcome).map_err(query("finish_proxy_refresh"))
        })
        .await
    }

    async fn delete_proxy_session(&self, handle: TokenHash) -> Result<bool, StoreError> {
        self.write("delete_proxy_session", move |c| {
            c.prepare_cached("DELETE FROM proxy_sessions WHERE handle_hash = ?1")
                .and_then(|mut s| s.execute([handle.to_hex()]))
                .map(|n| n == 1)
                .map_err(query("delete_proxy_session"))
        })
        .await
    }

    async fn export_snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read("export_snapshot", |c| {
            // One read transaction: in WAL mode every statement in it sees the same snapshot,
            // whatever the writer commits meanwhile.
            let tx = c
                .unchecked_transaction()
                .map_err(query("export_snapshot"))?;
            let snapshot = read_snapshot(&tx)?;
            tx.commit().map_err(query("export_snapshot"))?;
            Ok(snapshot)
        })
        .await
    }

    async fn import_snapshot(&self, snapshot: Snapshot) -> Result<CopyReport, StoreError> {
        self.write("import_snapshot", move |c| {
            let tx = immediate(c, "import_snapshot")?;
            // Under the write lock, so no other writer (of this process or another) can put a
            // row in between the check and the import.
            let tables = occupied_tables(&tx)?;
            if !tables.is_empty() {
                return Err(StoreError::NotEmpty { tables });
            }
            write_snapshot(&tx, &snapshot).map_err(query("import_snapshot"))?;
            tx.commit().map_err(query("import_snapshot"))?;
            Ok(snapshot.counts())
        })
        .await
    }
}
