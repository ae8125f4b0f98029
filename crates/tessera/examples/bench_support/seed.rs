//! Sessions put straight into a store with bulk SQL (a million in seconds to minutes, where the
//! HTTP code flow would take hours), through the `sqlite3` shell or `psql`: what `bench_refresh
//! --seed/--sweep` and `bench_sessions` share. Included with `#[path]` like `bench_support`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Sessions of one seeding statement: bounded memory and progress on the way.
const SEED_CHUNK: u64 = 100_000;

/// Where seeding SQL goes.
pub(crate) enum SqlTarget {
    /// A SQLite database file (WAL: beside a server or a store that has it open).
    Sqlite(PathBuf),
    /// A PostgreSQL URL; `search_path`, when given, names the schema the tables live in.
    Postgres {
        url: String,
        search_path: Option<String>,
    },
}

impl SqlTarget {
    /// Runs `sql`; what it printed (unaligned, tuples only; SQLite's `PRAGMA busy_timeout`
    /// echoes its value).
    pub(crate) fn run(&self, sql: &str) -> Result<String> {
        match self {
            SqlTarget::Sqlite(db) => run_sqlite(db, sql),
            SqlTarget::Postgres { url, search_path } => match search_path {
                Some(schema) => run_psql(url, &format!("SET search_path TO \"{schema}\"; {sql}")),
                None => run_psql(url, sql),
            },
        }
    }

    fn postgres(&self) -> bool {
        matches!(self, SqlTarget::Postgres { .. })
    }
}

/// Sessions to insert, each with `spent` used refresh tokens chained to one live successor, as a
/// session looks after `spent` refreshes.
pub(crate) struct SeedSessions<'a> {
    pub count: u64,
    /// A hex digit of this seeding's own: ids and token hashes of two seedings of one database
    /// stay apart (SQLite stores hashes as hex text).
    pub tag: char,
    /// Whose sessions: an SQL expression of the row number `i`, the same in both dialects
    /// (`'dev'`, `'user' || (i % 100000)`).
    pub subject: &'a str,
    pub client_id: &'a str,
    /// When the sessions started (their first token's issue), and their absolute end.
    pub started: i64,
    pub end: i64,
    pub spent: u64,
    /// Between one refresh and the next; each token lives `token_ttl` from its issue.
    pub refresh_every: i64,
    pub token_ttl: i64,
}

impl SeedSessions<'_> {
    /// Inserts the sessions and their tokens, `SEED_CHUNK` sessions per transaction; on
    /// PostgreSQL then vacuums and analyzes them and checkpoints, as the rows of a store in use
    /// would long have been.
    pub(crate) fn insert(&self, target: &SqlTarget) -> Result<()> {
        if !self.tag.is_ascii_hexdigit() {
            bail!("a seeding tag is a hex digit, not {:?}", self.tag);
        }
        let mut from = 1;
        while from <= self.count {
            let to = (from + SEED_CHUNK - 1).min(self.count);
            let sql = if target.postgres() {
                self.postgres_chunk(from, to)
            } else {
                self.sqlite_chunk(from, to)
            };
            target.run(&sql)?;
            from = to + 1;
        }
        if let SqlTarget::Postgres { url, search_path } = target {
            // A bulk load leaves autovacuum work (statistics, the visibility map, hint bits)
            // that would otherwise run during the measurement, on the same two cores; a store
            // that has lived with these rows had it done long ago. VACUUM cannot run in the
            // implicit transaction of several statements, hence the qualified names.
            let table = |name: &str| match search_path {
                Some(schema) => format!("\"{schema}\".{name}"),
                None => name.to_owned(),
            };
            let vacuum = format!(
                "VACUUM (ANALYZE) {}, {}",
                table("sessions"),
                table("refresh_tokens")
            );
            run_psql(url, &vacuum)?;
            run_psql(url, "CHECKPOINT")?;
        }
        Ok(())
    }

    fn postgres_chunk(&self, from: u64, to: u64) -> String {
        let SeedSessions {
            tag,
            subject,
            client_id,
            started,
            end,
            spent,
            refresh_every,
            token_ttl,
            ..
        } = self;
        let id = format!("'seed{tag}' || lpad(i::text, 27, '0')");
        let hash = |k: &str| format!("sha256(('{tag}.' || i || '.' || {k})::bytea)");
        format!(
            "BEGIN;
             INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time, created_at,
                 absolute_end, created_ip, created_user_agent)
             SELECT {id}, {subject}, '{client_id}', NULL, 'openid profile email groups',
                    {started}, {started}, {end}, '127.0.0.1', 'kubectl/v1.31.0'
             FROM generate_series({from}, {to}) AS i;
             INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at,
                 used_at, used_ip, used_user_agent, successor_hash)
             SELECT {}, {id}, '{client_id}', {started} + k * {refresh_every},
                    {started} + k * {refresh_every} + {token_ttl},
                    CASE WHEN k < {spent} THEN {started} + (k + 1) * {refresh_every} END,
                    CASE WHEN k < {spent} THEN '127.0.0.1' END,
                    CASE WHEN k < {spent} THEN 'kubectl/v1.31.0' END,
                    CASE WHEN k < {spent} THEN {} END
             FROM generate_series({from}, {to}) AS i, generate_series(0, {spent}) AS k;
             COMMIT;",
            hash("k"),
            hash("(k + 1)"),
        )
    }

    fn sqlite_chunk(&self, from: u64, to: u64) -> String {
        let SeedSessions {
            tag,
            subject,
            client_id,
            started,
            end,
            spent,
            refresh_every,
            token_ttl,
            ..
        } = self;
        let id = format!("printf('seed{tag}%027d', i)");
        // 64 hex digits, as the store writes a SHA-256.
        let hash = |k: &str| format!("printf('{tag}%031d%032d', i, {k})");
        format!(
            "PRAGMA busy_timeout = 60000;
             BEGIN IMMEDIATE;
             WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to})
             INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time, created_at,
                 absolute_end, created_ip, created_user_agent)
             SELECT {id}, {subject}, '{client_id}', NULL, 'openid profile email groups',
                    {started}, {started}, {end}, '127.0.0.1', 'kubectl/v1.31.0' FROM n;
             WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}),
                 c(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM c WHERE k < {spent})
             INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at,
                 used_at, used_ip, used_user_agent, successor_hash)
             SELECT {}, {id}, '{client_id}', {started} + k * {refresh_every},
                    {started} + k * {refresh_every} + {token_ttl},
                    CASE WHEN k < {spent} THEN {started} + (k + 1) * {refresh_every} END,
                    CASE WHEN k < {spent} THEN '127.0.0.1' END,
                    CASE WHEN k < {spent} THEN 'kubectl/v1.31.0' END,
                    CASE WHEN k < {spent} THEN {} END
             FROM n, c;
             COMMIT;",
            hash("k"),
            hash("k + 1"),
        )
    }
}

/// Runs SQL with the sqlite3 shell on `db`.
pub(crate) fn run_sqlite(db: &Path, sql: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run sqlite3 (the SQLite shell) to seed the benchmark database")?;
    child
        .stdin
        .take()
        .context("sqlite3's stdin is not piped")?
        .write_all(sql.as_bytes())?;
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !stderr.trim().is_empty() {
        bail!("sqlite3 failed: {}", stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs SQL with psql; its unaligned, tuples-only output.
pub(crate) fn run_psql(url: &str, sql: &str) -> Result<String> {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql])
        .output()
        .context("cannot run psql (PostgreSQL's client) to manage the benchmark database")?;
    if !output.status.success() {
        bail!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
