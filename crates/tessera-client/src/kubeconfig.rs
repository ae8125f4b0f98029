//! Editing a kubeconfig the way `kubectl config set-*` does: named entries are added or
//! replaced, everything else in the file (other clusters, users, contexts, unknown fields)
//! survives, and the file is replaced atomically, readable by its owner only.
//!
//! An edit is one short read-modify-write under client-go's lock ([`Kubeconfig::edit`]), so it
//! never writes back a file read minutes earlier: what kubectl, the user or client-go (rotating
//! a legacy `auth-provider` refresh token) wrote meanwhile survives, and a spent refresh token
//! is never put back (the server would take its next use for a replay).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use yaml_serde::{Mapping, Value};

/// How long an edit waits for another program's lock: client-go holds it for one
/// read-modify-write, a few milliseconds.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a held lock is tried again: client-go's lock is a file's existence, which cannot
/// be waited on.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// The kubeconfig to edit: `--kubeconfig`, else the first file of `KUBECONFIG`, else
/// `~/.kube/config` (kubectl's order for writes).
pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(list) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither KUBECONFIG nor HOME is set; pass --kubeconfig FILE")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

/// A kubeconfig loaded for editing.
#[derive(Debug)]
pub struct Kubeconfig {
    path: PathBuf,
    doc: Mapping,
}

impl Kubeconfig {
    /// Loads `path`, applies `change` and saves it, all under client-go's lock on `path`
    /// (waiting at most `wait` for it).
    pub async fn edit(
        path: &Path,
        wait: Duration,
        change: impl FnOnce(&mut Kubeconfig),
    ) -> Result<()> {
        let _lock = ClientGoLock::acquire(path, wait).await?;
        let mut config = Kubeconfig::load(path)?;
        change(&mut config);
        config.save()
    }

    /// Loads `path`; a missing or empty file is an empty kubeconfig. A file that is not a YAML
    /// mapping is an error naming the file: it is never overwritten.
    pub fn load(path: &Path) -> Result<Kubeconfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
            Err(e) => bail!("cannot read the kubeconfig {}: {e}", path.display()),
        };
        let doc = if text.trim().is_empty() {
            new_kubeconfig()
        } else {
            let corrupt = |why: String| {
                anyhow::anyhow!(
                    "the kubeconfig {} is not valid ({why}); fix or move it, tessera left it unchanged",
                    path.display()
                )
            };
            match yaml_serde::from_str::<Value>(&text).map_err(|e| corrupt(e.to_string()))? {
                Value::Mapping(m) => m,
                Value::Null => new_kubeconfig(),
                _ => return Err(corrupt("its top level is not a mapping".into())),
            }
        };
        let config = Kubeconfig {
            path: path.to_owned(),
            doc,
        };
        for list in ["clusters", "users", "contexts"] {
            match config.doc.get(list) {
                None | Some(Value::Null) | Some(Value::Sequence(_)) => {}
                Some(_) => bail!(
                    "the kubeconfig {} is not valid (`{list}` is not a list); fix or move it, tessera left it unchanged",
                    path.display()
                ),
            }
        }
        Ok(config)
    }

    /// Sets cluster `name`'s server and CA, keeping its other fields.
    pub fn set_cluster(&mut self, name: &str, server: &str, ca_data: Option<&str>) {
        let cluster = self.named_entry("clusters", name, "cluster");
        cluster.insert("server".into(), server.into());
        if let Some(data) = ca_data {
            // kubectl refuses a cluster with both a CA file and CA data.
            cluster.remove("certificate-authority");
            cluster.insert("certificate-authority-data".into(), data.into());
        }
    }

    /// Replaces user `name`'s credentials with `user` (an `exec` or `auth-provider` mapping).
    pub fn set_user(&mut self, name: &str, user: Mapping) {
        *self.named_entry("users", name, "user") = user;
    }

    /// Points context `name` at a cluster and user, keeping its namespace and other fields.
    pub fn set_context(&mut self, name: &str, cluster: &str, user: &str) {
        let context = self.named_entry("contexts", name, "context");
        context.insert("cluster".into(), cluster.into());
        context.insert("user".into(), user.into());
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str) {
        self.doc.insert("current-context".into(), name.into());
    }

    /// The `user` mapping of the context `name`, or of the current context.
    pub fn user_of_context(&self, name: Option<&str>) -> Result<&Mapping> {
        let context = match name {
            Some(n) => n.to_owned(),
            None => self
                .doc
                .get("current-context")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .with_context(|| {
                    format!(
                        "{} has no current context; pass --context",
                        self.path.display()
                    )
                })?
                .to_owned(),
        };
        let user_name = self
            .find("contexts", &context, "context")
            .and_then(|c| c.get("user"))
            .and_then(Value::as_str)
            .with_context(|| {
                format!(
                    "{} has no context `{context}` with a user",
                    self.path.display()
                )
            })?;
        self.find("users", user_name, "user")
            .with_context(|| format!("{} has no user `{user_name}`", self.path.display()))
    }

    fn find(&self, list: &str, name: &str, field: &str) -> Option<&Mapping> {
        self.doc
            .get(list)?
            .as_sequence()?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
            .get(field)?
            .as_mapping()
    }

    /// The `field` mapping of the entry called `name` in `list`, created when missing.
    fn named_entry(&mut self, list: &str, name: &str, field: &str) -> &mut Mapping {
        let entries = self.doc.entry(list.into()).or_insert(Value::Null);
        if !entries.is_sequence() {
            *entries = Value::Sequence(Vec::new());
        }
        let Value::Sequence(entries) = entries else {
            unreachable!("made a sequence just above")
        };
        let named = |e: &Value| e.get("name").and_then(Value::as_str) == Some(name);
        let index = match entries.iter().position(named) {
            Some(i) => i,
            None => {
                let mut entry = Mapping::new();
                entry.insert("name".into(), name.into());
                entries.push(Value::Mapping(entry));
                entries.len() - 1
            }
        };
        let entry = mapping_of(&mut entries[index]);
        mapping_of(entry.entry(field.into()).or_insert(Value::Null))
    }

    /// Writes the file: a temporary file beside it, renamed over it (through a symlink to the
    /// file it points at). It keeps the owner's permission bits of the file it replaces (0600
    /// for a new one) and drops everyone else's: a kubeconfig holds credentials. Call it under
    /// the lock, as [`Kubeconfig::edit`] does.
    fn save(&self) -> Result<()> {
        let target = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let dir = target.parent().unwrap_or(Path::new("."));
        let fail = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("cannot write the kubeconfig {}: {e}", self.path.display())
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        let text = yaml_serde::to_string(&self.doc).map_err(|e| fail(&e))?;
        let mode = std::fs::metadata(&target).map_or(0o600, |m| m.permissions().mode() & 0o700);
        let mut temp = tempfile::Builder::new()
            .prefix(".kubeconfig-")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(|e| fail(&e))?;
        temp.write_all(text.as_bytes()).map_err(|e| fail(&e))?;
        temp.as_file().sync_all().map_err(|e| fail(&e))?;
        temp.persist(&target).map_err(|e| fail(&e.error))?;
        Ok(())
    }
}

/// client-go's lock on a kubeconfig (`clientcmd`'s `lockFile`): the file `<kubeconfig>.lock`,
/// created with `O_CREAT|O_EXCL`, held by whoever created it until it removes it. kubectl does
/// not wait for it (it fails with "file exists"); tessera retries for a while.
struct ClientGoLock {
    path: PathBuf,
}

impl ClientGoLock {
    async fn acquire(kubeconfig: &Path, wait: Duration) -> Result<ClientGoLock> {
        let mut name = kubeconfig.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let take = async {
            loop {
                match create() {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        tokio::time::sleep(LOCK_RETRY).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(wait, take).await {
            Ok(Ok(())) => Ok(ClientGoLock { path }),
            Ok(Err(e)) => bail!("cannot create the kubeconfig lock {}: {e}", path.display()),
            Err(_) => bail!(
                "gave up after {wait:?} waiting for {}, the lock kubectl and client-go hold while they write {}; \
                 if none of them is running, a crash left it behind: remove it and run the command again",
                path.display(),
                kubeconfig.display()
            ),
        }
    }
}

impl Drop for ClientGoLock {
    fn drop(&mut self) {
        // Nothing to do about a failure: kubectl will say the lock exists, naming the file.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The header of a kubeconfig that did not exist yet.
fn new_kubeconfig() -> Mapping {
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), "v1".into());
    doc.insert("kind".into(), "Config".into());
    doc
}

/// `value` as a mapping, replacing whatever else it held (kubectl does the same).
fn mapping_of(value: &mut Value) -> &mut Mapping {
    if !value.is_mapping() {
        *value = Value::Mapping(Mapping::new());
    }
    match value {
        Value::Mapping(m) => m,
        _ => unreachable!("made a mapping just above"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const EXISTING: &str = r#"apiVersion: v1
kind: Config
preferences: {colors: true}
current-context: prod
clusters:
- name: prod
  cluster: {server: "https://prod:6443", proxy-url: "http://proxy:3128"}
- name: dev
  cluster: {server: "https://old:6443", certificate-authority: /old/ca.pem, tls-server-name: dev.internal}
users:
- name: admin
  user: {token: abc}
contexts:
- name: prod
  context: {cluster: prod, user: admin, namespace: web}
- name: dev
  context: {cluster: dev, user: admin, namespace: team}
x-unknown-extension: keep me
"#;

    #[test]
    fn login_entries_are_added_and_everything_else_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, EXISTING).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = Kubeconfig::load(&path).unwrap();
        config.set_cluster("dev", "https://new:6443", Some("Q0E="));
        let mut user = Mapping::new();
        user.insert("exec".into(), Value::Mapping(Mapping::new()));
        config.set_user("alice@dev", user);
        config.set_context("dev", "dev", "alice@dev");
        config.use_context("dev");
        config.save().unwrap();

        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let doc: Value = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["x-unknown-extension"], "keep me");
        assert_eq!(doc["preferences"]["colors"], true);
        assert_eq!(doc["current-context"], "dev");
        let clusters = doc["clusters"].as_sequence().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[0]["cluster"]["proxy-url"], "http://proxy:3128");
        let dev = &clusters[1]["cluster"];
        assert_eq!(dev["server"], "https://new:6443");
        assert_eq!(dev["certificate-authority-data"], "Q0E=");
        assert_eq!(dev["tls-server-name"], "dev.internal");
        assert!(dev.get("certificate-authority").is_none());
        assert_eq!(doc["users"].as_sequence().unwrap().len(), 2);
        assert_eq!(doc["users"][0]["user"]["token"], "abc");
        let contexts = doc["contexts"].as_sequence().unwrap();
        assert_eq!(contexts[0]["context"]["namespace"], "web");
        assert_eq!(contexts[1]["context"]["namespace"], "team");
        assert_eq!(contexts[1]["context"]["user"], "alice@dev");

        let reloaded = Kubeconfig::load(&path).unwrap();
        assert!(reloaded.user_of_context(None).unwrap().contains_key("exec"));
        assert_eq!(
            reloaded.user_of_context(Some("prod")).unwrap()["token"],
            "abc"
        );
    }

    #[test]
    fn a_corrupt_kubeconfig_is_an_error_naming_the_file_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        for bad in ["clusters: [unclosed", "- just\n- a list\n", "clusters: 7\n"] {
            std::fs::write(&path, bad).unwrap();
            let err = Kubeconfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
        }
    }

    fn lock_of(path: &Path) -> PathBuf {
        PathBuf::from(format!("{}.lock", path.display()))
    }

    #[tokio::test]
    async fn an_edit_rereads_the_file_under_client_gos_lock_and_removes_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, EXISTING).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let lock = lock_of(&path);
        std::fs::write(&lock, "").unwrap();
        let edit = tokio::spawn({
            let path = path.clone();
            async move {
                Kubeconfig::edit(&path, Duration::from_secs(30), |c| c.use_context("dev")).await
            }
        });
        // The holder writes, then lets go: the edit starts from what it wrote.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rotated = EXISTING.replace("token: abc", "token: rotated");
        std::fs::write(&path, &rotated).unwrap();
        std::fs::remove_file(&lock).unwrap();
        edit.await.unwrap().unwrap();

        let doc: Value = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["current-context"], "dev");
        assert_eq!(doc["users"][0]["user"]["token"], "rotated");
        assert!(!lock.exists(), "the lock is removed after the edit");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn an_edit_gives_up_on_a_lock_that_stays_and_leaves_both_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, EXISTING).unwrap();
        let lock = lock_of(&path);
        std::fs::write(&lock, "").unwrap();
        let err = Kubeconfig::edit(&path, Duration::from_millis(100), |c| c.use_context("dev"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&lock.display().to_string()), "{err}");
        assert!(err.contains("kubectl"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), EXISTING);
        assert!(lock.exists(), "another program's lock is never removed");
    }

    #[test]
    fn saving_keeps_the_owners_bits_and_drops_everyone_elses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        for (before, after) in [
            (0o600, 0o600),
            (0o400, 0o400),
            (0o640, 0o600),
            (0o755, 0o700),
        ] {
            std::fs::write(&path, EXISTING).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(before)).unwrap();
            Kubeconfig::load(&path).unwrap().save().unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, after, "{before:o}");
        }
    }

    #[test]
    fn a_missing_file_becomes_a_new_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("config");
        let mut config = Kubeconfig::load(&path).unwrap();
        config.set_cluster("c", "https://c", None);
        config.save().unwrap();
        let doc: Value = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["kind"], "Config");
        assert_eq!(doc["clusters"][0]["cluster"]["server"], "https://c");
    }
}
