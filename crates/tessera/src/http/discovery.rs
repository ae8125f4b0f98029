//! OpenID Connect Discovery 1.0 §3 and the JWKS (RFC 7517 §5).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::OAuthError;
use crate::app::App;

pub(super) async fn configuration(State(app): State<Arc<App>>) -> Response {
    let issuer = &app.issuer;
    let algs: Vec<&str> = {
        let mut algs = vec![app.config.signing_alg.as_str()];
        if app.config.access_token_alg != app.config.signing_alg {
            algs.push(app.config.access_token_alg.as_str());
        }
        algs
    };
    let id_token_algs = [app.config.signing_alg.as_str()];
    let document = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": id_token_algs,
        "userinfo_signing_alg_values_supported": ["none"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "groups", "offline_access"],
        "claims_supported": [
            "iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "sid",
            "preferred_username", "name", "email", "email_verified", "groups"
        ],
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "prompt_values_supported": ["none", "login"],
        "access_token_signing_alg_values_supported": algs,
    });
    cached_json(document.to_string(), "public, max-age=60")
}

pub(super) async fn jwks(State(app): State<Arc<App>>) -> Response {
    // Short cache: after a rotation, verifiers should see the new key within a minute.
    cached_json(app.keys().jwks.clone(), "public, max-age=60")
}

fn cached_json(body: String, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// The cluster `tessera login` writes into the kubeconfig (`kubernetes:` in tessera.yaml).
pub(super) async fn kube_cluster(State(app): State<Arc<App>>) -> Response {
    use base64::Engine as _;
    let Some(cluster) = &app.config.kubernetes else {
        return OAuthError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "this server publishes no Kubernetes cluster; set `kubernetes:` in tessera.yaml",
        )
        .into_response();
    };
    let ca_data = cluster
        .certificate_authority_pem
        .as_ref()
        .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem));
    let document = json!({
        "issuer": app.issuer,
        "cluster_name": cluster.cluster_name,
        "server": cluster.server,
        "certificate_authority_data": ca_data,
        "client_id": cluster.client_id,
    });
    cached_json(document.to_string(), "public, max-age=60")
}
