//! The Kubernetes manifests in `deploy/kubernetes` (issue 12): every overlay renders with the
//! machine's `kubectl kustomize`, passes the Kubernetes OpenAPI schemas strictly (the
//! `kubernetes-validate` package, offline, pinned in `tests/deploy/requirements.txt`), keeps the
//! promises the README makes about it, and the configuration it ships starts the real binary
//! laid out as the kubelet lays out a pod's files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::python;
use crate::support::{Server, claims, client};

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes");
const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/requirements.txt");

/// The Kubernetes versions the manifests are checked against: the oldest still commonly run
/// and a current one.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.34.0"];

/// The user and group the image runs as (distroless's `nonroot`), and the pod's `fsGroup`.
const POD_USER: u32 = 65532;

#[tokio::test]
async fn every_overlay_renders_and_passes_the_kubernetes_schemas_strictly() {
    let validator = validator().await;
    let with_ingress = overlay_with_ingress();
    let overlays = [
        ("single", manifests().join("overlays/single")),
        ("ha", manifests().join("overlays/ha")),
        ("ha + ingress", with_ingress.path().to_path_buf()),
    ];
    for (name, overlay) in &overlays {
        let rendered = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(rendered.path(), kustomize(overlay)).unwrap();
        for version in KUBERNETES_VERSIONS {
            let (ok, said) = validate(&validator, rendered.path(), version);
            assert!(
                ok,
                "overlay {name} fails the schemas of Kubernetes {version}:\n{said}"
            );
            assert!(
                said.contains("passed for resource deployment/tessera"),
                "overlay {name}: the Deployment was not checked:\n{said}"
            );
            assert_eq!(
                name.ends_with("ingress"),
                said.contains("passed for resource ingress/tessera"),
                "overlay {name}: the Ingress component:\n{said}"
            );
        }
    }
}

#[tokio::test]
async fn the_schema_check_refuses_a_misspelt_field() {
    // Proof that the check above can fail: the same Deployment with `replica:` for `replicas:`.
    let validator = validator().await;
    let rendered = kustomize(&manifests().join("overlays/single"));
    assert!(rendered.contains("\n  replicas: 1\n"), "{rendered}");
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        broken.path(),
        rendered.replace("\n  replicas: 1\n", "\n  replica: 1\n"),
    )
    .unwrap();
    let (ok, said) = validate(&validator, broken.path(), KUBERNETES_VERSIONS[1]);
    assert!(!ok, "a misspelt field passed:\n{said}");
}

#[test]
fn both_overlays_run_tessera_unprivileged_probed_and_with_resources() {
    for overlay in ["single", "ha"] {
        let docs = documents(&kustomize(&manifests().join("overlays").join(overlay)));
        let deployment = only(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{overlay}");
        assert_eq!(pod["securityContext"]["runAsUser"], POD_USER, "{overlay}");
        assert_eq!(pod["securityContext"]["fsGroup"], POD_USER, "{overlay}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{overlay}");
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{overlay}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{overlay}");
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
        assert!(
            container["resources"]["requests"]["cpu"].is_string(),
            "{overlay}"
        );
        assert!(container["resources"]["requests"]["memory"].is_string());
        // Every mounted Secret and ConfigMap is owner-only before the kubelet adds fsGroup's
        // read bit; tessera refuses anything more open.
        for volume in pod["volumes"].as_array().unwrap() {
            for kind in ["secret", "configMap"] {
                if volume[kind].is_object() {
                    assert_eq!(volume[kind]["defaultMode"], 0o400, "{overlay}: {volume}");
                }
            }
        }
        let service = only(&docs, "Service");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
        assert_eq!(container["ports"][0]["name"], "https");
    }
}

#[test]
fn single_keeps_sqlite_on_a_volume_claim_and_stops_before_it_starts_again() {
    let docs = documents(&kustomize(&manifests().join("overlays/single")));
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let claim = only(&docs, "PersistentVolumeClaim");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
    assert!(data.get("emptyDir").is_none(), "{data}");
    assert!(config_of(&docs).contains("url: sqlite:///var/lib/tessera/tessera.db"));
}

#[test]
fn ha_runs_three_spread_replicas_on_postgresql_from_a_secret_with_a_disruption_budget() {
    let docs = documents(&kustomize(&manifests().join("overlays/ha")));
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let keys: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    let env = pod["containers"][0]["env"].as_array().unwrap();
    for (name, key) in [
        ("TESSERA_STORAGE__URL", "url"),
        ("TESSERA_STORAGE_PASSWORD", "password"),
    ] {
        let var = env.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "tessera-postgres");
        assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], key);
    }
    let budget = only(&docs, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
    );
}

/// The storage URL the ha overlay's install steps give (its kustomization's comment, and the
/// README's the same) verifies the server's certificate and name against a CA file the pod
/// mounts read-only from the ConfigMap those steps create.
#[test]
fn ha_speaks_tls_to_postgresql_verifying_the_server_against_a_mounted_ca() {
    let docs = documents(&kustomize(&manifests().join("overlays/ha")));
    let pod = &only(&docs, "Deployment")["spec"]["template"]["spec"];
    let instructions =
        std::fs::read_to_string(manifests().join("overlays/ha/kustomization.yaml")).unwrap();
    let readme = std::fs::read_to_string(manifests().join("../../README.md")).unwrap();
    let url = quoted_after(&instructions, "--from-literal=url='");
    assert_eq!(
        quoted_after(&readme, "--from-literal=url='"),
        url,
        "the README installs the same URL"
    );
    let configmap = "kubectl -n tessera create configmap tessera-postgres-ca --from-file=ca.crt=";
    assert!(instructions.contains(configmap) && readme.contains(configmap));
    let query = url.split_once('?').expect("the URL has TLS parameters").1;
    let parameters: Vec<(&str, &str)> =
        query.split('&').filter_map(|p| p.split_once('=')).collect();
    assert!(parameters.contains(&("sslmode", "verify-full")), "{url}");
    let root = parameters
        .iter()
        .find(|(name, _)| *name == "sslrootcert")
        .unwrap_or_else(|| panic!("no sslrootcert in {url}"))
        .1;
    assert_eq!(root, "/etc/tessera/postgres-ca/ca.crt");
    let (directory, file) = root.rsplit_once('/').unwrap();
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == directory)
        .unwrap_or_else(|| panic!("nothing is mounted at {directory}"));
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["configMap"]["name"], "tessera-postgres-ca",
        "{volume}"
    );
    assert_eq!(file, "ca.crt", "the key the ConfigMap is created with");
}

/// The text between `prefix` and the next `'`.
fn quoted_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    let start = text.find(prefix).unwrap_or_else(|| panic!("no {prefix:?}")) + prefix.len();
    let end = text[start..].find('\'').unwrap() + start;
    &text[start..end]
}

#[test]
fn the_service_monitor_example_scrapes_the_service_that_the_overlays_make() {
    let example =
        std::fs::read_to_string(manifests().join("examples/servicemonitor.yaml")).unwrap();
    let monitor = &documents(&example)[0];
    let docs = documents(&kustomize(&manifests().join("overlays/ha")));
    let service = only(&docs, "Service");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (label, value) in selector {
        assert_eq!(&service["metadata"]["labels"][label], value, "{label}");
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["scheme"], "https");
}

#[tokio::test]
async fn the_shipped_configuration_starts_tessera_laid_out_as_the_kubelet_lays_out_the_pod() {
    let docs = documents(&kustomize(&manifests().join("overlays/single")));
    let pod = Pod::lay_out(&config_of(&docs));
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    // As root (CI), run as the pod's user with fsGroup as a supplementary group, so the
    // root-owned, group-readable mounts are read exactly as in a cluster.
    if rustix::process::geteuid().is_root() {
        command = Command::new("setpriv");
        command
            .arg(format!("--reuid={POD_USER}"))
            .arg(format!("--regid={POD_USER}"))
            .arg(format!("--groups={POD_USER}"))
            .arg(env!("CARGO_BIN_EXE_tessera"));
    }
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(pod.path("etc/tessera/config/tessera.yaml"))
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("listening on ") {
                return Some(url.to_owned());
            }
        }
        None
    })
    .await
    .unwrap();
    let Some(base) = listening else {
        let output = child.wait_with_output().await.unwrap();
        panic!(
            "tessera did not start from the shipped configuration: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let http = client(&pod.ca, false);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let discovery: Value = http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], "https://tessera.example.com");
    assert!(
        pod.path("var/lib/tessera/tessera.db").exists(),
        "the database is on the data volume"
    );
}

/// A pod's files under a temporary root: the ConfigMap, the TLS Secret and the secrets Secret
/// as the kubelet mounts them with `fsGroup` (root-owned, group `fsGroup`, mode 0440 when this
/// test runs as root; owner-only otherwise), an empty data volume the pod's user owns.
struct Pod {
    root: tempfile::TempDir,
    ca: PathBuf,
}

impl Pod {
    fn lay_out(config: &str) -> Pod {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().display().to_string();
        // The pod's absolute paths, moved under the temporary root.
        let config = config
            .replace("/etc/tessera/", &format!("{base}/etc/tessera/"))
            .replace("/var/lib/tessera/", &format!("{base}/var/lib/tessera/"));
        let pod = Pod {
            ca: root.path().join("ca.pem"),
            root,
        };
        let certificate = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(&pod.ca, certificate.cert.pem()).unwrap();
        pod.mount("etc/tessera/config/tessera.yaml", &config);
        pod.mount("etc/tessera/tls/tls.crt", &certificate.cert.pem());
        pod.mount(
            "etc/tessera/tls/tls.key",
            &certificate.signing_key.serialize_pem(),
        );
        pod.mount("etc/tessera/secrets/users.yaml", "users: []\n");
        let data = pod.path("var/lib/tessera");
        std::fs::create_dir_all(&data).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&data, Some(POD_USER), Some(POD_USER)).unwrap();
            // The pod's user must be able to walk down to its files.
            std::fs::set_permissions(pod.root.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        pod
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    /// A file of a Secret or ConfigMap volume: `defaultMode: 0400`, plus fsGroup's read bit.
    fn mount(&self, relative: &str, content: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let mode = if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(0), Some(POD_USER)).unwrap();
            0o440
        } else {
            0o400
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn manifests() -> PathBuf {
    Path::new(MANIFESTS).canonicalize().unwrap()
}

/// The ha overlay with the optional Ingress component, as a user's own overlay would add it.
/// Kustomize takes only relative paths, so the overlay lives two levels below the workspace.
fn overlay_with_ingress() -> tempfile::TempDir {
    let target = manifests().join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(target).unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../deploy/kubernetes/overlays/ha]\n\
         components: [../../deploy/kubernetes/components/ingress]\n",
    )
    .unwrap();
    dir
}

/// `kubectl kustomize DIR`: the manifests a user's `kubectl apply -k DIR` would send.
fn kustomize(dir: &Path) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is on PATH (the machine's kubectl has kustomize built in)");
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The YAML documents of a rendered stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| yaml_serde::from_str(doc).unwrap())
        .collect()
}

/// The one document of `kind`.
fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    let first = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    first
}

/// `tessera.yaml` from the rendered ConfigMap.
fn config_of(docs: &[Value]) -> String {
    only(docs, "ConfigMap")["data"]["tessera.yaml"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn validator() -> PathBuf {
    let python = python::venv("deploy-venv", PathBuf::from(REQUIREMENTS)).await;
    python.with_file_name("kubernetes-validate")
}

/// Runs the strict schema check of one Kubernetes version; whether it passed, and what it said.
fn validate(validator: &Path, file: &Path, version: &str) -> (bool, String) {
    let output = Command::new(validator)
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test]
async fn apiserver_config_maps_the_session_id_that_the_audit_log_records() {
    let server = Server::start().await;
    let config = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["kube", "apiserver-config", "--data-dir"])
            .arg(server.dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let printed = String::from_utf8(output.stdout).unwrap();
        // The structured form follows the flags, from its `apiVersion:` line on.
        let structured = &printed[printed.find("apiVersion:").unwrap()..];
        yaml_serde::from_str::<Value>(structured).unwrap()
    };
    let stable = config(&[]);
    assert_eq!(stable["apiVersion"], "apiserver.config.k8s.io/v1");
    let jwt = &stable["jwt"][0];
    // The dev configuration has no `issuer:`; it follows `listen` (this test's server took a
    // random port instead, which the command cannot know).
    assert_eq!(jwt["issuer"]["url"], "https://127.0.0.1:8443");
    assert_eq!(
        jwt["issuer"]["certificateAuthority"],
        std::fs::read_to_string(&server.ca).unwrap().as_str()
    );
    let extra = &jwt["claimMappings"]["extra"][0];
    assert_eq!(extra["key"], "tessera.dev/session-id");
    assert_eq!(extra["valueExpression"], "claims.sid");
    let older = config(&["--api-version", "v1beta1"]);
    assert_eq!(older["apiVersion"], "apiserver.config.k8s.io/v1beta1");
    assert_eq!(older["jwt"], stable["jwt"]);

    // The flags accept RS256 alone unless told otherwise; EdDSA kube-apiserver cannot verify.
    let with_alg = |alg: &str| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["kube", "apiserver-config", "--data-dir"])
            .arg(server.dir.path())
            .env("TESSERA_TOKENS__SIGNING_ALG", alg)
            .output()
            .unwrap()
    };
    let flags = |output: &std::process::Output| {
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        printed
            .lines()
            .filter(|l| l.starts_with("--oidc-signing-algs"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(flags(&with_alg("RS256")), Vec::<String>::new());
    let es256 = with_alg("ES256");
    assert!(es256.status.success(), "{es256:?}");
    assert_eq!(flags(&es256), ["--oidc-signing-algs=ES256"]);
    let eddsa = with_alg("EdDSA");
    assert!(!eddsa.status.success());
    let said = String::from_utf8_lossy(&eddsa.stderr);
    assert!(
        said.contains("kube-apiserver does not accept EdDSA id_tokens; set tokens.signing_alg to RS256 or ES256"),
        "{said}"
    );

    // What kube-apiserver would put into `extra` is the session the audit log names.
    let tokens = server.kubernetes_tokens().await;
    let sid = claims(tokens["id_token"].as_str().unwrap())["sid"].clone();
    assert!(sid.is_string(), "the id_token carries sid");
    let issued = server.audit_events("TokenIssued", 1).await;
    assert_eq!(issued[0]["session_id"], sid);
}
