//! A stand-in Kubernetes API server for the kubectl tests: HTTPS on `127.0.0.1:0` with its own
//! self-signed certificate (kubectl sends credentials only over TLS), accepting a request only
//! with `Authorization: Bearer <id_token>` that verifies against tessera's JWKS for the issuer,
//! audience `kubernetes` and `exp` with no leeway, as the real API server's OIDC authenticator
//! does. It counts what it accepted and refused, and answers `kubectl auth whoami` with the
//! token's `sub` and `groups`, as an API server started with `--oidc-username-claim=sub
//! --oidc-username-prefix=- --oidc-groups-claim=groups` would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use serde_json::{Value, json};
use tessera_core::clock::{Clock, SystemClock};

/// The audience the API server expects (the `kubernetes` client).
pub const AUDIENCE: &str = "kubernetes";

/// How many refusals are kept verbatim for failure messages.
const KEPT_REFUSALS: usize = 20;

/// What the fixture trusts: tessera's keys and issuer.
struct Trust {
    jwks: JwkSet,
    issuer: String,
}

#[derive(Default)]
struct ApiState {
    trust: RwLock<Option<Trust>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    refusals: Mutex<Vec<String>>,
}

/// A running fixture; dropping it stops the listener.
pub struct KubeApi {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// PEM of its self-signed certificate, for `TESSERA_KUBERNETES__CERTIFICATE_AUTHORITY`.
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
    state: Arc<ApiState>,
    handle: axum_server::Handle,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl KubeApi {
    /// Starts listening; it refuses every request until [`KubeApi::trust`] is called (tessera
    /// must know this URL before it starts, and its keys exist only after).
    pub fn start() -> KubeApi {
        let dir = tempfile::tempdir().unwrap();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let ca = dir.path().join("kube-api-ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(ApiState::default());
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&state));
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
        )
        .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        KubeApi {
            url: format!("https://{address}"),
            ca,
            _dir: dir,
            state,
            handle,
        }
    }

    /// From now on accepts id_tokens of `issuer` signed by a key of `jwks`.
    pub fn trust(&self, issuer: &str, jwks: &Value) {
        let jwks: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        *self.state.trust.write().unwrap() = Some(Trust {
            jwks,
            issuer: issuer.to_owned(),
        });
    }

    /// Requests answered with 2xx/404 after a valid token.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Requests answered 401.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// The first refusals' reasons, for failure messages.
    pub fn refusals(&self) -> Vec<String> {
        self.state.refusals.lock().unwrap().clone()
    }
}

async fn serve(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let claims = match authenticate(&state, &request) {
        Ok(claims) => claims,
        Err(why) => return refuse(&state, &path, &why),
    };
    state.accepted.fetch_add(1, Ordering::SeqCst);
    match path.as_str() {
        "/apis/authentication.k8s.io/v1/selfsubjectreviews" => {
            let mut groups = claims["groups"].as_array().cloned().unwrap_or_default();
            groups.push("system:authenticated".into());
            axum::Json(json!({
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": claims["sub"], "groups": groups}},
            }))
            .into_response()
        }
        _ => answer(&path),
    }
}

/// 401, keeping the reason for failure messages.
fn refuse(state: &ApiState, path: &str, why: &str) -> Response {
    state.refused.fetch_add(1, Ordering::SeqCst);
    let mut kept = state.refusals.lock().unwrap();
    if kept.len() < KEPT_REFUSALS {
        kept.push(format!("{path}: {why}"));
    }
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    });
    (StatusCode::UNAUTHORIZED, axum::Json(status)).into_response()
}

/// The discovery documents kubectl reads, and 404 for anything else.
fn answer(path: &str) -> Response {
    match path {
        "/version" => axum::Json(json!({
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-12-11T00:00:00Z",
            "goVersion": "go1.23.4",
            "compiler": "gc",
            "platform": "linux/amd64",
        }))
        .into_response(),
        "/api" => axum::Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }))
        .into_response(),
        "/apis" => axum::Json(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [],
        }))
        .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("the server could not find the requested resource {path}"),
                "reason": "NotFound",
                "code": 404,
            })),
        )
            .into_response(),
    }
}

/// The API server's OIDC check: a bearer JWT signed by a JWKS key, for the issuer and the
/// `kubernetes` audience, not expired, with zero leeway.
fn authenticate(state: &ApiState, request: &Request) -> Result<Value, String> {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or("no Authorization header")?
        .to_str()
        .map_err(|_| "Authorization is not text")?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| format!("not a bearer token: {header:.20}"))?;
    let trust = state.trust.read().unwrap();
    let trust = trust.as_ref().ok_or("no issuer trusted yet")?;
    let jwt_header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = jwt_header.kid.ok_or("no kid")?;
    let jwk = trust
        .jwks
        .find(&kid)
        .ok_or_else(|| format!("unknown kid {kid}"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jwt_header.alg);
    validation.leeway = 0;
    validation.set_issuer(&[&trust.issuer]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| format!("{e}"))?
        .claims;
    // jsonwebtoken compares whole seconds; the API server (go-oidc) rejects a token the moment
    // the clock passes `exp`, so check that to the millisecond too.
    let exp_millis = claims["exp"].as_i64().ok_or("exp is not an integer")? * 1000;
    let now = SystemClock.now().0;
    if now > exp_millis {
        return Err(format!("expired {} ms ago", now - exp_millis));
    }
    Ok(claims)
}
