//! Secrets at rest (issue 11, item 7): what tessera writes is readable by its owner only, and a
//! configuration, users file, database, TLS key or client secret file that other users can read
//! stops every command that would use it, with one sentence naming the `chmod` that fixes it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::Server;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A child killed when the test ends, also on panic.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tessera ARGS` expecting it to refuse to start, and returns what it said on stderr.
/// A server that starts instead (it announces its issuer or its proxy) fails the test.
fn refused(args: &[OsString]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .args(args)
        .env("TESSERA_LOG", "warn")
        .env("TESSERA_DEV_PASSWORD", crate::support::PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(command.spawn().expect("the tessera binary starts"));
    let stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // The channel closes when the process closes its standard output, that is when it exits.
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => assert!(
                !line.starts_with("issuer: ") && !line.starts_with("proxy listening on "),
                "`tessera {args:?}` started ({line}) instead of refusing"
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("`tessera {args:?}` neither started nor exited in 60s")
            }
        }
    }
    let status = child.0.wait().unwrap();
    let said = said.join().unwrap().trim().to_owned();
    assert!(!status.success(), "`tessera {args:?}` succeeded: {said}");
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(said.lines().count(), 1, "one sentence: {said}");
    said
}

/// Asserts `said` is the sentence about `file` at `mode`, with the `chmod` of `fix`.
fn assert_names_the_chmod(said: &str, file: &Path, mode: u32, fix: &[&Path]) {
    let readable = format!(
        "{} is readable by other users (mode {mode:04o})",
        file.display()
    );
    assert!(said.contains(&readable), "says `{readable}`: {said}");
    let files: Vec<String> = fix.iter().map(|f| f.display().to_string()).collect();
    let chmod = format!("run `chmod 600 {}`", files.join(" "));
    assert!(said.contains(&chmod), "names `{chmod}`: {said}");
}

fn args(list: &[&str], dir: &Path) -> Vec<OsString> {
    list.iter()
        .map(|a| match *a {
            "DIR" => dir.as_os_str().to_owned(),
            "CONFIG" => dir.join("tessera.yaml").into_os_string(),
            other => other.into(),
        })
        .collect()
}

const SERVE: &[&str] = &[
    "serve",
    "--dev",
    "--data-dir",
    "DIR",
    "--listen",
    "127.0.0.1:0",
];
const SERVE_CONFIG: &[&str] = &["serve", "--config", "CONFIG", "--listen", "127.0.0.1:0"];
const PROXY: &[&str] = &["proxy", "--config", "CONFIG", "--listen", "127.0.0.1:0"];
const MIGRATE: &[&str] = &["migrate", "--config", "CONFIG"];
const ROTATE: &[&str] = &["keys", "rotate", "--config", "CONFIG"];
const SESSIONS: &[&str] = &["sessions", "list", "--config", "CONFIG"];
const DISABLE: &[&str] = &["users", "disable", "dev", "--config", "CONFIG"];
const APISERVER_CONFIG: &[&str] = &["kube", "apiserver-config", "--config", "CONFIG"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_dev_start_writes_every_secret_for_its_owner_only() {
    let server = Server::start().await;
    let dir = server.dir.path();
    // The store has written keys by the time the server answers, so the WAL exists.
    for file in [
        "tessera.db",
        "tessera.db-wal",
        "tessera.db-shm",
        "audit.log",
        "tessera.yaml",
        "users.yaml",
        "demo-client-secret",
        "ca-key.pem",
        "server-key.pem",
    ] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(dir), 0o700, "the data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_others_can_read_stops_every_command_that_loads_it() {
    let dir = Server::start().await.stop();
    let config = dir.path().join("tessera.yaml");
    for (mode, commands) in [
        (
            0o644,
            [
                SERVE,
                SERVE_CONFIG,
                PROXY,
                MIGRATE,
                ROTATE,
                SESSIONS,
                APISERVER_CONFIG,
            ]
            .as_slice(),
        ),
        (0o640, [SERVE_CONFIG].as_slice()),
        (0o604, [SERVE_CONFIG].as_slice()),
    ] {
        chmod(&config, mode);
        for command in commands {
            let said = refused(&args(command, dir.path()));
            assert_names_the_chmod(&said, &config, mode, &[&config]);
        }
    }
    chmod(&config, 0o600);
    Server::start_in(dir, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_file_others_can_read_stops_serve() {
    let dir = Server::start().await.stop();
    let users = dir.path().join("users.yaml");
    chmod(&users, 0o644);
    let said = refused(&args(SERVE, dir.path()));
    assert_names_the_chmod(&said, &users, 0o644, &[&users]);
    chmod(&users, 0o600);
    Server::start_in(dir, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_key_others_can_read_stops_serve() {
    let dir = Server::start().await.stop();
    let key = dir.path().join("server-key.pem");
    chmod(&key, 0o644);
    let said = refused(&args(SERVE, dir.path()));
    assert_names_the_chmod(&said, &key, 0o644, &[&key]);
    chmod(&key, 0o600);
    Server::start_in(dir, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_file_others_can_read_stops_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    chmod(&secret, 0o644);
    crate::support::write_private(
        &dir.path().join("tessera.yaml"),
        "proxy:
  routes: [{upstream: 'http://127.0.0.1:9'}]
  session: {store: cookie}
  cookie: {secret: 'KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio='}
  provider: {issuer: 'https://127.0.0.1:9', client_id: rp, client_secret_file: client-secret}
",
    );
    let said = refused(&args(PROXY, dir.path()));
    assert_names_the_chmod(&said, &secret, 0o644, &[&secret]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_others_can_read_stops_the_commands_that_open_it() {
    // Killed, not stopped: the `-wal` and `-shm` files stay behind, as after a crash.
    let dir = Server::start().await.stop();
    let db = dir.path().join("tessera.db");
    let wal = dir.path().join("tessera.db-wal");
    chmod(&db, 0o644);
    for command in [SERVE, MIGRATE, ROTATE, SESSIONS, DISABLE] {
        let said = refused(&args(command, dir.path()));
        assert_names_the_chmod(&said, &db, 0o644, &[&db]);
    }
    // Every file that is open to others is named in the one `chmod`.
    chmod(&wal, 0o640);
    let said = refused(&args(SERVE, dir.path()));
    assert_names_the_chmod(&said, &db, 0o644, &[&db, &wal]);
    chmod(&db, 0o600);
    let said = refused(&args(SERVE, dir.path()));
    assert_names_the_chmod(&said, &wal, 0o640, &[&wal]);
    chmod(&wal, 0o600);
    Server::start_in(dir, &[]).await;
}

/// Kubernetes mounts ConfigMaps and Secrets as `tessera.yaml -> ..data/tessera.yaml` with
/// `..data -> ..2025_01_01_00_00_00.1`: the links themselves are 0777, the file is what counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_config_is_judged_by_the_file_it_points_at() {
    let dir = Server::start().await.stop();
    let config = dir.path().join("tessera.yaml");
    let version = dir.path().join("..2025_01_01_00_00_00.1");
    std::fs::create_dir(&version).unwrap();
    std::fs::rename(&config, version.join("tessera.yaml")).unwrap();
    std::os::unix::fs::symlink("..2025_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tessera.yaml", &config).unwrap();

    chmod(&version.join("tessera.yaml"), 0o644);
    let said = refused(&args(SERVE_CONFIG, dir.path()));
    assert_names_the_chmod(&said, &config, 0o644, &[&config]);

    chmod(&version.join("tessera.yaml"), 0o600);
    Server::start_in(dir, &[]).await;
}
