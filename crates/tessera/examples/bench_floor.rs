//! The floor of `bench/refresh --peer` (issue 14): a server that does only what every refresh
//! of an RS256 provider over TLS must do, so the benchmark can measure the ceiling of this
//! machine beside tessera and the peer, in the same run and with the same load generator.
//!
//! It serves `/token` on tessera's own listener ([`tessera::listener::Connections`]) with the
//! TLS set-up and limits of a `tessera serve --dev` data directory, on a multi-threaded Tokio
//! runtime and mimalloc as the `tessera` binary has, and answers each refresh as tessera does:
//! the form parsed, the presented token hashed (SHA-256) and its successor derived (HMAC), an
//! id_token with tessera's claims signed RS256 and an access token signed ES256 (`at+jwt`), the
//! same JSON and headers. It keeps nothing: no store, no session, no audit line, no check that
//! the token was ever issued. What tessera spends above this floor is its state.
//!
//! Run by bench_refresh: `bench_floor DATA_DIR`; prints `issuer: https://127.0.0.1:PORT`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tessera::config::Config;
use tessera::listener::Connections;
use tessera::shutdown::Shutdown;
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::jwt::{Algorithm, SigningKey};
use tessera_core::token::{RotationKey, Secret};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lifetimes of tessera's defaults: 60-second id_tokens, 15-minute access tokens.
const ID_TOKEN_TTL: Duration = Duration::from_secs(60);
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(900);

struct Floor {
    issuer: String,
    id_signer: SigningKey,
    access_signer: SigningKey,
    rotation_key: RotationKey,
}

fn main() -> Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: bench_floor DATA_DIR")?;
    let setup = tessera::dev::prepare(&dir, None)?;
    let config = Config::load(&setup.config_path, &[])?;
    let (cert, key) = config
        .tls
        .as_ref()
        .context("the dev configuration names a certificate")?;
    let tls = tessera::tls::server_config(cert, key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, tls))
}

async fn serve(config: Config, tls: Arc<rustls::ServerConfig>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let issuer = format!("https://{}", listener.local_addr()?);
    let (id_signer, _) = SigningKey::generate(Algorithm::RS256, "floor-rs256".into())
        .map_err(|e| anyhow!("cannot make an RS256 key: {e}"))?;
    let (access_signer, _) = SigningKey::generate(Algorithm::ES256, "floor-es256".into())
        .map_err(|e| anyhow!("cannot make an ES256 key: {e}"))?;
    let floor = Arc::new(Floor {
        issuer: issuer.clone(),
        id_signer,
        access_signer,
        rotation_key: RotationKey::new(rand::random::<[u8; 32]>().to_vec()),
    });
    let router = Router::new()
        .route("/token", post(token))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(floor);
    let connections = Connections::new(config.limits, &[], None);
    println!("issuer: {issuer}");
    connections
        .serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            router,
            |peer: SocketAddr| peer,
            &Shutdown::default(),
        )
        .await;
    Ok(())
}

async fn token(
    State(floor): State<Arc<Floor>>,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let (Some("refresh_token"), Some(presented), Some(client_id)) = (
        field("grant_type"),
        field("refresh_token"),
        field("client_id"),
    ) else {
        return oauth_error(
            "invalid_request",
            "a refresh needs grant_type, refresh_token and client_id",
        );
    };
    let presented = Secret::from_presented(presented);
    // What a store would be asked for; the floor asks nothing.
    let hash = presented.hash();
    let successor = presented.successor(&floor.rotation_key);
    match floor.mint(client_id, &hash.token_id(), &successor) {
        Ok(answer) => {
            let mut response = axum::Json(answer).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(e) => oauth_error("server_error", &e.to_string()),
    }
}

impl Floor {
    /// tessera's answer to a refresh of the dev user, scope `openid profile email groups`.
    fn mint(&self, client_id: &str, session: &str, refresh: &Secret) -> Result<Value> {
        let now = SystemClock.now();
        let id = json!({
            "preferred_username": "dev",
            "name": "dev",
            "email": "dev@example.com",
            "email_verified": true,
            "groups": ["dev", "system:authenticated"],
            "iss": self.issuer,
            "sub": "dev",
            "aud": client_id,
            "azp": client_id,
            "exp": now.plus(ID_TOKEN_TTL).as_secs(),
            "iat": now.as_secs(),
            "auth_time": now.as_secs(),
            "sid": session,
        });
        let id_token = self.id_signer.sign("JWT", &id)?;
        let access = json!({
            "iss": self.issuer,
            "sub": "dev",
            "aud": client_id,
            "client_id": client_id,
            "exp": now.plus(ACCESS_TOKEN_TTL).as_secs(),
            "iat": now.as_secs(),
            "auth_time": now.as_secs(),
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "sid": session,
            "scope": "openid profile email groups",
        });
        let access_token = self.access_signer.sign("at+jwt", &access)?;
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_TTL.as_secs(),
            "refresh_token": refresh.expose(),
            "id_token": id_token,
            "scope": "openid profile email groups",
        }))
    }
}

/// RFC 6749 §5.2.
fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}
