//! The admin API, `/admin/v1/`: list and end anyone's sessions, disable and enable people.
//! Every request carries a tessera access token (`Authorization: Bearer`, RFC 6750 §2.1) of a
//! person in one of `admin.groups`; it is checked before anything else is read, so that
//! nobody else learns even whether a parameter was wrong. Answers are JSON and never cached.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tessera_core::id::{ClientId, SessionId, Subject};
use tessera_store::{Ended, SessionFilter};

use super::form::Params;
use super::{Ctx, OAuthError};
use crate::app::{Actor, App, AppError, parse_cursor};
use crate::web::no_store;

/// Sessions a listing answers when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// The most sessions one listing answers.
const MAX_LIMIT: u32 = 1000;

/// `GET /admin/v1/sessions?user=U&client=C&limit=N&cursor=X`.
pub(super) async fn list_sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, OAuthError> {
    admin(&app, &headers).await?;
    let params = Params::parse(query.unwrap_or_default().as_bytes())?;
    let listing = Listing::parse(&params)?;
    let page = app
        .list_sessions(listing.filter, listing.after, listing.limit)
        .await?;
    Ok(no_store(Json(app.session_listing(page)).into_response()))
}

/// `DELETE /admin/v1/sessions/{id}`: 204, or 404 when no live session has that id.
pub(super) async fn end_session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Response, OAuthError> {
    let actor = admin(&app, &headers).await?;
    if app
        .end_session_by_id(SessionId::new(id), None, &actor, &ctx)
        .await?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(OAuthError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no live session has this id",
        ))
    }
}

/// `POST /admin/v1/users/{username}/disable`: what it ended.
pub(super) async fn disable_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Response, OAuthError> {
    let actor = admin(&app, &headers).await?;
    let subject = app.person_named(&name)?;
    let ended = app.disable_user(subject.clone(), &actor, &ctx).await?;
    Ok(answer(&disabled_json(&subject, &ended)))
}

/// `POST /admin/v1/users/{username}/enable`: whether they were disabled.
pub(super) async fn enable_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Response, OAuthError> {
    let actor = admin(&app, &headers).await?;
    // Not [`App::person_named`]: someone gone from the users file or the directory since
    // they were disabled can still be enabled (their record cleared).
    let subject = Subject::new(name);
    let was_disabled = app.enable_user(subject.clone(), &actor, &ctx).await?;
    Ok(answer(&json!({
        "user": subject,
        "disabled": false,
        "was_disabled": was_disabled,
    })))
}

/// What a disabling ended.
fn disabled_json(subject: &Subject, ended: &Ended) -> serde_json::Value {
    json!({
        "user": subject,
        "disabled": true,
        "ended_sessions": ended.sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        "ended_sso_sessions": ended.sso_sessions,
    })
}

/// The admin the request's bearer token speaks for: 401 `invalid_token` without a valid one,
/// 403 `insufficient_scope` for someone in none of `admin.groups`.
async fn admin(app: &App, headers: &HeaderMap) -> Result<Actor, AppError> {
    let token = super::session::bearer(headers).ok_or(AppError::InvalidToken)?;
    app.admin_of(token).await
}

fn answer(body: &serde_json::Value) -> Response {
    no_store(Json(body).into_response())
}

/// A listing's parameters.
struct Listing {
    filter: SessionFilter,
    after: Option<SessionId>,
    limit: u32,
}

impl Listing {
    fn parse(params: &Params) -> Result<Listing, OAuthError> {
        if let Some(unknown) = params.names().find(|n| !KNOWN.contains(n)) {
            return Err(OAuthError::invalid_request(format!(
                "unknown parameter `{unknown}`; this endpoint takes user, client, limit and cursor"
            )));
        }
        let limit = match params.get("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    OAuthError::invalid_request(format!(
                        "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        };
        let after = params
            .get("cursor")
            .map(|c| {
                parse_cursor(c).ok_or_else(|| {
                    OAuthError::invalid_request(
                        "`cursor` is not one this API answered; pass `next_cursor` as it came",
                    )
                })
            })
            .transpose()?;
        Ok(Listing {
            filter: SessionFilter {
                subject: params.get("user").map(Subject::new),
                client_id: params.get("client").map(ClientId::new),
            },
            after,
            limit,
        })
    }
}

/// The parameters a listing takes.
const KNOWN: [&str; 4] = ["user", "client", "limit", "cursor"];

/// The answer to a method an admin route does not serve.
pub(super) async fn method_not_allowed() -> OAuthError {
    OAuthError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "this method is not served here; see the README's admin API",
    )
}
