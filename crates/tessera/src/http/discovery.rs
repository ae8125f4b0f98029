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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::http::StatusCode;

    use crate::app::testing::{ISSUER, TestApp, request};

    #[tokio::test]
    async fn discovery_names_every_endpoint_under_the_issuer_and_may_be_cached_a_minute() {
        let t = TestApp::start().await;
        let answer = t
            .send(request(
                "GET",
                "/.well-known/openid-configuration",
                &[],
                None,
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("cache-control"), Some("public, max-age=60"));
        let document = answer.json();
        assert_eq!(document["issuer"], ISSUER);
        for (key, path) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("jwks_uri", "/jwks"),
            ("userinfo_endpoint", "/userinfo"),
            ("revocation_endpoint", "/revoke"),
            ("introspection_endpoint", "/introspect"),
            ("end_session_endpoint", "/logout"),
        ] {
            assert_eq!(document[key], format!("{ISSUER}{path}"), "{key}");
        }
        assert_eq!(
            document["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );
        assert_eq!(
            document["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
    }

    #[tokio::test]
    async fn jwks_publishes_the_key_that_signs_the_tokens() {
        let t = TestApp::start().await;
        let tokens = t.tokens().await;
        let answer = t.send(request("GET", "/jwks", &[], None)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("cache-control"), Some("public, max-age=60"));
        let header = jsonwebtoken::decode_header(&tokens.id_token).unwrap();
        let keys = answer.json()["keys"].as_array().unwrap().clone();
        assert!(
            keys.iter()
                .any(|k| k["kid"] == header.kid.clone().unwrap().as_str())
        );
    }

    #[tokio::test]
    async fn without_a_kubernetes_section_the_cluster_document_is_a_404_error() {
        let t = TestApp::start().await;
        let answer = t.send(request("GET", "/kube/cluster", &[], None)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.json()["error"], "invalid_request");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
}
