//! The driver of `bench/proxy`: what tessera's authenticating reverse proxy costs on this
//! machine, against nginx as the reference reverse proxy, measured in one run.
//!
//! One small static upstream (an nginx answering `ok\n`) is loaded by wrk four ways: (a)
//! straight, (b) through a plain nginx `proxy_pass` that authenticates nobody, (c) through
//! tessera's proxy with a valid session, (d) through nginx with `auth_request` to tessera's
//! `/oauth2/auth`; and then tessera's `/oauth2/auth` alone. c/b is the price of tessera's proxy
//! against the reference (target ≥ 0.8), d/b the price of the nginx `auth_request` deployment.
//! The five run in that order `--rounds` times (3 unless asked otherwise), so drift of the
//! virtual machine falls on every configuration alike, and the verdict is the median of the
//! rounds' ratios: on this machine absolute rates move by up to a quarter within a minute.
//!
//! Fairness: every server may use every core (nginx `worker_processes auto`, as tessera's proxy
//! runs one thread per core, each with its own listening socket); nginx keeps its upstream
//! connections alive (`keepalive 64`), keeps every connection open past its default limit of
//! 1000 requests (hyper has none), and logs no request (tessera at `TESSERA_LOG=warn` logs none
//! either). wrk sends the same request, session cookie included, to all five. wrk shares the
//! cores with the servers: every figure includes its share of the machine.
//!
//! The session is made as a browser makes it: `/oauth2/start` → the provider's login form →
//! `/oauth2/callback`. Its cookie `_tessera_proxy` is `Secure`, so wrk sends it as a header.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tessera_core::clock::monotonic_now;

#[path = "bench_support/mod.rs"]
mod bench_support;
use bench_support::{
    clock_ticks_per_second, cores, default_tessera, hidden_fields, machine_cpu_ms, tls_trusting,
    warn_if_busy,
};

const USAGE: &str = "\
usage: bench_proxy --nginx PATH --wrk PATH [--duration SECS] [--warmup SECS] [--rounds N]
                   [--connections N] [--threads N] [--pass-access-token BOOL] [--tessera PATH]

  --duration SECS     measured seconds per configuration (default 10)
  --warmup SECS       unmeasured seconds of the same load just before each (default 2)
  --rounds N          times the five configurations run, in turn; the verdict is the
                      median of the rounds' ratios (default 3)
  --connections N     wrk's open connections (default 64)
  --threads N         wrk's threads (default 2)
  --pass-access-token BOOL
                      (c) also sends the id_token upstream as Authorization (default false:
                      like (d), the upstream learns only who the user is)
  --nginx PATH        Debian's nginx (bench/proxy passes the one scripts/test-tools provides)
  --wrk PATH          wrk (bench/proxy passes the one bench/tools provides)
  --tessera PATH      the release server binary (default: target/release/tessera beside this
                      example)";

const PASSWORD: &str = "bench password, not a secret";
/// The proxy's session cookie (`proxy.cookie.name`'s default).
const SESSION_COOKIE: &str = "_tessera_proxy";
/// The static upstream's answer.
const BODY: &str = "ok\n";
/// The targets.
const TARGET_C_OVER_B: f64 = 0.8;
const TARGET_AUTH_PER_SECOND: f64 = 20_000.0;

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    print_machine(&options);
    warn_if_busy()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let setup = runtime.block_on(Setup::start(&options))?;
    let mut measurements = Vec::new();
    for round in 1..=options.rounds {
        for target in Target::ALL {
            let measured = measure(&options, &setup, target, round)?;
            measured.print_line(&options);
            measurements.push(measured);
        }
    }
    print_table(&options, &measurements);
    Ok(())
}

/// The command line.
struct Options {
    duration: u64,
    warmup: u64,
    rounds: usize,
    connections: usize,
    threads: usize,
    pass_access_token: bool,
    nginx: PathBuf,
    wrk: PathBuf,
    tessera: PathBuf,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            duration: 10,
            warmup: 2,
            rounds: 3,
            connections: 64,
            threads: 2,
            pass_access_token: false,
            nginx: PathBuf::new(),
            wrk: PathBuf::new(),
            tessera: default_tessera()?,
        };
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = args
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
            match flag.as_str() {
                "--duration" => options.duration = value.parse().context("--duration")?,
                "--warmup" => options.warmup = value.parse().context("--warmup")?,
                "--rounds" => options.rounds = value.parse().context("--rounds")?,
                "--connections" => options.connections = value.parse().context("--connections")?,
                "--threads" => options.threads = value.parse().context("--threads")?,
                "--pass-access-token" => {
                    options.pass_access_token = value.parse().context("--pass-access-token")?;
                }
                "--nginx" => options.nginx = PathBuf::from(value),
                "--wrk" => options.wrk = PathBuf::from(value),
                "--tessera" => options.tessera = PathBuf::from(value),
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        if options.nginx.as_os_str().is_empty() || options.wrk.as_os_str().is_empty() {
            bail!("--nginx and --wrk are required (bench/proxy provides both)\n{USAGE}");
        }
        if options.duration == 0 || options.rounds == 0 || options.threads == 0 {
            bail!("--duration, --rounds and --threads must be at least 1");
        }
        if options.connections < options.threads {
            bail!("wrk needs at least one connection per thread");
        }
        Ok(options)
    }
}

/// What wrk is pointed at.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Upstream,
    Nginx,
    Tessera,
    NginxAuthRequest,
    AuthAlone,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Upstream,
        Target::Nginx,
        Target::Tessera,
        Target::NginxAuthRequest,
        Target::AuthAlone,
    ];

    fn label(self) -> &'static str {
        match self {
            Target::Upstream => "(a) static upstream, direct",
            Target::Nginx => "(b) nginx proxy_pass",
            Target::Tessera => "(c) tessera proxy, valid session",
            Target::NginxAuthRequest => "(d) nginx auth_request → tessera /oauth2/auth",
            Target::AuthAlone => "tessera /oauth2/auth alone",
        }
    }
}

/// The servers under test and the session they are loaded with. Dropped in field order: the
/// front nginx first, then tessera, then the upstream.
struct Setup {
    front: Nginx,
    tessera: Tessera,
    upstream: Nginx,
    /// `_tessera_proxy=tsp1_…`.
    cookie: String,
}

impl Setup {
    async fn start(options: &Options) -> Result<Setup> {
        let upstream = Nginx::start(&options.nginx, 1, |p| static_servers(p[0])).await?;
        let upstream_url = format!("http://127.0.0.1:{}", upstream.ports[0]);
        let tessera =
            Tessera::start(&options.tessera, &upstream_url, options.pass_access_token).await?;
        let cookie = log_in(&tessera).await?;
        let front_config = |p: &[u16]| front_servers(p, upstream.ports[0], &tessera.proxy_address);
        let front = Nginx::start(&options.nginx, 2, front_config).await?;
        let setup = Setup {
            front,
            tessera,
            upstream,
            cookie,
        };
        setup.check().await?;
        println!(
            "tessera: pid {}, proxy {}, data in {}; static upstream nginx pid {} on {upstream_url}; front nginx pid {}",
            setup.tessera.child.id(),
            setup.tessera.proxy,
            setup.tessera.dir.path().display(),
            setup.upstream.child.id(),
            setup.front.child.id(),
        );
        Ok(setup)
    }

    fn url(&self, target: Target) -> String {
        match target {
            Target::Upstream => format!("http://127.0.0.1:{}/", self.upstream.ports[0]),
            Target::Nginx => format!("http://127.0.0.1:{}/", self.front.ports[0]),
            Target::Tessera => format!("{}/", self.tessera.proxy),
            Target::NginxAuthRequest => format!("http://127.0.0.1:{}/", self.front.ports[1]),
            Target::AuthAlone => format!("{}/oauth2/auth", self.tessera.proxy),
        }
    }

    /// Every configuration answers what it should before any is measured: a benchmark of 401s
    /// or 502s would be fast and worthless.
    async fn check(&self) -> Result<()> {
        let client = self.tessera.client(false)?;
        for target in Target::ALL {
            let response = client
                .get(self.url(target))
                .header(COOKIE, &self.cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            let expected = match target {
                Target::AuthAlone => StatusCode::ACCEPTED,
                _ => StatusCode::OK,
            };
            if status != expected || (target != Target::AuthAlone && body != BODY) {
                bail!("{} answered {status} `{body}`", target.label());
            }
        }
        let anonymous = client
            .get(self.url(Target::NginxAuthRequest))
            .send()
            .await?;
        if anonymous.status() != StatusCode::UNAUTHORIZED {
            bail!("(d) without a session answered {}", anonymous.status());
        }
        let whoami = format!("http://127.0.0.1:{}/whoami", self.front.ports[1]);
        let seen = client
            .get(whoami)
            .header(COOKIE, &self.cookie)
            .send()
            .await?;
        let seen = seen.text().await?;
        if !seen.contains("x-user=dev ") {
            bail!("(d) does not pass the user to the upstream: it saw `{seen}`");
        }
        Ok(())
    }

    fn pids(&self) -> [u32; 3] {
        [
            self.tessera.child.id(),
            self.front.child.id(),
            self.upstream.child.id(),
        ]
    }
}

/// The static upstream: a fixed body on `/`, and `/whoami` for the check of (d).
fn static_servers(port: u16) -> String {
    format!(
        "    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 \"{}\"; }}
        location = /whoami {{
            return 200 \"x-user=$http_x_user x-auth-request-user=$http_x_auth_request_user\\n\";
        }}
    }}
",
        BODY.escape_default()
    )
}

/// (b) on the first port, (d) on the second; both keep their upstream connections alive.
fn front_servers(ports: &[u16], upstream: u16, tessera: &str) -> String {
    let (b, d) = (ports[0], ports[1]);
    format!(
        "    proxy_http_version 1.1;
    upstream static {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    upstream tessera_proxy {{ server {tessera}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{b};
        location / {{
            proxy_set_header Connection \"\";
            proxy_pass http://static;
        }}
    }}
    server {{
        listen 127.0.0.1:{d};
        location / {{
            auth_request /oauth2/auth;
            auth_request_set $user $upstream_http_x_auth_request_user;
            proxy_set_header X-User $user;
            proxy_set_header Connection \"\";
            proxy_pass http://static;
        }}
        location = /oauth2/auth {{
            internal;
            proxy_pass http://tessera_proxy;
            proxy_pass_request_body off;
            proxy_set_header Content-Length \"\";
            proxy_set_header Cookie $http_cookie;
            proxy_set_header Connection \"\";
        }}
    }}
"
    )
}

/// An nginx in a temporary prefix, stopped with SIGTERM on drop so its master takes the workers
/// along.
struct Nginx {
    child: Child,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with the `server` blocks `servers` writes for `count` free ports; tries
    /// other ports when one was taken between choosing and binding it.
    async fn start(
        binary: &Path,
        count: usize,
        servers: impl Fn(&[u16]) -> String,
    ) -> Result<Nginx> {
        let mut failure = anyhow!("nginx was not started");
        for _ in 0..3 {
            let ports = free_ports(count)?;
            match Nginx::try_start(binary, ports.clone(), &servers(&ports)).await {
                Ok(nginx) => return Ok(nginx),
                Err(e) => failure = e,
            }
        }
        Err(failure)
    }

    async fn try_start(binary: &Path, ports: Vec<u16>, servers: &str) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("tessera-bench-nginx-")
            .tempdir()
            .context("cannot create nginx's directory")?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(dir.path(), servers))?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut nginx = Nginx { child, ports, dir };
        nginx.wait_listening().await?;
        Ok(nginx)
    }

    /// Until every port accepts and the pid file is this master's (a port someone else
    /// listens on would accept too).
    async fn wait_listening(&mut self) -> Result<()> {
        let pid_file = self.dir.path().join("nginx.pid");
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait()? {
                bail!("nginx exited ({status}):\n{}", self.stderr());
            }
            let ours = std::fs::read_to_string(&pid_file)
                .is_ok_and(|p| p.trim() == self.child.id().to_string());
            let listening = self
                .ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if ours && listening {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nginx did not listen within 20 s:\n{}", self.stderr())
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole nginx.conf around `servers`: everything in nginx's prefix `dir`, workers as this
/// user, no access log, and client connections kept for as long as wrk keeps them.
fn nginx_config(dir: &Path, servers: &str) -> String {
    let d = dir.display();
    // As root, nginx would otherwise run its workers as `nobody`; as anyone else it cannot
    // switch and needs no `user` line.
    let user = if running_as_root() {
        "user root root;"
    } else {
        ""
    };
    format!(
        "daemon off;
master_process on;
worker_processes auto;
{user}
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{servers}}}
"
    )
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// `count` ports free right now (all bound at once, so they differ).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

/// A release `tessera serve --dev` with its proxy in front of the static upstream, killed by
/// PID when dropped.
struct Tessera {
    child: Child,
    dir: tempfile::TempDir,
    issuer: String,
    /// `http://127.0.0.1:PORT`.
    proxy: String,
    /// `127.0.0.1:PORT`.
    proxy_address: String,
    tls: rustls::ClientConfig,
}

impl Drop for Tessera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tessera {
    async fn start(binary: &Path, upstream: &str, pass_access_token: bool) -> Result<Tessera> {
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --release --bin tessera` (bench/proxy does)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tessera-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let routes =
            format!("[{{upstream: '{upstream}', pass_access_token: {pass_access_token}}}]");
        let mut child = Command::new(binary)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("TESSERA_DEV_PASSWORD", PASSWORD)
            .env("TESSERA_LOG", "warn")
            .env("TESSERA_PROXY__LISTEN", "127.0.0.1:0")
            .env("TESSERA_PROXY__ROUTES", routes)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the server's stdout is not piped"))?;
        let (proxy, issuer) = announced(stdout)?;
        let tessera = Tessera {
            child,
            tls: tls_trusting(&dir.path().join("ca.pem"))?,
            dir,
            issuer,
            proxy_address: proxy.trim_start_matches("http://").to_owned(),
            proxy,
        };
        tessera.wait_healthy().await?;
        Ok(tessera)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// A client of this server (see [`bench_support::http_client`]).
    fn client(&self, cookies: bool) -> Result<reqwest::Client> {
        bench_support::http_client(&self.tls, cookies)
    }

    async fn wait_healthy(&self) -> Result<()> {
        bench_support::wait_healthy(&self.client(false)?, &self.url("/healthz")).await
    }
}

/// The proxy's and the provider's addresses, from the server's first lines; the rest of its
/// stdout is drained for its whole life so it never blocks on a full pipe.
fn announced(stdout: std::process::ChildStdout) -> Result<(String, String)> {
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut proxy = None;
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the server printed no `issuer:` line within 60 s")?;
        if let Some(url) = line.strip_prefix("proxy listening on ") {
            proxy = Some(url.to_owned());
        }
        if let Some(issuer) = line.strip_prefix("issuer: ") {
            let proxy = proxy.context("the server announced no proxy before its issuer")?;
            return Ok((proxy, issuer.to_owned()));
        }
    }
}

/// Logs in as `dev` through the proxy as a browser does; answers `_tessera_proxy=…`.
async fn log_in(tessera: &Tessera) -> Result<String> {
    let proxy = tessera.client(false)?;
    let start = proxy
        .get(format!("{}/oauth2/start?rd=/", tessera.proxy))
        .send()
        .await?;
    let login_state = set_cookies(&start).join("; ");
    let provider = tessera.client(true)?;
    let page = provider.get(location(&start)?).send().await?;
    if page.status() != StatusCode::OK {
        bail!(
            "the provider answered {} instead of its login form",
            page.status()
        );
    }
    let mut form = hidden_fields(&page.text().await?);
    form.push(("username".into(), "dev".into()));
    form.push(("password".into(), PASSWORD.into()));
    let submitted = provider
        .post(tessera.url("/login"))
        .form(&form)
        .send()
        .await?;
    let callback = proxy
        .get(location(&submitted)?)
        .header(COOKIE, login_state)
        .send()
        .await?;
    set_cookies(&callback)
        .into_iter()
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .ok_or_else(|| anyhow!("the callback answered {} and no session", callback.status()))
}

/// The `name=value` of every cookie the response sets (and does not clear).
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.contains("Max-Age=0"))
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect()
}

fn location(response: &reqwest::Response) -> Result<String> {
    Ok(response
        .headers()
        .get(LOCATION)
        .ok_or_else(|| anyhow!("expected a redirect, got {}", response.status()))?
        .to_str()?
        .to_owned())
}

/// One configuration's measured window.
struct Measurement {
    target: Target,
    round: usize,
    wrk: WrkReport,
    /// CPU time in the window: tessera, the front nginx, the static upstream, the machine.
    cpu_ms: [f64; 4],
    seconds: f64,
}

impl Measurement {
    /// CPU microseconds per answered request of process `which` (an index of `cpu_ms`).
    fn micros_per_request(&self, which: usize) -> f64 {
        self.cpu_ms[which] * 1000.0 / self.wrk.requests.max(1) as f64
    }

    fn print_line(&self, options: &Options) {
        let round = if options.rounds > 1 {
            format!(" (round {})", self.round)
        } else {
            String::new()
        };
        println!(
            "{}{round}: {:.0} requests/s, p99 {:.2} ms, {} errors",
            self.target.label(),
            self.wrk.per_second,
            self.wrk.p99_ms,
            self.wrk.errors
        );
    }
}

/// A warm-up of the same load, then the measured run with the CPU time of every server around
/// it.
fn measure(options: &Options, setup: &Setup, target: Target, round: usize) -> Result<Measurement> {
    let url = setup.url(target);
    if options.warmup > 0 {
        wrk(options, &url, &setup.cookie, options.warmup)?;
    }
    let before = cpu_sample(setup)?;
    let started = monotonic_now();
    let report = wrk(options, &url, &setup.cookie, options.duration)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = cpu_sample(setup)?;
    Ok(Measurement {
        target,
        round,
        wrk: report,
        cpu_ms: std::array::from_fn(|i| after[i] - before[i]),
        seconds,
    })
}

fn cpu_sample(setup: &Setup) -> Result<[f64; 4]> {
    let [tessera, front, upstream] = setup.pids();
    Ok([
        tree_cpu_ms(tessera)?,
        tree_cpu_ms(front)?,
        tree_cpu_ms(upstream)?,
        machine_cpu_ms()?,
    ])
}

/// What wrk printed about one run.
struct WrkReport {
    per_second: f64,
    p99_ms: f64,
    requests: u64,
    /// Answers outside 2xx/3xx and socket errors (connect, read, write, timeout).
    errors: u64,
}

fn wrk(options: &Options, url: &str, cookie: &str, seconds: u64) -> Result<WrkReport> {
    let output = Command::new(&options.wrk)
        .args(["-t", &options.threads.to_string()])
        .args(["-c", &options.connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency"])
        .args(["-H", &format!("Cookie: {cookie}"), url])
        .output()
        .with_context(|| format!("cannot run {}", options.wrk.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk {url} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    WrkReport::parse(&stdout).with_context(|| format!("cannot read wrk's report:\n{stdout}"))
}

impl WrkReport {
    fn parse(text: &str) -> Result<WrkReport> {
        let after = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .map(str::trim)
        };
        let per_second = after("Requests/sec:")
            .ok_or_else(|| anyhow!("no Requests/sec"))?
            .parse()?;
        let p99_ms = wrk_duration_ms(after("99%").ok_or_else(|| anyhow!("no 99% latency"))?)?;
        let requests = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .ok_or_else(|| anyhow!("no request count"))?
            .parse()?;
        let non_2xx_3xx: u64 = after("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse)?;
        // `Socket errors: connect 0, read 0, write 0, timeout 0`, printed only when not all 0.
        let socket: u64 = after("Socket errors:")
            .unwrap_or_default()
            .split([',', ' '])
            .filter_map(|w| w.parse::<u64>().ok())
            .sum();
        Ok(WrkReport {
            per_second,
            p99_ms,
            requests,
            errors: non_2xx_3xx + socket,
        })
    }
}

/// A wrk duration such as `812.00us`, `3.21ms` or `1.02s`, in milliseconds.
fn wrk_duration_ms(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("`{text}` has no unit"))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => bail!("`{text}`: unknown unit"),
    };
    Ok(number.parse::<f64>()? * scale)
}

/// User plus system CPU time of process `pid` and its children (an nginx master's workers).
fn tree_cpu_ms(pid: u32) -> Result<f64> {
    let mut total = stat_cpu_ms(&proc_stat(pid)?)?;
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: it is nobody's worker then.
        if let Ok(stat) = proc_stat(child)
            && stat.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        {
            total += stat_cpu_ms(&stat)?;
        }
    }
    Ok(total)
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (state first).
fn proc_stat(pid: u32) -> Result<Vec<String>> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let (_, after_name) = text
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("{path} is not a stat file"))?;
    Ok(after_name.split_whitespace().map(str::to_owned).collect())
}

/// utime and stime are fields 14 and 15 of the stat file, 11 and 12 after the name.
fn stat_cpu_ms(fields: &[String]) -> Result<f64> {
    let ticks = |i: usize| -> Result<f64> {
        let field = fields.get(i).ok_or_else(|| anyhow!("a short stat file"))?;
        Ok(field.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) * 1000.0 / clock_ticks_per_second())
}

fn print_machine(options: &Options) {
    bench_support::print_machine();
    println!(
        "tools: {}; {}",
        first_line(&options.nginx, "-v"),
        first_line(&options.wrk, "--version")
    );
}

/// The first line a tool prints about its version (nginx and wrk print it on stderr and
/// stdout respectively, and wrk exits 1 doing so).
fn first_line(tool: &Path, flag: &str) -> String {
    Command::new(tool)
        .arg(flag)
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_else(|e| format!("{}: {e}", tool.display()))
}

fn print_table(options: &Options, measurements: &[Measurement]) {
    println!();
    println!(
        "wrk: {} connections, {} threads, {} s per configuration after {} s of the same load, {} round(s) in turn; \
         nginx: worker_processes auto ({} workers, as tessera's proxy has one thread per core), \
         upstream keepalive 64, no access log; tessera: release build, session store `server` (SQLite)",
        options.connections,
        options.threads,
        options.duration,
        options.warmup,
        options.rounds,
        cores(),
    );
    let token = if options.pass_access_token {
        " and the user's id_token as Authorization (--pass-access-token true)"
    } else {
        ""
    };
    println!(
        "what reaches the upstream: (b) the client's request; (c) also the X-Auth-Request-* user \
         headers{token}; (d) also X-User. CPU µs/request: CPU time of that server (all its \
         processes or threads) in the window ÷ requests answered; wrk takes most of the rest of \
         the machine."
    );
    println!();
    println!(
        "| configuration | requests/s | p99 ms | errors | tessera CPU µs/request | front nginx CPU µs/request | upstream nginx CPU µs/request | machine busy (cores) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in measurements {
        let round = if options.rounds > 1 {
            format!(", round {}", m.round)
        } else {
            String::new()
        };
        println!(
            "| {}{round} | {:.0} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            m.target.label(),
            m.wrk.per_second,
            m.wrk.p99_ms,
            m.wrk.errors,
            m.micros_per_request(0),
            m.micros_per_request(1),
            m.micros_per_request(2),
            m.cpu_ms[3] / 1000.0 / m.seconds,
        );
    }
    println!();
    let rounds: Vec<Ratios> = (1..=options.rounds)
        .map(|round| Ratios::of_round(measurements, round))
        .collect();
    if rounds.len() > 1 {
        for (i, ratios) in rounds.iter().enumerate() {
            ratios.print(&format!("round {}: ", i + 1));
        }
        Ratios::median(&rounds).print("median of the rounds: ");
    } else {
        Ratios::median(&rounds).print("");
    }
}

/// What the issue asks of one round.
struct Ratios {
    c_over_b: f64,
    d_over_b: f64,
    auth_per_second: f64,
}

impl Ratios {
    fn of_round(measurements: &[Measurement], round: usize) -> Ratios {
        let rate = |target: Target| {
            measurements
                .iter()
                .find(|m| m.round == round && m.target == target)
                .map_or(f64::NAN, |m| m.wrk.per_second)
        };
        let b = rate(Target::Nginx);
        Ratios {
            c_over_b: rate(Target::Tessera) / b,
            d_over_b: rate(Target::NginxAuthRequest) / b,
            auth_per_second: rate(Target::AuthAlone),
        }
    }

    /// Each figure's median over the rounds, so one disturbed round does not decide.
    fn median(rounds: &[Ratios]) -> Ratios {
        let median = |figure: fn(&Ratios) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            match values.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => values[n / 2],
                n => f64::midpoint(values[n / 2 - 1], values[n / 2]),
            }
        };
        Ratios {
            c_over_b: median(|r| r.c_over_b),
            d_over_b: median(|r| r.d_over_b),
            auth_per_second: median(|r| r.auth_per_second),
        }
    }

    fn print(&self, prefix: &str) {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        println!(
            "{prefix}c/b = {:.2} (target ≥ {TARGET_C_OVER_B}: {}), d/b = {:.2}, \
             /oauth2/auth alone = {:.0} requests/s (target ≥ {TARGET_AUTH_PER_SECOND:.0}: {})",
            self.c_over_b,
            verdict(self.c_over_b >= TARGET_C_OVER_B),
            self.d_over_b,
            self.auth_per_second,
            verdict(self.auth_per_second >= TARGET_AUTH_PER_SECOND),
        );
    }
}
