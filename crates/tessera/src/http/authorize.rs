//! `/authorize` and `/login`: the authorization code flow's browser side (RFC 6749 §4.1.1,
//! OpenID Connect Core §3.1.2) with a CSRF-protected login form and an SSO cookie. The same
//! form signs people in to their account page (`GET /login?return_to=account`).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::form::{Form, Params};
use super::{
    CSRF_COOKIE, Ctx, OAuthError, SSO_COOKIE, account, csrf_matches, csrf_token, issuer_path, theme,
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

/// The `return_to` of a sign-in that continues to the account page.
pub(super) const RETURN_TO_ACCOUNT: &str = "account";

/// Where a sign-in at the login form continues.
///
/// The account page signs people in through this same form, not through an OAuth client of its
/// own: the form's protections (CSRF token, rate limit, the connectors' choice, upstream buttons)
/// come along unchanged, and nothing is made that nobody redeems. An internal client would mint
/// a code for `/account` to throw away and be one more client `/token` must refuse; here only
/// the SSO cookie is set. `return_to` names this provider's page, never a URL, so it cannot
/// send anyone elsewhere.
#[derive(Clone, Debug)]
pub(super) enum Destination {
    /// Back to an application with a code, as its authorization request asked.
    Client(AuthRequest),
    /// `return_to=account` and no `client_id`: the account page, through the connector named,
    /// if one is.
    Account { connector_id: Option<String> },
}

impl Destination {
    /// The destination `params` name: the account page, or the authorization request they
    /// carry.
    pub(super) fn of(app: &App, params: &Params) -> Result<Destination, AuthorizeError> {
        let to_account = params.get("return_to") == Some(RETURN_TO_ACCOUNT);
        if params.get("client_id").is_some() || !to_account {
            return app
                .validate_authorization(|name| params.get(name).map(str::to_owned))
                .map(Destination::Client);
        }
        let connector_id = params.get("connector_id").map(str::to_owned);
        if let Some(id) = &connector_id
            && !app.connectors().iter().any(|c| c.id == *id)
        {
            return Err(AuthorizeError::Page(
                "There is no such way to sign in here.".into(),
            ));
        }
        Ok(Destination::Account { connector_id })
    }

    /// The connector the sign-in goes through, when it names one.
    fn connector_id(&self) -> Option<&str> {
        match self {
            Destination::Client(request) => request.connector_id.as_deref(),
            Destination::Account { connector_id } => connector_id.as_deref(),
        }
    }

    /// What the form says the sign-in is for (markup, escaped).
    fn purpose(&self) -> String {
        match self {
            Destination::Client(request) => format!(
                "to continue to <strong>{}</strong>",
                escape(request.client_id.as_str())
            ),
            Destination::Account { .. } => "to see your sessions".to_owned(),
        }
    }
}

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
    let destination = Destination::Client(request);
    if let Some(upstream) = upstream::direct(app, &destination, ctx).await {
        return Ok(upstream);
    }
    Ok(login_form(app, &destination, headers, StatusCode::OK, None))
}

/// `GET /login?return_to=account`: the form of a sign-in that continues to the account page,
/// where `/account` sends a person without a live SSO session. An application's sign-in starts
/// at `/authorize` instead, which may answer without the form.
pub(super) async fn login_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    RawQuery(query): RawQuery,
) -> Response {
    let destination = match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) if params.get("client_id").is_none() => Destination::of(&app, &params),
        _ => {
            let message = "This page signs in to your account; an application's sign-in \
                           starts at its authorization request.";
            return theme(&app).error_page(StatusCode::BAD_REQUEST, message);
        }
    };
    let destination = match destination {
        Ok(destination) => destination,
        Err(e) => return authorize_error(&app, e),
    };
    if let Some(upstream) = upstream::direct(&app, &destination, &ctx).await {
        return upstream;
    }
    login_form(&app, &destination, &headers, StatusCode::OK, None)
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
    let destination = match Destination::of(&app, &params) {
        Ok(destination) => destination,
        Err(e) => return authorize_error(&app, e),
    };
    if !csrf_matches(&headers, params.get("csrf")) {
        return retry_form(&app, &destination, &headers, &Retry::expired_form());
    }
    let username = params.get("username").unwrap_or_default();
    let password = params.get("password").unwrap_or_default();
    let connector_id = params.get("connector_id");
    match app.login(connector_id, username, password, &ctx).await {
        Ok(outcome) => signed_in(&app, &destination, &outcome).await,
        Err(failure) => match Retry::after(failure) {
            Ok(retry) => retry_form(&app, &destination, &headers, &retry),
            Err(e) => OAuthError::from(e).into_response(),
        },
    }
}

/// Sends the browser back to the client with a code (or to the account page), and sets the SSO
/// cookie so that the next authorization needs no password.
async fn signed_in(app: &App, destination: &Destination, outcome: &LoginOutcome) -> Response {
    let location = match destination {
        Destination::Client(request) => match app.issue_code(request, &outcome.sso).await {
            Ok(location) => location,
            Err(e) => return OAuthError::from(e).into_response(),
        },
        Destination::Account { .. } => account::path(app),
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
fn retry_form(
    app: &App,
    destination: &Destination,
    headers: &HeaderMap,
    retry: &Retry,
) -> Response {
    let mut response = login_form(
        app,
        destination,
        headers,
        retry.status,
        Some(&retry.message),
    );
    if let Some(seconds) = retry.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The login form, carrying its destination in hidden fields and a CSRF token that must match
/// the `tessera_csrf` cookie (double submit).
fn login_form(
    app: &App,
    destination: &Destination,
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
        &form_body(destination, &action, &csrf, error, &connectors, &buttons),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &csrf, &issuer_path(&app.issuer), None, 3600),
    );
    response
}

/// The destination as the form carries it: for an authorization request the [`CARRIED`]
/// parameters that have a value, so that the form's post validates into the same request.
fn carried(destination: &Destination) -> Vec<(&'static str, &str)> {
    let request = match destination {
        Destination::Client(request) => request,
        Destination::Account { connector_id } => {
            let pairs = [
                ("return_to", Some(RETURN_TO_ACCOUNT)),
                ("connector_id", connector_id.as_deref()),
            ];
            return pairs
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| (name, v)))
                .collect();
        }
    };
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
        .collect()
}

/// The form's markup: the error (escaped), then one form per connector offered (the one the
/// request names, else every configured one), each carrying the request, the CSRF token and,
/// when there is a choice, its connector's id. A connector in `buttons` (an upstream provider,
/// with the URL its login starts at) is a button, not a password form.
fn form_body(
    destination: &Destination,
    action: &str,
    csrf: &str,
    error: Option<&str>,
    connectors: &[(&str, &str)],
    buttons: &[(&str, String)],
) -> String {
    let mut carried_fields: String = carried(destination)
        .into_iter()
        .map(|(name, value)| hidden(name, value))
        .collect();
    carried_fields.push_str(&hidden("csrf", csrf));
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let offered: Vec<&(&str, &str)> = match destination.connector_id() {
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
        [(_, name)] if connectors.len() > 1 || destination.connector_id().is_some() => {
            format!(" with <strong>{}</strong>", escape(name))
        }
        _ => String::new(),
    };
    format!(
        "{error}<p>{purpose}{through}</p>{forms}",
        purpose = destination.purpose(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
