//! Python test tools (the authlib relying party, the Kubernetes schema validator), each pinned in
//! a requirements file and installed from PyPI into a virtualenv under `target/` the first time.

use std::fs::{self, File};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Makes sure `target/NAME` is a virtualenv holding exactly the pinned `requirements` and
/// returns its Python (installing from PyPI the first time, or when the file changed).
pub async fn venv(name: &'static str, requirements: PathBuf) -> PathBuf {
    tokio::task::spawn_blocking(move || ensure_venv(name, &requirements))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// An exclusive lock on `target/NAME.lock` makes concurrent test processes wait for one
/// installation instead of racing. A stamp written after a successful install (Python version and
/// requirements) says what is in it; any difference reinstalls from scratch.
fn ensure_venv(name: &str, requirements: &Path) -> PathBuf {
    let target = Path::new(WORKSPACE).join("target");
    fs::create_dir_all(&target).unwrap();
    let target = target.canonicalize().unwrap();
    let venv = target.join(name);
    let python = venv.join("bin").join("python");
    let stamp_path = venv.join("requirements.stamp");
    let stamp = format!(
        "{}\n{}",
        system_python_version(),
        fs::read_to_string(requirements).unwrap()
    );
    let _lock = lock_exclusively(&target.join(format!("{name}.lock")));
    if python.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return python;
    }
    let log_path = target.join(format!("{name}.log"));
    let mut log = File::create(&log_path).unwrap();
    if venv.exists() {
        fs::remove_dir_all(&venv).unwrap();
    }
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    run_logged(&mut create, &mut log, &log_path, name);
    let mut install = Command::new(&python);
    install
        .args(["-I", "-m", "pip", "install", "--disable-pip-version-check"])
        .args(["--no-input", "--require-virtualenv", "-r"])
        .arg(requirements);
    run_logged(&mut install, &mut log, &log_path, name);
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
            "`python3 --version` failed ({}); the Python test tools need a working Python 3.11+",
            output.status
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "python3 is not on PATH; the Python test tools need Python 3.11 or newer with the venv module"
        ),
        Err(e) => panic!("could not run python3 ({e}); the Python test tools need Python 3.11+"),
    }
}

/// Runs one installation step with its output appended to the log.
fn run_logged(command: &mut Command, log: &mut File, log_path: &Path, name: &str) {
    writeln!(log, "$ {command:?}").unwrap();
    let status = command
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "Installing the pinned Python packages into target/{name} failed; see {}",
        log_path.display()
    );
}
