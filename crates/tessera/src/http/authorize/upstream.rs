//! The browser's way through an upstream OpenID Connect provider (`type: oidc` connectors):
//! the login page's button posts the authorization request to
//! `/connector/{id}/start` (with the form's CSRF token), which sends the browser upstream with a
//! sealed login cookie; the upstream sends it back to `/callback/{id}`, which finishes the login
//! and the authorization request it began with.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::super::form::{Form, Params};
use super::super::{Ctx, OAuthError, csrf_matches, issuer_path, theme};
use super::{Destination, Retry, authorize_error, carried, retry_form, signed_in};
use crate::app::{
    App, Callback, RequestContext, UPSTREAM_LOGIN_COOKIE, UPSTREAM_LOGIN_TTL, UpstreamFailure,
};
use crate::connector::Kind;
use crate::web::cookie::{cookie, set_cookie};
use crate::web::html::escape;

/// The `oidc` connectors' ids, each with the URL its button posts to.
pub(super) fn buttons(app: &App) -> Vec<(&str, String)> {
    let base = issuer_path(&app.issuer);
    app.connectors()
        .iter()
        .filter(|c| matches!(c.kind, Kind::Oidc(_)))
        .map(|c| (c.id.as_str(), format!("{base}/connector/{}/start", c.id)))
        .collect()
}

/// An upstream connector's part of the login page: one button, in a form that carries the
/// authorization request and the CSRF token.
pub(super) fn button(heading: &str, start: &str, fields: &str, name: &str) -> String {
    format!(
        "<section>{heading}<form method=\"post\" action=\"{start}\">{fields}\
         <button type=\"submit\">Sign in with {name}</button></form></section>",
        start = escape(start),
        name = escape(name),
    )
}

/// `POST /connector/{id}/start`: the button. Sends the browser to the upstream.
pub(in crate::http) async fn upstream_start(
    State(app): State<Arc<App>>,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Response {
    let params = match form {
        Ok(Form(params)) => params,
        Err(e) => {
            let message = "The sign-in form was malformed or too large.";
            return theme(&app).error_page(e.status(), message);
        }
    };
    let destination = match Destination::of(&app, &params) {
        Ok(destination) => destination,
        Err(e) => return authorize_error(&app, e),
    };
    if !csrf_matches(&headers, params.get("csrf")) {
        return retry_form(&app, &destination, &headers, &Retry::expired_form());
    }
    to_upstream(&app, &connector_id, &destination, &ctx).await
}

/// When the request's choice is an `oidc` connector (it names one with `connector_id`, or one
/// is all there is), the browser goes straight upstream, without a page. No CSRF token is needed
/// here: a login another site starts in this browser can only end in this browser's own session
/// at the upstream, as the callback takes only the state of this browser's cookie.
pub(super) async fn direct(
    app: &App,
    destination: &Destination,
    ctx: &RequestContext,
) -> Option<Response> {
    let all = app.connectors();
    let chosen = match destination.connector_id() {
        Some(id) => all.iter().find(|c| c.id == id),
        None if all.len() == 1 => all.first(),
        None => None,
    }?;
    if !matches!(chosen.kind, Kind::Oidc(_)) {
        return None;
    }
    Some(to_upstream(app, &chosen.id, destination, ctx).await)
}

/// Starts the login at `connector_id` for `destination`: the redirect upstream with the
/// login's cookie, or the page saying why not.
async fn to_upstream(
    app: &App,
    connector_id: &str,
    destination: &Destination,
    ctx: &RequestContext,
) -> Response {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(carried(destination))
        .finish();
    match app.start_upstream_login(connector_id, query, ctx).await {
        Ok(start) => {
            let mut response = Redirect::to(&start.location).into_response();
            let max_age = i64::try_from(UPSTREAM_LOGIN_TTL.as_secs()).unwrap_or(600);
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(
                    UPSTREAM_LOGIN_COOKIE,
                    &start.cookie,
                    &issuer_path(&app.issuer),
                    None,
                    max_age,
                ),
            );
            response
        }
        Err(failure) => failure_page(app, failure),
    }
}

/// `GET /callback/{id}`: the upstream sends the browser back here. Finishes the login, then
/// the authorization request it began with; the login cookie is spent either way.
pub(in crate::http) async fn upstream_callback(
    State(app): State<Arc<App>>,
    Path(connector_id): Path<String>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    RawQuery(query): RawQuery,
) -> Response {
    let mut response = callback(&app, &connector_id, &headers, &ctx, query).await;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            UPSTREAM_LOGIN_COOKIE,
            "",
            &issuer_path(&app.issuer),
            None,
            0,
        ),
    );
    response
}

async fn callback(
    app: &App,
    connector_id: &str,
    headers: &HeaderMap,
    ctx: &RequestContext,
    query: Option<String>,
) -> Response {
    let Ok(params) = Params::parse(query.unwrap_or_default().as_bytes()) else {
        return theme(app).error_page(
            StatusCode::BAD_REQUEST,
            "The answer of the sign-in service is malformed or repeats a parameter.",
        );
    };
    let sent = Callback {
        code: params.get("code").map(str::to_owned),
        state: params.get("state").map(str::to_owned),
        error: params.get("error").map(str::to_owned),
    };
    let login = cookie(headers, UPSTREAM_LOGIN_COOKIE);
    let signed = match app
        .finish_upstream_login(connector_id, &sent, login.as_deref(), ctx)
        .await
    {
        Ok(signed) => signed,
        Err(failure) => return failure_page(app, failure),
    };
    let Ok(carried) = Params::parse(signed.request.as_bytes()) else {
        return theme(app).error_page(
            StatusCode::BAD_REQUEST,
            "The authorization request is malformed or repeats a parameter.",
        );
    };
    match Destination::of(app, &carried) {
        Ok(destination) => signed_in(app, &destination, &signed.outcome).await,
        Err(e) => authorize_error(app, e),
    }
}

/// The page for a login that did not start or finish: a sentence, never a secret.
fn failure_page(app: &App, failure: UpstreamFailure) -> Response {
    let (status, message) = match failure {
        UpstreamFailure::Internal(e) => return OAuthError::from(e).into_response(),
        UpstreamFailure::UnknownConnector => (
            StatusCode::NOT_FOUND,
            "There is no such way to sign in here.".to_owned(),
        ),
        UpstreamFailure::NoLogin => (
            StatusCode::BAD_REQUEST,
            "This sign-in was not started in this browser, or took too long. Go back to the \
             application and sign in again."
                .to_owned(),
        ),
        UpstreamFailure::Refused { name, error } => (
            StatusCode::FORBIDDEN,
            format!(
                "{name} refused the sign-in ({error}). If you should have access, ask your \
                 administrator."
            ),
        ),
        UpstreamFailure::Disabled => (
            StatusCode::FORBIDDEN,
            "This account is disabled. Ask your administrator to enable it.".to_owned(),
        ),
        UpstreamFailure::Rejected { name } => (
            StatusCode::BAD_REQUEST,
            format!(
                "The answer of {name} could not be accepted (it was already used, expired, or \
                 did not verify). Go back to the application and sign in again."
            ),
        ),
        UpstreamFailure::Unavailable { name } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{name} cannot be reached right now, so nobody can sign in with it. Try again \
                 in a minute; if it lasts, tell your administrator."
            ),
        ),
    };
    theme(app).error_page(status, &message)
}
