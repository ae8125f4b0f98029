//! `/userinfo` (OpenID Connect Core §5.3) and `/logout` (RP-Initiated Logout 1.0 §2).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use tessera_core::id::{ClientId, SessionId, SsoId};

use super::form::{Form, Params};
use super::{
    CSRF_COOKIE, Ctx, OAuthError, SSO_COOKIE, csrf_matches, csrf_token, issuer_path, theme,
};
use crate::app::{App, AppError, LogoutHint, RequestContext};
use crate::web::cookie::{cookie, set_cookie};
use crate::web::html::{escape, hidden};
use crate::web::no_store;

pub(super) async fn userinfo(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let token = bearer(&headers).ok_or(AppError::InvalidToken)?;
    let claims = app.userinfo(token).await?;
    // The claims are personal data: no cache along the way may keep them.
    Ok(no_store(Json(claims).into_response()))
}

/// The token of an `Authorization: Bearer` header (RFC 6750 §2.1).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

pub(super) async fn logout_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    RawQuery(query): RawQuery,
) -> Response {
    match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) => logout(&app, &headers, &ctx, &params, false)
            .await
            .into_response(),
        Err(_) => {
            theme(&app).error_page(StatusCode::BAD_REQUEST, "The logout request is malformed.")
        }
    }
}

pub(super) async fn logout_post(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Response {
    let params = match form {
        Ok(Form(params)) => params,
        Err(e) => {
            let message = "The logout request is malformed or too large.";
            return theme(&app).error_page(e.status(), message);
        }
    };
    let confirmed = csrf_matches(&headers, params.get("csrf"));
    logout(&app, &headers, &ctx, &params, confirmed)
        .await
        .into_response()
}

/// Signs out without asking when the RP proves itself (a valid `id_token_hint` of a session
/// started from this browser's SSO session, and a registered `post_logout_redirect_uri`);
/// otherwise asks the user to confirm, so a cross-site link cannot sign anyone out.
async fn logout(
    app: &App,
    headers: &HeaderMap,
    ctx: &RequestContext,
    params: &Params,
    confirmed: bool,
) -> Result<Response, OAuthError> {
    let hint = params.get("id_token_hint").and_then(|t| app.logout_hint(t));
    let after = post_logout(app, hint.as_ref(), params);
    if after == PostLogout::Unregistered {
        return Ok(theme(app).error_page(
            StatusCode::BAD_REQUEST,
            "The post_logout_redirect_uri is not registered for this client.",
        ));
    }
    let sso = app
        .sso_session(cookie(headers, SSO_COOKIE).as_deref())
        .await?
        .map(|s| s.id);
    let silent = proves_this_sign_in(app, hint.as_ref(), sso.as_ref(), &after).await?;
    if !(confirmed || silent) {
        return Ok(confirmation(app, headers, params));
    }
    let hinted: Option<SessionId> = hint.map(|h| h.session_id);
    app.logout(sso, hinted, ctx).await?;
    Ok(signed_out(app, after))
}

/// Where the browser goes after signing out (RP-Initiated Logout 1.0 §3).
#[derive(Debug, PartialEq, Eq)]
enum PostLogout {
    /// No `post_logout_redirect_uri`: a "signed out" page.
    Page,
    /// A registered one, as the location to send the browser to (with `state`).
    Redirect(String),
    /// One not registered for the client: refused before anything ends.
    Unregistered,
}

impl PostLogout {
    /// The destination for `uri`, which the client has `registered` or not; `state` goes back
    /// to the client in the query.
    fn of(uri: Option<&str>, registered: bool, state: Option<&str>) -> PostLogout {
        let Some(uri) = uri else {
            return PostLogout::Page;
        };
        if !registered {
            return PostLogout::Unregistered;
        }
        let location = url::Url::parse(uri).map_or_else(
            |_| uri.to_owned(),
            |mut u| {
                if let Some(state) = state {
                    u.query_pairs_mut().append_pair("state", state);
                }
                u.to_string()
            },
        );
        PostLogout::Redirect(if location.is_empty() {
            "/".into()
        } else {
            location
        })
    }
}

/// The request's destination. The client is the hint's audience when there is a valid hint,
/// else the `client_id` parameter; without either no redirect is registered.
fn post_logout(app: &App, hint: Option<&LogoutHint>, params: &Params) -> PostLogout {
    let uri = params.get("post_logout_redirect_uri");
    let client_id = hint
        .map(|h| h.client_id.clone())
        .or_else(|| params.get("client_id").map(ClientId::new));
    let registered = match (uri, client_id) {
        (Some(uri), Some(client)) => app.post_logout_redirect_allowed(&client, uri),
        _ => false,
    };
    PostLogout::of(uri, registered, params.get("state"))
}

/// Without asking only for the RP of this browser's own sign-in: anyone can hold some
/// id_token, and a link carrying it must not end the SSO session of whoever follows it.
async fn proves_this_sign_in(
    app: &App,
    hint: Option<&LogoutHint>,
    sso: Option<&SsoId>,
    after: &PostLogout,
) -> Result<bool, AppError> {
    match (hint, sso, after) {
        (Some(hint), Some(sso), PostLogout::Redirect(_)) => app.hint_names_sso(hint, sso).await,
        _ => Ok(false),
    }
}

/// The answer once signed out: the redirect or the page, and the SSO cookie cleared.
fn signed_out(app: &App, after: PostLogout) -> Response {
    let mut response = match after {
        PostLogout::Redirect(location) => Redirect::to(&location).into_response(),
        _ => theme(app).page(StatusCode::OK, "Signed out", "<p>You are signed out.</p>"),
    };
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SSO_COOKIE, "", &issuer_path(&app.issuer), None, 0),
    );
    response
}

fn confirmation(app: &App, headers: &HeaderMap, params: &Params) -> Response {
    let csrf = csrf_token(headers);
    let mut fields = hidden("csrf", &csrf);
    for name in [
        "id_token_hint",
        "post_logout_redirect_uri",
        "state",
        "client_id",
    ] {
        if let Some(value) = params.get(name) {
            fields.push_str(&hidden(name, value));
        }
    }
    let body = format!(
        "<p>Sign out of every application that uses this sign-in?</p>\
         <form method=\"post\" action=\"{}\">{fields}<button type=\"submit\">Sign out</button></form>",
        escape(&format!("{}/logout", issuer_path(&app.issuer)))
    );
    let mut response = theme(app).page(StatusCode::OK, "Sign out", &body);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &csrf, &issuer_path(&app.issuer), None, 3600),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
