//! The kubectl side through the real binaries (issue 3): `tessera login` driven through the login
//! form, `tessera credential` as kubectl's exec plugin with its shared cache, `tessera logout`,
//! the real kubectl (both the `/usr/bin/kubectl` dispatcher and the versioned kubectl beside it)
//! against a stand-in API server that verifies every bearer id_token with no leeway, a
//! long-running `kubectl proxy` beside parallel kubectl loops, and the legacy
//! `auth-provider: oidc` path for the record.
//!
//! Every process gets its own HOME, `TESSERA_CACHE_DIR` and `--kubeconfig`, no display, and is
//! killed by its handle when the test ends (also on panic).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tessera_core::clock::{Clock, SystemClock, monotonic_now};
use tokio::sync::mpsc;

use crate::kube_api::KubeApi;
use crate::support::{
    PASSWORD, Server, claims, hidden_fields, location, verify_jwt, write_private,
};

/// The gcloud dispatcher: it asks the API server for its version (with its own credential)
/// and then serves the command.
pub(crate) const DISPATCHER: &str = "/usr/bin/kubectl";
/// The real kubectl 1.32 beside it.
pub(crate) const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";
/// Both, for loops that alternate.
const BOTH: &[&str] = &[DISPATCHER, KUBECTL];

/// The id_token lifetime of the concurrency tests.
pub(crate) const TTL: (&str, &str) = ("TESSERA_TOKENS__ID_TOKEN_TTL", "2s");
/// Three lifetimes.
const RUN_FOR: Duration = Duration::from_secs(6);
/// Parallel kubectl loops.
const LOOPS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process that is killed when the guard goes (a panicking test leaves nothing behind).
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    pub(crate) fn spawn(mut command: Command) -> Guard {
        Guard(command.spawn().expect("the program starts"))
    }

    /// Waits for the exit without blocking the runtime.
    pub(crate) async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = monotonic_now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the process did not exit in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The lines a child writes to a pipe, as they come.
pub(crate) fn lines_of(
    pipe: impl std::io::Read + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs a command to its end on the blocking pool.
pub(crate) async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the program runs"))
        .await
        .unwrap()
}

/// How a test runs the kubectl side.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Client {
    /// `tessera login|credential|logout`.
    Tessera,
    /// `kubectl-tessera login|credential|logout`.
    Plugin,
    /// `kubectl tessera login|credential|logout`, the real kubectl finding the plugin on PATH.
    ThroughKubectl,
}

/// A user's machine: HOME, the token cache directory and the kubeconfig, all temporary.
pub(crate) struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub(crate) fn new() -> Arc<Home> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        Arc::new(Home { dir })
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `program` in this home: no display, no inherited kubeconfig or exec info, stdin not a
    /// terminal.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("HOME", self.dir.path().join("home"))
            .env("TESSERA_CACHE_DIR", self.cache_dir())
            .env("TESSERA_LOG", "warn")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("KUBECONFIG")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("KUBERNETES_EXEC_INFO")
            .stdin(Stdio::null());
        command
    }

    pub(crate) fn tessera(&self, args: &[&str]) -> Command {
        self.client(Client::Tessera, args)
    }

    /// `client` with `args`.
    pub(crate) fn client(&self, client: Client, args: &[&str]) -> Command {
        let mut command = match client {
            Client::Tessera => self.command(env!("CARGO_BIN_EXE_tessera")),
            Client::Plugin => self.command(env!("CARGO_BIN_EXE_kubectl-tessera")),
            Client::ThroughKubectl => {
                let mut command = self.command(KUBECTL);
                command.env("PATH", self.path_with_plugin()).arg("tessera");
                command
            }
        };
        command.args(args);
        command
    }

    /// PATH with a directory holding `kubectl-tessera` (a link to the built one) first.
    pub(crate) fn path_with_plugin(&self) -> std::ffi::OsString {
        let bin = self.dir.path().join("bin");
        let plugin = bin.join("kubectl-tessera");
        if !plugin.exists() {
            std::fs::create_dir_all(&bin).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubectl-tessera"), &plugin).unwrap();
        }
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).unwrap()
    }

    pub(crate) fn kubectl(&self, kubectl: &str, args: &[&str]) -> Command {
        let mut command = self.command(kubectl);
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args);
        command
    }

    /// `tessera credential` as the kubeconfig's exec entry runs it.
    pub(crate) fn credential(&self, server: &Server) -> Command {
        self.credential_with(Client::Tessera, server)
    }

    /// `credential` of `client`, as the kubeconfig's exec entry runs it.
    pub(crate) fn credential_with(&self, client: Client, server: &Server) -> Command {
        let mut command = self.client(
            client,
            &[
                "credential",
                "--issuer",
                &server.issuer,
                "--client-id",
                "kubernetes",
                "--user",
                "dev",
                "--certificate-authority",
            ],
        );
        command.arg(&server.ca);
        command
    }

    /// The only token cache file (`*.json`) of this home.
    pub(crate) fn cache_file(&self) -> PathBuf {
        let files: Vec<PathBuf> = std::fs::read_dir(self.cache_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        assert_eq!(files.len(), 1, "one cache file: {files:?}");
        files.into_iter().next().unwrap()
    }

    pub(crate) fn cache_entry(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.cache_file()).unwrap()).unwrap()
    }
}

/// How a `tessera` run ended.
pub(crate) struct Finished {
    pub(crate) success: bool,
    pub(crate) stderr: String,
    /// The authorization URL it printed.
    pub(crate) url: Option<String>,
}

/// `tessera login --no-browser …`, signing in through the login form like a browser.
pub(crate) async fn login(server: &Server, home: &Home, extra: &[&str]) -> Finished {
    login_while(server, home, extra, || {}).await
}

/// [`login`], running `in_browser` while the login waits for the browser.
pub(crate) async fn login_while(
    server: &Server,
    home: &Home,
    extra: &[&str],
    in_browser: impl FnOnce(),
) -> Finished {
    login_with(Client::Tessera, server, home, extra, in_browser).await
}

/// [`login_while`] through `client`.
pub(crate) async fn login_with(
    client: Client,
    server: &Server,
    home: &Home,
    extra: &[&str],
    in_browser: impl FnOnce(),
) -> Finished {
    login_as(client, server, home, extra, in_browser, ("dev", PASSWORD)).await
}

/// [`login_with`], signing in with `(username, password)` at the form the page shows.
pub(crate) async fn login_as(
    client: Client,
    server: &Server,
    home: &Home,
    extra: &[&str],
    in_browser: impl FnOnce(),
    (username, password): (&str, &str),
) -> Finished {
    let mut command = home.client(
        client,
        &["login", "--issuer", &server.issuer, "--no-browser"],
    );
    command
        .arg("--certificate-authority")
        .arg(&server.ca)
        .arg("--kubeconfig")
        .arg(home.kubeconfig())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Guard::spawn(command);
    let mut lines = lines_of(child.0.stderr.take().unwrap());
    let mut stderr = Vec::new();
    let mut url = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await
        .expect("tessera login prints the URL or exits")
    {
        let text = line.trim().to_owned();
        stderr.push(line);
        if text.starts_with("https://") && text.contains("/authorize?") {
            url = Some(text);
            break;
        }
    }
    if let Some(url) = &url {
        in_browser();
        sign_in_as(server, url, username, password).await;
    }
    let status = child.wait(Duration::from_secs(60)).await;
    while let Some(line) = lines.recv().await {
        stderr.push(line);
    }
    Finished {
        success: status.success(),
        stderr: stderr.join("\n"),
        url,
    }
}

/// A browser opening the login URL, signing in as `dev`, and following the redirect to the
/// loopback listener of `tessera login`.
pub(crate) async fn sign_in(server: &Server, url: &str) {
    sign_in_as(server, url, "dev", PASSWORD).await;
}

/// [`sign_in`] as `username`, at a page that shows one form.
pub(crate) async fn sign_in_as(server: &Server, url: &str, username: &str, password: &str) {
    let browser = server.new_browser();
    let form = browser.get(url).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::OK, "the login form is shown");
    let mut fields = hidden_fields(&form.text().await.unwrap());
    fields.push(("username".into(), username.into()));
    fields.push(("password".into(), password.into()));
    let answer = browser
        .post(server.url("/login"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_redirection(),
        "login answered {}",
        answer.status()
    );
    let callback = location(&answer);
    assert!(
        callback.starts_with("http://127.0.0.1:") && callback.contains("/callback?"),
        "{callback}"
    );
    let back = server.http.get(&callback).send().await.unwrap();
    assert_eq!(
        back.status(),
        StatusCode::OK,
        "the loopback listener answers"
    );
}

/// Logs in and asserts it worked.
pub(crate) async fn logged_in(server: &Server, home: &Home, extra: &[&str]) {
    let finished = login(server, home, extra).await;
    assert!(
        finished.success,
        "tessera login failed:\n{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("Logged in"), "{}", finished.stderr);
    assert_eq!(mode(&home.kubeconfig()), 0o600, "the kubeconfig is private");
}

/// Counts audit events of one kind.
pub(crate) fn count(server: &Server, kind: &str) -> usize {
    server.audit().iter().filter(|e| e["event"] == kind).count()
}

/// Waits (without blocking the runtime) until the wall clock is past `unix_millis`.
pub(crate) async fn sleep_until_wall(unix_millis: i64) {
    let now = SystemClock.now().0;
    if unix_millis > now {
        let wait = u64::try_from(unix_millis - now).unwrap();
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// Asserts a failed `tessera` run says one clear sentence and does not panic.
pub(crate) fn assert_one_clear_error(out: &Output, names_one_of: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(!out.status.success(), "it should fail; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        names_one_of.iter().any(|n| stderr.contains(n)),
        "names one of {names_one_of:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no credential printed");
    eprintln!("tessera said: {stderr}");
    stderr
}

// ---------------------------------------------------------------------------------------------
// A cluster: tessera plus the stand-in API server it publishes

pub(crate) struct Cluster {
    pub(crate) api: KubeApi,
    pub(crate) server: Server,
}

pub(crate) async fn cluster(env: &[(&str, &str)]) -> Cluster {
    let api = KubeApi::start();
    let ca = api.ca.display().to_string();
    let mut all = vec![
        ("TESSERA_KUBERNETES__SERVER", api.url.as_str()),
        ("TESSERA_KUBERNETES__CERTIFICATE_AUTHORITY", ca.as_str()),
    ];
    all.extend_from_slice(env);
    let server = Server::start_with(&all).await;
    api.trust(&server.issuer, &server.jwks().await);
    Cluster { api, server }
}

/// Calls and failures of one client.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    failures: u64,
    errors: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: Result<(), String>) {
        self.calls += 1;
        if let Err(e) = result {
            self.failures += 1;
            if self.errors.len() < 3 {
                self.errors.push(e);
            }
        }
    }

    fn add(&mut self, other: Tally) {
        self.calls += other.calls;
        self.failures += other.failures;
        for e in other.errors {
            if self.errors.len() < 6 {
                self.errors.push(e);
            }
        }
    }
}

/// `kubectl get --raw /version` once.
pub(crate) fn kubectl_version(home: &Home, kubectl: &str) -> Result<(), String> {
    let out = home
        .kubectl(
            kubectl,
            &["get", "--raw", "/version", "--request-timeout=20s"],
        )
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("v1.32.0") {
        Ok(())
    } else {
        Err(format!(
            "{kubectl}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `loops` threads each running kubectl (alternating over `binaries`) back to back for
/// `run_for`.
async fn kubectl_loops(
    home: &Arc<Home>,
    binaries: &'static [&'static str],
    loops: usize,
    run_for: Duration,
) -> Tally {
    let home = Arc::clone(home);
    tokio::task::spawn_blocking(move || {
        let deadline = monotonic_now() + run_for;
        let tallies: Vec<Tally> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..loops)
                .map(|i| {
                    let home = &home;
                    scope.spawn(move || {
                        let kubectl = binaries[i % binaries.len()];
                        let mut tally = Tally::default();
                        while monotonic_now() < deadline {
                            tally.record(kubectl_version(home, kubectl));
                        }
                        tally
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut total = Tally::default();
        for t in tallies {
            total.add(t);
        }
        total
    })
    .await
    .unwrap()
}

/// A running `kubectl proxy --port=0`.
struct Proxy {
    _child: Guard,
    url: String,
}

async fn kubectl_proxy(home: &Home, kubectl: &str) -> Proxy {
    let mut command = home.kubectl(kubectl, &["proxy", "--port=0"]);
    // Its stderr repeats the errors the proxied requests answer with; they are counted there.
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = Guard::spawn(command);
    let mut lines = lines_of(child.0.stdout.take().unwrap());
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("kubectl proxy says where it serves")
            .expect("kubectl proxy exited before serving");
        if let Some(address) = line.trim().strip_prefix("Starting to serve on ") {
            return Proxy {
                _child: child,
                url: format!("http://{address}"),
            };
        }
    }
}

/// GET /version through the proxy every 100 ms for `run_for`, as a long-running tool does
/// (`http`: any client of the harness; the proxy speaks plain HTTP).
async fn proxy_loop(http: &reqwest::Client, proxy: &Proxy, run_for: Duration) -> Tally {
    let deadline = monotonic_now() + run_for;
    let mut tally = Tally::default();
    while monotonic_now() < deadline {
        let result = match http.get(format!("{}/version", proxy.url)).send().await {
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if status == StatusCode::OK && body.contains("v1.32.0") {
                    Ok(())
                } else {
                    Err(format!("proxy: {status}: {body:.200}"))
                }
            }
            Err(e) => Err(format!("proxy: {e}")),
        };
        tally.record(result);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// The shared cache under concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_credential_processes_on_an_expired_cache_cause_one_refresh() {
    // 6 s rather than 2 s: the refreshed token is then answered from the cache for 5 s, so
    // the last of the twenty processes cannot miss it however slowly a loaded machine starts
    // them; the property tested (one refresh, one token) does not depend on the lifetime.
    let server = Server::start_with(&[("TESSERA_TOKENS__ID_TOKEN_TTL", "6s")]).await;
    let home = Home::new();
    logged_in(&server, &home, &[]).await;
    let before = home.cache_entry();
    assert_eq!(mode(&home.cache_file()), 0o600);
    assert_eq!(mode(&home.cache_dir()), 0o700);
    sleep_until_wall(before["expires_at"].as_i64().unwrap() * 1000 + 50).await;
    assert_eq!(count(&server, "TokenRefreshed"), 0);

    let commands: Vec<Command> = (0..20).map(|_| home.credential(&server)).collect();
    let runs: Vec<(Duration, Output)> = tokio::task::spawn_blocking(move || {
        let start = Arc::new(Barrier::new(commands.len()));
        let threads: Vec<_> = commands
            .into_iter()
            .map(|mut command| {
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let began = monotonic_now();
                    let out = command.output().unwrap();
                    (began.elapsed(), out)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
    .await
    .unwrap();

    let jwks = server.jwks().await;
    let mut tokens = Vec::new();
    for (_, out) in &runs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let credential: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(credential["kind"], "ExecCredential");
        tokens.push(credential["status"]["token"].as_str().unwrap().to_owned());
    }
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "every process prints the same token"
    );
    assert_ne!(
        tokens[0],
        before["id_token"].as_str().unwrap(),
        "not the expired one"
    );
    verify_jwt(&jwks, &tokens[0], &server.issuer, "kubernetes").unwrap();
    // Waiting for a second event that must not come gives a late writer time to show.
    let refreshed = server.audit_events("TokenRefreshed", 2).await;
    assert_eq!(refreshed.len(), 1, "exactly one refresh: {refreshed:?}");
    assert_eq!(count(&server, "RefreshTokenReplayDetected"), 0);

    // The yardsticks: one refresh round trip over HTTP, and a process answered from the cache.
    let other = server.kubernetes_tokens().await;
    let began = monotonic_now();
    let (status, _) = server
        .refresh(other["refresh_token"].as_str().unwrap())
        .await;
    let round_trip = began.elapsed();
    assert_eq!(status, StatusCode::OK);
    let began = monotonic_now();
    let cached = output(home.credential(&server)).await;
    let from_cache = began.elapsed();
    assert!(cached.status.success());

    let slowest = runs.iter().map(|(d, _)| *d).max().unwrap();
    let fastest = runs.iter().map(|(d, _)| *d).min().unwrap();
    eprintln!(
        "20 concurrent `tessera credential`: slowest {slowest:?}, fastest {fastest:?}; \
         one refresh round trip {round_trip:?}; one process answered from cache {from_cache:?}"
    );
    assert!(
        slowest < Duration::from_secs(10),
        "a process waited {slowest:?}: far more than a refresh and a lock hand-off (the lock \
         timeout is 30 s)"
    );
}

// ---------------------------------------------------------------------------------------------
// The real kubectl with the exec plugin

/// Logs in, checks one kubectl call with each binary, then runs the loops (and a proxy when
/// asked) for three lifetimes: nothing may fail, nothing may be replayed.
async fn exec_plugin_under_load(binaries: &'static [&'static str], with_proxy: bool) {
    let cluster = cluster(&[TTL]).await;
    let home = Home::new();
    logged_in(&cluster.server, &home, &[]).await;
    for kubectl in BOTH {
        let home = Arc::clone(&home);
        tokio::task::spawn_blocking(move || kubectl_version(&home, kubectl))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(cluster.api.accepted() >= 2, "the API saw the bearer tokens");

    let proxy = match with_proxy {
        true => Some(kubectl_proxy(&home, KUBECTL).await),
        false => None,
    };
    let (loops, proxied) = tokio::join!(kubectl_loops(&home, binaries, LOOPS, RUN_FOR), async {
        match &proxy {
            Some(p) => proxy_loop(&cluster.server.http, p, RUN_FOR).await,
            None => Tally::default(),
        }
    });
    drop(proxy);

    let refreshed = count(&cluster.server, "TokenRefreshed");
    let replays = count(&cluster.server, "RefreshTokenReplayDetected");
    let grace = count(&cluster.server, "ExpiredRefreshTokenUsed");
    eprintln!(
        "exec plugin, {binaries:?}, {LOOPS} loops{} for {RUN_FOR:?}: kubectl {} calls {} \
         failures; proxy {} calls {} failures; API accepted {} refused {}; TokenRefreshed \
         {refreshed}, RefreshTokenReplayDetected {replays}, ExpiredRefreshTokenUsed {grace}",
        if with_proxy { " + kubectl proxy" } else { "" },
        loops.calls,
        loops.failures,
        proxied.calls,
        proxied.failures,
        cluster.api.accepted(),
        cluster.api.refused(),
    );
    assert!(loops.calls >= LOOPS as u64, "the loops ran: {loops:?}");
    assert_eq!(loops.failures, 0, "{:?}", loops.errors);
    assert_eq!(proxied.failures, 0, "{:?}", proxied.errors);
    if with_proxy {
        assert!(proxied.calls >= 10, "the proxy was used: {proxied:?}");
    }
    assert_eq!(
        cluster.api.refused(),
        0,
        "refusals: {:?}",
        cluster.api.refusals()
    );
    assert_eq!(replays, 0);
    assert_eq!(grace, 0, "no grace period is configured");
    assert!(
        refreshed >= 2,
        "three lifetimes need refreshes: {refreshed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_loops_with_the_exec_plugin_never_fail_dispatcher() {
    exec_plugin_under_load(&[DISPATCHER], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_loops_with_the_exec_plugin_never_fail_real_kubectl() {
    exec_plugin_under_load(&[KUBECTL], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_proxy_beside_kubectl_loops_never_fails() {
    exec_plugin_under_load(BOTH, true).await;
}

// ---------------------------------------------------------------------------------------------
// The legacy auth-provider, for the record

/// What one legacy configuration did.
struct LegacyRow {
    label: String,
    loops: Tally,
    proxy: Tally,
    accepted: u64,
    refused: u64,
    refreshed: usize,
    grace_reuses: usize,
    replays: Vec<Value>,
    revoked: Vec<Value>,
    after: Result<(), String>,
}

async fn legacy_run(grace_millis: &str, on_replay: &str) -> LegacyRow {
    let cluster = cluster(&[
        TTL,
        ("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", grace_millis),
        ("TESSERA_REFRESH_TOKEN__ON_REPLAY", on_replay),
    ])
    .await;
    let home = Home::new();
    logged_in(&cluster.server, &home, &["--legacy-auth-provider"]).await;
    let config = std::fs::read_to_string(home.kubeconfig()).unwrap();
    assert!(config.contains("auth-provider"), "{config}");
    assert!(config.contains("refresh-token"), "{config}");
    assert!(
        !home.cache_dir().exists() || std::fs::read_dir(home.cache_dir()).unwrap().count() == 0,
        "the legacy user keeps its tokens in the kubeconfig, not the cache"
    );

    let proxy = kubectl_proxy(&home, KUBECTL).await;
    let (loops, proxied) = tokio::join!(
        kubectl_loops(&home, BOTH, LOOPS, RUN_FOR),
        proxy_loop(&cluster.server.http, &proxy, RUN_FOR)
    );
    drop(proxy);
    // A fresh kubectl after the run, reading whatever the kubeconfig holds now.
    let after = {
        let home = Arc::clone(&home);
        tokio::task::spawn_blocking(move || kubectl_version(&home, KUBECTL))
            .await
            .unwrap()
    };
    let audit = cluster.server.audit();
    let of = |kind: &str| -> Vec<Value> {
        audit
            .iter()
            .filter(|e| e["event"] == kind)
            .cloned()
            .collect()
    };
    LegacyRow {
        label: format!("grace {grace_millis} ms, on_replay {on_replay}"),
        loops,
        proxy: proxied,
        accepted: cluster.api.accepted(),
        refused: cluster.api.refused(),
        refreshed: of("TokenRefreshed").len(),
        grace_reuses: of("ExpiredRefreshTokenUsed").len(),
        replays: of("RefreshTokenReplayDetected"),
        revoked: of("SessionRevoked"),
        after,
    }
}

/// The legacy path is not expected to be clean; this records how it fails. What was seen: client-go's
/// oidc provider treats an id_token as expired 10 s before `exp`, so with a 2 s lifetime every
/// kubectl process and every proxied request refreshes; the proxy keeps its refresh token in
/// memory and never re-reads the kubeconfig; and client-go rewrites the kubeconfig in place under
/// a `.lock` file that makes a concurrent writer fail ("could not persist new tokens") and lets a
/// reader see a truncated file (kubectl then falls back to localhost:8080). Asserted: only what
/// follows from the configuration (a replay revokes or not; no grace reuse without grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_auth_provider_matrix_for_the_record() {
    let mut rows = Vec::new();
    for (grace, on_replay) in [
        ("0", "revoke_session"),
        ("0", "reject"),
        ("5000", "revoke_session"),
        ("5000", "reject"),
    ] {
        rows.push(legacy_run(grace, on_replay).await);
    }
    eprintln!(
        "\nlegacy `auth-provider: oidc`, id_token TTL 2 s, {LOOPS} kubectl loops (dispatcher and \
         kubectl 1.32 alternating) + kubectl proxy polled every 100 ms, {RUN_FOR:?} each:\n\
         | configuration | kubectl calls / failures | proxy calls / failures | API accepted / \
         refused | TokenRefreshed | ExpiredRefreshTokenUsed | RefreshTokenReplayDetected | \
         SessionRevoked | kubectl afterwards |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in &rows {
        eprintln!(
            "| {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} | {} |",
            row.label,
            row.loops.calls,
            row.loops.failures,
            row.proxy.calls,
            row.proxy.failures,
            row.accepted,
            row.refused,
            row.refreshed,
            row.grace_reuses,
            row.replays.len(),
            row.revoked.len(),
            match &row.after {
                Ok(()) => "works".to_owned(),
                Err(_) => "fails".to_owned(),
            }
        );
    }
    for row in &rows {
        eprintln!(
            "{}: first kubectl errors {:?}; first proxy errors {:?}; after: {:?}",
            row.label, row.loops.errors, row.proxy.errors, row.after
        );
    }

    for row in &rows {
        let revoking = row.label.ends_with("revoke_session");
        assert!(row.loops.calls >= LOOPS as u64, "{}: loops ran", row.label);
        assert!(row.proxy.calls >= 10, "{}: the proxy was used", row.label);
        if row.label.starts_with("grace 0 ") {
            assert_eq!(row.grace_reuses, 0, "{}: no grace period", row.label);
        }
        for replay in &row.replays {
            assert_eq!(
                replay["session_revoked"], revoking,
                "{}: {replay}",
                row.label
            );
        }
        if revoking {
            if !row.replays.is_empty() {
                assert!(
                    row.revoked.iter().any(|r| r["reason"] == "replay"),
                    "{}: a replay revokes the session",
                    row.label
                );
                assert!(
                    row.after.is_err(),
                    "{}: after the session is revoked no tool gets in",
                    row.label
                );
            }
        } else {
            assert!(
                row.revoked.is_empty(),
                "{}: `reject` never revokes the session: {:?}",
                row.label,
                row.revoked
            );
        }
    }
    let first = &rows[0];
    assert!(
        !first.replays.is_empty(),
        "{}: client-go's oidc provider refreshes each time and the proxy keeps its old refresh \
         token, so without a grace period a replay is expected",
        first.label
    );
}

// ---------------------------------------------------------------------------------------------
// Kubeconfig editing through the binary

const EXISTING: &str = r#"apiVersion: v1
kind: Config
preferences: {colors: true}
current-context: prod
clusters:
- name: prod
  cluster: {server: "https://prod:6443", proxy-url: "http://proxy:3128"}
- name: staging
  cluster: {server: "https://staging:6443", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: abc}
contexts:
- name: prod
  context: {cluster: prod, user: admin, namespace: web}
- name: staging
  context: {cluster: staging, user: admin}
x-unknown-extension: keep me
"#;

pub(crate) fn names(doc: &yaml_serde::Value, list: &str) -> Vec<String> {
    doc[list]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn read_yaml(path: &Path) -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub(crate) fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_an_existing_kubeconfig_and_makes_it_private() {
    let server = Server::start().await;
    let home = Home::new();
    std::fs::write(home.kubeconfig(), EXISTING).unwrap();
    std::fs::set_permissions(home.kubeconfig(), std::fs::Permissions::from_mode(0o644)).unwrap();

    logged_in(&server, &home, &["--no-set-context"]).await;
    let doc = read_yaml(&home.kubeconfig());
    assert_eq!(mode(&home.kubeconfig()), 0o600);
    assert_eq!(doc["current-context"], "prod", "--no-set-context");
    assert_eq!(doc["x-unknown-extension"], "keep me");
    assert_eq!(doc["preferences"]["colors"], true);
    assert_eq!(names(&doc, "clusters"), ["prod", "staging", "tessera-dev"]);
    assert_eq!(names(&doc, "users"), ["admin", "dev@tessera-dev"]);
    assert_eq!(names(&doc, "contexts"), ["prod", "staging", "tessera-dev"]);
    assert_eq!(
        doc["clusters"][0]["cluster"]["proxy-url"],
        "http://proxy:3128"
    );
    assert_eq!(
        doc["clusters"][1]["cluster"]["insecure-skip-tls-verify"],
        true
    );
    assert_eq!(doc["users"][0]["user"]["token"], "abc");
    assert_eq!(doc["contexts"][0]["context"]["namespace"], "web");
    let context = &doc["contexts"][2]["context"];
    assert_eq!(context["cluster"], "tessera-dev");
    assert_eq!(context["user"], "dev@tessera-dev");
    let exec = &doc["users"][1]["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    let command = PathBuf::from(exec["command"].as_str().unwrap());
    assert!(command.is_absolute(), "{command:?}");
    assert_eq!(
        std::fs::canonicalize(&command).unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_tessera")).unwrap()
    );
    let args: Vec<&str> = exec["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let ca = std::fs::canonicalize(&server.ca).unwrap();
    let expected = [
        "credential",
        "--issuer",
        &server.issuer,
        "--client-id",
        "kubernetes",
        "--user",
        "dev",
        "--certificate-authority",
        ca.to_str().unwrap(),
    ];
    assert_eq!(args, expected);

    // Again without --no-set-context, under another context name: the context switches, the
    // first login's entries stay.
    logged_in(&server, &home, &["--context", "mine"]).await;
    let doc = read_yaml(&home.kubeconfig());
    assert_eq!(mode(&home.kubeconfig()), 0o600);
    assert_eq!(doc["current-context"], "mine");
    assert_eq!(doc["x-unknown-extension"], "keep me");
    assert_eq!(names(&doc, "clusters"), ["prod", "staging", "tessera-dev"]);
    assert_eq!(names(&doc, "users"), ["admin", "dev@tessera-dev"]);
    assert_eq!(
        names(&doc, "contexts"),
        ["prod", "staging", "tessera-dev", "mine"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refuses_a_corrupt_kubeconfig_and_leaves_it_alone() {
    let server = Server::start().await;
    for corrupt in [
        "clusters: [unclosed\n",
        "- a list\n- not a config\n",
        "clusters: 7\n",
    ] {
        let home = Home::new();
        std::fs::write(home.kubeconfig(), corrupt).unwrap();
        let finished = login(&server, &home, &[]).await;
        assert!(!finished.success, "{corrupt:?}: {}", finished.stderr);
        assert!(!finished.stderr.contains("panicked"), "{}", finished.stderr);
        assert!(
            finished
                .stderr
                .contains(&home.kubeconfig().display().to_string()),
            "the error names the file: {}",
            finished.stderr
        );
        assert!(
            !finished.stderr.contains("/authorize?"),
            "it fails before sending anyone to the browser: {}",
            finished.stderr
        );
        assert_eq!(
            std::fs::read_to_string(home.kubeconfig()).unwrap(),
            corrupt,
            "unchanged"
        );
    }
    assert_eq!(count(&server, "TokenIssued"), 0);
}

// ---------------------------------------------------------------------------------------------
// Cache files that cannot be used

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_refuses_unusable_cache_files_without_sending_their_tokens() {
    let (a, b) = tokio::join!(Server::start(), Server::start());
    let (home_a, home_b) = (Home::new(), Home::new());
    logged_in(&a, &home_a, &[]).await;
    logged_in(&b, &home_b, &[]).await;
    let file_b = home_b.cache_file();
    let valid_b = std::fs::read(&file_b).unwrap();
    let refreshes = |s: &Server| {
        count(s, "TokenRefreshed")
            + count(s, "RefreshTokenReplayDetected")
            + count(s, "ExpiredRefreshTokenUsed")
    };
    let file_b_name = file_b.display().to_string();

    // Corrupt.
    std::fs::write(&file_b, b"{\"version\": 1, \"issuer\": tru").unwrap();
    let out = output(home_b.credential(&b)).await;
    let said = assert_one_clear_error(&out, &["tessera login"]);
    assert!(said.contains(&file_b_name), "{said}");

    // Copied from issuer A under issuer B's name.
    std::fs::copy(home_a.cache_file(), &file_b).unwrap();
    let out = output(home_b.credential(&b)).await;
    let said = assert_one_clear_error(&out, &["tessera login"]);
    assert!(said.contains(&file_b_name), "{said}");
    assert!(said.contains(&a.issuer), "says whose file it is: {said}");

    // Not readable.
    std::fs::write(&file_b, &valid_b).unwrap();
    std::fs::set_permissions(&file_b, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&file_b).is_ok() {
        eprintln!(
            "note: running as root, where mode 000 does not stop reads; the chmod 000 case is \
             skipped (the directory case below covers an unreadable cache file)"
        );
    } else {
        let out = output(home_b.credential(&b)).await;
        let said = assert_one_clear_error(&out, &["tessera login", &file_b_name]);
        assert!(said.contains(&file_b_name), "{said}");
    }
    std::fs::set_permissions(&file_b, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A directory where the file should be cannot be read even by root.
    std::fs::remove_file(&file_b).unwrap();
    std::fs::create_dir(&file_b).unwrap();
    let out = output(home_b.credential(&b)).await;
    let said = assert_one_clear_error(&out, &["tessera login", &file_b_name]);
    assert!(said.contains(&file_b_name), "{said}");

    assert_eq!(refreshes(&a), 0, "A's tokens were not used");
    assert_eq!(refreshes(&b), 0, "no token reached B");
}

/// Product bug: `CacheError::Io` (crates/tessera/src/client/cache.rs:78) puts `{source}` in its
/// message and also marks the field `#[source]`, so `main`'s `{e:#}` prints the cause twice:
/// "cannot read the token cache …json: Is a directory (os error 21): Is a directory (os error
/// 21)". No server is needed: the file name is the one of the `.lock` file the first run leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_cache_file_is_reported_with_its_cause_once() {
    let home = Home::new();
    let credential = || {
        home.tessera(&[
            "credential",
            "--issuer",
            "https://127.0.0.1:9",
            "--client-id",
            "kubernetes",
            "--user",
            "dev",
        ])
    };
    assert_one_clear_error(&output(credential()).await, &["tessera login"]);
    let lock = std::fs::read_dir(home.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "lock"))
        .expect("the first run left its lock file");
    let file = lock.with_extension("json");
    std::fs::create_dir(&file).unwrap();
    let said = assert_one_clear_error(&output(credential()).await, &[&file.display().to_string()]);
    let cause = "Is a directory";
    assert_eq!(
        said.matches(cause).count(),
        1,
        "the cause is said once: {said}"
    );
}

// ---------------------------------------------------------------------------------------------
// Logout, the exec info, and an ended session

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_refresh_token_and_deletes_the_cache() {
    let server = Server::start().await;
    let home = Home::new();

    // Through the kubeconfig's current context.
    let mut logout = home.tessera(&["logout", "--kubeconfig"]);
    logout.arg(home.kubeconfig());
    assert_logout_ends_the_login(&server, &home, logout).await;

    // Naming the login directly.
    let mut logout = home.tessera(&[
        "logout",
        "--issuer",
        &server.issuer,
        "--client-id",
        "kubernetes",
        "--user",
        "dev",
        "--certificate-authority",
    ]);
    logout.arg(&server.ca);
    assert_logout_ends_the_login(&server, &home, logout).await;
}

/// Issue 13, fault 3: `tessera logout --issuer URL` after `tessera login --issuer URL` said
/// "No cached login …; nothing to revoke." and exited 0 while the login lived on, because the
/// cache is keyed by user and `--user` defaulted to empty. Naming only the issuer (and, or not,
/// the client) ends every login cached for it; naming nothing that is cached is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_naming_only_the_issuer_ends_the_login_made_for_it() {
    let server = Server::start().await;
    let home = Home::new();
    let mut logout = home.tessera(&[
        "logout",
        "--issuer",
        &server.issuer,
        "--certificate-authority",
    ]);
    logout.arg(&server.ca);
    assert_logout_ends_the_login(&server, &home, logout).await;

    let mut logout = home.tessera(&[
        "logout",
        "--issuer",
        &server.issuer,
        "--client-id",
        "kubernetes",
        "--certificate-authority",
    ]);
    logout.arg(&server.ca);
    assert_logout_ends_the_login(&server, &home, logout).await;

    // Nothing cached for it any more: not a success.
    let mut again = home.tessera(&[
        "logout",
        "--issuer",
        &server.issuer,
        "--certificate-authority",
    ]);
    again.arg(&server.ca);
    let out = output(again).await;
    assert!(
        !out.status.success(),
        "a logout that found nothing succeeded"
    );
    let said = assert_one_clear_error(&out, &["nothing was revoked"]);
    assert!(said.contains(&server.issuer), "{said}");
}

/// Logs in, runs `logout`, and checks that the refresh token is revoked at the server, the
/// cache file is gone, and `tessera credential` then names `tessera login`.
async fn assert_logout_ends_the_login(server: &Server, home: &Home, logout: Command) {
    logged_in(server, home, &[]).await;
    let file = home.cache_file();
    let refresh = home.cache_entry()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = output(logout).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!file.exists(), "the cache file is gone");
    let (status, body) = server.refresh(&refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let out = output(home.credential(server)).await;
    assert_one_clear_error(&out, &["tessera login"]);
}

fn parse_rfc3339_millis(text: &str) -> i64 {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_answers_in_the_api_version_kubectl_asks_for() {
    let server = Server::start().await;
    let home = Home::new();
    logged_in(&server, &home, &[]).await;
    let jwks = server.jwks().await;
    for (exec_info, expected) in [
        (None, "client.authentication.k8s.io/v1"),
        (
            Some(
                r#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","spec":{"interactive":false}}"#,
            ),
            "client.authentication.k8s.io/v1beta1",
        ),
        (
            Some(
                r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#,
            ),
            "client.authentication.k8s.io/v1",
        ),
    ] {
        let mut command = home.credential(&server);
        if let Some(info) = exec_info {
            command.env("KUBERNETES_EXEC_INFO", info);
        }
        let out = output(command).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let credential: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(credential["apiVersion"], expected, "{exec_info:?}");
        assert_eq!(credential["kind"], "ExecCredential");
        let token = credential["status"]["token"].as_str().unwrap();
        verify_jwt(&jwks, token, &server.issuer, "kubernetes").unwrap();
        let exp_millis = claims(token)["exp"].as_i64().unwrap() * 1000;
        let expiry = parse_rfc3339_millis(
            credential["status"]["expirationTimestamp"]
                .as_str()
                .unwrap(),
        );
        assert!(
            expiry < exp_millis,
            "expirationTimestamp {expiry} is before exp {exp_millis}"
        );
        // A 60 s token: the margin is the full 10 s.
        assert_eq!(exp_millis - expiry, 10_000, "{credential}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_after_the_session_was_revoked_says_to_log_in() {
    let server = Server::start_with(&[TTL]).await;
    let home = Home::new();
    logged_in(&server, &home, &[]).await;
    let entry = home.cache_entry();
    let refresh = entry["refresh_token"].as_str().unwrap();
    let answer = server
        .post(
            "/revoke",
            &[
                ("token", refresh),
                ("token_type_hint", "refresh_token"),
                ("client_id", "kubernetes"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    sleep_until_wall(entry["expires_at"].as_i64().unwrap() * 1000 + 50).await;

    let out = output(home.credential(&server)).await;
    let said = assert_one_clear_error(&out, &["tessera login"]);
    assert!(said.contains("session"), "{said}");
    // Again, now that the cache holds no refresh token, and with kubectl's exec info.
    let mut command = home.credential(&server);
    command.env(
        "KUBERNETES_EXEC_INFO",
        r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#,
    );
    let out = output(command).await;
    assert_one_clear_error(&out, &["tessera login"]);
    assert_eq!(count(&server, "TokenRefreshed"), 0);
}

/// When the session has ended and kubectl says a terminal is attached, `tessera credential`
/// starts a browser login (the URL on stderr, stdout kept for the ExecCredential), and answers
/// with the new session's token.
#[tokio::test]
async fn credential_with_a_terminal_signs_in_again_when_the_session_has_ended() {
    let server = Server::start_with(&[TTL]).await;
    let home = Home::new();
    logged_in(&server, &home, &[]).await;
    let entry = home.cache_entry();
    let answer = server
        .post(
            "/revoke",
            &[
                ("token", entry["refresh_token"].as_str().unwrap()),
                ("token_type_hint", "refresh_token"),
                ("client_id", "kubernetes"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    sleep_until_wall(entry["expires_at"].as_i64().unwrap() * 1000 + 50).await;

    let mut command = home.credential(&server);
    command
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":true}}"#,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard::spawn(command);
    let mut stdout = lines_of(child.0.stdout.take().unwrap());
    let mut stderr = lines_of(child.0.stderr.take().unwrap());
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stderr.recv())
            .await
            .expect("tessera credential prints a login URL")
            .expect("tessera credential prints a login URL before exiting");
        let text = line.trim();
        if text.starts_with("https://") && text.contains("/authorize?") {
            break text.to_owned();
        }
    };
    sign_in(&server, &url).await;
    assert!(child.wait(Duration::from_secs(30)).await.success());
    let credential: Value =
        serde_json::from_str(&stdout.recv().await.expect("an ExecCredential on stdout")).unwrap();
    let token = credential["status"]["token"].as_str().unwrap();
    assert_ne!(token, entry["id_token"].as_str().unwrap());
    server.verify(token, "kubernetes").await.unwrap();
    assert_eq!(home.cache_entry()["id_token"].as_str().unwrap(), token);
}

// ---------------------------------------------------------------------------------------------
// Issue 11: the kubeconfig is edited under client-go's lock; the token cache directory is private

/// kubectl run by the test itself, as a user would in another terminal.
fn kubectl_now(home: &Home, args: &[&str]) {
    let out = home.kubectl(KUBECTL, args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_kubeconfig_edits_made_while_the_browser_was_open() {
    let server = Server::start().await;
    let home = Home::new();
    write_private(&home.kubeconfig(), EXISTING);
    let finished = login_while(&server, &home, &[], || {
        kubectl_now(
            &home,
            &["config", "set-credentials", "side", "--token=side-token"],
        );
        kubectl_now(
            &home,
            &[
                "config",
                "set-context",
                "side",
                "--cluster=prod",
                "--user=side",
            ],
        );
    })
    .await;
    assert!(finished.success, "{}", finished.stderr);

    let doc = read_yaml(&home.kubeconfig());
    let users = names(&doc, "users");
    let contexts = names(&doc, "contexts");
    for (list, name) in [
        (&users, "admin"),
        (&users, "side"),
        (&users, "dev@tessera-dev"),
        (&contexts, "prod"),
        (&contexts, "side"),
        (&contexts, "tessera-dev"),
    ] {
        assert!(list.iter().any(|n| n == name), "{name} in {list:?}");
    }
    let side = doc["users"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "side")
        .unwrap();
    assert_eq!(side["user"]["token"], "side-token");
    assert_eq!(doc["current-context"], "tessera-dev");
    assert_eq!(mode(&home.kubeconfig()), 0o600);
    let lock = PathBuf::from(format!("{}.lock", home.kubeconfig().display()));
    assert!(!lock.exists(), "client-go's lock file is removed again");
    // kubectl still edits it: no lock is left behind.
    kubectl_now(&home, &["config", "use-context", "side"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cache_directory_others_can_open_is_refused_with_the_chmod() {
    let server = Server::start().await;
    let home = Home::new();
    logged_in(&server, &home, &[]).await;
    let dir = home.cache_dir();
    assert_eq!(mode(&dir), 0o700, "created for its owner only");

    for open in [0o755, 0o750, 0o707] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
        let out = output(home.credential(&server)).await;
        let chmod = format!("run `chmod 700 {}`", dir.display());
        let said = assert_one_clear_error(&out, &[&chmod]);
        assert!(said.contains(&format!("(mode {open:04o})")), "{said}");
        // `tessera login` refuses it before anyone goes through the browser.
        let finished = login(&server, &home, &[]).await;
        assert!(!finished.success, "{}", finished.stderr);
        assert!(finished.stderr.contains(&chmod), "{}", finished.stderr);
        assert!(
            !finished.stderr.contains("/authorize?"),
            "{}",
            finished.stderr
        );
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(output(home.credential(&server)).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cache_directory_of_another_user_is_refused() {
    let server = Server::start().await;
    let home = Home::new();
    logged_in(&server, &home, &[]).await;
    let dir = home.cache_dir();
    // Only root can give a directory away; as anyone else this test has nothing to show.
    if std::os::unix::fs::chown(&dir, Some(65534), None).is_err() {
        eprintln!("skipped: cannot chown without root");
        return;
    }
    let out = output(home.credential(&server)).await;
    let said = assert_one_clear_error(&out, &["TESSERA_CACHE_DIR"]);
    assert!(said.contains("65534"), "{said}");
}
