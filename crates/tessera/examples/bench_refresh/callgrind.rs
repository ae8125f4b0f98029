//! `--callgrind N` (issue 14): where a refresh's instructions go, counted by callgrind, so the
//! figure is the same however busy the machine is (the method of bench/proxy).
//!
//! The release server runs under `valgrind --tool=callgrind --instr-atstart=no`; after the login
//! and a warm-up, instrumentation is switched on with `callgrind_control` for exactly N refreshes
//! of one chain (or of C chains at once with `--concurrency C`, N rounded up to a multiple of
//! C), then the counts are dumped. Three ways to reach the server, one dump each:
//! one kept-alive connection (the load of the other modes), a new connection with a full TLS
//! handshake per refresh (what `tessera credential` does: kubectl starts it anew each time), and
//! a new connection resuming the TLS session of an earlier one. Each dump is read with
//! `callgrind_annotate --inclusive=yes` and split into the parts named in [`PARTS`].
//!
//! valgrind's CPU has no AVX-512 and no SHA extensions, so the cryptography takes code paths
//! other than on a machine that has them: the counts compare builds and settings with each
//! other, not with a native run's seconds.

use super::*;

/// Refreshes before the counted ones, so lazily built state is not counted.
const WARM_UP: usize = 30;

/// A part of a refresh: the largest inclusive count among the functions whose name contains
/// `pattern`. The parts that are not `within` another name disjoint subtrees of the call graph;
/// what they leave is the rest (HTTP, TLS records, JSON, the runtime, the handler's own work).
struct Part {
    name: &'static str,
    pattern: &'static str,
    /// Inside another part (shown, not subtracted from the rest).
    within: bool,
}

const PARTS: [Part; 4] = [
    Part {
        name: "signing the id_token and the access token",
        pattern: "tessera_core::jwt::SigningKey::signature",
        within: false,
    },
    Part {
        name: "of which RSA",
        pattern: "_RSA_sign",
        within: true,
    },
    Part {
        name: "TLS handshake",
        pattern: "tokio_rustls::common::handshake::MidHandshake",
        within: false,
    },
    Part {
        name: "SQLite redeem transaction",
        pattern: "tessera_store::sqlite::redeem::redeem_group",
        within: false,
    },
];

/// How the counted refreshes reach the server.
#[derive(Clone, Copy)]
enum Connection {
    KeptAlive,
    NewFullHandshake,
    NewResumed,
}

impl Connection {
    fn name(self) -> &'static str {
        match self {
            Connection::KeptAlive => "one kept-alive connection",
            Connection::NewFullHandshake => "a new connection each, full TLS handshake",
            Connection::NewResumed => "a new connection each, TLS session resumed",
        }
    }
}

/// One dump: the instructions of `refreshes` refreshes, in all and per part.
pub(super) struct Profile {
    connection: Connection,
    chains: usize,
    refreshes: usize,
    total: u64,
    parts: Vec<u64>,
}

pub(super) async fn run(options: &Options, refreshes: usize) -> Result<Vec<Profile>> {
    for tool in ["valgrind", "callgrind_control", "callgrind_annotate"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("--callgrind needs {tool}: install valgrind (apt-get install valgrind)");
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("tessera-bench-callgrind-")
        .tempdir()
        .context("cannot create a temporary data directory")?;
    // Kept after the run, for a closer look with callgrind_annotate.
    let kept = tempfile::Builder::new()
        .prefix("tessera-callgrind-")
        .tempdir()
        .context("cannot create a directory for the dumps")?
        .keep();
    let out = kept.join("callgrind.out");
    let launcher = [
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    println!("starting the server under callgrind (a minute or two: it runs ~50x slower)");
    let server = Server::start_in(options, None, dir, &launcher).await?;
    // One chain unless --concurrency says otherwise: with several, refreshes queue up as under
    // load (valgrind runs one thread at a time, but switches between them).
    let chains = options.concurrency.iter().copied().max().unwrap_or(1);
    let per_chain = refreshes.div_ceil(chains);
    let mut tokens = mint_sessions(&server, chains).await?;
    let mut profiles = Vec::new();
    for connection in [
        Connection::KeptAlive,
        Connection::NewFullHandshake,
        Connection::NewResumed,
    ] {
        // One connection per chain, opened in the warm-up and kept (when it is kept at all).
        let kept = (0..chains)
            .map(|_| server.client(false))
            .collect::<Result<Vec<_>>>()?;
        tokens = drive(&server, connection, &kept, tokens, WARM_UP.div_ceil(chains)).await?;
        callgrind_control(server.pid, "-i", Some("on"))?;
        tokens = drive(&server, connection, &kept, tokens, per_chain).await?;
        callgrind_control(server.pid, "-i", Some("off"))?;
        let before = dumps(&out)?;
        callgrind_control(server.pid, "-d", None)?;
        let dump = wait_for_new_dump(&out, &before).await?;
        let (total, parts) = annotate(&dump)?;
        let refreshes = per_chain * chains;
        println!(
            "{}, {chains} chain(s): {:.3} M instructions per refresh (callgrind_annotate --inclusive=yes {})",
            connection.name(),
            total as f64 / refreshes as f64 / 1e6,
            dump.display()
        );
        profiles.push(Profile {
            connection,
            chains,
            refreshes,
            total,
            parts,
        });
    }
    Ok(profiles)
}

/// Each chain (one per token, each with one of the `kept` clients) refreshes `count` times at
/// once with the others, reaching the server as `connection` says; returns the last tokens.
async fn drive(
    server: &Server,
    connection: Connection,
    kept: &[reqwest::Client],
    tokens: Vec<String>,
    count: usize,
) -> Result<Vec<String>> {
    let url = server.token_url()?;
    let mut fresh = server.tls.clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let mut resumable = server.tls.clone();
    resumable.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let mut chains = tokio::task::JoinSet::new();
    for (mut token, kept) in tokens.into_iter().zip(kept.iter().cloned()) {
        let (url, fresh, resumable) = (url.clone(), fresh.clone(), resumable.clone());
        chains.spawn(async move {
            for _ in 0..count {
                let client = match connection {
                    Connection::KeptAlive => kept.clone(),
                    Connection::NewFullHandshake => bench_support::http_client(&fresh, false)?,
                    Connection::NewResumed => bench_support::http_client(&resumable, false)?,
                };
                token = refresh(&client, &url, &token).await?;
            }
            Ok::<_, anyhow::Error>(token)
        });
    }
    let mut last = Vec::new();
    while let Some(chain) = chains.join_next().await {
        last.push(chain??);
    }
    Ok(last)
}

async fn refresh(client: &reqwest::Client, url: &reqwest::Url, token: &str) -> Result<String> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", CLIENT_ID),
    ];
    token_request(client, url, &form).await
}

fn callgrind_control(pid: u32, flag: &str, value: Option<&str>) -> Result<()> {
    let mut command = Command::new("callgrind_control");
    command.arg(flag);
    command.args(value);
    let output = command
        .arg(pid.to_string())
        .output()
        .context("cannot run callgrind_control")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {flag} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The dump files written so far (`callgrind.out.1`, `.2`, …).
fn dumps(out: &Path) -> Result<Vec<PathBuf>> {
    let dir = out.parent().context("the dump file has a directory")?;
    let prefix = format!(
        "{}.",
        out.file_name()
            .context("the dump file has a name")?
            .to_string_lossy()
    );
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// callgrind_control returns once the dump is requested; the file appears when it is written.
async fn wait_for_new_dump(out: &Path, before: &[PathBuf]) -> Result<PathBuf> {
    for _ in 0..600 {
        if let Some(dump) = dumps(out)?.into_iter().find(|d| !before.contains(d)) {
            // Written in one go by valgrind; a last line marks the end.
            if std::fs::read_to_string(&dump).is_ok_and(|t| t.contains("\ntotals:")) {
                return Ok(dump);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("callgrind wrote no dump within a minute")
}

/// The dump's total instructions and, per entry of [`PARTS`], the largest inclusive count of a
/// function matching it.
fn annotate(dump: &Path) -> Result<(u64, Vec<u64>)> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(dump)
        .output()
        .context("cannot run callgrind_annotate")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut total = None;
    let mut parts = vec![0; PARTS.len()];
    for line in text.lines() {
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        if rest.contains("PROGRAM TOTALS") {
            total = Some(count);
            continue;
        }
        for (part, Part { pattern, .. }) in parts.iter_mut().zip(&PARTS) {
            if rest.contains(pattern) {
                *part = (*part).max(count);
            }
        }
    }
    let total = total.with_context(|| {
        format!(
            "callgrind_annotate printed no PROGRAM TOTALS for {}",
            dump.display()
        )
    })?;
    Ok((total, parts))
}

pub(super) fn print_table(options: &Options, profiles: &[Profile]) {
    println!();
    println!(
        "callgrind, release server, {} id_tokens, user-space instructions per refresh \
         (millions), after {WARM_UP} unmeasured refreshes; a part is its largest inclusive count",
        options.signing_alg
    );
    println!();
    let mut header = "| connection | chains | refreshes | all".to_owned();
    for part in &PARTS {
        header.push_str(&format!(" | {}", part.name));
    }
    println!("{header} | rest |");
    println!("|---|---:|---:|---:{}|---:|", "|---:".repeat(PARTS.len()));
    for profile in profiles {
        let per = |n: u64| n as f64 / profile.refreshes as f64 / 1e6;
        let mut row = format!(
            "| {} | {} | {} | {:.3}",
            profile.connection.name(),
            profile.chains,
            profile.refreshes,
            per(profile.total)
        );
        for &part in &profile.parts {
            row.push_str(&format!(" | {:.3}", per(part)));
        }
        let counted: u64 = profile
            .parts
            .iter()
            .zip(&PARTS)
            .filter(|(_, part)| !part.within)
            .map(|(count, _)| count)
            .sum();
        let rest = profile.total.saturating_sub(counted);
        println!("{row} | {:.3} |", per(rest));
    }
}
