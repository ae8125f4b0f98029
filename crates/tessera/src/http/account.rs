//! `/account` (issue 13): the signed-in person's own sessions, each with a form that ends it,
//! and one that ends them all ("sign out everywhere"). The SSO cookie says who the person is:
//! an SSO session revoked, expired or idle past `session.sso_idle_timeout` does not count, and
//! the page sends the browser to the login form, which comes back here. Every form carries the
//! login form's CSRF token (double submit), so another site cannot end anyone's sessions. The
//! markup is `page`.

mod page;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use tessera_core::id::SessionId;
use tessera_store::{SessionFilter, SsoSession};

use super::authorize::RETURN_TO_ACCOUNT;
use super::form::Form;
use super::{
    CSRF_COOKIE, Ctx, OAuthError, SSO_COOKIE, csrf_matches, csrf_token, issuer_path, theme,
};
use crate::app::{Actor, App};
use crate::web::cookie::{cookie, set_cookie};
use crate::web::html::escape;
use crate::web::no_store;

/// The page's title, also the title of its refusals.
const TITLE: &str = "Your sessions";

/// Where the account page is: under the issuer's path.
pub(super) fn path(app: &App) -> String {
    format!("{}/account", issuer_path(&app.issuer))
}

/// `GET /account`: the person's live sessions, or the way to sign in first.
pub(super) async fn show(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let Some(sso) = app
        .account_sso(cookie(&headers, SSO_COOKIE).as_deref())
        .await?
    else {
        let login = format!(
            "{}/login?return_to={RETURN_TO_ACCOUNT}",
            issuer_path(&app.issuer)
        );
        return Ok(no_store(Redirect::to(&login).into_response()));
    };
    let sessions = app.sessions_of(&sso.subject).await?;
    let csrf = csrf_token(&headers);
    let base = issuer_path(&app.issuer);
    let directory = app.directory_of(&sso.subject);
    let account = page::Account {
        base: &base,
        subject: &sso.subject,
        directory: directory.as_deref(),
        sessions: &sessions,
        this_browser: &sso.id,
        csrf: &csrf,
    };
    let mut response = theme(&app).page(StatusCode::OK, TITLE, &page::body(&account));
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &csrf, &base, None, 3600),
    );
    Ok(response)
}

/// The SSO session of the person who posted an account form; otherwise the page to answer: a
/// forged form's, or the way back to the account page when nobody is signed in.
async fn signed_in_poster(
    app: &App,
    headers: &HeaderMap,
    form: Result<Form, OAuthError>,
) -> Result<Result<SsoSession, Response>, OAuthError> {
    if !sent_from_this_browser(headers, form) {
        return Ok(Err(forged(app)));
    }
    let sso = app
        .account_sso(cookie(headers, SSO_COOKIE).as_deref())
        .await?;
    Ok(sso.ok_or_else(|| back_to_account(app)))
}

/// `POST /account/sessions/{id}/end`: ends that session if it is the signed-in person's. Any
/// other id (someone else's, unknown, already ended) ends nothing and answers the same way, so
/// the form tells nobody which ids exist.
pub(super) async fn end_session(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Result<Response, OAuthError> {
    let sso = match signed_in_poster(&app, &headers, form).await? {
        Ok(sso) => sso,
        Err(page) => return Ok(page),
    };
    let owner = Some(&sso.subject);
    app.end_session_by_id(SessionId::new(id), owner, &Actor::Owner, &ctx)
        .await?;
    Ok(back_to_account(&app))
}

/// `POST /account/sign-out-everywhere`: ends every session and SSO session of the signed-in
/// person (and the proxy sessions holding their tokens), clears this browser's SSO cookie and
/// says so.
pub(super) async fn sign_out_everywhere(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    form: Result<Form, OAuthError>,
) -> Result<Response, OAuthError> {
    let sso = match signed_in_poster(&app, &headers, form).await? {
        Ok(sso) => sso,
        Err(page) => return Ok(page),
    };
    let everything = SessionFilter {
        subject: Some(sso.subject.clone()),
        client_id: None,
    };
    app.end_sessions(everything, &Actor::Owner, &ctx).await?;
    let mut response = theme(&app).page(StatusCode::OK, "Signed out everywhere", page::EVERYWHERE);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SSO_COOKIE, "", &issuer_path(&app.issuer), None, 0),
    );
    Ok(response)
}

/// Whether the form's CSRF token matches this browser's cookie; a malformed form never does.
fn sent_from_this_browser(headers: &HeaderMap, form: Result<Form, OAuthError>) -> bool {
    form.is_ok_and(|Form(params)| csrf_matches(headers, params.get("csrf")))
}

/// A form another site posted, or one older than its CSRF cookie: nothing ended.
fn forged(app: &App) -> Response {
    let body = format!(
        "<p class=\"error\" role=\"alert\">The form expired or was not sent from this browser, \
         so nothing was ended. <a href=\"{}\">Open your account page again</a> and retry.</p>",
        escape(&path(app))
    );
    theme(app).page(StatusCode::FORBIDDEN, TITLE, &body)
}

/// See other: the account page, which shows what is left (or the way to sign in).
fn back_to_account(app: &App) -> Response {
    Redirect::to(&path(app)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
