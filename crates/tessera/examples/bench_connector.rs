//! The driver of `bench/connector` (issue 16, "Done when"): what re-validating a directory
//! person costs a refresh, against a local user's refresh in the same run.
//!
//! It starts a real OpenLDAP `slapd` (from `scripts/test-tools slapd`) on a free loopback port,
//! `ldaps://` only, with a test CA made now, seeded with N people (a password and two groups
//! each), and two release `tessera serve --dev` servers whose configuration gets an LDAP
//! connector and the local users file: one with the default `revalidate_interval` (5m), one
//! with `revalidate_interval: 0s`, so that every refresh of a directory person asks the
//! directory again. Then it mints sessions and runs the same refresh load in three
//! configurations:
//!
//! - `local`: the dev user of the users file (one password login, then the SSO cookie);
//! - `directory`: N directory people, one login each, on the 5m server: a refresh reads the
//!   person's stored identity and finds it fresh;
//! - `revalidating`: the same people on the 0s server: a refresh takes the person's lease, asks
//!   the directory (search for the person, search for their groups) and stores the answer.
//!
//! Each chain refreshes one session (one person) on its own HTTP/1.1 keep-alive connection, so
//! no two concurrent refreshes share a person's lease. Rounds interleave the configurations (a
//! round runs every C for every configuration) and the table reports medians over the rounds;
//! the count of `UpstreamRevalidated` audit lines in a window, per refresh, shows how many
//! refreshes actually asked the directory, and the CPU time of the server under test and of
//! slapd in the window (from `/proc`), per refresh, what a re-validation costs beside its wait.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tessera_core::clock::monotonic_now;

#[path = "bench_support/mod.rs"]
mod bench_support;
#[path = "bench_support/code_flow.rs"]
mod code_flow;
#[path = "bench_support/stats.rs"]
mod stats;
use bench_support::{default_tessera, hidden_fields, tls_trusting, warn_if_busy};
use code_flow::{CLIENT_ID, auth_query, code_from, exchange_at, location, token_request};
use stats::median;

const USAGE: &str = "\
usage: bench_connector [--people N] [--duration SECS] [--warmup SECS] [--concurrency 8,64]
                       [--rounds N] [--tessera PATH]

  --people N          directory people seeded and signed in, one session each; also the
                      number of local sessions; at least the largest C (default 72)
  --duration SECS     measured seconds per configuration and level (default 10)
  --warmup SECS       unmeasured seconds before each (default 2)
  --concurrency LIST  concurrent refresh chains, comma-separated (default 8,64)
  --rounds N          interleaved rounds; the table shows their medians (default 3)
  --tessera PATH      the server binary (default: target/release/tessera beside this example)";

const DEV_PASSWORD: &str = "bench password, not a secret";

const SUFFIX: &str = "dc=corp,dc=example";
const PEOPLE: &str = "ou=People,dc=corp,dc=example";
const GROUPS: &str = "ou=Groups,dc=corp,dc=example";
const SERVICE_DN: &str = "cn=tessera,ou=Services,dc=corp,dc=example";
const SERVICE_PASSWORD: &str = "tessera-bind-password";
const ADMIN_DN: &str = "cn=admin,dc=corp,dc=example";
const ADMIN_PASSWORD: &str = "admin-password";
/// People are spread over this many team groups, besides the group everyone is in.
const TEAMS: usize = 8;

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    bench_support::print_machine();
    print_load("at start");
    warn_if_busy()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = runtime.block_on(run(&options))?;
    print_table(&options, &results);
    print_load("at end");
    Ok(())
}

/// The command line.
struct Options {
    people: usize,
    duration: Duration,
    warmup: Duration,
    concurrency: Vec<usize>,
    rounds: usize,
    tessera: PathBuf,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            people: 72,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            concurrency: vec![8, 64],
            rounds: 3,
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
                "--people" => options.people = value.parse().context("--people")?,
                "--duration" => options.duration = seconds(&value).context("--duration")?,
                "--warmup" => options.warmup = seconds(&value).context("--warmup")?,
                "--rounds" => options.rounds = value.parse().context("--rounds")?,
                "--tessera" => options.tessera = PathBuf::from(value),
                "--concurrency" => {
                    options.concurrency = value
                        .split(',')
                        .map(|c| c.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .context("--concurrency wants a list like 8,64")?;
                }
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        let largest = options.concurrency.iter().copied().max().unwrap_or(0);
        if options.concurrency.contains(&0) || options.people < largest || options.rounds == 0 {
            bail!(
                "--people ({}) must cover the largest concurrency ({largest}); no level and no round count may be 0",
                options.people
            );
        }
        Ok(options)
    }
}

fn seconds(text: &str) -> Result<Duration> {
    Ok(Duration::try_from_secs_f64(text.parse::<f64>()?)?)
}

/// `/proc/loadavg`'s three averages: the machine is shared, so the reader should know.
fn print_load(when: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load average {when}: {}", averages.join(" "));
}

/// One configuration under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Local,
    Directory,
    Revalidating,
}

const SETUPS: [Setup; 3] = [Setup::Local, Setup::Directory, Setup::Revalidating];

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Local => "local users",
            Setup::Directory => "directory, revalidate_interval 5m",
            Setup::Revalidating => "directory, revalidate_interval 0s",
        }
    }

    fn index(self) -> usize {
        match self {
            Setup::Local => 0,
            Setup::Directory => 1,
            Setup::Revalidating => 2,
        }
    }
}

/// What one window measured.
struct Window {
    setup: Setup,
    concurrency: usize,
    refreshes: u64,
    seconds: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// `UpstreamRevalidated` lines the server's audit log gained in the window.
    revalidated: u64,
    /// CPU time of the server under test in the window.
    server_cpu_ms: f64,
    /// CPU time of slapd in the window.
    slapd_cpu_ms: f64,
}

impl Window {
    fn per_second(&self) -> f64 {
        self.refreshes as f64 / self.seconds
    }
}

async fn run(options: &Options) -> Result<Vec<Window>> {
    let scratch = scratch_dir()?;
    let directory = Directory::start(&scratch, options.people).await?;
    println!(
        "slapd: {} (pid {}), {} people, files in {}",
        directory.url(),
        directory.child.id(),
        options.people,
        directory.dir.path().display()
    );
    let mut lazy = Server::start(&options.tessera, &scratch, &directory, None).await?;
    let mut eager = Server::start(&options.tessera, &scratch, &directory, Some("0s")).await?;
    for server in [&lazy, &eager] {
        println!(
            "server: {} (pid {}), data in {}",
            server.issuer,
            server.child.id(),
            server.dir.path().display()
        );
    }
    let started = monotonic_now();
    let local = mint_local(&lazy, options.people).await?;
    let mut people = Vec::new();
    let mut rechecked = Vec::new();
    for i in 0..options.people {
        people.push(mint_person(&lazy, i).await?);
        rechecked.push(mint_person(&eager, i).await?);
    }
    println!(
        "minted {} local sessions and {} directory sessions on each server in {:.1} s",
        local.len(),
        people.len(),
        started.elapsed().as_secs_f64()
    );
    let pools = [local, people, rechecked].map(|tokens| Arc::new(Mutex::new(tokens)));
    let mut windows = Vec::new();
    for round in 1..=options.rounds {
        for &concurrency in &options.concurrency {
            for setup in SETUPS {
                let server = if setup == Setup::Revalidating {
                    &mut eager
                } else {
                    &mut lazy
                };
                let pools = &pools[setup.index()];
                let slapd = directory.child.id();
                let window = run_window(server, slapd, pools, setup, concurrency, options).await?;
                let refreshes = window.refreshes.max(1) as f64;
                println!(
                    "round {round}, C={concurrency}, {}: {:.0} refreshes/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, {:.2} re-validations per refresh, CPU ms per refresh: tessera {:.2}, slapd {:.2}",
                    setup.name(),
                    window.per_second(),
                    window.p50_ms,
                    window.p99_ms,
                    window.errors,
                    window.revalidated as f64 / refreshes,
                    window.server_cpu_ms / refreshes,
                    window.slapd_cpu_ms / refreshes,
                );
                directory.check_alive()?;
                lazy.check_alive()?;
                eager.check_alive()?;
                windows.push(window);
            }
        }
    }
    Ok(windows)
}

/// `target/bench-connector/`: the scratch space of every run (each in a temp dir of its own).
fn scratch_dir() -> Result<PathBuf> {
    let release = default_tessera()?;
    let target = release
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} is not inside a target directory", release.display()))?;
    let dir = target.join("bench-connector");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A file only its owner can read (slapd and tessera refuse a secret others can read).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

/// The paths `scripts/test-tools slapd` prints.
struct Tools {
    slapd: PathBuf,
    /// ldapadd and the other ldap-utils.
    bin: PathBuf,
    modules: PathBuf,
    schema: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-tools");
        let output = Command::new("bash")
            .arg(&script)
            .arg("slapd")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} slapd failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let paths: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| PathBuf::from(l.trim()))
            .collect();
        let [slapd, bin, modules, schema] = <[PathBuf; 4]>::try_from(paths)
            .map_err(|paths| anyhow!("test-tools slapd printed {paths:?}"))?;
        Ok(Tools {
            slapd,
            bin,
            modules,
            schema,
        })
    }
}

/// A running slapd with the seed data, killed by PID when dropped; its files go after it.
struct Directory {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Directory {
    async fn start(scratch: &Path, people: usize) -> Result<Directory> {
        let tools = Tools::find()?;
        let mut dir = tempfile::Builder::new()
            .prefix("slapd-")
            .tempdir_in(scratch)
            .context("cannot create slapd's directory")?;
        write_pki(dir.path())?;
        write_private(&dir.path().join("bind-password"), SERVICE_PASSWORD)?;
        std::fs::write(
            dir.path().join("slapd.conf"),
            slapd_conf(dir.path(), &tools),
        )?;
        std::fs::create_dir(dir.path().join("data"))?;
        let mut failures = Vec::new();
        // Again on another port if the free one was taken in the meantime.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log = std::fs::File::create(dir.path().join("slapd.log"))?;
            let child = Command::new(&tools.slapd)
                .current_dir(dir.path())
                .arg("-f")
                .arg(dir.path().join("slapd.conf"))
                .args(["-h", &format!("ldaps://127.0.0.1:{port}/")])
                // -d keeps it in the foreground; level 0 logs nothing per operation.
                .args(["-d", "0"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", tools.slapd.display()))?;
            let mut directory = Directory { child, dir, port };
            match directory.wait_listening().await {
                Ok(()) => {
                    directory.seed(&tools, people)?;
                    return Ok(directory);
                }
                Err(e) => {
                    failures.push(format!("{e:#}"));
                    let _ = directory.child.kill();
                    let _ = directory.child.wait();
                    // Take the directory back for the next try; the dropped shell kills nothing.
                    dir = std::mem::replace(&mut directory.dir, tempfile::tempdir()?);
                }
            }
        }
        bail!("slapd did not start:\n{}", failures.join("\n----\n"))
    }

    fn url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.port)
    }

    /// slapd writes its PID file after binding, and listens right after.
    async fn wait_listening(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let started = monotonic_now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait()? {
                bail!("slapd exited ({status}):\n{}", self.log());
            }
            if std::fs::read_to_string(self.dir.path().join("slapd.pid"))
                .is_ok_and(|p| p.trim() == pid)
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("slapd did not listen within 20 s:\n{}", self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    fn check_alive(&self) -> Result<()> {
        if Path::new(&format!("/proc/{}", self.child.id())).exists() {
            Ok(())
        } else {
            bail!(
                "slapd (pid {}) has exited:\n{}",
                self.child.id(),
                self.log()
            )
        }
    }

    /// Adds the seed entries with ldapadd as the root DN, trusting only the test CA (HOME and
    /// the working directory are slapd's directory, so no user's ldaprc is read).
    fn seed(&self, tools: &Tools, people: usize) -> Result<()> {
        use std::io::Write as _;
        let mut child = Command::new(tools.bin.join("ldapadd"))
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("LDAPTLS_CACERT", self.dir.path().join("ca.pem"))
            .env("LDAPTLS_REQCERT", "demand")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run ldapadd")?;
        let mut input = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("ldapadd's stdin is not piped"))?;
        input.write_all(seed(people).as_bytes())?;
        drop(input);
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "ldapadd failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// A test CA and the directory's certificate (127.0.0.1, localhost) it signs.
fn write_pki(dir: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "tessera bench directory CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    write_private(&dir.join("server-key.pem"), &key.serialize_pem())
}

/// slapd.conf: schemas, TLS, one mdb database, and ACLs (the service account reads People and
/// Groups, never a password; a password is only for binding).
fn slapd_conf(dir: &Path, tools: &Tools) -> String {
    let (d, schema, modules) = (
        dir.display(),
        tools.schema.display(),
        tools.modules.display(),
    );
    // Debian builds the mdb backend as a module; another build may have it built in.
    let back_mdb = if tools.modules.join("back_mdb.la").exists() {
        "moduleload back_mdb"
    } else {
        ""
    };
    let admin = ssha(ADMIN_PASSWORD);
    format!(
        r#"include "{schema}/core.schema"
include "{schema}/cosine.schema"
include "{schema}/inetorgperson.schema"
modulepath "{modules}"
{back_mdb}
pidfile "{d}/slapd.pid"
argsfile "{d}/slapd.args"
TLSCACertificateFile "{d}/ca.pem"
TLSCertificateFile "{d}/server.pem"
TLSCertificateKeyFile "{d}/server-key.pem"

database mdb
maxsize 67108864
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {admin}
directory "{d}/data"
index objectClass eq
index uid,cn,member eq

access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.subtree="{PEOPLE}"
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
access to dn.subtree="{GROUPS}"
    by dn.exact="{SERVICE_DN}" read
    by * none
access to *
    by self read
    by * none
"#
    )
}

fn person_uid(i: usize) -> String {
    format!("person{i:04}")
}

fn person_password(i: usize) -> String {
    format!("{}-password", person_uid(i))
}

/// The service account, `people` people, then the groups that name them: `k8s-everyone` and
/// one of the `k8s-team-T` groups each.
fn seed(people: usize) -> String {
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: corp\no: Corp\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: People\n\n\
         dn: {GROUPS}\nobjectClass: organizationalUnit\nou: Groups\n\n\
         dn: ou=Services,{SUFFIX}\nobjectClass: organizationalUnit\nou: Services\n\n\
         dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n\
         cn: tessera\nuserPassword: {}\n\n",
        ssha(SERVICE_PASSWORD)
    );
    let dn = |i: usize| format!("uid={},{PEOPLE}", person_uid(i));
    for i in 0..people {
        let uid = person_uid(i);
        ldif += &format!(
            "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: Person {i}\nsn: {i}\n\
             displayName: Person {i}\nmail: {uid}@corp.example\nuserPassword: {}\n\n",
            dn(i),
            ssha(&person_password(i))
        );
    }
    let mut groups = vec![("k8s-everyone".to_owned(), (0..people).collect::<Vec<_>>())];
    for team in 0..TEAMS.min(people) {
        let members = (team..people).step_by(TEAMS).collect();
        groups.push((format!("k8s-team-{team}"), members));
    }
    for (group, members) in groups {
        ldif += &format!("dn: cn={group},{GROUPS}\nobjectClass: groupOfNames\ncn: {group}\n");
        for i in members {
            ldif += &format!("member: {}\n", dn(i));
        }
        ldif += "\n";
    }
    ldif
}

/// `{SSHA}` as slappasswd writes it: base64(SHA-1(password ‖ salt) ‖ salt).
fn ssha(password: &str) -> String {
    use aws_lc_rs::digest;
    let salt: [u8; 8] = rand::random();
    let mut context = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(password.as_bytes());
    context.update(&salt);
    let mut hash = context.finish().as_ref().to_vec();
    hash.extend_from_slice(&salt);
    format!("{{SSHA}}{}", STANDARD.encode(hash))
}

/// The `connectors:` section: the directory over ldaps, then the users file as `local`.
fn connectors(directory: &Directory, revalidate_interval: Option<&str>) -> String {
    let interval = revalidate_interval
        .map(|i| format!("    revalidate_interval: {i}\n"))
        .unwrap_or_default();
    format!(
        "connectors:\n\
         \x20 - id: corp\n    type: ldap\n    name: Corporate LDAP\n    url: {url}\n\
         \x20   certificate_authority: {ca}\n    bind_dn: \"{SERVICE_DN}\"\n    bind_password_file: {pw}\n\
         \x20   timeout: 2s\n{interval}\
         \x20   user_search: {{base_dn: \"{PEOPLE}\", filter: \"(objectClass=inetOrgPerson)\", username_attribute: uid, id_attribute: entryUUID, email_attribute: mail, name_attribute: displayName}}\n\
         \x20   group_search: {{base_dn: \"{GROUPS}\", filter: \"(objectClass=groupOfNames)\", user_matchers: [{{user_attribute: distinguishedName, group_attribute: member}}], name_attribute: cn}}\n\
         \x20 - id: local\n    type: local\n    name: Local users\n",
        url = directory.url(),
        ca = directory.dir.path().join("ca.pem").display(),
        pw = directory.dir.path().join("bind-password").display(),
    )
}

/// A running release `tessera serve --dev`, killed by PID when dropped; its data directory
/// goes after it (field order).
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    issuer: String,
    tls: rustls::ClientConfig,
    /// Bytes of `audit.log` already counted.
    audit_read: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Lets a first start write the dev data directory, then adds the connectors to its
    /// configuration and starts again.
    async fn start(
        binary: &Path,
        scratch: &Path,
        directory: &Directory,
        revalidate_interval: Option<&str>,
    ) -> Result<Server> {
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --release --bin tessera` (bench/connector does)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tessera-")
            .tempdir_in(scratch)
            .context("cannot create a data directory")?;
        let first = Server::launch(binary, dir).await?;
        let dir = first.stop()?;
        let config = dir.path().join("tessera.yaml");
        let mut yaml = std::fs::read_to_string(&config)?;
        yaml += &connectors(directory, revalidate_interval);
        write_private(&config, &yaml)?;
        Server::launch(binary, dir).await
    }

    async fn launch(binary: &Path, dir: tempfile::TempDir) -> Result<Server> {
        let mut child = Command::new(binary)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("TESSERA_DEV_PASSWORD", DEV_PASSWORD)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take();
        let (lines_tx, lines_rx) = mpsc::channel();
        // Drains the server's stdout for its whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        // Owns the child from here on, so an early return kills it.
        let mut server = Server {
            child,
            dir,
            issuer: String::new(),
            tls: empty_tls()?,
            audit_read: 0,
        };
        server.issuer = loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(60))
                .context("the server printed no `issuer:` line within 60 s")?;
            if let Some(issuer) = line.strip_prefix("issuer: ") {
                break issuer.to_owned();
            }
        };
        server.tls = tls_trusting(&server.dir.path().join("ca.pem"))?;
        bench_support::wait_healthy(&server.client(false)?, &server.url("/healthz")).await?;
        Ok(server)
    }

    /// Kills the server and hands back its data directory.
    fn stop(mut self) -> Result<tempfile::TempDir> {
        let placeholder = tempfile::TempDir::new()?;
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(std::mem::replace(&mut self.dir, placeholder))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    fn token_url(&self) -> Result<reqwest::Url> {
        Ok(reqwest::Url::parse(&self.url("/token"))?)
    }

    fn client(&self, cookies: bool) -> Result<reqwest::Client> {
        bench_support::http_client(&self.tls, cookies)
    }

    fn check_alive(&self) -> Result<()> {
        if Path::new(&format!("/proc/{}", self.child.id())).exists() {
            Ok(())
        } else {
            bail!("the server (pid {}) has exited", self.child.id())
        }
    }

    /// `UpstreamRevalidated` lines appended to the audit log since the last call.
    fn revalidations_since_last(&mut self) -> Result<u64> {
        let path = self.dir.path().join("audit.log");
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.seek(SeekFrom::Start(self.audit_read))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        // Only whole lines: a line being written is counted next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.audit_read += whole as u64;
        Ok(text[..whole].matches("\"UpstreamRevalidated\"").count() as u64)
    }
}

/// A placeholder until the server's CA exists.
fn empty_tls() -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The dev user's sessions: one password login, then the SSO cookie for the rest.
async fn mint_local(server: &Server, count: usize) -> Result<Vec<String>> {
    let browser = server.client(true)?;
    let first = sign_in(server, &browser, "local", "dev", DEV_PASSWORD).await?;
    let token_url = server.token_url()?;
    let mut tokens = vec![exchange_at(&browser, &token_url, &first).await?];
    while tokens.len() < count {
        let response = browser
            .get(server.url("/authorize"))
            .query(&auth_query())
            .send()
            .await?;
        let code = code_from(&location(&response)?)?;
        tokens.push(exchange_at(&browser, &token_url, &code).await?);
    }
    Ok(tokens)
}

/// Person `i`'s session: a login through the directory's form in a fresh browser.
async fn mint_person(server: &Server, i: usize) -> Result<String> {
    let browser = server.client(true)?;
    let code = sign_in(
        server,
        &browser,
        "corp",
        &person_uid(i),
        &person_password(i),
    )
    .await?;
    exchange_at(&browser, &server.token_url()?, &code).await
}

/// `/authorize`, the form of `connector` on the login page, and the code from the final
/// redirect.
async fn sign_in(
    server: &Server,
    browser: &reqwest::Client,
    connector: &str,
    username: &str,
    password: &str,
) -> Result<String> {
    let response = browser
        .get(server.url("/authorize"))
        .query(&auth_query())
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "/authorize answered {} instead of the login page",
            response.status()
        );
    }
    let html = response.text().await?;
    let marker = format!("name=\"connector_id\" value=\"{connector}\"");
    let form = html
        .split("<form")
        .find(|form| form.contains(&marker))
        .ok_or_else(|| anyhow!("the login page has no form for connector {connector}"))?;
    let mut fields = hidden_fields(form);
    fields.push(("username".into(), username.into()));
    fields.push(("password".into(), password.into()));
    let response = browser
        .post(server.url("/login"))
        .form(&fields)
        .send()
        .await?;
    code_from(&location(&response)?)
        .with_context(|| format!("signing in {username} through {connector}"))
}

/// When refreshes count: one that starts and ends inside the span.
#[derive(Clone, Copy)]
struct Span {
    start: Instant,
    end: Instant,
}

/// What one chain did, and its last good refresh token for the next window.
struct ChainReport {
    latencies_micros: Vec<u32>,
    errors: u64,
    token: Option<String>,
}

/// C chains of refreshes on `setup`'s sessions for the warm-up, then the measured span.
async fn run_window(
    server: &mut Server,
    slapd: u32,
    pool: &Arc<Mutex<Vec<String>>>,
    setup: Setup,
    concurrency: usize,
    options: &Options,
) -> Result<Window> {
    let start = monotonic_now() + options.warmup;
    let span = Span {
        start,
        end: start + options.duration,
    };
    let mut chains = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let token =
            take(pool).ok_or_else(|| anyhow!("no live session left for C={concurrency}"))?;
        let (client, url, pool) = (server.client(false)?, server.token_url()?, Arc::clone(pool));
        chains.spawn(async move { chain(client, url, token, pool, span).await });
    }
    tokio::time::sleep_until(span.start.into()).await;
    server.revalidations_since_last()?;
    let (server_stat, slapd_stat) = (proc_stat(server.child.id()), proc_stat(slapd));
    let (server_before, slapd_before) = (cpu_ms(&server_stat)?, cpu_ms(&slapd_stat)?);
    tokio::time::sleep_until(span.end.into()).await;
    let revalidated = server.revalidations_since_last()?;
    let server_cpu_ms = cpu_ms(&server_stat)? - server_before;
    let slapd_cpu_ms = cpu_ms(&slapd_stat)? - slapd_before;
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(report) = chains.join_next().await {
        let report = report?;
        latencies.extend(report.latencies_micros);
        errors += report.errors;
        if let Some(token) = report.token {
            lock(pool).push(token);
        }
    }
    latencies.sort_unstable();
    let percentile_ms = |p: f64| {
        let Some(last) = latencies.len().checked_sub(1) else {
            return f64::NAN;
        };
        let index = ((last as f64) * p).round() as usize;
        f64::from(latencies[index.min(last)]) / 1000.0
    };
    Ok(Window {
        setup,
        concurrency,
        refreshes: latencies.len() as u64,
        seconds: options.duration.as_secs_f64(),
        errors,
        p50_ms: percentile_ms(0.50),
        p99_ms: percentile_ms(0.99),
        revalidated,
        server_cpu_ms,
        slapd_cpu_ms,
    })
}

fn proc_stat(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/stat"))
}

/// User plus system CPU time of a process (all its threads), from `/proc/PID/stat`.
fn cpu_ms(stat: &Path) -> Result<f64> {
    let text =
        std::fs::read_to_string(stat).with_context(|| format!("cannot read {}", stat.display()))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .ok_or_else(|| anyhow!("{} is not a stat file", stat.display()))?;
    let ticks = |i: usize| -> Result<f64> {
        let field = fields
            .get(i)
            .ok_or_else(|| anyhow!("short {}", stat.display()))?;
        Ok(field.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) * 1000.0 / bench_support::clock_ticks_per_second())
}

/// Refresh, take the new refresh token, repeat, until the span ends. A failed refresh may have
/// spent the token, so the chain moves to a spare session.
async fn chain(
    client: reqwest::Client,
    url: reqwest::Url,
    mut token: String,
    pool: Arc<Mutex<Vec<String>>>,
    span: Span,
) -> ChainReport {
    let mut report = ChainReport {
        latencies_micros: Vec::new(),
        errors: 0,
        token: None,
    };
    loop {
        let started = monotonic_now();
        if started >= span.end {
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
                if started >= span.start && finished <= span.end {
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

fn print_table(options: &Options, windows: &[Window]) {
    println!();
    println!(
        "medians of {} interleaved rounds, {} s per window after {} s warm-up, {} people, one HTTP/1.1 keep-alive connection and one session per chain",
        options.rounds,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        options.people
    );
    println!();
    println!(
        "| C | configuration | refreshes/s | p50 ms | p99 ms | errors | re-validations per refresh | tessera CPU ms/refresh | slapd CPU ms/refresh | refreshes/s ÷ local |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &concurrency in &options.concurrency {
        let of = |setup: Setup| -> Vec<&Window> {
            windows
                .iter()
                .filter(|w| w.setup == setup && w.concurrency == concurrency)
                .collect()
        };
        let rate = |setup: Setup| median(of(setup).iter().map(|w| w.per_second()).collect());
        let local = rate(Setup::Local);
        for setup in SETUPS {
            let mine = of(setup);
            let per_refresh = |cpu: fn(&Window) -> f64| {
                median(
                    mine.iter()
                        .map(|w| cpu(w) / w.refreshes.max(1) as f64)
                        .collect(),
                )
            };
            println!(
                "| {concurrency} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                setup.name(),
                rate(setup),
                median(mine.iter().map(|w| w.p50_ms).collect()),
                median(mine.iter().map(|w| w.p99_ms).collect()),
                mine.iter().map(|w| w.errors).sum::<u64>(),
                median(
                    mine.iter()
                        .map(|w| w.revalidated as f64 / w.refreshes.max(1) as f64)
                        .collect()
                ),
                per_refresh(|w| w.server_cpu_ms),
                per_refresh(|w| w.slapd_cpu_ms),
                rate(setup) / local,
            );
        }
    }
    println!();
    println!(
        "re-validations per refresh = UpstreamRevalidated lines in the audit log during the window ÷ refreshes counted in it; \
         errors are summed over the rounds"
    );
}
