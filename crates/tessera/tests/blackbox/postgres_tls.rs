//! TLS to PostgreSQL (issue 12): `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in
//! `storage.url`, against a PostgreSQL cluster of the test's own (initdb into a temporary
//! directory as the `postgres` user, its own port, `ssl = on` with a CA made here). The server's
//! certificate names `localhost` only, so connecting to 127.0.0.1 is a host name it does not
//! hold. Every refusal is one sentence that names the parameter to fix.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use reqwest::StatusCode;
use tessera_core::clock::monotonic_now;

use crate::cluster::free_port;
use crate::support::{PASSWORD, Server, write_private};

/// Debian's PostgreSQL 15 server programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The role that logs in with a client certificate (its common name), and only that way.
const CERT_USER: &str = "certuser";

// ---------------------------------------------------------------------------------------------
// Certificates

/// A CA made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (subject alternative names) with common name `common_name`,
    /// and its key, both PEM.
    fn sign(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

// ---------------------------------------------------------------------------------------------
// The test's own PostgreSQL

/// A PostgreSQL cluster of one test, stopped (fast shutdown) and deleted when dropped.
struct TlsPostgres {
    child: Mutex<Child>,
    output: Arc<Mutex<Vec<String>>>,
    port: u16,
    /// The data directory and the server's files, owned by `postgres`.
    server_dir: tempfile::TempDir,
    /// The client's files, owned by the test's user: `ca.crt`, `other-ca.crt`, `client.crt`,
    /// `client.key`.
    client_dir: tempfile::TempDir,
    /// A CA the client does not trust.
    other: Ca,
}

impl TlsPostgres {
    /// Starts a cluster with `ssl` on or off; its certificate names `localhost` only and its
    /// `ssl_ca_file` trusts the client certificate in `client_dir`.
    async fn start(ssl: bool) -> TlsPostgres {
        let server_dir = tempfile::tempdir().unwrap();
        let client_dir = tempfile::tempdir().unwrap();
        let (ca, other) = (Ca::new("tessera test CA"), Ca::new("another CA"));
        let (server_cert, server_key) = ca.sign("localhost", &["localhost"]);
        let (client_cert, client_key) = ca.sign(CERT_USER, &[]);
        let s = server_dir.path();
        std::fs::write(s.join("server.crt"), server_cert).unwrap();
        write_private(&s.join("server.key"), server_key);
        std::fs::write(s.join("ca.crt"), &ca.pem).unwrap();
        let c = client_dir.path();
        std::fs::write(c.join("ca.crt"), &ca.pem).unwrap();
        std::fs::write(c.join("other-ca.crt"), &other.pem).unwrap();
        std::fs::write(c.join("client.crt"), client_cert).unwrap();
        write_private(&c.join("client.key"), client_key);
        chown_to_postgres(s);

        let data = s.join("data");
        let initdb = as_postgres(&format!("{PG_BIN}/initdb"), s)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port();
        let d = s.display();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\n\
             ssl = {}\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n\
             ssl_ca_file = '{d}/ca.crt'\nfsync = off\nmax_connections = 40\n",
            if ssl { "on" } else { "off" }
        );
        append(&data.join("postgresql.conf"), &conf);
        // The certificate user may log in only over TLS with its certificate; the superuser
        // with trust, over TLS or not (so a server with ssl = off takes it too).
        let hba = format!(
            "local all all trust\nhostssl all {CERT_USER} 127.0.0.1/32 cert\n\
             host all postgres 127.0.0.1/32 trust\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();

        let mut child = as_postgres(&format!("{PG_BIN}/postgres"), s)
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("postgres starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        for reader in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line);
                }
            });
        }
        let postgres = TlsPostgres {
            child: Mutex::new(child),
            output,
            port,
            server_dir,
            client_dir,
            other,
        };
        postgres.wait_accepting().await;
        postgres.psql(&format!(
            "CREATE ROLE {CERT_USER} LOGIN; CREATE DATABASE tessera OWNER {CERT_USER}"
        ));
        postgres
    }

    async fn wait_accepting(&self) {
        let started = monotonic_now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                panic!("postgres exited ({status}):\n{}", self.output());
            }
            if self.try_psql("SELECT 1").is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("postgres did not accept connections:\n{}", self.output());
    }

    /// SQL over the Unix socket as `postgres` (trust); each `;`-separated statement on its own,
    /// since CREATE DATABASE cannot run inside the transaction of a multi-statement string.
    fn psql(&self, sql: &str) {
        for statement in sql.split(';') {
            self.try_psql(statement).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .arg("-h")
            .arg(self.server_dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql does not run: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql `{sql}`: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Gives the server a certificate from the CA the client does not trust, as a botched
    /// renewal would; PostgreSQL takes it on the reload (SIGHUP) this asks for, a moment later.
    fn swap_in_a_certificate_from_another_ca(&self) {
        let (cert, key) = self.other.sign("localhost", &["localhost"]);
        let s = self.server_dir.path();
        std::fs::write(s.join("server.crt"), cert).unwrap();
        write_private(&s.join("server.key"), key);
        chown_to_postgres(s);
        self.psql("SELECT pg_reload_conf()");
    }

    /// Ends tessera's connections, so that its next ones meet the server's current certificate.
    fn end_tessera_connections(&self) {
        self.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'tessera'",
        );
    }

    /// A client file (`ca.crt`, `other-ca.crt`, `client.crt`, `client.key`).
    fn client_file(&self, name: &str) -> PathBuf {
        self.client_dir.path().join(name)
    }

    /// `postgres://USER@HOST:PORT/tessera?QUERY`.
    fn url(&self, user: &str, host: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/tessera?{query}", self.port)
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let pid = child.id();
        // SIGINT is PostgreSQL's fast shutdown: it ends its backends and exits.
        crate::cluster::signal("-INT", pid);
        let (done, exited) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(move || {
                let _ = child.wait();
                let _ = done.send(());
            });
            if exited.recv_timeout(Duration::from_secs(20)).is_err() {
                crate::cluster::signal("-KILL", pid);
            }
        });
        if std::thread::panicking() {
            eprintln!("---- postgres printed:\n{}\n----", self.output());
        }
    }
}

/// A command run as the `postgres` user (initdb and postgres refuse root), in `dir`.
fn as_postgres(program: &str, dir: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
        .arg(program)
        .current_dir(dir);
    command
}

fn chown_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "chown -R postgres {}", dir.display());
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// tessera

/// `tessera serve --dev` on `url`, which must fail to start: what it printed on stderr.
async fn serve_refuses(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TESSERA_DEV_PASSWORD", PASSWORD)
        .env("TESSERA_LOG", "warn")
        .env("TESSERA_STORAGE__URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("tessera serve ends by itself on a database it cannot use")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "tessera serve started on {url}:\n{stderr}"
    );
    eprintln!("tessera serve on {url} said: {}", stderr.trim());
    stderr
}

/// `tessera serve --dev` on `url`, which must start, answer `/readyz`, and log in and refresh.
async fn serve_works(url: &str) -> Server {
    let server = Server::start_with(&[
        ("TESSERA_STORAGE__URL", url),
        ("TESSERA_STORAGE__POOL__MAX_CONNECTIONS", "4"),
    ])
    .await;
    let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "/readyz on {url}");
    let tokens = server.kubernetes_tokens().await;
    let (status, refreshed) = server
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "a refresh on {url}: {refreshed}");
    server
}

/// `tessera serve --dev` on `url`, its log (stderr) kept line by line: the process, the log,
/// and a client trusting its dev CA, once it is healthy.
async fn serve_logged(
    url: &str,
    dir: &Path,
) -> (
    tokio::process::Child,
    Arc<Mutex<Vec<String>>>,
    String,
    reqwest::Client,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("TESSERA_DEV_PASSWORD", PASSWORD)
        .env("TESSERA_LOG", "warn")
        .env("TESSERA_STORAGE__URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let issuer = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(issuer) = line.strip_prefix("issuer: ") {
                return issuer.to_owned();
            }
        }
        panic!("tessera exited: {}", log.lock().unwrap().join("\n"));
    })
    .await
    .expect("tessera prints its issuer");
    // Keep reading: a closed stdout would fail tessera's later prints.
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let http = crate::support::client(&dir.join("ca.pem"), false);
    (child, log, issuer, http)
}

/// Polls `base/readyz` until it answers `status` (≤ 20 s).
async fn wait_readyz(http: &reqwest::Client, base: &str, status: StatusCode) {
    let started = monotonic_now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == status
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base}/readyz did not answer {status} within 20 s");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn postgres_tls_verify_full_with_the_right_ca_serves_logins_and_refreshes_over_tls() {
    let pg = TlsPostgres::start(true).await;
    let ca = pg.client_file("ca.crt");
    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let _server = serve_works(&url).await;
    let over_tls = pg
        .try_psql(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'tessera' AND s.ssl",
        )
        .unwrap();
    assert_ne!(over_tls, "0", "tessera's connections use TLS");
    let in_clear = pg
        .try_psql(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'tessera' AND NOT s.ssl",
        )
        .unwrap();
    assert_eq!(in_clear, "0", "no connection of tessera's is in the clear");
}

#[tokio::test]
async fn postgres_tls_a_server_certificate_from_another_ca_is_refused_naming_sslrootcert() {
    let pg = TlsPostgres::start(true).await;
    let other = pg.client_file("other-ca.crt");
    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let said = serve_refuses(&url).await;
    let sentence = format!(
        "storage.url: the PostgreSQL server at localhost:{} presented a certificate that is not \
         signed by the CA in sslrootcert={}; name the CA that signed the server's certificate \
         in sslrootcert",
        pg.port,
        other.display()
    );
    assert_eq!(
        said.trim(),
        format!("error: {sentence}"),
        "one sentence, alone"
    );
}

#[tokio::test]
async fn postgres_tls_verify_full_refuses_a_host_name_the_certificate_does_not_hold() {
    let pg = TlsPostgres::start(true).await;
    let ca = pg.client_file("ca.crt");
    let url = pg.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let said = serve_refuses(&url).await;
    assert!(
        said.contains(&format!(
            "storage.url: the PostgreSQL server at 127.0.0.1:{} presented a certificate that is \
             not issued for the host name 127.0.0.1, which sslmode=verify-full requires",
            pg.port
        )),
        "{said}"
    );
    // Unlike libpq, the driver checks the name under verify-ca as well (README, "TLS to
    // PostgreSQL"); the sentence says so instead of blaming verify-full.
    let verify_ca = pg.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    let said = serve_refuses(&verify_ca).await;
    assert!(
        said.contains(
            "not issued for the host name 127.0.0.1, and tessera checks the name under \
             sslmode=verify-ca too"
        ),
        "{said}"
    );
}

#[tokio::test]
async fn postgres_tls_require_refuses_a_server_without_tls() {
    let pg = TlsPostgres::start(false).await;
    let said = serve_refuses(&pg.url("postgres", "127.0.0.1", "sslmode=require")).await;
    assert!(
        said.contains(&format!(
            "storage.url: the PostgreSQL server at 127.0.0.1:{} does not offer TLS, and \
             sslmode=require requires it",
            pg.port
        )),
        "{said}"
    );
}

#[tokio::test]
async fn postgres_tls_a_client_certificate_logs_in_where_pg_hba_asks_for_cert() {
    let pg = TlsPostgres::start(true).await;
    let query = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pg.client_file("ca.crt").display(),
        pg.client_file("client.crt").display(),
        pg.client_file("client.key").display()
    );
    serve_works(&pg.url(CERT_USER, "localhost", &query)).await;
    // Without the certificate the same user is refused: the login above was by certificate.
    let without = pg.url(
        CERT_USER,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pg.client_file("ca.crt").display()
        ),
    );
    serve_refuses(&without).await;
}

#[tokio::test]
async fn postgres_tls_settings_tessera_cannot_honour_are_refused_at_start_naming_them() {
    // No server needed: the configuration is checked before any connection.
    let dir = tempfile::tempdir().unwrap();
    let base = "postgres://postgres@localhost:1/tessera";
    let missing = dir.path().join("missing-ca.crt");
    let said = serve_refuses(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        missing.display()
    ))
    .await;
    assert!(
        said.contains(&format!(
            "`storage.url`: sslrootcert={} cannot be read (",
            missing.display()
        )),
        "{said}"
    );

    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&cert, Ca::new("c").pem).unwrap();
    std::fs::write(&key, "not a key, but public").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let said = serve_refuses(&format!(
        "{base}?sslmode=require&sslcert={}&sslkey={}",
        cert.display(),
        key.display()
    ))
    .await;
    assert!(
        said.contains(&format!(
            "`storage.url`: sslkey: {} is readable by other users (mode 0644); run `chmod 600",
            key.display()
        )),
        "{said}"
    );

    let said = serve_refuses(&format!("{base}?sslmode=allow")).await;
    assert!(
        said.contains("`storage.url`: sslmode=allow is not supported"),
        "{said}"
    );
    let said = serve_refuses(&format!("{base}?sslmode=verify-ca")).await;
    assert!(
        said.contains("`storage.url`: sslmode=verify-ca needs sslrootcert=PATH"),
        "{said}"
    );
}

#[tokio::test]
async fn postgres_tls_readyz_fails_and_logs_the_sentence_once_the_server_certificate_is_not_trusted()
 {
    let pg = TlsPostgres::start(true).await;
    let ca = pg.client_file("ca.crt");
    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let dir = tempfile::tempdir().unwrap();
    let (_child, log, base, http) = serve_logged(&url, dir.path()).await;
    wait_readyz(&http, &base, StatusCode::OK).await;

    pg.swap_in_a_certificate_from_another_ca();
    // The reload is asynchronous: a connection opened before it still meets the old
    // certificate, so end tessera's connections until a new one meets the new certificate.
    let started = monotonic_now();
    loop {
        pg.end_tessera_connections();
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        if ready.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz still answers {} with the new certificate",
            ready.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sentence = format!(
        "storage.url: the PostgreSQL server at localhost:{} presented a certificate that is not \
         signed by the CA in sslrootcert={}",
        pg.port,
        ca.display()
    );
    let started = monotonic_now();
    loop {
        let logged = log.lock().unwrap().clone();
        if let Some(line) = logged
            .iter()
            .find(|l| l.contains("not ready") && l.contains(&sentence))
        {
            eprintln!("tessera logged: {line}");
            break;
        }
        // /readyz polls again: each failing probe logs its reason.
        let _ = http.get(format!("{base}/readyz")).send().await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no `not ready` line with the sentence in:\n{}",
            logged.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
