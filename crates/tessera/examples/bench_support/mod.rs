//! What the benchmark drivers (`bench_refresh`, `bench_proxy`) share: the machine they run on,
//! the tessera binary beside them, and a browser's view of the provider's login form. Included
//! by each with `#[path]` (examples cannot depend on one another).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tessera_core::clock::{Clock, SystemClock, monotonic_now};

/// USER_HZ, the unit of `/proc/PID/stat` times: 100 on every mainstream Linux build.
pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `target/release/tessera`: the example lives in `target/release/examples/`.
pub(crate) fn default_tessera() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} has no grandparent directory", exe.display()))?;
    Ok(release.join("tessera"))
}

/// An HTTP/1.1 client trusting `tls`'s roots (the dev CA), following no redirect, with
/// `TCP_NODELAY` and a 30 s timeout.
pub(crate) fn http_client(tls: &rustls::ClientConfig, cookies: bool) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .http1_only()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(cookies)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

/// The hidden inputs of the login form (CSRF token and the carried request).
pub(crate) fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let between = |text: &str, start: &str| {
        let from = text.find(start)? + start.len();
        let len = text[from..].find('"')?;
        Some(text[from..from + len].to_owned())
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|part| {
            Some((
                unescape(&between(part, "name=\"")?),
                unescape(&between(part, "value=\"")?),
            ))
        })
        .collect()
}

/// Busy time of all cores together (everything but idle and iowait), from `/proc/stat`.
pub(crate) fn machine_cpu_ms() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let busy: u64 = ticks
        .iter()
        .enumerate()
        // user nice system idle iowait irq softirq steal guest guest_nice; guests are already
        // inside user and nice.
        .filter(|(i, _)| !matches!(i, 3 | 4 | 8 | 9))
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 * 1000.0 / clock_ticks_per_second())
}

pub(crate) fn tls_trusting(ca: &Path) -> Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub(crate) fn today() -> String {
    let now = SystemClock.now();
    time::OffsetDateTime::from_unix_timestamp(now.as_secs())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} s after the epoch", now.as_secs()))
}

pub(crate) fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The date, the CPU model, the core count and the kernel: what a figure was measured on.
pub(crate) fn print_machine() {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("date: {}", today());
    println!(
        "machine: nproc {}, {model}, Linux {}",
        cores(),
        kernel.trim()
    );
}

/// Other processes share the cores with the server and the signing measurement: say so.
pub(crate) fn warn_if_busy() -> Result<()> {
    let before = machine_cpu_ms()?;
    let started = monotonic_now();
    std::thread::park_timeout(Duration::from_secs(1));
    let busy = (machine_cpu_ms()? - before) / 1000.0 / started.elapsed().as_secs_f64();
    println!("machine busy before the run: {busy:.2} cores");
    if busy > 0.15 {
        eprintln!(
            "warning: other processes use {busy:.2} of {} cores; every figure below will be low",
            cores()
        );
    }
    Ok(())
}

/// Waits up to 10 s for `healthz` to answer 2xx (a server just started).
pub(crate) async fn wait_healthy(client: &reqwest::Client, healthz: &str) -> Result<()> {
    for _ in 0..200 {
        if let Ok(r) = client.get(healthz).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the server did not become healthy within 10 s")
}
