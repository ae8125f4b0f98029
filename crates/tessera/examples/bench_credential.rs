//! The driver of `bench/credential` (issues 3 and 15): how long kubectl waits for its exec
//! plugin, `tessera credential` or `kubectl-tessera credential`.
//!
//! It starts a release `tessera serve --dev`, logs in once with `tessera login --no-browser`
//! (driving the login form over HTTP), then times whole processes, as kubectl sees them
//! (spawn to exit), for each plugin binary given (`--credential PATH`, repeatable; all share
//! the one cache file):
//! - `true`, the floor of starting any process on this machine, measured in the same run;
//! - `PLUGIN credential` answered from the token cache;
//! - `PLUGIN credential` that must refresh: before each run the cached id_token is marked
//!   expired, so the process takes the lock, redeems the refresh token over HTTPS (TLS
//!   handshake included) and rewrites the cache.
//!
//! All kinds are interleaved round by round, so drift of the machine's speed hits them alike;
//! each is also given as a ratio over `true`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tessera_core::clock::monotonic_now;

const USAGE: &str = "\
usage: bench_credential [--runs N] [--refresh-runs N] [--tessera PATH] [--credential PATH]...

  --runs N           cached answers (and runs of `true`) to time (default 1000)
  --refresh-runs N   answers that need a refresh (default 100)
  --tessera PATH     the release server binary (default: target/release/tessera beside this
                     example)
  --credential PATH  a plugin binary to time, repeatable (default: the --tessera binary and
                     kubectl-tessera beside it)";

const PASSWORD: &str = "bench password, not a secret";

fn main() -> Result<()> {
    let Some(options) = Options::parse()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let server = Server::start(&options.tessera, dir.path())?;
    let cache_dir = dir.path().join("cache");
    let kubeconfig = dir.path().join("kubeconfig");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(login(&options.tessera, &server, &cache_dir, &kubeconfig))?;
    let cache_file = only_file(&cache_dir, "json")?;
    let mut plugins: Vec<Plugin> = options
        .credential
        .iter()
        .map(|binary| Plugin::new(binary, &server, &cache_dir))
        .collect::<Result<_>>()?;
    let floor = run_rounds(&options, &cache_file, &mut plugins)?;
    report(&options, floor, &mut plugins);
    Ok(())
}

/// The command line.
struct Options {
    runs: usize,
    refresh_runs: usize,
    tessera: PathBuf,
    credential: Vec<PathBuf>,
}

impl Options {
    /// The options, or `None` for `--help`.
    fn parse() -> Result<Option<Options>> {
        let mut runs = 1000usize;
        let mut refresh_runs = 100usize;
        let mut tessera: Option<PathBuf> = None;
        let mut credential = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--runs" => runs = value()?.parse().context("--runs")?,
                "--refresh-runs" => refresh_runs = value()?.parse().context("--refresh-runs")?,
                "--tessera" => tessera = Some(PathBuf::from(value()?)),
                "--credential" => credential.push(PathBuf::from(value()?)),
                "--help" | "-h" => return Ok(None),
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        let release = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot find target/release")?
            .to_owned();
        let tessera = tessera.unwrap_or_else(|| release.join("tessera"));
        if credential.is_empty() {
            let plugin = tessera.with_file_name("kubectl-tessera");
            credential.push(tessera.clone());
            if plugin.exists() {
                credential.push(plugin);
            }
        }
        Ok(Some(Options {
            runs,
            refresh_runs,
            tessera,
            credential,
        }))
    }
}

/// One plugin binary and its samples.
struct Plugin {
    name: String,
    command: Vec<std::ffi::OsString>,
    cache_dir: PathBuf,
    cached: Vec<f64>,
    refreshing: Vec<f64>,
}

impl Plugin {
    fn new(binary: &Path, server: &Server, cache_dir: &Path) -> Result<Plugin> {
        let name = binary
            .file_name()
            .context("a plugin binary without a file name")?
            .to_string_lossy()
            .into_owned();
        let mut command = vec![binary.as_os_str().to_owned()];
        command.extend(
            [
                "credential",
                "--issuer",
                &server.issuer,
                "--client-id",
                "kubernetes",
                "--user",
                "dev",
                "--certificate-authority",
            ]
            .map(std::ffi::OsString::from),
        );
        command.push(server.ca.clone().into_os_string());
        Ok(Plugin {
            name,
            command,
            cache_dir: cache_dir.to_owned(),
            cached: Vec::new(),
            refreshing: Vec::new(),
        })
    }

    /// The plugin as kubectl runs it.
    fn credential(&self) -> Command {
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .env("TESSERA_CACHE_DIR", &self.cache_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }
}

/// Times the rounds, interleaved, into `plugins`; the samples of `true`.
fn run_rounds(options: &Options, cache_file: &Path, plugins: &mut [Plugin]) -> Result<Vec<f64>> {
    let mut floor = Vec::with_capacity(options.runs);
    let refresh_every = (options.runs / options.refresh_runs.max(1)).max(1);
    for round in 0..options.runs {
        floor.push(time(Command::new("true").stdin(Stdio::null()))?);
        for plugin in plugins.iter_mut() {
            let cached = time(&mut plugin.credential())?;
            plugin.cached.push(cached);
            if round % refresh_every == 0 && plugin.refreshing.len() < options.refresh_runs {
                expire(cache_file)?;
                let refreshed = time(&mut plugin.credential())?;
                plugin.refreshing.push(refreshed);
                if expiry_of(cache_file)? <= 0 {
                    bail!("{} did not replace the expired token", plugin.name);
                }
            }
        }
    }
    Ok(floor)
}

/// Prints the table: percentiles, and each p50 as a ratio over `true`'s.
fn report(options: &Options, mut floor: Vec<f64>, plugins: &mut [Plugin]) {
    let refreshes = plugins.first().map_or(0, |p| p.refreshing.len());
    println!(
        "bench/credential: {} runs of each, {refreshes} refreshes of each, interleaved",
        options.runs
    );
    println!("| what | p50 ms | p99 ms | max ms | p50 / `true` p50 |");
    println!("|---|---|---|---|---|");
    floor.sort_by(f64::total_cmp);
    let base = percentile(&floor, 0.50);
    row("`true` (process start floor)", &floor, base);
    for plugin in plugins.iter_mut() {
        plugin.cached.sort_by(f64::total_cmp);
        plugin.refreshing.sort_by(f64::total_cmp);
        row(
            &format!("`{} credential`, cached", plugin.name),
            &plugin.cached,
            base,
        );
        row(
            &format!("`{} credential`, refresh", plugin.name),
            &plugin.refreshing,
            base,
        );
    }
    for plugin in plugins.iter() {
        println!(
            "{}: cached p50 − true p50 = {:.2} ms (target: cached answer under 5 ms)",
            plugin.name,
            percentile(&plugin.cached, 0.50) - base
        );
    }
}

fn row(name: &str, sorted: &[f64], base: f64) {
    let p50 = percentile(sorted, 0.50);
    println!(
        "| {name} | {p50:.2} | {:.2} | {:.2} | {:.2} |",
        percentile(sorted, 0.99),
        sorted.last().copied().unwrap_or(0.0),
        p50 / base
    );
}

/// Wall time of one process, spawn to exit, in milliseconds; it must succeed.
fn time(command: &mut Command) -> Result<f64> {
    let start = monotonic_now();
    let status = command.status().context("cannot run the process")?;
    let millis = start.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(millis)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Marks the cached id_token as long expired, so the next call must refresh.
fn expire(cache_file: &Path) -> Result<()> {
    let mut entry: Value = serde_json::from_slice(&std::fs::read(cache_file)?)?;
    entry["issued_at"] = 0.into();
    entry["expires_at"] = 60.into();
    std::fs::write(cache_file, serde_json::to_vec(&entry)?)?;
    Ok(())
}

fn expiry_of(cache_file: &Path) -> Result<i64> {
    let entry: Value = serde_json::from_slice(&std::fs::read(cache_file)?)?;
    entry["expires_at"]
        .as_i64()
        .context("the cache entry has no expires_at")
}

fn only_file(dir: &Path, extension: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == extension))
        .with_context(|| format!("no .{extension} file in {}", dir.display()))
}

/// A release `tessera serve --dev`, killed on drop.
struct Server {
    child: Child,
    issuer: String,
    ca: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(tessera: &Path, dir: &Path) -> Result<Server> {
        let mut child = Command::new(tessera)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .env("TESSERA_DEV_PASSWORD", PASSWORD)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", tessera.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (lines, read) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let issuer = loop {
            let line = read
                .recv_timeout(Duration::from_secs(60))
                .context("the server did not print `issuer: URL`")?;
            if let Some(issuer) = line.strip_prefix("issuer: ") {
                break issuer.to_owned();
            }
        };
        Ok(Server {
            child,
            issuer,
            ca: dir.join("data").join("ca.pem"),
        })
    }
}

/// `tessera login --no-browser`, with this program as the browser.
async fn login(tessera: &Path, server: &Server, cache_dir: &Path, kubeconfig: &Path) -> Result<()> {
    let mut child = Command::new(tessera)
        .args(["login", "--no-browser", "--issuer", &server.issuer])
        .arg("--certificate-authority")
        .arg(&server.ca)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("TESSERA_CACHE_DIR", cache_dir)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start tessera login")?;
    let stderr = child.stderr.take().context("login stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .context("tessera login printed no URL")?
            .context("login stderr")?;
        if let Some(url) = line.trim().strip_prefix("https://") {
            break format!("https://{url}");
        }
    };
    let pem = std::fs::read(&server.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let browser = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let form_page = browser.get(&url).send().await?.text().await?;
    let mut form: Vec<(String, String)> = hidden_fields(&form_page);
    form.push(("username".into(), "dev".into()));
    form.push(("password".into(), PASSWORD.into()));
    let answer = browser
        .post(format!("{}/login", server.issuer))
        .form(&form)
        .send()
        .await?;
    let callback = answer
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .context("the login form did not redirect")?
        .to_owned();
    browser.get(&callback).send().await?.error_for_status()?;
    let status = child.wait()?;
    if !status.success() {
        bail!("tessera login failed with {status}");
    }
    Ok(())
}

/// `<input type="hidden" name="N" value="V">` pairs of the login form.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input")
        .skip(1)
        .filter(|tag| tag.contains("type=\"hidden\""))
        .filter_map(|tag| Some((attribute(tag, "name")?, attribute(tag, "value")?)))
        .collect()
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&amp;", "&")
            .replace("&quot;", "\""),
    )
}
