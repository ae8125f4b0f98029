//! The replica harness: a PostgreSQL database of the test's own, several `tessera serve`
//! replicas sharing it and one data directory, Debian's nginx in front of them (round-robin,
//! TLS on both sides), and a TCP forwarder that can cut a replica off from PostgreSQL.
//!
//! Everything is torn down by `Drop`, also when a test fails: processes are ended by their PID
//! (nginx with SIGTERM first, so its workers go too), the database with `DROP … WITH (FORCE)`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tessera_core::clock::monotonic_now;
use tokio::sync::{mpsc, watch};

use crate::support::{self, AuthParams, PASSWORD, client};

/// PostgreSQL on this machine (trust authentication for `postgres`).
pub const PG_PORT: u16 = 5432;

/// The outcomes `tessera_refresh_token_redemptions_total` counts.
pub const OUTCOMES: [&str; 4] = ["rotated", "grace_reuse", "replay", "rejected"];

// ---------------------------------------------------------------------------------------------
// Child processes

/// The last lines a child printed, kept to explain a failure.
type Output = Arc<Mutex<Vec<String>>>;

/// Reads `reader` line by line on a thread into `output` (the last 300 lines), forwarding each
/// line to `lines` as well when given.
fn capture(
    reader: impl Read + Send + 'static,
    output: Output,
    lines: Option<mpsc::UnboundedSender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if let Some(lines) = &lines {
                let _ = lines.send(line.clone());
            }
            let mut kept = output
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.len() == 300 {
                kept.remove(0);
            }
            kept.push(line);
        }
    });
}

/// A child process, ended by its PID when dropped; what it printed is shown if a test failed.
pub struct Process {
    name: String,
    child: Mutex<Child>,
    output: Output,
    /// nginx: SIGTERM and a wait first, so the master takes its workers along.
    graceful: bool,
}

impl Process {
    /// Spawns `command` (no stdin) keeping the last lines it prints on stdout and stderr;
    /// dropping it sends SIGKILL.
    pub fn spawn(name: String, command: &mut Command) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let output = Output::default();
        capture(child.stdout.take().unwrap(), Arc::clone(&output), None);
        capture(child.stderr.take().unwrap(), Arc::clone(&output), None);
        Process {
            name,
            child: Mutex::new(child),
            output,
            graceful: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.lock().id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether it has exited (and how).
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.lock().try_wait().ok().flatten()
    }

    /// SIGKILL, then reap.
    pub fn kill(&self) {
        let mut child = self.lock();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last lines it printed.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }

    /// SIGTERM, a wait of up to 5 s, then SIGKILL for the process and the children it had.
    fn terminate(&self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.pid();
        let children = children_of(pid);
        signal("-TERM", pid);
        let (done, exited) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = self.lock().wait();
                let _ = done.send(());
            });
            if exited.recv_timeout(Duration::from_secs(5)).is_err() {
                for child in children {
                    signal("-KILL", child);
                }
                signal("-KILL", pid);
            }
        });
    }
}

/// Sends a signal to one process by its PID.
pub fn signal(which: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([which, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.graceful {
            self.terminate();
        } else {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!("---- {} printed:\n{}\n----", self.name, self.output());
        }
    }
}

/// The PIDs whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A database of one test, dropped (with its connections) when this is dropped.
pub struct Database {
    pub name: String,
}

impl Database {
    /// Creates a database with a name no other test uses.
    pub fn create() -> Database {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tessera_replicas_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        psql("test", &format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
        Database { name }
    }

    /// The storage URL for tessera, through `port` (5432, or a forwarder's).
    pub fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }

    /// Runs SQL in this database and returns what psql printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.name, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts psql with `sql` in this database, in its own process.
    pub fn spawn_psql(&self, sql: &str) -> tokio::process::Child {
        tokio::process::Command::new("psql")
            .args(psql_args(&self.name, sql))
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("psql starts")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql("test", &sql) {
            eprintln!("cannot drop the test database {}: {e}", self.name);
        }
    }
}

fn psql_args(database: &str, sql: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        "5432",
        "-U",
        "postgres",
        "-d",
        database,
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn psql(database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(psql_args(database, sql))
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql does not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "psql `{sql}` on {database}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// tessera replicas

/// One `tessera serve --dev` process.
pub struct Replica {
    process: Process,
    pub name: String,
    pub addr: SocketAddr,
    /// `https://ADDR`: the replica itself, bypassing nginx.
    pub url: String,
    /// The issuer it announced.
    pub issuer: String,
}

impl Replica {
    /// Starts a replica on `data_dir` with `env` and waits until `/healthz` answers.
    async fn start(
        name: &str,
        data_dir: &Path,
        env: &[(String, String)],
        http: impl Fn() -> reqwest::Client,
    ) -> Replica {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("TESSERA_DEV_PASSWORD", PASSWORD)
            .env("TESSERA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the tessera binary starts");
        let output = Output::default();
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        capture(
            child.stdout.take().unwrap(),
            Arc::clone(&output),
            Some(lines_tx),
        );
        capture(child.stderr.take().unwrap(), Arc::clone(&output), None);
        let process = Process {
            name: name.to_owned(),
            child: Mutex::new(child),
            output,
            graceful: false,
        };
        let (mut addr, mut issuer) = (None, None);
        while addr.is_none() || issuer.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
                .await
                .unwrap_or_else(|_| panic!("{name} printed no address within 60 s"))
                .unwrap_or_else(|| {
                    panic!(
                        "{name} exited before listening ({:?}):\n{}",
                        process.exited(),
                        process.output()
                    )
                });
            if let Some(a) = line.strip_prefix("listening on https://") {
                addr = Some(a.parse::<SocketAddr>().unwrap());
            }
            if let Some(i) = line.strip_prefix("issuer: ") {
                issuer = Some(i.to_owned());
            }
        }
        let addr = addr.unwrap();
        let replica = Replica {
            process,
            name: name.to_owned(),
            addr,
            url: format!("https://{addr}"),
            issuer: issuer.unwrap(),
        };
        let http = http();
        let healthy = async {
            loop {
                if let Ok(r) = http.get(replica.at("/healthz")).send().await
                    && r.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), healthy)
            .await
            .unwrap_or_else(|_| panic!("{name} did not become healthy"));
        replica
    }

    /// An absolute URL on this replica.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGKILL: no shutdown, no goodbye to PostgreSQL.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Whether it is still running.
    pub fn running(&self) -> bool {
        self.process.exited().is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// The paths `scripts/test-tools ARGS` prints, one a line (it installs what is missing first).
pub fn test_tools(args: &[&str]) -> Vec<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-tools");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/test-tools");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(|l| PathBuf::from(l.trim())).collect()
}

/// The nginx binary `scripts/test-tools` provides (Debian's, unpacked under target/ if needed).
pub fn nginx_binary() -> &'static Path {
    static NGINX: OnceLock<PathBuf> = OnceLock::new();
    NGINX.get_or_init(|| {
        test_tools(&[])
            .pop()
            .expect("test-tools prints nginx's path")
    })
}

/// nginx balancing round-robin over the replicas, TLS in front (the dev certificate) and
/// behind (verifying the replicas against the dev CA).
pub struct Nginx {
    process: Process,
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on 127.0.0.1:`port`; `Err` with what it printed when it cannot (a port
    /// taken in the meantime, say).
    async fn start(port: u16, upstreams: &[SocketAddr], tls_dir: &Path) -> Result<Nginx, String> {
        let tls = tls_dir.display();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("        server {a};\n"))
            .collect();
        let http = format!(
            "    upstream tessera {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tls}/server.pem;
        ssl_certificate_key {tls}/server-key.pem;
        location / {{
            proxy_pass https://tessera;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {tls}/ca.pem;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_set_header Host $http_host;
            # No upstream keepalive: every request opens a connection to the next replica.
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
"
        );
        Nginx::start_http(port, &http, &format!("https://127.0.0.1:{port}")).await
    }

    /// Starts nginx with `http` inside its `http {}` block (which must listen on
    /// 127.0.0.1:`port`); `url` is how tests reach it.
    pub async fn start_http(port: u16, http: &str, url: &str) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = format!(
            "daemon off;
master_process on;
worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 2048; }}
http {{
    log_format upstream '$upstream_addr|$upstream_status|$status|$request_time';
    access_log {d}/access.log upstream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}}}
"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let mut process = Process::spawn(
            format!("nginx on port {port}"),
            Command::new(nginx_binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .args(["-e", "stderr"]),
        );
        process.graceful = true;
        let nginx = Nginx {
            process,
            port,
            url: url.to_owned(),
            dir,
        };
        let started = monotonic_now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = nginx.process.exited() {
                return Err(format!(
                    "nginx exited ({status}):\n{}",
                    nginx.process.output()
                ));
            }
            // Listening, and it is ours (a port taken by someone else would not go away).
            let pid = nginx.process.pid();
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && std::fs::read_to_string(nginx.dir.path().join("nginx.pid"))
                    .is_ok_and(|p| p.trim() == pid.to_string())
            {
                return Ok(nginx);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "nginx did not listen within 20 s:\n{}",
            nginx.process.output()
        ))
    }

    /// The access log: one line per request, `upstream_addr|upstream_status|status|time` (nginx
    /// lists every upstream it tried, comma-separated).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// Replicas on one database and data directory, optionally behind nginx. Fields drop in order:
/// nginx, the replicas, the data directory, and the database last.
pub struct Cluster {
    pub nginx: Option<Nginx>,
    pub replicas: Vec<Replica>,
    /// The shared issuer: nginx's address, or the single replica's.
    pub issuer: String,
    pub ca: PathBuf,
    /// A client without cookies, trusting the dev CA.
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub db: Database,
}

/// The environment every replica gets: the database, and a pool small enough that several
/// clusters fit in PostgreSQL's 100 connections.
fn storage_env(db: &Database, port: u16) -> Vec<(String, String)> {
    vec![
        ("TESSERA_STORAGE__URL".into(), db.url(port)),
        ("TESSERA_STORAGE__POOL__MAX_CONNECTIONS".into(), "8".into()),
    ]
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Replicas `numbers` ("replica N") on `data_dir`, all started at the same moment.
async fn start_together(
    numbers: std::ops::RangeInclusive<usize>,
    data_dir: &Path,
    env: &[(String, String)],
    ca: &Path,
) -> Vec<Replica> {
    futures_util::future::join_all(numbers.map(|i| async move {
        let name = format!("replica {i}");
        Replica::start(&name, data_dir, env, || client(ca, false)).await
    }))
    .await
}

impl Cluster {
    /// `n` replicas on a fresh database behind nginx, all with issuer `https://127.0.0.1:PORT`
    /// (nginx's), started as an operator would: the first alone (it prepares the data directory,
    /// migrates, creates the keys), then the others together.
    pub async fn behind_nginx(n: usize, env: &[(&str, &str)]) -> Cluster {
        let db = Database::create();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        for attempt in 1..=3 {
            let port = free_port();
            let issuer = format!("https://127.0.0.1:{port}");
            let mut all = storage_env(&db, PG_PORT);
            all.push(("TESSERA_ISSUER".into(), issuer.clone()));
            all.extend(owned(env));
            let mut replicas =
                vec![Replica::start("replica 1", dir.path(), &all, || client(&ca, false)).await];
            replicas.extend(start_together(2..=n, dir.path(), &all, &ca).await);
            let upstreams: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
            match Nginx::start(port, &upstreams, dir.path()).await {
                Ok(nginx) => {
                    let cluster = Cluster {
                        issuer,
                        http: client(&ca, false),
                        ca,
                        nginx: Some(nginx),
                        replicas,
                        dir,
                        db,
                    };
                    cluster.wait_ready(&cluster.issuer).await;
                    return cluster;
                }
                Err(e) if attempt < 3 && e.contains("Address already in use") => {
                    eprintln!("port {port} was taken before nginx bound it; retrying");
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `n` replicas started at the same moment on a fresh, empty database, as `replicas: n`
    /// does on a first install (no nginx). The data directory's dev files are prepared first by
    /// a start on a throwaway SQLite database, so nothing of the PostgreSQL database exists
    /// before the replicas race.
    pub async fn started_together(n: usize, env: &[(&str, &str)]) -> Cluster {
        let db = Database::create();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let throwaway = format!("sqlite://{}/prepare.db", dir.path().display());
        let prepare = vec![("TESSERA_STORAGE__URL".to_owned(), throwaway)];
        Replica::start("preparation", dir.path(), &prepare, || client(&ca, false))
            .await
            .kill();
        let mut all = storage_env(&db, PG_PORT);
        all.extend(owned(env));
        let replicas = start_together(1..=n, dir.path(), &all, &ca).await;
        Cluster {
            issuer: replicas[0].issuer.clone(),
            http: client(&ca, false),
            ca,
            nginx: None,
            replicas,
            dir,
            db,
        }
    }

    /// One replica (no nginx) reaching PostgreSQL through `pg_port` (a forwarder's, say).
    pub async fn single(pg_port: u16, env: &[(&str, &str)]) -> Cluster {
        let db = Database::create();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let mut all = storage_env(&db, pg_port);
        all.extend(owned(env));
        let replica = Replica::start("replica", dir.path(), &all, || client(&ca, false)).await;
        Cluster {
            issuer: replica.issuer.clone(),
            http: client(&ca, false),
            ca,
            nginx: None,
            replicas: vec![replica],
            dir,
            db,
        }
    }

    /// The nginx in front.
    pub fn nginx(&self) -> &Nginx {
        self.nginx
            .as_ref()
            .expect("this cluster has nginx in front")
    }

    /// Waits until `base/readyz` answers 200 (≤ 20 s).
    pub async fn wait_ready(&self, base: &str) -> Duration {
        let started = monotonic_now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{base}/readyz did not answer 200 within 20 s");
    }

    /// GETs `base/path` and reads the answer.
    pub async fn get(&self, base: &str, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(format!("{base}{path}")).send().await.unwrap();
        let status = r.status();
        (status, body(&r.text().await.unwrap()))
    }

    /// POSTs a form to `base/path` and reads the answer.
    pub async fn post(&self, base: &str, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        try_post(&self.http, base, path, form).await.unwrap()
    }

    /// POSTs a form to `base/path` as the confidential client `demo` (`client_secret_basic`).
    pub async fn post_as_demo(
        &self,
        base: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let secret = std::fs::read_to_string(self.dir.path().join("demo-client-secret")).unwrap();
        let response = self
            .http
            .post(format!("{base}{path}"))
            .header(
                reqwest::header::AUTHORIZATION,
                support::basic("demo", secret.trim()),
            )
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, body(&response.text().await.unwrap()))
    }

    /// Logs in as `dev` with client `kubernetes` through `base` (nginx, so each step may land on
    /// another replica, or one replica) in a fresh browser, and exchanges the code.
    pub async fn login(&self, base: &str) -> Value {
        let browser = client(&self.ca, true);
        let auth = AuthParams::kubernetes();
        let response = browser
            .get(format!("{base}/authorize"))
            .query(&auth.pairs())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "the login form is shown");
        let mut form = support::hidden_fields(&response.text().await.unwrap());
        form.push(("username".into(), "dev".into()));
        form.push(("password".into(), PASSWORD.into()));
        let response = browser
            .post(format!("{base}/login"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_redirection(),
            "login answered {}",
            response.status()
        );
        let code = support::code_from(&support::location(&response));
        let (status, tokens) = self
            .post(
                base,
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", auth.redirect_uri),
                    ("client_id", auth.client_id),
                    ("code_verifier", auth.verifier),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "code exchange: {tokens}");
        tokens
    }

    /// Refreshes as client `kubernetes` at `base`.
    pub async fn refresh(&self, base: &str, token: &str) -> (StatusCode, Value) {
        try_refresh(&self.http, base, token).await.unwrap()
    }

    /// The refresh outcomes one replica has counted, by outcome.
    pub async fn redemptions(&self, replica: &Replica) -> BTreeMap<&'static str, u64> {
        let (status, text) = self.get(&replica.url, "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{}: /metrics {text}", replica.name);
        let text = text.as_str().unwrap_or_default();
        OUTCOMES
            .iter()
            .map(|o| {
                let name = format!("tessera_refresh_token_redemptions_total{{outcome=\"{o}\"}}");
                // Whole numbers well below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = support::sample(text, &name).unwrap_or(0.0) as u64;
                (*o, n)
            })
            .collect()
    }

    /// The JWKS a replica publishes.
    pub async fn jwks(&self, replica: &Replica) -> Value {
        let (status, jwks) = self.get(&replica.url, "/jwks").await;
        assert_eq!(status, StatusCode::OK, "{}: /jwks {jwks}", replica.name);
        jwks
    }

    /// Every audit event the replicas have written to the shared audit.log.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("an audit line is not JSON: {e}: {l}"))
            })
            .collect()
    }

    /// Audit events of one kind, waiting up to 2 s for at least `at_least` of them.
    pub async fn audit_events(&self, kind: &str, at_least: usize) -> Vec<Value> {
        let matching = || -> Vec<Value> {
            self.audit()
                .into_iter()
                .filter(|e| e["event"] == kind)
                .collect()
        };
        for _ in 0..100 {
            let found = matching();
            if found.len() >= at_least {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        matching()
    }

    /// Runs the `tessera` command line against the shared data directory and database.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .envs(storage_env(&self.db, PG_PORT))
            .env("TESSERA_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("the tessera binary runs")
    }
}

/// A body as JSON, or the text as a JSON string.
fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// POSTs a form; `Err` when no HTTP answer came (a connection reset, say).
pub async fn try_post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    form: &[(&str, &str)],
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = http.post(format!("{base}{path}")).form(form).send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((status, body(&text)))
}

/// Refreshes as client `kubernetes`; `Err` when no HTTP answer came.
pub async fn try_refresh(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<(StatusCode, Value), reqwest::Error> {
    try_post(
        http,
        base,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "kubernetes"),
        ],
    )
    .await
}

/// The refresh token of a token response.
pub fn refresh_token(tokens: &Value) -> String {
    tokens["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh_token in {tokens}"))
        .to_owned()
}

/// Asserts an `invalid_grant` answer.
pub fn assert_invalid_grant(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["error"], "invalid_grant", "{what}: {body}");
}

// ---------------------------------------------------------------------------------------------
// The forwarder

/// A TCP forwarder in the test process (127.0.0.1:`port` → 127.0.0.1:target) with switches:
/// [`Forwarder::cut`] closes every open connection and blackholes new ones (accepted, then never
/// answered) until [`Forwarder::restore`]; [`Forwarder::refuse`] closes every connection and the
/// port itself, as a stopped server does (new connections are refused), until
/// [`Forwarder::listen_again`].
pub struct Forwarder {
    pub port: u16,
    target: u16,
    open: watch::Sender<bool>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Forwarder {
    /// Starts forwarding to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let accept = Self::accept(listener, target, open.clone());
        Forwarder {
            port,
            target,
            open,
            accept: Mutex::new(Some(accept)),
        }
    }

    fn accept(
        listener: tokio::net::TcpListener,
        target: u16,
        switch: watch::Sender<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, switch.subscribe()));
            }
        })
    }

    /// Closes every forwarded connection; new ones are accepted and left without an answer.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards new connections again (blackholed ones are closed).
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// Closes every forwarded connection and stops listening: connecting is refused at once.
    pub async fn refuse(&self) {
        self.open.send_replace(false);
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            // The listener goes with the task: wait for it to be dropped.
            let _ = accept.await;
        }
    }

    /// Listens on the same port again and forwards new connections.
    pub async fn listen_again(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.open.send_replace(true);
        let accept = Self::accept(listener, self.target, self.open.clone());
        *self.accept.lock().unwrap() = Some(accept);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        // Dropping the sender (with self) ends every connection task.
    }
}

async fn forward(mut client: tokio::net::TcpStream, target: u16, mut open: watch::Receiver<bool>) {
    if !*open.borrow_and_update() {
        // Blackholed: hold the connection without a byte until the switch flips, then close.
        let _ = open.wait_for(|open| *open).await;
        return;
    }
    let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
    // Both sockets close here.
}
