//! `/authorize` and `/login`: the authorization code flow's browser side (RFC 6749 §4.1.1,
//! OpenID Connect Core §3.1.2) with a CSRF-protected login form and an SSO cookie.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::form::{Form, Params};
use super::{
    CSRF_COOKIE, Ctx, OAuthError, SSO_COOKIE, csrf_matches, csrf_token, issuer_path, theme,
};
use crate::app::{
    App, AppError, AuthRequest, AuthorizeError, LoginFailure, LoginOutcome, MAX_USERNAME_LEN,
    RequestContext,
};
use crate::web::cookie::{cookie, set_cookie};
use crate::web::html::{escape, hidden};

mod upstream;
pub(super) use upstream::{upstream_callback, upstream_start};

/// The authorization request parameters the login form carries through.
const CARRIED: [&str; 9] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "connector_id",
];

pub(super) async fn authorize_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    RawQuery(query): RawQuery,
) -> Response {
    match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) => authorize(&app, &headers, &params, &ctx)
            .await
            .into_response(),
        Err(_) => theme(&app).error_page(
            StatusCode::BAD_REQUEST,
            "The authorization request is malformed or repeats a parameter.",
        ),
    }
}

pub(super) async fn authorize_post(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Response {
    match form {
        Ok(Form(params)) => authorize(&app, &headers, &params, &ctx)
            .await
            .into_response(),
        Err(e) => theme(&app).error_page(
            e.status(),
            "The authorization request is malformed or repeats a parameter.",
        ),
    }
}

/// An SSO session answers at once with a code, unless `prompt=login` asks for the form;
/// `prompt=none` without one goes back to the client with `login_required`.
async fn authorize(
    app: &App,
    headers: &HeaderMap,
    params: &Params,
    ctx: &RequestContext,
) -> Result<Response, OAuthError> {
    let request = match app.validate_authorization(|name| params.get(name).map(str::to_owned)) {
        Ok(request) => request,
        Err(e) => return Ok(authorize_error(app, e)),
    };
    let sso = app
        .sso_session(cookie(headers, SSO_COOKIE).as_deref())
        .await?
        .filter(|sso| app.answers_silently(sso, &request));
    if let Some(sso) = sso {
        app.touch_sso(&sso).await?;
        let location = app.issue_code(&request, &sso).await?;
        return Ok(Redirect::to(&location).into_response());
    }
    if request.no_prompt {
        let location = app.error_redirect(
            &request.redirect_uri,
            "login_required",
            "the user is not signed in",
            request.state.as_deref(),
        );
        return Ok(Redirect::to(&location).into_response());
    }
    if let Some(upstream) = upstream::direct(app, &request, ctx).await {
        return Ok(upstream);
    }
    Ok(login_form(app, &request, headers, StatusCode::OK, None))
}

pub(super) async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Response {
    let params = match form {
        Ok(Form(params)) => params,
        Err(e) => {
            return theme(&app)
                .error_page(e.status(), "The login form was malformed or too large.");
        }
    };
    let request = match app.validate_authorization(|name| params.get(name).map(str::to_owned)) {
        Ok(request) => request,
        Err(e) => return authorize_error(&app, e),
    };
    if !csrf_matches(&headers, params.get("csrf")) {
        return retry_form(&app, &request, &headers, &Retry::expired_form());
    }
    let username = params.get("username").unwrap_or_default();
    let password = params.get("password").unwrap_or_default();
    let connector_id = params.get("connector_id");
    match app.login(connector_id, username, password, &ctx).await {
        Ok(outcome) => signed_in(&app, &request, &outcome).await,
        Err(failure) => match Retry::after(failure) {
            Ok(retry) => retry_form(&app, &request, &headers, &retry),
            Err(e) => OAuthError::from(e).into_response(),
        },
    }
}

/// Sends the browser back to the client with a code, and sets the SSO cookie so that the
/// next authorization needs no password.
async fn signed_in(app: &App, request: &AuthRequest, outcome: &LoginOutcome) -> Response {
    let location = match app.issue_code(request, &outcome.sso).await {
        Ok(location) => location,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let mut response = Redirect::to(&location).into_response();
    let max_age = outcome.sso.expires_at.millis_since(outcome.sso.auth_time) / 1000;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            SSO_COOKIE,
            outcome.handle.expose(),
            &issuer_path(&app.issuer),
            None,
            max_age,
        ),
    );
    response
}

fn authorize_error(app: &App, e: AuthorizeError) -> Response {
    match e {
        AuthorizeError::Page(message) => theme(app).error_page(StatusCode::BAD_REQUEST, &message),
        AuthorizeError::Redirect(location) => Redirect::to(&location).into_response(),
    }
}

/// Why the login form is shown again: its status, the sentence the user reads, and for a rate
/// limit the seconds until a retry (`Retry-After`, RFC 9110 §10.2.3).
#[derive(Debug, PartialEq, Eq)]
struct Retry {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl Retry {
    /// The form's CSRF token does not match the browser's cookie.
    fn expired_form() -> Retry {
        Retry {
            status: StatusCode::FORBIDDEN,
            message: "The form expired or was not sent from this browser; please sign in again."
                .into(),
            retry_after: None,
        }
    }

    /// A failed sign-in, or the store's failure, which is no reason to show the form again.
    fn after(failure: LoginFailure) -> Result<Retry, AppError> {
        let (status, message, retry_after) = match failure {
            LoginFailure::Unavailable(e) => return Err(e),
            LoginFailure::BadCredentials => (
                StatusCode::UNAUTHORIZED,
                "Wrong user name or password.".to_owned(),
                None,
            ),
            LoginFailure::InvalidUsername => (
                StatusCode::BAD_REQUEST,
                format!("User names are at most {MAX_USERNAME_LEN} bytes of printable text."),
                None,
            ),
            LoginFailure::NoConnector => (
                StatusCode::BAD_REQUEST,
                "Choose where to sign in.".to_owned(),
                None,
            ),
            LoginFailure::DirectoryUnavailable(name) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{name} cannot be reached right now, so nobody can sign in with it. Try again in a minute; if it lasts, tell your administrator."
                ),
                None,
            ),
            LoginFailure::Disabled => (
                StatusCode::FORBIDDEN,
                "This account is disabled. Ask your administrator to enable it.".to_owned(),
                None,
            ),
            LoginFailure::RateLimited(seconds) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed sign-ins. Try again in {seconds} seconds."),
                Some(seconds),
            ),
        };
        Ok(Retry {
            status,
            message,
            retry_after,
        })
    }
}

/// The login form again, with what went wrong.
fn retry_form(app: &App, request: &AuthRequest, headers: &HeaderMap, retry: &Retry) -> Response {
    let mut response = login_form(app, request, headers, retry.status, Some(&retry.message));
    if let Some(seconds) = retry.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The login form, carrying the authorization request in hidden fields and a CSRF token that
/// must match the `tessera_csrf` cookie (double submit).
fn login_form(
    app: &App,
    request: &AuthRequest,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let csrf = csrf_token(headers);
    let action = format!("{}/login", issuer_path(&app.issuer));
    let connectors: Vec<(&str, &str)> = app
        .connectors()
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    let buttons = upstream::buttons(app);
    let mut response = theme(app).page(
        status,
        "Sign in",
        &form_body(request, &action, &csrf, error, &connectors, &buttons),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &csrf, &issuer_path(&app.issuer), None, 3600),
    );
    response
}

/// The authorization request as the form carries it: the [`CARRIED`] parameters that have a
/// value, so that the form's post validates into the same request.
fn carried(request: &AuthRequest) -> impl Iterator<Item = (&'static str, &str)> {
    let values = [
        Some(request.client_id.as_str()),
        Some(request.redirect_uri.as_str()),
        Some("code"),
        Some(request.scope.as_str()),
        request.state.as_deref(),
        request.nonce.as_deref(),
        request.code_challenge.as_deref(),
        request.code_challenge.as_ref().map(|_| "S256"),
        request.connector_id.as_deref(),
    ];
    CARRIED
        .into_iter()
        .zip(values)
        .filter_map(|(name, value)| value.map(|v| (name, v)))
}

/// The form's markup: the error (escaped), then one form per connector offered (the one the
/// request names, else every configured one), each carrying the request, the CSRF token and,
/// when there is a choice, its connector's id. A connector in `buttons` (an upstream provider,
/// with the URL its login starts at) is a button, not a password form.
fn form_body(
    request: &AuthRequest,
    action: &str,
    csrf: &str,
    error: Option<&str>,
    connectors: &[(&str, &str)],
    buttons: &[(&str, String)],
) -> String {
    let mut carried_fields: String = carried(request)
        .map(|(name, value)| hidden(name, value))
        .collect();
    carried_fields.push_str(&hidden("csrf", csrf));
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let offered: Vec<&(&str, &str)> = match request.connector_id.as_deref() {
        Some(chosen) => connectors.iter().filter(|(id, _)| *id == chosen).collect(),
        None => connectors.iter().collect(),
    };
    let choice = offered.len() > 1;
    let forms: String = offered
        .iter()
        .enumerate()
        .map(|(n, (id, name))| {
            let mut fields = carried_fields.clone();
            let heading = if choice {
                fields.push_str(&hidden("connector_id", id));
                format!("<h2>{}</h2>", escape(name))
            } else {
                String::new()
            };
            if let Some((_, start)) = buttons.iter().find(|(b, _)| b == id) {
                return upstream::button(&heading, start, &fields, name);
            }
            let autofocus = if n == 0 { " autofocus" } else { "" };
            format!(
                "<section>{heading}<form method=\"post\" action=\"{action}\">{fields}\
                 <label for=\"username-{n}\">User name</label><input id=\"username-{n}\" name=\"username\" autocomplete=\"username\" required{autofocus}>\
                 <label for=\"password-{n}\">Password</label><input id=\"password-{n}\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
                 <button type=\"submit\">Sign in</button></form></section>",
                action = escape(action),
            )
        })
        .collect();
    let through = match offered.as_slice() {
        [(_, name)] if connectors.len() > 1 || request.connector_id.is_some() => {
            format!(" with <strong>{}</strong>", escape(name))
        }
        _ => String::new(),
    };
    format!(
        "{error}<p>to continue to <strong>{client}</strong>{through}</p>{forms}",
        client = escape(request.client_id.as_str()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
