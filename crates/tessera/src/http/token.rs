//! `/token` (RFC 6749 §3.2), `/revoke` (RFC 7009) and `/introspect` (RFC 7662). Client
//! authentication always happens before anything is consumed.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::value::StrDeserializer;
use tessera_core::id::ClientId;

use super::form::{Form, Params};
use super::{Ctx, OAuthError};
use crate::app::{App, AppError, ClientCredentials};
use crate::web::no_store;

/// The grants tessera accepts (RFC 6749 §4.1.3 and §6).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GrantType {
    AuthorizationCode,
    RefreshToken,
}

impl GrantType {
    /// The grant a `grant_type` value names; an unknown one is echoed back cut to 64
    /// characters, so the error stays small whatever was sent.
    fn parse(name: &str) -> Result<GrantType, AppError> {
        let text = StrDeserializer::<serde::de::value::Error>::new(name);
        GrantType::deserialize(text)
            .map_err(|_| AppError::UnsupportedGrantType(name.chars().take(64).collect()))
    }
}

pub(super) async fn token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Result<Response, OAuthError> {
    let Form(params) = form?;
    let grant = GrantType::parse(params.require("grant_type")?)?;
    let credentials = credentials(&headers, &params)?;
    let client = app.authenticate_client(&credentials, &ctx).await?;
    let response = match grant {
        GrantType::AuthorizationCode => {
            let code = params.require("code")?;
            app.exchange_code(
                client,
                code,
                params.get("redirect_uri"),
                params.get("code_verifier"),
                &ctx,
            )
            .await?
        }
        GrantType::RefreshToken => {
            let token = params.require("refresh_token")?;
            app.refresh(client, token, params.get("scope"), &ctx)
                .await?
        }
    };
    Ok(no_store(Json(response).into_response()))
}

pub(super) async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Result<Response, OAuthError> {
    let Form(params) = form?;
    let credentials = credentials(&headers, &params)?;
    let client = app.authenticate_client(&credentials, &ctx).await?;
    let token = params.require("token")?;
    app.revoke(client, token, &ctx).await?;
    Ok(no_store(().into_response()))
}

pub(super) async fn introspect(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Result<Response, OAuthError> {
    let Form(params) = form?;
    let credentials = credentials(&headers, &params)?;
    let client = app.authenticate_client(&credentials, &ctx).await?;
    let token = params.require("token")?;
    let answer = app.introspect(client, token).await?;
    Ok(no_store(Json(answer).into_response()))
}

/// Reads client credentials from `Authorization: Basic` (RFC 6749 §2.3.1, form-encoded id and
/// secret) or from the body. An empty Basic password is no secret: golang.org/x/oauth2 sends
/// `kubernetes:` for public clients.
fn credentials(headers: &HeaderMap, params: &Params) -> Result<ClientCredentials, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(parse_basic(value).ok_or(AppError::InvalidClient)?),
        None => None,
    };
    let (body_id, body_secret) = (params.get("client_id"), params.get("client_secret"));
    match basic {
        Some((id, secret)) => {
            if body_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not two",
                ));
            }
            if body_id.is_some_and(|b| b != id) {
                return Err(AppError::InvalidClient.into());
            }
            Ok(ClientCredentials {
                id: ClientId::new(id),
                secret: Some(secret).filter(|s| !s.is_empty()),
            })
        }
        None => {
            let id = body_id.ok_or(AppError::InvalidClient)?;
            Ok(ClientCredentials {
                id: ClientId::new(id),
                secret: body_secret.map(str::to_owned),
            })
        }
    }
}

fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 4096 {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
