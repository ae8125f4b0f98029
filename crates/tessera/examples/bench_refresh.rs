//! The driver of `bench/refresh` (issue 2, "Benchmark (not a test)"): how many refresh-token
//! rotations per second a release `tessera serve --dev` sustains on this machine, against how
//! many RS256 signatures per second the machine can make at all.
//!
//! It starts the release server in a temporary data directory with the default durability
//! (SQLite WAL, `synchronous=NORMAL`: a commit survives SIGKILL), mints N sessions (one password
//! login, then the SSO cookie: each further `/authorize` redirects straight to a code, exchanged
//! at `/token` with PKCE as client `kubernetes`), and for each concurrency C runs C refresh
//! chains on distinct sessions for D seconds after a short warm-up. Each chain owns one HTTP/1.1
//! keep-alive connection, like one kubectl credential plugin per kubeconfig. The load generator
//! runs on one thread so that it takes as little of the machine as possible from the server;
//! its CPU, the server's and everyone else's are reported beside the throughput.
//!
//! Before the first level and after each one, while the server idles, it measures the raw rate
//! of signing an id_token (one thread, then one thread per core). A virtual machine's speed
//! drifts, so each level is compared with the faster of the two measurements beside it: the
//! ratio errs low rather than high.
//!
//! Each refresh makes one RSA signature (the id_token; the access token is ES256 by default,
//! issue 14), so the ceiling is the all-cores RS256 signing rate; the table reports refreshes/s
//! divided by that ceiling (before issue 14, two RSA signatures: half of it).
//!
//! With `--peer node-oidc-provider` (issue 14) it runs tessera and node's certified
//! `oidc-provider` back to back instead; with `--seed` and `--sweep`, refreshes with a large
//! store and during a large sweep; with `--callgrind N`, the instructions of N refreshes and
//! where they go (see `--help`).
//!
//! With `--storage postgres` (issue 5) it runs SQLite first, then 1, 2, 3 (`--replicas`)
//! replicas sharing one fresh PostgreSQL database, each replica with its own dev data directory
//! and the chains spread round-robin over them (straight to each replica, no load balancer in
//! between). On one machine the replicas compete for the same cores, so the figure to watch is
//! CPU time per refresh (all replicas, and PostgreSQL's own processes, from /proc), not
//! throughput.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tessera_core::clock::{Clock, SystemClock, monotonic_now};
use tessera_core::jwt::{Algorithm, SigningKey};

#[path = "bench_support/mod.rs"]
mod bench_support;
#[path = "bench_refresh/callgrind.rs"]
mod callgrind;
#[path = "bench_support/code_flow.rs"]
mod code_flow;
#[path = "bench_support/seed.rs"]
mod seed;
#[path = "bench_support/stats.rs"]
mod stats;
use bench_support::{
    clock_ticks_per_second, cores, default_tessera, hidden_fields, machine_cpu_ms, tls_trusting,
    warn_if_busy,
};
use code_flow::{
    CLIENT_ID, REDIRECT_URI, auth_query, code_from, exchange_at, location, token_request,
};
use seed::{SeedSessions, SqlTarget, run_psql};
use stats::median;

const USAGE: &str = "\
usage: bench_refresh [--sessions N] [--duration SECS] [--warmup SECS] [--concurrency 1,8,64]
                     [--sign-secs SECS] [--synchronous normal|full] [--tessera PATH]
                     [--storage sqlite|postgres] [--peer node-oidc-provider [--rounds N]]

  --sessions N        sessions minted before the runs; at least the largest C, the rest are
                      spares for chains whose token fails (default 128)
  --duration SECS     measured seconds per concurrency level (default 15)
  --warmup SECS       unmeasured seconds before each level (default 2)
  --concurrency LIST  concurrent refresh chains, comma-separated (default 1,8,64)
  --sign-secs SECS    seconds of each raw signing measurement (default 2)
  --synchronous MODE  the server's storage.sqlite_synchronous (default normal)
  --signing-alg ALG   the server's tokens.signing_alg, the id_token's algorithm: RS256
                      (default, what kube-apiserver accepts unless told otherwise), ES256 or
                      EdDSA; the access token follows its default
  --storage KIND      sqlite (default) or postgres: SQLite, then PostgreSQL with each replica
                      count of --replicas, in one run (C defaults to 64 then)
  --replicas LIST     replica counts for --storage postgres (default 1,2,3)
  --postgres URL      server to create the benchmark database on
                      (default postgres://postgres@127.0.0.1:5432)
  --peer node-oidc-provider
                      also run node's certified oidc-provider (installed by bench/refresh into
                      target/oidc-provider, script bench/oidc-provider/server.mjs), tessera and
                      it in turn for each C, --rounds times, fresh servers and sessions each
                      time, with the floor (below) as a third side; prints all three, the
                      ratios, and the medians of the rounds
  --floor PATH        the floor server for --peer: only what an RS256 refresh over TLS must
                      do, no state (default: bench_floor beside this example)
  --peer-node PATH    the node that runs the peer (default: node on PATH; bench/refresh
                      installs node 22, the version oidc-provider 9 asks for, and passes it)
  --rounds N          rounds with --peer and with --seed (default 3)
  --seed LIST         live sessions (each with one spent and one live refresh token) inserted
                      straight into the store, one server per count, e.g.
                      1000,100000,1000000, then --rounds levels on each, the counts in
                      alternating order; SQLite, and PostgreSQL too with --storage postgres
                      (C defaults to 64)
  --sweep N           N ended sessions (each with two tokens) inserted, then the server
                      restarted (a new server sweeps at once) and C chains refresh while it
                      sweeps; p99 during the sweep; SQLite, and PostgreSQL too with --storage
                      postgres (C defaults to 64)
  --callgrind N       instead of a load: the server under valgrind's callgrind, N refreshes
                      (e.g. 300) counted over one kept-alive connection, then over a new
                      connection each (full TLS handshake, then resumed); prints instructions
                      per refresh and where they go (needs valgrind); one chain, or the
                      largest --concurrency
  --tessera PATH      the server binary (default: target/release/tessera beside this example)";

const PASSWORD: &str = "bench password, not a secret";
/// Concurrent code exchanges while minting sessions.
const MINTERS: usize = 8;

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    bench_support::print_machine();
    warn_if_busy()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(refreshes) = options.callgrind {
        let profiles = runtime.block_on(callgrind::run(&options, refreshes))?;
        callgrind::print_table(&options, &profiles);
        return Ok(());
    }
    if !options.seed.is_empty() || options.sweep.is_some() {
        let rows = runtime.block_on(scale::run(&options))?;
        scale::print_table(&options, &rows);
        return Ok(());
    }
    if let Some(peer_dir) = &options.peer_dir {
        let levels = runtime.block_on(peer::run(&options, peer_dir))?;
        peer::print_table(&options, &levels);
        return Ok(());
    }
    let levels = runtime.block_on(run(&options))?;
    print_table(&options, &levels);
    Ok(())
}

/// The command line.
struct Options {
    sessions: usize,
    duration: Duration,
    warmup: Duration,
    concurrency: Vec<usize>,
    sign_secs: Duration,
    synchronous: String,
    /// The server's `tokens.signing_alg` (the id_token's algorithm).
    signing_alg: String,
    tessera: PathBuf,
    /// SQLite alone, or SQLite then PostgreSQL with each count of `replicas`.
    postgres: bool,
    replicas: Vec<usize>,
    postgres_url: String,
    /// `--peer node-oidc-provider`: the directory holding node's oidc-provider and server.mjs.
    peer_dir: Option<PathBuf>,
    /// The node that runs the peer (bench/refresh installs node 22; default `node` on PATH).
    peer_node: PathBuf,
    /// The floor server (examples/bench_floor.rs), the third side of `--peer`.
    floor: PathBuf,
    /// Interleaved rounds of tessera and the peer.
    rounds: usize,
    /// `--seed`: live sessions put straight into the store before a level, one run per count.
    seed: Vec<u64>,
    /// `--sweep`: ended sessions put into the store, then swept while the chains refresh.
    sweep: Option<u64>,
    /// `--callgrind`: refreshes counted under callgrind instead of a load.
    callgrind: Option<usize>,
}

/// Which server a deployment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Tessera,
    /// node's oidc-provider.
    Peer,
    /// examples/bench_floor.rs: an RS256 refresh over TLS and nothing else.
    Floor,
}

/// One deployment under test.
#[derive(Clone, Copy)]
struct Setup {
    postgres: bool,
    replicas: usize,
    side: Side,
}

impl Setup {
    fn name(self) -> &'static str {
        match self.side {
            Side::Peer => "node oidc-provider",
            Side::Floor => "floor",
            Side::Tessera if self.postgres => "postgres",
            Side::Tessera => "sqlite",
        }
    }
}

impl Options {
    fn setups(&self) -> Vec<Setup> {
        let mut setups = vec![Setup {
            postgres: false,
            replicas: 1,
            side: Side::Tessera,
        }];
        if self.postgres {
            setups.extend(self.replicas.iter().map(|&replicas| Setup {
                postgres: true,
                replicas,
                side: Side::Tessera,
            }));
        }
        setups
    }
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            sessions: 128,
            duration: Duration::from_secs(15),
            warmup: Duration::from_secs(2),
            concurrency: vec![1, 8, 64],
            sign_secs: Duration::from_secs(2),
            synchronous: "normal".into(),
            signing_alg: "RS256".into(),
            tessera: default_tessera()?,
            postgres: false,
            replicas: vec![1, 2, 3],
            postgres_url: "postgres://postgres@127.0.0.1:5432".into(),
            peer_dir: None,
            peer_node: PathBuf::from("node"),
            floor: default_tessera()?.with_file_name("examples/bench_floor"),
            rounds: 3,
            seed: Vec::new(),
            sweep: None,
            callgrind: None,
        };
        let mut concurrency_given = false;
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = args
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
            match flag.as_str() {
                "--sessions" => options.sessions = value.parse().context("--sessions")?,
                "--duration" => options.duration = seconds(&value).context("--duration")?,
                "--warmup" => options.warmup = seconds(&value).context("--warmup")?,
                "--sign-secs" => options.sign_secs = seconds(&value).context("--sign-secs")?,
                "--synchronous" => options.synchronous = value,
                "--signing-alg" => options.signing_alg = value,
                "--tessera" => options.tessera = PathBuf::from(value),
                "--storage" => match value.as_str() {
                    "sqlite" => options.postgres = false,
                    "postgres" => options.postgres = true,
                    other => bail!("--storage {other}: expected sqlite or postgres"),
                },
                "--replicas" => {
                    options.replicas = value
                        .split(',')
                        .map(|c| c.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .context("--replicas wants a list like 1,2,3")?;
                }
                "--postgres" => options.postgres_url = value.trim_end_matches('/').to_owned(),
                "--peer" => {
                    if value != "node-oidc-provider" {
                        bail!("--peer {value}: the one peer is node-oidc-provider");
                    }
                    // bench/refresh installs it and passes --peer-dir after the user's options.
                    options.peer_dir.get_or_insert_with(PathBuf::new);
                }
                "--peer-dir" => options.peer_dir = Some(PathBuf::from(value)),
                "--peer-node" => options.peer_node = PathBuf::from(value),
                "--floor" => options.floor = PathBuf::from(value),
                "--rounds" => options.rounds = value.parse().context("--rounds")?,
                "--seed" => {
                    options.seed = value
                        .split(',')
                        .map(|c| c.trim().replace('_', "").parse::<u64>())
                        .collect::<Result<_, _>>()
                        .context("--seed wants a list like 1000,100000,1000000")?;
                }
                "--sweep" => {
                    options.sweep = Some(value.replace('_', "").parse().context("--sweep")?);
                }
                "--callgrind" => {
                    options.callgrind = Some(value.parse().context("--callgrind")?);
                }
                "--concurrency" => {
                    concurrency_given = true;
                    options.concurrency = value
                        .split(',')
                        .map(|c| c.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .context("--concurrency wants a list like 1,8,64")?;
                }
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        if (options.postgres || !options.seed.is_empty() || options.sweep.is_some())
            && !concurrency_given
        {
            options.concurrency = vec![64];
        }
        if options.callgrind.is_some() && !concurrency_given {
            options.concurrency = vec![1];
        }
        if options
            .peer_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            bail!("--peer needs --peer-dir DIR (bench/refresh installs the peer and passes it)");
        }
        if options.peer_dir.is_some() && options.postgres {
            bail!("--peer compares against SQLite; leave out --storage postgres");
        }
        if options.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if options.callgrind == Some(0) {
            bail!("--callgrind counts at least 1 refresh");
        }
        if options.replicas.contains(&0) {
            bail!("--replicas: every count must be at least 1");
        }
        let largest = options.concurrency.iter().copied().max().unwrap_or(0);
        if options.concurrency.contains(&0) || options.sessions < largest {
            bail!(
                "--sessions ({}) must cover the largest concurrency ({largest}), and no level may be 0",
                options.sessions
            );
        }
        Ok(options)
    }
}

fn seconds(text: &str) -> Result<Duration> {
    Ok(Duration::try_from_secs_f64(text.parse::<f64>()?)?)
}

/// The raw rate of signing one representative id_token.
#[derive(Clone, Copy, Default)]
struct SigningRates {
    one_thread: f64,
    all_cores: f64,
    threads: usize,
}

impl SigningRates {
    fn measure(each: Duration) -> Result<SigningRates> {
        let (key, _) = SigningKey::generate(Algorithm::RS256, "bench".into())?;
        let claims = id_token_claims();
        let one_thread = signing_rate(&key, &claims, each)?;
        let threads = cores();
        let all_cores = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| signing_rate(&key, &claims, each)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow!("a signing thread panicked"))?)
                .sum::<Result<f64>>()
        })?;
        Ok(SigningRates {
            one_thread,
            all_cores,
            threads,
        })
    }

    fn print(&self, when: &str) {
        println!(
            "RS256 id_token signatures/s (aws-lc-rs, cached key) {when}: {:.0} on one thread, {:.0} on {} threads",
            self.one_thread, self.all_cores, self.threads
        );
    }

    fn faster(&self, other: &SigningRates) -> SigningRates {
        SigningRates {
            one_thread: self.one_thread.max(other.one_thread),
            all_cores: self.all_cores.max(other.all_cores),
            threads: self.threads,
        }
    }
}

/// The claims tessera puts in an id_token for scope `openid profile email groups`.
fn id_token_claims() -> Value {
    let now = SystemClock.now().as_secs();
    json!({
        "preferred_username": "dev",
        "name": "dev",
        "email": "dev@example.com",
        "email_verified": true,
        "groups": ["dev", "system:authenticated"],
        "iss": "https://127.0.0.1:8443",
        "sub": "dev",
        "aud": CLIENT_ID,
        "azp": CLIENT_ID,
        "exp": now + 60,
        "iat": now,
        "auth_time": now,
        "sid": "0123456789abcdef0123456789abcdef",
    })
}

fn signing_rate(key: &SigningKey, claims: &Value, each: Duration) -> Result<f64> {
    let started = monotonic_now();
    let mut signed = 0u64;
    loop {
        key.sign("JWT", claims)?;
        signed += 1;
        let elapsed = started.elapsed();
        if elapsed >= each {
            return Ok(signed as f64 / elapsed.as_secs_f64());
        }
    }
}

/// What one concurrency level measured.
struct Level {
    setup: Setup,
    concurrency: usize,
    refreshes: u64,
    seconds: f64,
    errors: u64,
    latencies_micros: Vec<u32>,
    server_rss_kib: u64,
    /// CPU time of every replica.
    server_cpu_ms: f64,
    /// CPU time of PostgreSQL's processes (0 on SQLite).
    database_cpu_ms: f64,
    driver_cpu_ms: f64,
    /// CPU time of the whole machine (every process, every core) in the window.
    machine_cpu_ms: f64,
    /// Bytes PostgreSQL wrote to its write-ahead log in the window (the whole cluster's,
    /// `pg_stat_wal`; `None` on SQLite): a commit waits for its WAL to reach the disk.
    wal_bytes: Option<f64>,
    /// What the machine can sign, measured around this level.
    signing: SigningRates,
}

impl Level {
    fn per_second(&self) -> f64 {
        self.refreshes as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let Some(last) = self.latencies_micros.len().checked_sub(1) else {
            return f64::NAN;
        };
        let index = ((last as f64) * p).round() as usize;
        f64::from(self.latencies_micros[index.min(last)]) / 1000.0
    }
}

async fn run(options: &Options) -> Result<Vec<Level>> {
    let mut levels = Vec::new();
    // Around every level, while the servers idle (see the module documentation).
    let mut signing_before = SigningRates::measure(options.sign_secs)?;
    signing_before.print("before the first level");
    for setup in options.setups() {
        let deployment = Deployment::start(options, setup).await?;
        let first = deployment.first()?;
        for server in &deployment.servers {
            println!(
                "server: {} (pid {}), data in {}, storage {}",
                server.issuer,
                server.pid,
                server.dir.path().display(),
                setup.name()
            );
        }
        let started = monotonic_now();
        let tokens = mint_sessions(first, options.sessions).await?;
        println!(
            "minted {} sessions in {:.1} s (one password login, then the SSO cookie)",
            tokens.len(),
            started.elapsed().as_secs_f64()
        );
        let pool = Arc::new(Mutex::new(tokens));
        for &concurrency in &options.concurrency {
            let mut level = run_level(&deployment, &pool, concurrency, options).await?;
            let signing_after = SigningRates::measure(options.sign_secs)?;
            signing_after.print(&format!(
                "after {} ×{} C={concurrency}",
                setup.name(),
                setup.replicas
            ));
            level.signing = signing_before.faster(&signing_after);
            let drift = (signing_before.all_cores - signing_after.all_cores).abs()
                / level.signing.all_cores;
            if drift > 0.1 {
                eprintln!(
                    "warning: the signing rate moved by {:.0}% around this level; the machine is not steady",
                    drift * 100.0
                );
            }
            signing_before = signing_after;
            println!(
                "{} ×{} C={concurrency}: {:.0} refreshes/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                setup.name(),
                setup.replicas,
                level.per_second(),
                level.percentile_ms(0.50),
                level.percentile_ms(0.99),
                level.errors
            );
            for server in &deployment.servers {
                server.check_alive()?;
            }
            levels.push(level);
        }
        if let Some(database) = &deployment.database {
            database.print_sizes()?;
        }
    }
    Ok(levels)
}

/// The replicas of one [`Setup`], and the PostgreSQL database they share.
struct Deployment {
    servers: Vec<Server>,
    side: Side,
    // Dropped after the servers (field order), so no replica holds a connection any more.
    database: Option<Database>,
}

impl Deployment {
    async fn start(options: &Options, setup: Setup) -> Result<Deployment> {
        let database = if setup.postgres {
            Some(Database::create(&options.postgres_url)?)
        } else {
            None
        };
        let mut servers = Vec::new();
        // One at a time: the first one migrates the database and creates the keys.
        for _ in 0..setup.replicas {
            let url = database.as_ref().map(|d| d.url.as_str());
            servers.push(Server::start(options, url).await?);
        }
        Ok(Deployment {
            servers,
            database,
            side: Side::Tessera,
        })
    }

    fn first(&self) -> Result<&Server> {
        self.servers
            .first()
            .context("a deployment has at least one replica")
    }
}

/// A fresh PostgreSQL database, dropped (with its connections) on drop.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(server_url: &str) -> Result<Database> {
        // Several at once (one per seeded store), so each gets a number of its own.
        static CREATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let number = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("tessera_bench_{}_{number}", std::process::id());
        let admin = format!("{server_url}/postgres");
        let database = Database {
            url: format!("{server_url}/{name}"),
            admin,
            name,
        };
        database.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            database.name
        ))?;
        database.psql(&format!("CREATE DATABASE {}", database.name))?;
        Ok(database)
    }

    fn psql(&self, sql: &str) -> Result<()> {
        run_psql(&self.admin, sql).map(drop)
    }

    /// The bytes the cluster has written to its write-ahead log so far.
    fn wal_bytes(&self) -> Result<f64> {
        let answer = run_psql(&self.admin, "SELECT wal_bytes FROM pg_stat_wal")?;
        answer
            .trim()
            .parse()
            .with_context(|| format!("pg_stat_wal answered `{answer}`"))
    }

    /// Rows and bytes per row (heap and indexes) of the tables a refresh writes: what sizes the
    /// database of a real installation.
    fn print_sizes(&self) -> Result<()> {
        for table in ["sessions", "refresh_tokens"] {
            let sql = format!(
                "SELECT count(*), pg_table_size('{table}'), pg_indexes_size('{table}') FROM {table}"
            );
            let answer = run_psql(&self.url, &sql)?;
            let numbers: Vec<f64> = answer
                .trim()
                .split('|')
                .map(|n| n.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("psql answered `{answer}`"))?;
            let [rows, heap, indexes] = numbers[..] else {
                bail!("psql answered `{answer}`");
            };
            let rows_nonzero = rows.max(1.0);
            println!(
                "{table}: {rows:.0} rows, {:.0} bytes/row in the table, {:.0} bytes/row in its indexes",
                heap / rows_nonzero,
                indexes / rows_nonzero
            );
        }
        Ok(())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(e) = self.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A running release `tessera serve --dev`, killed by PID when dropped.
struct Server {
    child: Child,
    pid: u32,
    /// The data directory (tessera; the peer keeps everything in memory).
    dir: tempfile::TempDir,
    issuer: String,
    tls: rustls::ClientConfig,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(options: &Options, postgres: Option<&str>) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("tessera-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        Server::start_in(options, postgres, dir, &[]).await
    }

    /// Stops the server and starts it again on the same data directory and database: a new
    /// server sweeps at once, so this is how a sweep is made to run under load.
    async fn restart(mut self, options: &Options, postgres: Option<&str>) -> Result<Server> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().context("cannot create a temporary directory")?,
        );
        drop(self);
        Server::start_in(options, postgres, dir, &[]).await
    }

    /// Starts the server in `dir`; `launcher` (e.g. valgrind and its options) runs the binary.
    async fn start_in(
        options: &Options,
        postgres: Option<&str>,
        dir: tempfile::TempDir,
        launcher: &[String],
    ) -> Result<Server> {
        let binary = &options.tessera;
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --release --bin tessera` (bench/refresh does)",
                binary.display()
            );
        }
        let mut command = match launcher.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("TESSERA_DEV_PASSWORD", PASSWORD)
            .env("TESSERA_LOG", "warn")
            .env("TESSERA_STORAGE__SQLITE_SYNCHRONOUS", &options.synchronous)
            .env("TESSERA_TOKENS__SIGNING_ALG", &options.signing_alg)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = postgres {
            command.env("TESSERA_STORAGE__URL", url);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        // Under valgrind the first start (key generation) takes minutes.
        let patience = Duration::from_secs(if launcher.is_empty() { 60 } else { 600 });
        Server::started(child, dir, "the server", patience).await
    }

    /// A started `child` serving HTTPS from the dev data directory `dir`, once it has printed
    /// its issuer and answers `/healthz`.
    async fn started(
        mut child: Child,
        dir: tempfile::TempDir,
        who: &str,
        patience: Duration,
    ) -> Result<Server> {
        let pid = child.id();
        let issuer = issuer_line(&mut child, who, patience)?;
        let tls = tls_trusting(&dir.path().join("ca.pem"))?;
        let server = Server {
            child,
            pid,
            dir,
            issuer,
            tls,
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// `/token`, parsed once: the load generator should not spend its CPU parsing URLs.
    fn token_url(&self) -> Result<reqwest::Url> {
        Ok(reqwest::Url::parse(&self.url("/token"))?)
    }

    /// A client of this server (see [`bench_support::http_client`]).
    fn client(&self, cookies: bool) -> Result<reqwest::Client> {
        bench_support::http_client(&self.tls, cookies)
    }

    async fn wait_healthy(&self) -> Result<()> {
        bench_support::wait_healthy(&self.client(false)?, &self.url("/healthz")).await
    }

    /// node's oidc-provider from `peer_dir` (see bench/oidc-provider/server.mjs), on plain HTTP.
    async fn start_peer(node: &Path, peer_dir: &Path) -> Result<Server> {
        let script = peer_dir.join("server.mjs");
        if !script.exists() {
            bail!(
                "{} is missing: bench/refresh --peer node-oidc-provider installs it",
                script.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tessera-bench-peer-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let mut child = Command::new(node)
            .arg(&script)
            .current_dir(peer_dir)
            .env("NODE_ENV", "production")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} for --peer", node.display()))?;
        let pid = child.id();
        let issuer = issuer_line(&mut child, "the peer", Duration::from_secs(60))?;
        // No TLS on the peer's side: the client's TLS settings stay unused.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = Server {
            child,
            pid,
            dir,
            issuer,
            tls,
        };
        bench_support::wait_healthy(
            &server.client(false)?,
            &server.url("/.well-known/openid-configuration"),
        )
        .await?;
        Ok(server)
    }

    /// The floor server (examples/bench_floor.rs) on a dev data directory of its own.
    async fn start_floor(binary: &Path) -> Result<Server> {
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --release --example bench_floor` (bench/refresh does)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tessera-bench-floor-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let child = Command::new(binary)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Server::started(child, dir, "the floor", Duration::from_secs(60)).await
    }

    fn check_alive(&self) -> Result<()> {
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            Ok(())
        } else {
            bail!("the server (pid {}) has exited", self.pid)
        }
    }

    fn proc_path(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.pid))
    }
}

/// The issuer `child` prints on its `issuer: URL` line, waiting up to `patience` for it. A
/// thread drains the child's stdout for its whole life, so it never blocks on a full pipe.
fn issuer_line(child: &mut Child, who: &str, patience: Duration) -> Result<String> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{who}'s stdout is not piped"))?;
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    loop {
        let line = lines_rx
            .recv_timeout(patience)
            .with_context(|| format!("{who} printed no `issuer:` line within {patience:?}"))?;
        if let Some(issuer) = line.strip_prefix("issuer: ") {
            return Ok(issuer.to_owned());
        }
    }
}

/// Logs in once through the form, then turns the SSO cookie into `count` sessions; returns their
/// refresh tokens.
async fn mint_sessions(server: &Server, count: usize) -> Result<Vec<String>> {
    let browser = server.client(true)?;
    let first = password_login(server, &browser).await?;
    let mut tokens = vec![exchange(server, &browser, &first).await?];
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(count.saturating_sub(1)));
    let mut minters = tokio::task::JoinSet::new();
    for _ in 0..MINTERS {
        let (browser, remaining) = (browser.clone(), Arc::clone(&remaining));
        let (authorize, token) = (server.url("/authorize"), server.token_url()?);
        minters.spawn(async move {
            let mut minted = Vec::new();
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let response = browser.get(&authorize).query(&auth_query()).send().await?;
                let code = code_from(&location(&response)?)?;
                minted.push(exchange_at(&browser, &token, &code).await?);
            }
            Ok::<_, anyhow::Error>(minted)
        });
    }
    while let Some(minted) = minters.join_next().await {
        tokens.extend(minted??);
    }
    Ok(tokens)
}

/// `/authorize`, the login form, and the code from the final redirect.
async fn password_login(server: &Server, browser: &reqwest::Client) -> Result<String> {
    let response = browser
        .get(server.url("/authorize"))
        .query(&auth_query())
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "/authorize answered {} instead of the login form",
            response.status()
        );
    }
    let mut form = hidden_fields(&response.text().await?);
    form.push(("username".into(), "dev".into()));
    form.push(("password".into(), PASSWORD.into()));
    let response = browser
        .post(server.url("/login"))
        .form(&form)
        .send()
        .await?;
    code_from(&location(&response)?)
}

async fn exchange(server: &Server, client: &reqwest::Client, code: &str) -> Result<String> {
    exchange_at(client, &server.token_url()?, code).await
}

/// The measured window of one level; a refresh counts when it starts and ends inside it.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// What one chain did.
struct ChainReport {
    latencies_micros: Vec<u32>,
    errors: u64,
    /// The chain's last good refresh token, handed back to the pool for the next level.
    token: Option<String>,
}

async fn run_level(
    deployment: &Deployment,
    pool: &Arc<Mutex<Vec<String>>>,
    concurrency: usize,
    options: &Options,
) -> Result<Level> {
    let start = monotonic_now() + options.warmup;
    let window = Window {
        start,
        end: start + options.duration,
    };
    let mut chains = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let token =
            take(pool).ok_or_else(|| anyhow!("no live session left for C={concurrency}"))?;
        let server = &deployment.servers[i % deployment.servers.len()];
        let client = server.client(false)?;
        let (url, pool) = (server.token_url()?, Arc::clone(pool));
        chains.spawn(async move { chain(client, url, token, pool, window).await });
    }
    tokio::time::sleep_until(window.start.into()).await;
    let database = deployment.database.as_ref();
    let wal_before = database.map(Database::wal_bytes).transpose()?;
    let before = CpuSample::take(&deployment.servers)?;
    tokio::time::sleep_until(window.end.into()).await;
    let used = CpuSample::take(&deployment.servers)?.since(&before);
    let wal_bytes = match (database, wal_before) {
        (Some(database), Some(before)) => Some(database.wal_bytes()? - before),
        _ => None,
    };
    let mut server_rss_kib = 0;
    for server in &deployment.servers {
        server_rss_kib += rss_kib(&server.proc_path("status"))?;
    }
    let mut latencies_micros = Vec::new();
    let mut errors = 0;
    while let Some(report) = chains.join_next().await {
        let report = report?;
        latencies_micros.extend(report.latencies_micros);
        errors += report.errors;
        if let Some(token) = report.token {
            lock(pool).push(token);
        }
    }
    latencies_micros.sort_unstable();
    Ok(Level {
        setup: Setup {
            postgres: deployment.database.is_some(),
            replicas: deployment.servers.len(),
            side: deployment.side,
        },
        concurrency,
        refreshes: latencies_micros.len() as u64,
        seconds: options.duration.as_secs_f64(),
        errors,
        latencies_micros,
        server_rss_kib,
        server_cpu_ms: used.server_ms,
        database_cpu_ms: used.database_ms,
        driver_cpu_ms: used.driver_ms,
        machine_cpu_ms: used.machine_ms,
        wal_bytes,
        signing: SigningRates::default(),
    })
}

/// Refresh, take the new refresh token, repeat, until the window ends. A failed refresh may
/// have spent the token (the answer was lost), so the chain moves to a spare session.
async fn chain(
    client: reqwest::Client,
    url: reqwest::Url,
    mut token: String,
    pool: Arc<Mutex<Vec<String>>>,
    window: Window,
) -> ChainReport {
    let mut report = ChainReport {
        latencies_micros: Vec::new(),
        errors: 0,
        token: None,
    };
    loop {
        let started = monotonic_now();
        if started >= window.end {
            report.token = Some(token);
            return report;
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token.as_str()),
            ("client_id", CLIENT_ID),
        ];
        let answer = token_request(&client, &url, &form).await;
        let finished = monotonic_now();
        match answer {
            Ok(next) => {
                token = next;
                if started >= window.start && finished <= window.end {
                    let micros = finished.duration_since(started).as_micros();
                    report
                        .latencies_micros
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
            }
            Err(e) => {
                if report.errors == 0 {
                    eprintln!("refresh failed: {e:#}");
                }
                report.errors += 1;
                match take(&pool) {
                    Some(spare) => token = spare,
                    None => return report,
                }
            }
        }
    }
}

fn take(pool: &Mutex<Vec<String>>) -> Option<String> {
    lock(pool).pop()
}

fn lock(pool: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CPU time used so far by the server, by this load generator, and by the whole machine.
struct CpuSample {
    server_ms: f64,
    database_ms: f64,
    driver_ms: f64,
    machine_ms: f64,
}

impl CpuSample {
    fn take(servers: &[Server]) -> Result<CpuSample> {
        let mut server_ms = 0.0;
        for server in servers {
            server_ms += cpu_ms(&server.proc_path("stat"))?;
        }
        Ok(CpuSample {
            server_ms,
            database_ms: postgres_cpu_ms(),
            driver_ms: cpu_ms(Path::new("/proc/self/stat"))?,
            machine_ms: machine_cpu_ms()?,
        })
    }

    fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            server_ms: self.server_ms - earlier.server_ms,
            database_ms: self.database_ms - earlier.database_ms,
            driver_ms: self.driver_ms - earlier.driver_ms,
            machine_ms: self.machine_ms - earlier.machine_ms,
        }
    }
}

/// CPU time of every process named `postgres` (the server and its backends). A backend that
/// exits within a window takes its time with it, so this errs low; the benchmark's connections
/// are pooled and live through the window.
fn postgres_cpu_ms() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|e| cpu_ms(&e.path().join("stat")).ok())
        .sum()
}

/// User plus system CPU time of a process (all its threads), from `/proc/PID/stat`.
fn cpu_ms(stat: &Path) -> Result<f64> {
    let text =
        std::fs::read_to_string(stat).with_context(|| format!("cannot read {}", stat.display()))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{} is not a stat file", stat.display()))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let field = fields
            .get(i)
            .ok_or_else(|| anyhow!("short {}", stat.display()))?;
        Ok(field.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) * 1000.0 / clock_ticks_per_second())
}

fn rss_kib(status: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(status)
        .with_context(|| format!("cannot read {}", status.display()))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in {}", status.display()))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

fn print_table(options: &Options, levels: &[Level]) {
    let threads = cores();
    println!();
    println!(
        "{} s per level after {} s warm-up, {} sessions, sqlite synchronous={}, id_token {}, one HTTP/1.1 keep-alive connection per chain",
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        options.sessions,
        options.synchronous,
        options.signing_alg
    );
    println!();
    println!(
        "| storage | replicas | C | refreshes/s | p50 ms | p99 ms | errors | server RSS MiB | server CPU ms/refresh | database CPU ms/refresh | server CPU (cores) | load generator CPU (cores) | other CPU (cores) | RS256 signs/s, 1 thread | RS256 signs/s, {threads} threads | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for level in levels {
        let refreshes = level.refreshes.max(1) as f64;
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} |",
            level.setup.name(),
            level.setup.replicas,
            level.concurrency,
            level.per_second(),
            level.percentile_ms(0.50),
            level.percentile_ms(0.99),
            level.errors,
            level.server_rss_kib as f64 / 1024.0,
            level.server_cpu_ms / refreshes,
            level.database_cpu_ms / refreshes,
            level.server_cpu_ms / 1000.0 / level.seconds,
            level.driver_cpu_ms / 1000.0 / level.seconds,
            (level.machine_cpu_ms
                - level.server_cpu_ms
                - level.database_cpu_ms
                - level.driver_cpu_ms)
                .max(0.0)
                / 1000.0
                / level.seconds,
            level.signing.one_thread,
            level.signing.all_cores,
            level.per_second() / level.signing.all_cores,
        );
    }
    println!();
    println!(
        "ratio = refreshes/s ÷ RS256 signatures/s on all {threads} threads, each refresh making one RSA signature (the id_token; the access token is ES256); \
         signatures/s is the faster of the measurements just before and just after the level; \
         issue 2's target at C = 64, ≥ 0.6 of the two-signature ceiling, is ≥ 0.3 of this one"
    );
}

/// `--peer node-oidc-provider` (issue 14): tessera and node's certified oidc-provider back to
/// back in one run, each C in turn, `--rounds` times; the verdict is the median of the rounds.
mod peer {
    use super::*;

    /// Spare sessions per chain's worth of sessions: a chain whose refresh fails moves to one.
    const SPARES: usize = 4;

    /// One side's level in one round.
    pub(super) struct Measured {
        round: usize,
        level: Level,
    }

    pub(super) async fn run(options: &Options, peer_dir: &Path) -> Result<Vec<Measured>> {
        let version = Command::new(&options.peer_node)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", options.peer_node.display()))?;
        println!(
            "peer runtime: {} {}",
            options.peer_node.display(),
            String::from_utf8_lossy(&version.stdout).trim()
        );
        let mut measured = Vec::new();
        for round in 1..=options.rounds {
            for &concurrency in &options.concurrency {
                // Each round another side goes first, so a drifting machine favours none.
                let mut sides = [Side::Tessera, Side::Peer, Side::Floor];
                let first = (round - 1) % sides.len();
                sides.rotate_left(first);
                for side in sides {
                    let level = measure(options, peer_dir, side, concurrency).await?;
                    println!(
                        "round {round}, {} C={concurrency}: {:.0} refreshes/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, RSS {:.1} MiB",
                        level.setup.name(),
                        level.per_second(),
                        level.percentile_ms(0.50),
                        level.percentile_ms(0.99),
                        level.errors,
                        level.server_rss_kib as f64 / 1024.0
                    );
                    measured.push(Measured { round, level });
                }
            }
        }
        Ok(measured)
    }

    /// A fresh server of one side, C sessions and their spares minted on it, one level.
    async fn measure(
        options: &Options,
        peer_dir: &Path,
        side: Side,
        concurrency: usize,
    ) -> Result<Level> {
        let alone = |server: Server| Deployment {
            servers: vec![server],
            database: None,
            side,
        };
        let deployment = match side {
            Side::Tessera => {
                let setup = Setup {
                    postgres: false,
                    replicas: 1,
                    side,
                };
                Deployment::start(options, setup).await?
            }
            Side::Peer => alone(Server::start_peer(&options.peer_node, peer_dir).await?),
            Side::Floor => alone(Server::start_floor(&options.floor).await?),
        };
        let server = deployment.first()?;
        let count = concurrency + concurrency.div_ceil(SPARES).max(2);
        let tokens = match side {
            Side::Tessera => mint_sessions(server, count).await?,
            Side::Peer => mint_peer_sessions(server, count).await?,
            // The floor takes any token: each chain starts from a random one.
            Side::Floor => (0..count)
                .map(|_| hex::encode(rand::random::<[u8; 32]>()))
                .collect(),
        };
        let pool = Arc::new(Mutex::new(tokens));
        let level = run_level(&deployment, &pool, concurrency, options).await?;
        server.check_alive()?;
        Ok(level)
    }

    /// Sessions on the peer: `/auth` through the auto-approving interaction to the code, then
    /// the code exchange; returns the refresh tokens. Each from a new browser: oidc-provider
    /// keeps one grant per browser session and client, and a new grant (or a replay) revokes
    /// the old one with every refresh token of it, so chains of one browser would not be
    /// independent as tessera's sessions are.
    async fn mint_peer_sessions(server: &Server, count: usize) -> Result<Vec<String>> {
        let token_url = server.token_url()?;
        let mut tokens = Vec::with_capacity(count);
        for _ in 0..count {
            let browser = server.client(true)?;
            let mut url = reqwest::Url::parse(&server.url("/auth"))?;
            url.query_pairs_mut().extend_pairs(auth_query());
            let code = loop_to_code(&browser, url).await?;
            tokens.push(exchange_at(&browser, &token_url, &code).await?);
        }
        Ok(tokens)
    }

    /// Follows the provider's redirects until one goes to the client's redirect URI.
    async fn loop_to_code(browser: &reqwest::Client, mut url: reqwest::Url) -> Result<String> {
        for _ in 0..8 {
            let response = browser.get(url.clone()).send().await?;
            let next = location(&response)?;
            if next.starts_with(REDIRECT_URI) {
                return code_from(&next);
            }
            url = url.join(&next)?;
        }
        bail!("no code after 8 redirects from the peer (last {url})")
    }

    pub(super) fn print_table(options: &Options, measured: &[Measured]) {
        println!();
        println!(
            "{} s per level after {} s warm-up, {} round(s), sides alternating who goes first, fresh servers and sessions for each level; \
             tessera on SQLite synchronous={} over HTTPS with {} id_tokens, node oidc-provider in memory over plain HTTP, the floor over HTTPS; one HTTP/1.1 keep-alive connection per chain",
            options.duration.as_secs_f64(),
            options.warmup.as_secs_f64(),
            options.rounds,
            options.synchronous,
            options.signing_alg
        );
        println!();
        println!(
            "| round | C | server | refreshes/s | p50 ms | p99 ms | errors | server RSS MiB | server CPU ms/refresh |"
        );
        println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
        for m in measured {
            let l = &m.level;
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.3} |",
                m.round,
                l.concurrency,
                l.setup.name(),
                l.per_second(),
                l.percentile_ms(0.50),
                l.percentile_ms(0.99),
                l.errors,
                l.server_rss_kib as f64 / 1024.0,
                l.server_cpu_ms / l.refreshes.max(1) as f64,
            );
        }
        println!();
        println!("median of the rounds:");
        println!();
        println!(
            "| C | tessera refreshes/s | oidc-provider refreshes/s | floor refreshes/s | ratio | floor ÷ oidc-provider | tessera ÷ floor | tessera p99 ms | oidc-provider p99 ms | floor p99 ms | tessera RSS MiB | oidc-provider RSS MiB | tessera CPU ms/refresh | oidc-provider CPU ms/refresh | floor CPU ms/refresh |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &concurrency in &options.concurrency {
            let of = |side: Side| -> Vec<&Level> {
                measured
                    .iter()
                    .map(|m| &m.level)
                    .filter(|l| l.concurrency == concurrency && l.setup.side == side)
                    .collect()
            };
            let figure =
                |side: Side, f: fn(&Level) -> f64| median(of(side).iter().map(|l| f(l)).collect());
            // Each ratio is taken within a round, then the median of the rounds.
            let ratio = |over: Side, under: Side| {
                let rate = |round: usize, side: Side| {
                    measured
                        .iter()
                        .find(|m| {
                            m.round == round
                                && m.level.concurrency == concurrency
                                && m.level.setup.side == side
                        })
                        .map(|m| m.level.per_second())
                };
                median(
                    (1..=options.rounds)
                        .filter_map(|round| Some(rate(round, over)? / rate(round, under)?))
                        .collect(),
                )
            };
            let rate: fn(&Level) -> f64 = Level::per_second;
            let p99: fn(&Level) -> f64 = |l| l.percentile_ms(0.99);
            let rss: fn(&Level) -> f64 = |l| l.server_rss_kib as f64 / 1024.0;
            let cpu: fn(&Level) -> f64 = |l| l.server_cpu_ms / l.refreshes.max(1) as f64;
            let (ours, theirs, floor) = (Side::Tessera, Side::Peer, Side::Floor);
            println!(
                "| {concurrency} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} |",
                figure(ours, rate),
                figure(theirs, rate),
                figure(floor, rate),
                ratio(ours, theirs),
                ratio(floor, theirs),
                ratio(ours, floor),
                figure(ours, p99),
                figure(theirs, p99),
                figure(floor, p99),
                figure(ours, rss),
                figure(theirs, rss),
                figure(ours, cpu),
                figure(theirs, cpu),
                figure(floor, cpu),
            );
        }
        println!();
        println!(
            "ratio = tessera's refreshes/s ÷ oidc-provider's in the same round; target at C = 64: ≥ 2.0, tessera p99 ≤ 20 ms, RSS ≤ 60 MiB (issue 14). \
             floor = examples/bench_floor.rs: tessera's listener, TLS and answer (an RS256 id_token, an ES256 access token) and no state, \
             the most an RS256 provider can make of this machine with this load generator; floor ÷ oidc-provider is the highest ratio reachable here"
        );
    }
}

/// `--seed` and `--sweep` (issue 14): refreshes with a large store, and during a large sweep.
///
/// Every seeded store gets its server first; then the levels run `--rounds` times, the sizes in
/// alternating order, so a machine (or a disk) that drifts favours no size; the verdict is each
/// size's median against the smallest store's.
mod scale {
    use super::*;

    /// What one level on a seeded store measured.
    pub(super) struct Row {
        storage: &'static str,
        /// Seeded live sessions, or the ended sessions swept during the level.
        sessions: u64,
        sweep: bool,
        /// The round (0 for the sweep, measured once).
        round: usize,
        seed_seconds: f64,
        /// Ended sessions left when the window opened and when it closed (sweep runs).
        ended_before: u64,
        ended_after: u64,
        level: Level,
    }

    /// A server on a seeded store, with live sessions of its own to refresh.
    struct Seeded {
        storage: &'static str,
        count: u64,
        sweep: bool,
        deployment: Deployment,
        target: SqlTarget,
        pool: Arc<Mutex<Vec<String>>>,
        seed_seconds: f64,
        /// When the seeded sessions were made; the ended ones ended before it.
        now: i64,
    }

    pub(super) async fn run(options: &Options) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let mut setups = vec![false];
        if options.postgres {
            setups.push(true);
        }
        for postgres in setups {
            let mut stores = Vec::new();
            for &count in &options.seed {
                stores.push(Seeded::new(options, postgres, count, false).await?);
            }
            for round in 1..=options.rounds {
                let mut order: Vec<&Seeded> = stores.iter().collect();
                if round % 2 == 0 {
                    order.reverse();
                }
                for store in order {
                    rows.push(store.measure(options, round).await?);
                }
            }
            drop(stores);
            if let Some(count) = options.sweep {
                let store = Seeded::new(options, postgres, count, true).await?;
                rows.push(store.measure(options, 0).await?);
            }
        }
        Ok(rows)
    }

    fn ended_sessions(target: &SqlTarget, now: i64) -> Result<u64> {
        let answer = target.run(&format!(
            "SELECT count(*) FROM sessions WHERE absolute_end <= {now};"
        ))?;
        answer
            .trim()
            .parse()
            .with_context(|| format!("a count answered `{answer}`"))
    }

    impl Seeded {
        /// A fresh server, its chains' sessions minted, then `count` sessions inserted; for a
        /// sweep, ended ones, and the server restarted so that its first sweep runs at once.
        async fn new(options: &Options, postgres: bool, count: u64, sweep: bool) -> Result<Seeded> {
            let storage = if postgres { "postgres" } else { "sqlite" };
            let setup = Setup {
                postgres,
                replicas: 1,
                side: Side::Tessera,
            };
            let Deployment {
                mut servers,
                database,
                ..
            } = Deployment::start(options, setup).await?;
            let url = database.as_ref().map(|d| d.url.clone());
            let mut server = servers.pop().context("a deployment has one replica")?;
            let concurrency = options.concurrency.iter().copied().max().unwrap_or(64);
            let tokens = mint_sessions(&server, concurrency + concurrency.div_ceil(4)).await?;
            let target = match &url {
                Some(url) => SqlTarget::Postgres {
                    url: url.clone(),
                    search_path: None,
                },
                None => SqlTarget::Sqlite(server.dir.path().join("tessera.db")),
            };
            let now = SystemClock.now().0;
            let started = monotonic_now();
            seed(&target, count, now, sweep)?;
            let seed_seconds = started.elapsed().as_secs_f64();
            println!(
                "{storage}: {count} {} sessions seeded in {seed_seconds:.1} s",
                if sweep { "ended" } else { "live" }
            );
            if sweep {
                server = server.restart(options, url.as_deref()).await?;
            }
            Ok(Seeded {
                storage,
                count,
                sweep,
                deployment: Deployment {
                    servers: vec![server],
                    database,
                    side: Side::Tessera,
                },
                target,
                pool: Arc::new(Mutex::new(tokens)),
                seed_seconds,
                now,
            })
        }

        async fn measure(&self, options: &Options, round: usize) -> Result<Row> {
            let concurrency = options.concurrency.iter().copied().max().unwrap_or(64);
            // Counted only where a sweep runs: a count over a million live sessions right
            // before a level would only warm the database for it.
            let ended = || {
                if self.sweep {
                    ended_sessions(&self.target, self.now)
                } else {
                    Ok(0)
                }
            };
            let ended_before = ended()?;
            let level = run_level(&self.deployment, &self.pool, concurrency, options).await?;
            let ended_after = ended()?;
            println!(
                "{}{}, {} {} sessions, C={concurrency}: {:.0} refreshes/s, p50 {:.2} ms, p99 {:.2} ms, {} errors{}",
                if round > 0 {
                    format!("round {round}, ")
                } else {
                    String::new()
                },
                self.storage,
                self.count,
                if self.sweep { "ended" } else { "live" },
                level.per_second(),
                level.percentile_ms(0.50),
                level.percentile_ms(0.99),
                level.errors,
                if self.sweep {
                    format!(", ended sessions left {ended_before} → {ended_after}")
                } else {
                    String::new()
                }
            );
            for server in &self.deployment.servers {
                server.check_alive()?;
            }
            Ok(Row {
                storage: self.storage,
                sessions: self.count,
                sweep: self.sweep,
                round,
                seed_seconds: self.seed_seconds,
                ended_before,
                ended_after,
                level,
            })
        }
    }

    /// Inserts `count` sessions of user `dev` straight into the store, each with one spent
    /// refresh token and its live successor, as a session looks after its first refresh.
    /// Ended ones (`ended`) ended an hour before `now`; live ones end in 12 hours.
    fn seed(target: &SqlTarget, count: u64, now: i64, ended: bool) -> Result<()> {
        let hour = 3_600_000;
        let (started, end, token_ttl) = if ended {
            (now - 13 * hour, now - hour, 12 * hour)
        } else {
            (now, now + 12 * hour, hour / 4)
        };
        SeedSessions {
            count,
            // Keeps the ids and token hashes of ended and live seeds apart.
            tag: if ended { 'e' } else { 'f' },
            subject: "'dev'",
            client_id: "kubernetes",
            started,
            end,
            spent: 1,
            refresh_every: 0,
            token_ttl,
        }
        .insert(target)
    }

    pub(super) fn print_table(options: &Options, rows: &[Row]) {
        println!();
        println!(
            "{} s after {} s warm-up, one server per store, the sizes in alternating order each round, sqlite synchronous={}, id_token {}; \
             seeded sessions each hold one spent and one live refresh token",
            options.duration.as_secs_f64(),
            options.warmup.as_secs_f64(),
            options.synchronous,
            options.signing_alg
        );
        println!();
        println!(
            "| round | storage | sessions in the store | C | refreshes/s | p50 ms | p99 ms | errors | server RSS MiB | database CPU ms/refresh | WAL KiB/refresh | seeded in s | ended sessions at the window's start → end |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for row in rows {
            let l = &row.level;
            println!(
                "| {} | {} | {} {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {:.1} | {} |",
                if row.sweep {
                    "—".to_owned()
                } else {
                    row.round.to_string()
                },
                row.storage,
                row.sessions,
                if row.sweep {
                    "ended, swept during the run"
                } else {
                    "live"
                },
                l.concurrency,
                l.per_second(),
                l.percentile_ms(0.50),
                l.percentile_ms(0.99),
                l.errors,
                l.server_rss_kib as f64 / 1024.0,
                if l.setup.postgres {
                    format!("{:.3}", l.database_cpu_ms / l.refreshes.max(1) as f64)
                } else {
                    "—".into()
                },
                match l.wal_bytes {
                    Some(bytes) => format!("{:.2}", bytes / 1024.0 / l.refreshes.max(1) as f64),
                    None => "—".into(),
                },
                row.seed_seconds,
                if row.sweep {
                    format!("{} → {}", row.ended_before, row.ended_after)
                } else {
                    "—".into()
                },
            );
        }
        let seeded: Vec<&Row> = rows.iter().filter(|r| !r.sweep).collect();
        if seeded.is_empty() {
            return;
        }
        println!();
        println!("median of the rounds:");
        println!();
        println!(
            "| storage | sessions in the store | refreshes/s | ÷ the smallest store's | p99 ms |"
        );
        println!("|---|---:|---:|---:|---:|");
        for storage in ["sqlite", "postgres"] {
            let medians: Vec<(u64, f64, f64)> = options
                .seed
                .iter()
                .filter_map(|&count| {
                    let of: Vec<&&Row> = seeded
                        .iter()
                        .filter(|r| r.storage == storage && r.sessions == count)
                        .collect();
                    (!of.is_empty()).then(|| {
                        (
                            count,
                            median(of.iter().map(|r| r.level.per_second()).collect()),
                            median(of.iter().map(|r| r.level.percentile_ms(0.99)).collect()),
                        )
                    })
                })
                .collect();
            let Some(&(_, smallest, _)) = medians.first() else {
                continue;
            };
            for (count, rate, p99) in medians {
                println!(
                    "| {storage} | {count} | {rate:.0} | {:.2} | {p99:.2} |",
                    rate / smallest
                );
            }
        }
        println!();
        println!(
            "target (issue 14): refreshes/s within 10% of each other across sizes, on SQLite and on PostgreSQL"
        );
    }
}
