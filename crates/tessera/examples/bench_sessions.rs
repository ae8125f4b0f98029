//! Listing one person's sessions among a million (issue 13, "Listing must stay cheap at scale"):
//! `bench/sessions` builds this in release and runs it.
//!
//! For each storage (SQLite in a file under `target/bench-sessions/`, PostgreSQL in a schema of
//! its own that is dropped afterwards) and each size N, it inserts N live sessions spread over
//! N / 5 people with bulk SQL (each with a spent refresh token and its live successor), plus the
//! measured person's 10 sessions, each after a day's worth of refreshes (24 spent tokens and a
//! live one, so that finding the last use reads a real chain). Then, through the store API:
//! listing that person's sessions, listing the first page of 100 of the client everyone uses,
//! and revoking the person's sessions (their sessions made live again between rounds). It
//! prints each query's plan once (at the largest size), a table, and per storage the ratio of
//! the largest size to the smallest: near 1 means the cost does not grow with the store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tessera_core::clock::{Clock, SystemClock, UnixMillis, monotonic_now};
use tessera_core::id::{ClientId, Subject};
use tessera_store::{
    PostgresOptions, PostgresStore, SessionFilter, SqliteStore, Store, Synchronous,
    list_sessions_sql,
};

// Each driver uses part of what the drivers share.
#[allow(dead_code)]
#[path = "bench_support/mod.rs"]
mod bench_support;
#[path = "bench_support/seed.rs"]
mod seed;
use seed::{SeedSessions, SqlTarget, run_psql};

const USAGE: &str = "\
usage: bench_sessions [--sizes 1000,1000000] [--storage sqlite,postgres] [--listings N]
                      [--revocations N] [--postgres URL]

  --sizes LIST        sessions in the store besides the measured person's (default 1000,1000000)
  --storage LIST      sqlite, postgres or both (default sqlite,postgres)
  --listings N        timed listings of each kind per size (default 200)
  --revocations N     timed revocations of the person's sessions per size (default 20)
  --postgres URL      database to create the benchmark's schema in
                      (default postgres://postgres@127.0.0.1:5432/test)";

/// The measured person, their sessions, and the refreshes each has seen.
const PERSON: &str = "alice";
const PERSON_SESSIONS: u64 = 10;
const PERSON_REFRESHES: u64 = 24;
/// The client every seeded session belongs to: its listing pages through all of them.
const CLIENT: &str = "kubernetes";
const CLIENT_PAGE: u32 = 100;
/// Seeded sessions per person (the crowd).
const SESSIONS_PER_PERSON: u64 = 5;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    bench_support::print_machine();
    bench_support::warn_if_busy()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let rows = runtime.block_on(run(&options))?;
    print_table(&options, &rows);
    Ok(())
}

struct Options {
    sizes: Vec<u64>,
    storages: Vec<Storage>,
    listings: usize,
    revocations: usize,
    postgres_url: String,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            sizes: vec![1_000, 1_000_000],
            storages: vec![Storage::Sqlite, Storage::Postgres],
            listings: 200,
            revocations: 20,
            postgres_url: "postgres://postgres@127.0.0.1:5432/test".to_owned(),
        };
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} wants a value\n{USAGE}"))?;
            match flag.as_str() {
                "--sizes" => {
                    options.sizes = value
                        .split(',')
                        .map(|n| n.trim().parse())
                        .collect::<Result<_, _>>()
                        .context("--sizes wants a list like 1000,1000000")?;
                }
                "--storage" => {
                    options.storages = value
                        .split(',')
                        .map(|s| match s.trim() {
                            "sqlite" => Ok(Storage::Sqlite),
                            "postgres" => Ok(Storage::Postgres),
                            other => bail!("--storage takes sqlite and postgres, not {other:?}"),
                        })
                        .collect::<Result<_>>()?;
                }
                "--listings" => options.listings = value.parse().context("--listings wants N")?,
                "--revocations" => {
                    options.revocations = value.parse().context("--revocations wants N")?;
                }
                "--postgres" => options.postgres_url = value,
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        ensure!(
            options.listings > 0 && options.revocations > 0,
            "--listings and --revocations want at least 1"
        );
        ensure!(!options.sizes.is_empty(), "--sizes wants at least one size");
        Ok(options)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Storage {
    Sqlite,
    Postgres,
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Storage::Sqlite => "sqlite",
            Storage::Postgres => "postgres",
        }
    }
}

/// What one storage at one size measured.
struct Row {
    storage: Storage,
    sessions: u64,
    seed_seconds: f64,
    person: Timings,
    client_page: Timings,
    revoke: Timings,
}

/// Durations of one operation, sorted.
struct Timings(Vec<Duration>);

impl Timings {
    fn percentile_ms(&self, p: f64) -> f64 {
        let rank = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1].as_secs_f64() * 1000.0
    }
}

async fn run(options: &Options) -> Result<Vec<Row>> {
    let largest = options.sizes.iter().copied().max().unwrap_or_default();
    let mut rows = Vec::new();
    for &storage in &options.storages {
        for &size in &options.sizes {
            let row = measure(options, storage, size, size == largest).await?;
            println!(
                "{} with {size} sessions: person p50 {:.3} ms, client page p50 {:.3} ms, revoke p50 {:.3} ms",
                storage.name(),
                row.person.percentile_ms(0.5),
                row.client_page.percentile_ms(0.5),
                row.revoke.percentile_ms(0.5),
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A store of the benchmark's own, and the way its tables are reached with plain SQL.
struct Fixture {
    store: Box<dyn Store>,
    target: SqlTarget,
    /// PostgreSQL: the schema to drop (with `postgres_url`) when done.
    schema: Option<(String, String)>,
    /// SQLite: the database file, removed when done (hundreds of MB at a million).
    file: Option<PathBuf>,
}

impl Fixture {
    async fn open(options: &Options, storage: Storage, size: u64) -> Result<Fixture> {
        match storage {
            Storage::Sqlite => {
                let dir = bench_support::default_tessera()?
                    .parent()
                    .and_then(|release| release.parent())
                    .context("this example does not live in target/release/examples")?
                    .join("bench-sessions");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let file = dir.join(format!("sessions-{size}.db"));
                for suffix in ["", "-wal", "-shm"] {
                    let path = PathBuf::from(format!("{}{suffix}", file.display()));
                    if path.exists() {
                        std::fs::remove_file(&path)
                            .with_context(|| format!("cannot remove {}", path.display()))?;
                    }
                }
                let store = SqliteStore::open(&file, Synchronous::Normal)?;
                Ok(Fixture {
                    store: Box::new(store),
                    target: SqlTarget::Sqlite(file.clone()),
                    schema: None,
                    file: Some(file),
                })
            }
            Storage::Postgres => {
                let schema = format!("bench_sessions_{}_{size}", std::process::id());
                let store = PostgresStore::connect(PostgresOptions {
                    schema: Some(schema.clone()),
                    max_connections: 2,
                    connect_timeout: Duration::from_secs(10),
                    ..PostgresOptions::new(options.postgres_url.clone())
                })
                .await?;
                Ok(Fixture {
                    store: Box::new(store),
                    target: SqlTarget::Postgres {
                        url: options.postgres_url.clone(),
                        search_path: Some(schema.clone()),
                    },
                    schema: Some((options.postgres_url.clone(), schema)),
                    file: None,
                })
            }
        }
    }

    fn postgres(&self) -> bool {
        self.schema.is_some()
    }

    /// Size of the sessions and refresh tokens with their indexes, in MiB.
    fn size_mib(&self) -> Result<f64> {
        let sql = if self.postgres() {
            "SELECT pg_total_relation_size('sessions') + pg_total_relation_size('refresh_tokens');"
        } else {
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size();"
        };
        let answer = self.target.run(sql)?;
        let bytes: f64 = answer
            .trim()
            .parse()
            .with_context(|| format!("a size answered `{answer}`"))?;
        Ok(bytes / 1024.0 / 1024.0)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some((url, schema)) = &self.schema
            && let Err(e) = run_psql(url, &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        {
            eprintln!("warning: {e:#}");
        }
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }
}

async fn measure(options: &Options, storage: Storage, size: u64, explain: bool) -> Result<Row> {
    let fixture = Fixture::open(options, storage, size).await?;
    let now = SystemClock.now().0;
    let started = monotonic_now();
    let people = size.div_ceil(SESSIONS_PER_PERSON).max(1);
    SeedSessions {
        count: size,
        tag: 'a',
        subject: &format!("'user' || (i % {people})"),
        client_id: CLIENT,
        started: now - 10 * MINUTE,
        end: now + 12 * HOUR,
        spent: 1,
        refresh_every: 10 * MINUTE,
        token_ttl: HOUR,
    }
    .insert(&fixture.target)?;
    let person_started = now - PERSON_REFRESHES as i64 * 10 * MINUTE;
    SeedSessions {
        count: PERSON_SESSIONS,
        tag: 'b',
        subject: &format!("'{PERSON}'"),
        client_id: CLIENT,
        started: person_started,
        end: now + 8 * HOUR,
        spent: PERSON_REFRESHES,
        refresh_every: 10 * MINUTE,
        token_ttl: HOUR,
    }
    .insert(&fixture.target)?;
    let seed_seconds = started.elapsed().as_secs_f64();
    println!(
        "{}: {size} sessions and {PERSON}'s {PERSON_SESSIONS} inserted in {seed_seconds:.1} s; tables and indexes {:.0} MiB",
        storage.name(),
        fixture.size_mib()?
    );

    // Listings ask as of the seeding's `now`: however long the seeding took, every seeded
    // token is as live as it was then.
    let now = UnixMillis(now);
    let person = SessionFilter {
        subject: Some(Subject::new(PERSON)),
        client_id: None,
    };
    let client = SessionFilter {
        subject: None,
        client_id: Some(ClientId::new(CLIENT)),
    };
    if explain {
        print_plans(&fixture, now)?;
    }

    let last_refresh = person_started + PERSON_REFRESHES as i64 * 10 * MINUTE;
    let (store, person, client) = (&fixture.store, &person, &client);
    let person_listings = time(options.listings, || async move {
        let page = store.list_sessions(person.clone(), now, None, 200).await?;
        ensure!(
            page.sessions.len() == PERSON_SESSIONS as usize,
            "listed {} of {PERSON}'s {PERSON_SESSIONS} sessions",
            page.sessions.len()
        );
        ensure!(
            page.sessions
                .iter()
                .all(|s| s.last_use.at.0 == last_refresh),
            "a listed session's last use is not its last refresh"
        );
        Ok(())
    })
    .await?;
    let client_pages = time(options.listings, || async move {
        let page = store
            .list_sessions(client.clone(), now, None, CLIENT_PAGE)
            .await?;
        ensure!(
            page.sessions.len() == CLIENT_PAGE.min(size as u32) as usize,
            "the client's first page holds {} sessions",
            page.sessions.len()
        );
        Ok(())
    })
    .await?;
    let mut revocations = Vec::with_capacity(options.revocations);
    for _ in 0..options.revocations {
        // The person's sessions live again, unmeasured, as if they had just signed in anew.
        fixture.target.run(&format!(
            "{}UPDATE sessions SET revoked_at = NULL, revoked_reason = NULL WHERE subject = '{PERSON}';",
            if fixture.postgres() {
                ""
            } else {
                "PRAGMA busy_timeout = 60000;\n"
            }
        ))?;
        let started = monotonic_now();
        let ended = fixture
            .store
            .revoke_sessions(person.clone(), now, "admin")
            .await?;
        revocations.push(started.elapsed());
        ensure!(
            ended.sessions.len() == PERSON_SESSIONS as usize,
            "revoked {} of {PERSON}'s {PERSON_SESSIONS} sessions",
            ended.sessions.len()
        );
    }
    revocations.sort();
    Ok(Row {
        storage,
        sessions: size,
        seed_seconds,
        person: person_listings,
        client_page: client_pages,
        revoke: Timings(revocations),
    })
}

/// Runs `op` `times` times after a tenth as many unmeasured runs (caches, prepared statements).
async fn time<F, Fut>(times: usize, op: F) -> Result<Timings>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..times.div_ceil(10) {
        op().await?;
    }
    let mut took = Vec::with_capacity(times);
    for _ in 0..times {
        let started = monotonic_now();
        op().await?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok(Timings(took))
}

/// The plans of both listings, as the database chooses them for the store's own statements
/// (PostgreSQL: executed, with the rows and buffers each step touched).
fn print_plans(fixture: &Fixture, now: UnixMillis) -> Result<()> {
    let postgres = fixture.postgres();
    let cases = [
        (
            format!("{PERSON}'s sessions"),
            SessionFilter {
                subject: Some(Subject::new(PERSON)),
                client_id: None,
            },
            format!("'{PERSON}'"),
            201,
        ),
        (
            format!("the first page of {CLIENT}'s sessions"),
            SessionFilter {
                subject: None,
                client_id: Some(ClientId::new(CLIENT)),
            },
            format!("'{CLIENT}'"),
            CLIENT_PAGE + 1,
        ),
    ];
    for (what, filter, value, limit) in cases {
        let sql = list_sessions_sql(postgres, &filter, None);
        let plan = if postgres {
            fixture.target.run(&format!(
                "PREPARE listing AS {sql};
                 EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE listing({}, {value}, {limit});",
                now.0
            ))?
        } else {
            fixture.target.run(&format!("EXPLAIN QUERY PLAN {sql};"))?
        };
        println!(
            "\n{} plan of listing {what}:\n{}",
            if postgres { "PostgreSQL" } else { "SQLite" },
            plan.trim_end()
        );
    }
    println!();
    Ok(())
}

fn print_table(options: &Options, rows: &[Row]) {
    println!();
    println!(
        "p50 / p99 in ms over {} listings and {} revocations per row (after a tenth as many \
         unmeasured), through the store API on one connection at a time; the person has \
         {PERSON_SESSIONS} sessions of {} tokens each, the crowd {SESSIONS_PER_PERSON} sessions \
         a person of 2 tokens each",
        options.listings,
        options.revocations,
        PERSON_REFRESHES + 1,
    );
    println!();
    println!(
        "| storage | sessions in the store | inserted in s | {PERSON}'s {PERSON_SESSIONS} sessions | first page of {CLIENT_PAGE} of one client | revoking {PERSON}'s sessions |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let cell =
            |t: &Timings| format!("{:.3} / {:.3}", t.percentile_ms(0.5), t.percentile_ms(0.99));
        println!(
            "| {} | {} | {:.1} | {} | {} | {} |",
            row.storage.name(),
            row.sessions,
            row.seed_seconds,
            cell(&row.person),
            cell(&row.client_page),
            cell(&row.revoke),
        );
    }
    println!();
    println!("Ratio of the largest size to the smallest, p50 (1 = flat with scale):");
    println!();
    println!("| storage | sizes | {PERSON}'s sessions | first page of one client | revoking |");
    println!("|---|---|---:|---:|---:|");
    for &storage in &options.storages {
        let of = |size: Option<u64>| {
            rows.iter()
                .find(|r| r.storage == storage && Some(r.sessions) == size)
        };
        let small = of(options.sizes.iter().copied().min());
        let large = of(options.sizes.iter().copied().max());
        if let (Some(small), Some(large)) = (small, large)
            && small.sessions != large.sessions
        {
            let ratio =
                |f: fn(&Row) -> &Timings| f(large).percentile_ms(0.5) / f(small).percentile_ms(0.5);
            println!(
                "| {} | {} vs {} | {:.2} | {:.2} | {:.2} |",
                storage.name(),
                large.sessions,
                small.sessions,
                ratio(|r| &r.person),
                ratio(|r| &r.client_page),
                ratio(|r| &r.revoke),
            );
        }
    }
}
