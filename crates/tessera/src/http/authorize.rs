//! `/authorize` and `/login`: the authorization code flow's browser side (RFC 6749 §4.1.1,
//! OpenID Connect Core §3.1.2) with a CSRF-protected login form and an SSO cookie.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::form::{Form, Params};
use super::html::{error_page, escape, hidden, page};
use super::{
    CSRF_COOKIE, Ctx, OAuthError, SSO_COOKIE, cookie, csrf_matches, csrf_token, issuer_path,
    set_cookie,
};
use crate::app::{App, AuthRequest, AuthorizeError, LoginFailure, MAX_USERNAME_LEN};

/// The authorization request parameters the login form carries through.
const CARRIED: [&str; 8] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

pub(super) async fn authorize_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) => authorize(&app, &headers, &params).await,
        Err(_) => error_page(
            StatusCode::BAD_REQUEST,
            "The authorization request is malformed or repeats a parameter.",
        ),
    }
}

pub(super) async fn authorize_post(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    form: Result<Form, OAuthError>,
) -> Response {
    match form {
        Ok(Form(params)) => authorize(&app, &headers, &params).await,
        Err(e) => error_page(
            e.status(),
            "The authorization request is malformed or repeats a parameter.",
        ),
    }
}

async fn authorize(app: &App, headers: &HeaderMap, params: &Params) -> Response {
    let request = match app.validate_authorization(|name| params.get(name).map(str::to_owned)) {
        Ok(request) => request,
        Err(e) => return authorize_error(e),
    };
    if !request.force_login {
        match app
            .sso_session(cookie(headers, SSO_COOKIE).as_deref())
            .await
        {
            Ok(Some(sso)) => {
                return match app.issue_code(&request, &sso).await {
                    Ok(location) => Redirect::to(&location).into_response(),
                    Err(e) => OAuthError::from(e).into_response(),
                };
            }
            Ok(None) => {}
            Err(e) => return OAuthError::from(e).into_response(),
        }
    }
    if request.no_prompt {
        let location = app.error_redirect(
            &request.redirect_uri,
            "login_required",
            "the user is not signed in",
            request.state.as_deref(),
        );
        return Redirect::to(&location).into_response();
    }
    login_form(app, &request, headers, StatusCode::OK, None)
}

pub(super) async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Response {
    let params = match form {
        Ok(Form(params)) => params,
        Err(e) => return error_page(e.status(), "The login form was malformed or too large."),
    };
    let request = match app.validate_authorization(|name| params.get(name).map(str::to_owned)) {
        Ok(request) => request,
        Err(e) => return authorize_error(e),
    };
    if !csrf_matches(&headers, params.get("csrf")) {
        let message = "The form expired or was not sent from this browser; please sign in again.";
        return login_form(
            &app,
            &request,
            &headers,
            StatusCode::FORBIDDEN,
            Some(message),
        );
    }
    let username = params.get("username").unwrap_or_default();
    let password = params.get("password").unwrap_or_default();
    let outcome = match app.login(username, password, &ctx).await {
        Ok(outcome) => outcome,
        Err(LoginFailure::BadCredentials) => {
            return login_form(
                &app,
                &request,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name or password."),
            );
        }
        Err(LoginFailure::InvalidUsername) => {
            let message =
                format!("User names are at most {MAX_USERNAME_LEN} bytes of printable text.");
            return login_form(
                &app,
                &request,
                &headers,
                StatusCode::BAD_REQUEST,
                Some(&message),
            );
        }
        Err(LoginFailure::RateLimited(seconds)) => {
            let message = format!("Too many failed sign-ins. Try again in {seconds} seconds.");
            let mut response = login_form(
                &app,
                &request,
                &headers,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&message),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
        Err(LoginFailure::Unavailable(e)) => return OAuthError::from(e).into_response(),
    };
    let location = match app.issue_code(&request, &outcome.sso).await {
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

fn authorize_error(e: AuthorizeError) -> Response {
    match e {
        AuthorizeError::Page(message) => error_page(StatusCode::BAD_REQUEST, &message),
        AuthorizeError::Redirect(location) => Redirect::to(&location).into_response(),
    }
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
    let values = [
        Some(request.client_id.as_str()),
        Some(request.redirect_uri.as_str()),
        Some("code"),
        Some(request.scope.as_str()),
        request.state.as_deref(),
        request.nonce.as_deref(),
        request.code_challenge.as_deref(),
        request.code_challenge.as_ref().map(|_| "S256"),
    ];
    let mut fields: String = CARRIED
        .iter()
        .zip(values)
        .filter_map(|(name, value)| value.map(|v| hidden(name, v)))
        .collect();
    fields.push_str(&hidden("csrf", &csrf));
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{error}<p>to continue to <strong>{client}</strong></p>\
         <form method=\"post\" action=\"{action}\">{fields}\
         <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form>",
        client = escape(&request.client_id),
        action = escape(&format!("{}/login", issuer_path(&app.issuer))),
    );
    let mut response = page(status, "Sign in", &body);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &csrf, &issuer_path(&app.issuer), None, 3600),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
