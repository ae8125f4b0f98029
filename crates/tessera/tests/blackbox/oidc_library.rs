//! The whole flow through an OpenID Connect client library that nobody here wrote: Python's
//! authlib, pinned in `tests/oidc_client/requirements.txt` and installed by this test into
//! `target/test-venv`. `tests/oidc_client/authlib_flow.py` says what the library verifies.

use std::fs::{self, File};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{PASSWORD, Server};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const CLIENT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc_client");

#[tokio::test]
async fn authlib_completes_the_whole_flow_and_verifies_every_id_token() {
    let python = tokio::task::spawn_blocking(ensure_venv)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let server = Server::start().await;
    let run = tokio::process::Command::new(python)
        // Isolated mode: no PYTHONPATH, user site-packages or script directory on sys.path.
        .arg("-I")
        .arg(Path::new(CLIENT_DIR).join("authlib_flow.py"))
        .env("ISSUER", &server.issuer)
        .env("CA_FILE", &server.ca)
        .env("USERNAME", "dev")
        .env("PASSWORD", PASSWORD)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the authlib flow finishes within two minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the authlib flow failed ({}):\n{stderr}{stdout}",
        output.status
    );
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("the authlib flow printed no JSON summary:\n{stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["issuer"], server.issuer.as_str());
    assert_eq!(summary["sub"], "dev");
    println!("{summary}");
}

/// Makes sure `target/test-venv` holds exactly the pinned requirements and returns its Python.
/// An exclusive lock on `target/test-venv.lock` makes concurrent test processes wait for one
/// installation instead of racing. A stamp written after a successful install (Python version and
/// requirements) says what is in it; any difference reinstalls from scratch.
fn ensure_venv() -> PathBuf {
    let target = Path::new(WORKSPACE).join("target");
    fs::create_dir_all(&target).unwrap();
    let target = target.canonicalize().unwrap();
    let venv = target.join("test-venv");
    let python = venv.join("bin").join("python");
    let stamp_path = venv.join("requirements.stamp");
    let requirements = Path::new(CLIENT_DIR).join("requirements.txt");
    let stamp = format!(
        "{}\n{}",
        system_python_version(),
        fs::read_to_string(&requirements).unwrap()
    );
    let _lock = lock_exclusively(&target.join("test-venv.lock"));
    if python.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return python;
    }
    let log_path = target.join("test-venv.log");
    let mut log = File::create(&log_path).unwrap();
    if venv.exists() {
        fs::remove_dir_all(&venv).unwrap();
    }
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    run_logged(&mut create, &mut log, &log_path);
    let mut install = Command::new(&python);
    install
        .args(["-I", "-m", "pip", "install", "--disable-pip-version-check"])
        .args(["--no-input", "--require-virtualenv", "-r"])
        .arg(&requirements);
    run_logged(&mut install, &mut log, &log_path);
    fs::write(&stamp_path, stamp).unwrap();
    python
}

/// Blocks until this process holds the exclusive lock on `path`; dropping the file releases it,
/// also when the test panics.
fn lock_exclusively(path: &Path) -> File {
    let file = File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.lock().unwrap();
    file
}

/// `python3 --version`, which also proves Python is there at all.
fn system_python_version() -> String {
    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        Ok(output) => panic!(
            "`python3 --version` failed ({}); the authlib test needs a working Python 3.11+",
            output.status
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "python3 is not on PATH; the authlib test needs Python 3.11 or newer with the venv module"
        ),
        Err(e) => panic!("could not run python3 ({e}); the authlib test needs Python 3.11+"),
    }
}

/// Runs one installation step with its output appended to the log.
fn run_logged(command: &mut Command, log: &mut File, log_path: &Path) {
    writeln!(log, "$ {command:?}").unwrap();
    let status = command
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "Installing the authlib test client into target/test-venv failed; see {}",
        log_path.display()
    );
}
