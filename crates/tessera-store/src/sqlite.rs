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

use std::os::unix::fs::OpenOptionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::redeem::{FirstUse, TokenRecord, Writes, Written};
use tessera_core::token::TokenHash;

use crate::model::*;
use crate::redeem::{self, Found};
use crate::{Store, StoreError, TABLES};

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_proxy_sessions.sql"),
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

const SESSION_COLUMNS: &str = "s.id, s.subject, s.client_id, s.sso_id, s.scope, s.auth_time, s.created_at, s.absolute_end, s.revoked_at";

/// The columns [`proxy_session_from_row`] reads, in its order.
const PROXY_SESSION_COLUMNS: &str = "handle_hash, created_at, last_seen_at, absolute_end, refreshed_at, refresh_lease_until, sealed";

/// Every row, each table in primary-key order (SQLite compares text byte by byte, and a hash's
/// lowercase hex sorts as its bytes do).
fn read_snapshot(c: &Connection) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        secrets: rows(
            c,
            "secret",
            "SELECT name, value FROM secrets ORDER BY name",
            |r| {
                Ok(SecretRow {
                    name: r.get(0)?,
                    value: r.get(1)?,
                })
            },
        )?,
        signing_keys: rows(
            c,
            "signing key",
            "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY kid",
            |r| {
                Ok(StoredKey {
                    kid: r.get(0)?,
                    alg: r.get(1)?,
                    pkcs8: r.get(2)?,
                    created_at: UnixMillis(r.get(3)?),
                })
            },
        )?,
        sso_sessions: rows(
            c,
            "SSO session",
            "SELECT handle_hash, id, subject, auth_time, expires_at, revoked_at FROM sso_sessions
             ORDER BY handle_hash",
            |r| {
                Ok(SsoSession {
                    handle: hash_at(r, 0)?,
                    id: SsoId::new(r.get::<_, String>(1)?),
                    subject: Subject::new(r.get::<_, String>(2)?),
                    auth_time: UnixMillis(r.get(3)?),
                    expires_at: UnixMillis(r.get(4)?),
                    revoked_at: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
                })
            },
        )?,
        auth_codes: rows(
            c,
            "authorization code",
            "SELECT client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
             subject, auth_time, expires_at, hash, used_at FROM auth_codes ORDER BY hash",
            |r| {
                Ok(AuthCodeRow {
                    code: code_from_row(hash_at(r, 10)?, r)?,
                    used_at: r.get::<_, Option<i64>>(11)?.map(UnixMillis),
                })
            },
        )?,
        sessions: rows(
            c,
            "session",
            &format!("SELECT {SESSION_COLUMNS}, s.revoked_reason FROM sessions s ORDER BY s.id"),
            |r| {
                Ok(SessionRow {
                    session: session_from_row(r, 0)?,
                    revoked_reason: r.get(9)?,
                })
            },
        )?,
        refresh_tokens: rows(
            c,
            "refresh token",
            "SELECT hash, session_id, client_id, issued_at, expires_at, used_at, used_ip,
             successor_hash FROM refresh_tokens ORDER BY hash",
            |r| {
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
                })
            },
        )?,
        proxy_sessions: rows(
            c,
            "proxy session",
            &format!("SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions ORDER BY handle_hash"),
            proxy_session_from_row,
        )?,
    })
}

/// All rows `sql` selects, each made by `row`; a value that does not decode makes the store
/// [`StoreError::Corrupt`] with `what`.
fn rows<T>(
    c: &Connection,
    what: &'static str,
    sql: &str,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let fail = |e: rusqlite::Error| match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt { what },
        other => query("export_snapshot")(other),
    };
    let mut stmt = c.prepare(sql).map_err(fail)?;
    let rows = stmt.query_map([], row).map_err(fail)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(fail)
}

/// Column `at`, a SHA-256 in hex, as a [`TokenHash`].
fn hash_at(r: &Row<'_>, at: usize) -> rusqlite::Result<TokenHash> {
    let text = r.get::<_, String>(at)?;
    TokenHash::from_hex(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            at,
            rusqlite::types::Type::Text,
            "not a SHA-256 in hex".into(),
        )
    })
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

/// Inserts every row of `snapshot`, each table in [`TABLES`] order.
fn write_snapshot(tx: &Transaction<'_>, snapshot: &Snapshot) -> rusqlite::Result<()> {
    let mut insert = tx.prepare("INSERT INTO secrets (name, value) VALUES (?1, ?2)")?;
    for secret in &snapshot.secrets {
        insert.execute(params![secret.name, secret.value])?;
    }
    for key in &snapshot.signing_keys {
        insert_signing_key(tx, key)?;
    }
    for sso in &snapshot.sso_sessions {
        insert_sso(tx, sso)?;
    }
    for AuthCodeRow { code, used_at } in &snapshot.auth_codes {
        insert_code_row(tx, code, *used_at)?;
    }
    for SessionRow {
        session,
        revoked_reason,
    } in &snapshot.sessions
    {
        insert_session_row(tx, session, revoked_reason.as_deref())?;
    }
    let mut insert = tx.prepare(
        "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at, used_at,
         used_ip, successor_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for token in &snapshot.refresh_tokens {
        insert.execute(params![
            token.hash.to_hex(),
            token.session_id.as_str(),
            token.client_id.as_str(),
            token.issued_at.0,
            token.expires_at.0,
            token.used_at.map(|t| t.0),
            token.used_ip,
            token.successor_hash.as_ref().map(TokenHash::to_hex),
        ])?;
    }
    for session in &snapshot.proxy_sessions {
        insert_proxy_session(tx, session)?;
    }
    Ok(())
}

/// The redeem transaction: claim, decide, apply (the skeleton is [`crate::redeem`]; this is only
/// its SQLite dialect). A rejected claim rolls back, so a refused token is left exactly as it
/// was. The claim records the successor's hash at once: a claim ends in a rotation or in a
/// rejection that rolls back, so it is right either way and saves a second UPDATE of the same
/// row on every rotation.
fn redeem_in_transaction(
    c: &mut Connection,
    request: &RedeemRequest,
) -> Result<Redemption, StoreError> {
    let op = "redeem_refresh_token";
    let tx = immediate(c, op)?;
    let claimed = claim_refresh_token(&tx, request).map_err(query(op))?;
    let found = find_presented(&tx, request).map_err(query(op))?;
    let effects = redeem::settle(request, claimed, found.as_ref());
    let written = write_effects(tx, &effects.writes, request)?;
    Ok(redeem::answer(effects, written, found))
}

/// Marks the presented token used, naming its successor, if it is unused; whether it was.
fn claim_refresh_token(tx: &Transaction<'_>, request: &RedeemRequest) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "UPDATE refresh_tokens SET used_at = ?2, used_ip = ?3, successor_hash = ?4
         WHERE hash = ?1 AND used_at IS NULL",
    )?
    .execute(params![
        request.hash.to_hex(),
        request.now.0,
        request.ip,
        request.successor.to_hex()
    ])
    .map(|n| n == 1)
}

/// The presented token as the claim left it, with its session and the successor's expiry.
fn find_presented(
    tx: &Transaction<'_>,
    request: &RedeemRequest,
) -> rusqlite::Result<Option<Found>> {
    tx.prepare_cached(&format!(
        "SELECT t.client_id, t.expires_at, t.used_at, t.used_ip, n.expires_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
         LEFT JOIN refresh_tokens n ON n.hash = ?2
         WHERE t.hash = ?1"
    ))?
    .query_row(
        [request.hash.to_hex(), request.successor.to_hex()],
        found_from_row,
    )
    .optional()
}

fn found_from_row(r: &Row<'_>) -> rusqlite::Result<Found> {
    let session = session_from_row(r, 5)?;
    let record = TokenRecord {
        client_id: ClientId::new(r.get::<_, String>(0)?),
        session_id: session.id.clone(),
        expires_at: UnixMillis(r.get(1)?),
    };
    let first_use = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<String>>(3)?) {
        (Some(at), ip) => Some(FirstUse {
            at: UnixMillis(at),
            ip: ip.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    Ok(Found {
        record,
        session,
        first_use,
        successor_expires_at: r.get::<_, Option<i64>>(4)?.map(UnixMillis),
    })
}

/// Executes the writes core computed and commits them; [`Writes::Nothing`] commits nothing, so
/// dropping the transaction rolls the claim back.
fn write_effects(
    tx: Transaction<'_>,
    writes: &Writes,
    request: &RedeemRequest,
) -> Result<Written, StoreError> {
    let op = "redeem_refresh_token";
    let written = match writes {
        // The claim has already marked the token used; committing keeps it.
        Writes::Rotate { successor, .. } => {
            let token = NewRefreshToken {
                hash: request.successor,
                issued_at: successor.issued_at,
                expires_at: successor.expires_at,
            };
            insert_refresh_token(&tx, &token, &successor.session_id, &successor.client_id)?;
            Written::Done
        }
        Writes::RevokeSession {
            session_id,
            at,
            reason,
        } => {
            if revoke_session_row(&tx, session_id, *at, reason).map_err(query(op))? {
                Written::Done
            } else {
                Written::SessionAlreadyRevoked
            }
        }
        Writes::Nothing => return Ok(Written::Done),
    };
    tx.commit().map_err(query(op))?;
    Ok(written)
}

fn revoke_session_row(
    c: &Connection,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3 WHERE id = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![id.as_str(), now.0, reason])
    .map(|n| n == 1)
}

// One writer per table, shared by the single-row methods and `write_snapshot`, so a copied row
// is written exactly as the live path writes it.

fn insert_signing_key(c: &Connection, key: &StoredKey) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key.kid, key.alg, key.pkcs8, key.created_at.0])
    .map(drop)
}

fn insert_sso(c: &Connection, sso: &SsoSession) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO sso_sessions (handle_hash, id, subject, auth_time, expires_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        sso.handle.to_hex(),
        sso.id.as_str(),
        sso.subject.as_str(),
        sso.auth_time.0,
        sso.expires_at.0,
        sso.revoked_at.map(|t| t.0),
    ])
    .map(drop)
}

fn insert_code_row(
    c: &Connection,
    code: &AuthCode,
    used_at: Option<UnixMillis>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, nonce, scope,
         session_id, sso_id, subject, auth_time, expires_at, used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        code.hash.to_hex(),
        code.client_id.as_str(),
        code.redirect_uri,
        code.code_challenge,
        code.nonce,
        code.scope,
        code.session_id.as_str(),
        code.sso_id.as_ref().map(SsoId::as_str),
        code.subject.as_str(),
        code.auth_time.0,
        code.expires_at.0,
        used_at.map(|t| t.0),
    ])
    .map(drop)
}

fn insert_session_row(
    c: &Connection,
    session: &Session,
    revoked_reason: Option<&str>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time, created_at,
         absolute_end, revoked_at, revoked_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        session.id.as_str(),
        session.subject.as_str(),
        session.client_id.as_str(),
        session.sso_id.as_ref().map(SsoId::as_str),
        session.scope,
        session.auth_time.0,
        session.created_at.0,
        session.absolute_end.0,
        session.revoked_at.map(|t| t.0),
        revoked_reason,
    ])
    .map(drop)
}

fn insert_proxy_session(c: &Connection, session: &ProxySession) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO proxy_sessions ({PROXY_SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        session.handle.to_hex(),
        session.created_at.0,
        session.last_seen_at.0,
        session.absolute_end.0,
        session.refreshed_at.0,
        session.refresh_lease_until.map(|t| t.0),
        session.sealed,
    ])
    .map(drop)
}

/// Stores the new tokens or only releases the lease. A session deleted while its refresh ran
/// (sign-out, sweep) stays deleted: there is nothing to update, and that is no error.
fn finish_proxy_refresh_row(
    c: &Connection,
    handle: &TokenHash,
    outcome: &ProxyRefreshOutcome,
) -> rusqlite::Result<()> {
    match outcome {
        // The new tokens count as activity: the refresh was made for a request.
        ProxyRefreshOutcome::Refreshed {
            sealed,
            refreshed_at,
        } => c
            .prepare_cached(
                "UPDATE proxy_sessions SET sealed = ?2, refreshed_at = ?3,
                 refresh_lease_until = NULL, last_seen_at = MAX(last_seen_at, ?3)
                 WHERE handle_hash = ?1",
            )?
            .execute(params![handle.to_hex(), sealed, refreshed_at.0]),
        ProxyRefreshOutcome::Abandoned => c
            .prepare_cached(
                "UPDATE proxy_sessions SET refresh_lease_until = NULL WHERE handle_hash = ?1",
            )?
            .execute([handle.to_hex()]),
    }
    .map(drop)
}

fn insert_refresh_token(
    tx: &Transaction<'_>,
    token: &NewRefreshToken,
    session: &SessionId,
    client: &ClientId,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            token.hash.to_hex(),
            session.as_str(),
            client.as_str(),
            token.issued_at.0,
            token.expires_at.0,
        ])
    })
    .map(drop)
    .map_err(query("insert_refresh_token"))
}

fn session_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::new(r.get::<_, String>(at)?),
        subject: Subject::new(r.get::<_, String>(at + 1)?),
        client_id: ClientId::new(r.get::<_, String>(at + 2)?),
        sso_id: r.get::<_, Option<String>>(at + 3)?.map(SsoId::new),
        scope: r.get(at + 4)?,
        auth_time: UnixMillis(r.get(at + 5)?),
        created_at: UnixMillis(r.get(at + 6)?),
        absolute_end: UnixMillis(r.get(at + 7)?),
        revoked_at: r.get::<_, Option<i64>>(at + 8)?.map(UnixMillis),
    })
}

/// A row of [`PROXY_SESSION_COLUMNS`].
fn proxy_session_from_row(r: &Row<'_>) -> rusqlite::Result<ProxySession> {
    Ok(ProxySession {
        handle: hash_at(r, 0)?,
        created_at: UnixMillis(r.get(1)?),
        last_seen_at: UnixMillis(r.get(2)?),
        absolute_end: UnixMillis(r.get(3)?),
        refreshed_at: UnixMillis(r.get(4)?),
        refresh_lease_until: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
        sealed: r.get(6)?,
    })
}

fn code_from_row(hash: TokenHash, r: &Row<'_>) -> rusqlite::Result<AuthCode> {
    Ok(AuthCode {
        hash,
        client_id: ClientId::new(r.get::<_, String>(0)?),
        redirect_uri: r.get(1)?,
        code_challenge: r.get(2)?,
        nonce: r.get(3)?,
        scope: r.get(4)?,
        session_id: SessionId::new(r.get::<_, String>(5)?),
        sso_id: r.get::<_, Option<String>>(6)?.map(SsoId::new),
        subject: Subject::new(r.get::<_, String>(7)?),
        auth_time: UnixMillis(r.get(8)?),
        expires_at: UnixMillis(r.get(9)?),
    })
}

/// Creates an empty database file with mode 0600 unless one exists. SQLite would create it
/// with 0644 under the usual umask, and it gives the `-wal` and `-shm` files it makes later the
/// main file's mode, so creating the main file first keeps all three private. (An empty file is
/// an empty database to SQLite.)
fn create_private(path: &Path) -> std::io::Result<()> {
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

fn connect(path: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
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

fn migrate(c: &mut Connection, path: &Path) -> Result<(), StoreError> {
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

fn immediate<'c>(
    c: &'c mut Connection,
    operation: &'static str,
) -> Result<Transaction<'c>, StoreError> {
    c.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(query(operation))
}

fn query(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query {
        operation,
        source: Box::new(source),
    }
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection cannot leave a transaction open (it rolls back on
    // drop), so the connection is still good: take it back from the poison.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T, F>(operation: &'static str, f: F) -> Result<T, StoreError>
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
