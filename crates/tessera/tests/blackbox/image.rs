//! The container image (issue 12): the repository's `Dockerfile` built without a daemon by
//! Debian's `buildah`, its final stage fed with the binary this test run built
//! (`scripts/image-rootfs`, the same script the Dockerfile's build stage runs), then
//! `tessera serve --dev` started from the image's own root filesystem as the image's user.
//! No registry is reached: the build stage, which needs `rust:1-bookworm`, is skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::test_tools;
use crate::support::client;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[tokio::test]
async fn the_image_builds_without_a_daemon_and_serves_from_its_own_root_filesystem() {
    if !rustix::process::geteuid().is_root() {
        // buildah's storage and `chroot` need root; CI runs as root.
        eprintln!("SKIPPED: the image test needs root (buildah storage, chroot)");
        return;
    }
    let buildah = Buildah::new();
    let image = buildah.build_image();

    let config = buildah.inspect(&image);
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/tessera"])
    );
    assert_eq!(config["WorkingDir"], "/var/lib/tessera");

    let root = buildah.mount(&image);
    assert!(
        !root.join("bin/sh").exists() && !root.join("usr/bin/sh").exists(),
        "the image has no shell"
    );
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file());

    let mut serving = Serving::start(&root);
    let http = client(&root.join("var/lib/tessera/dev/ca.pem"), false);
    let health = http
        .get(format!("{}/healthz", serving.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let jwks: Value = http
        .get(format!("{}/jwks", serving.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty(), "{jwks}");
    serving.stop();
}

/// buildah with its own storage under `target/`, removed afterwards.
struct Buildah {
    binary: PathBuf,
    storage: tempfile::TempDir,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Buildah {
    fn new() -> Buildah {
        let binary = test_tools(&["buildah"]).remove(0);
        let target = Path::new(WORKSPACE).join("target");
        std::fs::create_dir_all(&target).unwrap();
        Buildah {
            binary,
            storage: tempfile::tempdir_in(target).unwrap(),
            containers: Default::default(),
        }
    }

    /// `buildah ARGS` on this storage.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(self.storage.path().join("storage"))
            .arg("--runroot")
            .arg(self.storage.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `buildah ARGS` on this storage; its standard output.
    fn run(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "buildah {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The Dockerfile's final stage over a root filesystem made from this run's binary.
    fn build_image(&self) -> String {
        let context = self.storage.path().join("context");
        let rootfs = context.join("rootfs");
        let script = Path::new(WORKSPACE).join("scripts/image-rootfs");
        let status = Command::new("bash")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_tessera"))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/image-rootfs failed");
        std::fs::write(
            context.join("Containerfile"),
            "FROM scratch\nCOPY rootfs /rootfs\n",
        )
        .unwrap();
        let context = context.to_str().unwrap();
        self.run(&[
            "bud",
            "--pull-never",
            "-q",
            "-t",
            "localhost/tessera-rootfs:test",
            context,
        ]);
        let dockerfile = Path::new(WORKSPACE).join("Dockerfile");
        self.run(&[
            "bud",
            "--pull-never",
            "-q",
            "--build-arg",
            "ROOTFS_IMAGE=localhost/tessera-rootfs:test",
            "--target",
            "runtime",
            "-f",
            dockerfile.to_str().unwrap(),
            "-t",
            "localhost/tessera:test",
            context,
        ]);
        "localhost/tessera:test".to_owned()
    }

    /// The image's OCI configuration (`User`, `Entrypoint`, …).
    fn inspect(&self, image: &str) -> Value {
        let inspected: Value =
            serde_json::from_str(&self.run(&["inspect", "--type", "image", image])).unwrap();
        inspected["OCIv1"]["config"].clone()
    }

    /// A working container of `image`, mounted: its root filesystem.
    fn mount(&self, image: &str) -> PathBuf {
        let container = self.run(&["from", "--pull-never", image]).trim().to_owned();
        self.containers.borrow_mut().push(container.clone());
        PathBuf::from(self.run(&["mount", &container]).trim())
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        for container in self.containers.borrow().iter() {
            let _ = self.command(&["rm", container]).output();
        }
    }
}

/// `tessera serve --dev` run from the image's root filesystem as the image's user, the way a
/// container runtime would start it (without its namespaces).
struct Serving {
    child: Child,
    url: String,
}

impl Serving {
    fn start(root: &Path) -> Serving {
        let child = Command::new("/usr/sbin/chroot")
            .arg("--userspec=65532:65532")
            .arg(root)
            .args(["/usr/local/bin/tessera", "serve", "--dev"])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "/var/lib/tessera/dev",
            ])
            .env_clear()
            .env("TESSERA_DEV_PASSWORD", crate::support::PASSWORD)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Owned by a `Serving` at once, so a failed start below still kills and reaps it.
        let mut serving = Serving {
            child,
            url: String::new(),
        };
        let stdout = serving.child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("tessera in the image prints `listening on URL`");
            if let Some(url) = line.strip_prefix("listening on ") {
                serving.url = url.to_owned();
                return serving;
            }
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}
