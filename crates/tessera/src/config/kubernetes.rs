//! The `kubernetes:` section: the cluster `tessera login` writes into kubeconfigs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Invalid;
use super::clients::Client;

/// The cluster `tessera login` writes into kubeconfigs, published at `/kube/cluster`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    /// Name of the cluster (and default context) in kubeconfigs.
    cluster_name: String,
    /// URL of the Kubernetes API server.
    server: String,
    /// PEM CA bundle of the API server (relative to this file); unset: the system's roots.
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
    /// The client id kubectl logs in with.
    #[serde(default = "default_kube_client")]
    client_id: String,
}

fn default_kube_client() -> String {
    "kubernetes".into()
}

/// The cluster details `tessera login` fetches from `/kube/cluster`.
#[derive(Clone, Debug)]
pub struct KubeCluster {
    /// Name in kubeconfigs.
    pub cluster_name: String,
    /// API server URL.
    pub server: String,
    /// PEM CA bundle of the API server, read at start.
    pub certificate_authority_pem: Option<String>,
    /// The client id kubectl logs in with.
    pub client_id: String,
}

/// The cluster; its client must be one of `clients`, and public.
pub(super) fn validate(
    raw: RawKubernetes,
    clients: &HashMap<String, Client>,
    base: &Path,
) -> Result<KubeCluster, Invalid> {
    if raw.cluster_name.is_empty() {
        return Err(invalid("cluster_name", "must not be empty".into()));
    }
    let server = url::Url::parse(&raw.server)
        .map_err(|e| invalid("server", format!("`{}`: {e}", raw.server)))?;
    if !matches!(server.scheme(), "https" | "http") {
        return Err(invalid(
            "server",
            format!("`{}` is not an http(s) URL", raw.server),
        ));
    }
    check_client(&raw.client_id, clients)?;
    let certificate_authority_pem = match raw.certificate_authority {
        None => None,
        Some(file) => Some(certificate_authority(&base.join(file))?),
    };
    Ok(KubeCluster {
        cluster_name: raw.cluster_name,
        server: raw.server,
        certificate_authority_pem,
        client_id: raw.client_id,
    })
}

fn invalid(key: &str, message: String) -> Invalid {
    (format!("kubernetes.{key}"), message)
}

fn check_client(client_id: &str, clients: &HashMap<String, Client>) -> Result<(), Invalid> {
    match clients.get(client_id) {
        Some(c) if c.public => Ok(()),
        Some(_) => Err(invalid(
            "client_id",
            format!("client `{client_id}` must be public (kubectl cannot keep a secret)"),
        )),
        None => Err(invalid(
            "client_id",
            format!("no client `{client_id}` is configured under `clients`"),
        )),
    }
}

/// The PEM bundle in `file`, which must hold a certificate.
fn certificate_authority(file: &Path) -> Result<String, Invalid> {
    let pem = std::fs::read_to_string(file).map_err(|e| {
        invalid(
            "certificate_authority",
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            "certificate_authority",
            format!("{} holds no PEM certificate", file.display()),
        ));
    }
    Ok(pem)
}
