//! The admin surface's use cases: who an access token speaks for as an admin (a live session's
//! person in one of `admin.groups`), which person a name given to `tessera users …` or
//! `/admin/v1/users/{name}` means, and how a listed session reads as JSON: one shape for the
//! admin API and `tessera sessions list --json`.

use serde::Serialize;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SessionId, Subject};
use tessera_store::{ListedSession, SessionPage, SessionUse};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Actor, App, AppError};

/// A page of sessions as the admin API answers it and `tessera sessions list --json` prints it.
#[derive(Debug, Serialize)]
pub struct SessionListing {
    /// The sessions, in a stable (id) order.
    pub sessions: Vec<SessionView>,
    /// What to pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One live session.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// The session id (the tokens' `sid`).
    pub id: String,
    /// The person's `sub`.
    pub user: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The directory the person came from; `null` for a local user.
    pub connector_id: Option<String>,
    /// Its start: the code exchange.
    pub first_use: UseView,
    /// Its latest refresh, or its start when it was never refreshed.
    pub last_use: UseView,
    /// When it ends unless refreshed (RFC 3339).
    pub expires_at: String,
}

/// One use of a session.
#[derive(Debug, Serialize)]
pub struct UseView {
    /// When (RFC 3339).
    pub at: String,
    /// From which address; `null` when not recorded (sessions older than the recording).
    pub ip: Option<String>,
    /// With which `User-Agent`; `null` when none was sent or recorded.
    pub user_agent: Option<String>,
}

impl App {
    /// The admin `access_token` speaks for: a tessera access token whose signature verifies and
    /// whose `exp` has not come (no leeway), of a live session, whose person's groups (as their
    /// tokens would say them now: the users file, or what their directory last said) include
    /// one of `admin.groups`. The groups are read now rather than from the token, so a person
    /// taken out of the admin group, or disabled, loses the API at once.
    pub async fn admin_of(&self, access_token: &str) -> Result<Actor, AppError> {
        let (session, identity) = self.person_of(access_token).await?;
        let admin_groups = &self.config.admin_groups;
        if !identity.groups.iter().any(|g| admin_groups.contains(g)) {
            return Err(AppError::NotAdmin);
        }
        Ok(Actor::Admin(session.subject.to_string()))
    }

    /// The person `name` means to an admin: a local user by their user name (which is their
    /// `sub`), or a directory person by their `sub` (`<connector id>:<id>`) as listings show it.
    pub fn person_named(&self, name: &str) -> Result<Subject, AppError> {
        let local = self.users().find(name).is_some();
        let of_directory = self.connectors.directory_of(&Subject::new(name)).is_some();
        if local || of_directory {
            Ok(Subject::new(name))
        } else {
            Err(AppError::UnknownPerson { name: name.into() })
        }
    }

    /// `page` as the admin API and the CLI show it.
    pub fn session_listing(&self, page: SessionPage) -> SessionListing {
        SessionListing {
            sessions: page.sessions.iter().map(|s| self.session_view(s)).collect(),
            next_cursor: page.next_after.map(|id| id.to_string()),
        }
    }

    fn session_view(&self, listed: &ListedSession) -> SessionView {
        let session = &listed.session;
        let connector_id = self
            .connectors
            .directory_id_of(&session.subject)
            .map(str::to_owned);
        SessionView {
            id: session.id.to_string(),
            user: session.subject.to_string(),
            client_id: session.client_id.to_string(),
            connector_id,
            first_use: use_view(&listed.first_use),
            last_use: use_view(&listed.last_use),
            expires_at: rfc3339(listed.expires_at),
        }
    }
}

/// A listing cursor as the admin API takes it back: the id of the last session of the previous
/// page, which has the shape of every session id (see `random_id`).
pub fn parse_cursor(cursor: &str) -> Option<SessionId> {
    let well_formed =
        (1..=64).contains(&cursor.len()) && cursor.bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then(|| SessionId::new(cursor))
}

/// `at` in RFC 3339, UTC, to the second.
pub fn rfc3339(at: UnixMillis) -> String {
    OffsetDateTime::from_unix_timestamp(at.as_secs())
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| at.0.to_string())
}

fn use_view(used: &SessionUse) -> UseView {
    let recorded = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    UseView {
        at: rfc3339(used.at),
        ip: recorded(&used.from.ip),
        user_agent: recorded(&used.from.user_agent),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use std::time::Duration;

    use super::super::testing::{TestApp, USER};
    use super::*;

    #[tokio::test]
    async fn an_access_token_speaks_for_an_admin_until_its_exp_and_not_a_second_longer() {
        let t = TestApp::start_with(&[("TESSERA_ADMIN__GROUPS", "[dev]")]).await;
        let token = t.tokens().await.access_token;
        t.advance(Duration::from_secs(59));
        let admin = t.app.admin_of(&token).await.unwrap();
        assert_eq!(admin, Actor::Admin(USER.into()));
        // The default lifetime is 60 s: at `exp` itself the token is refused, no leeway.
        t.advance(Duration::from_secs(1));
        let expired = t.app.admin_of(&token).await;
        assert!(
            matches!(expired, Err(AppError::InvalidToken)),
            "{expired:?}"
        );
    }

    #[tokio::test]
    async fn without_admin_groups_nobody_is_an_admin_and_an_id_token_is_no_access_token() {
        let t = TestApp::start().await;
        let tokens = t.tokens().await;
        let refused = t.app.admin_of(&tokens.access_token).await;
        assert!(matches!(refused, Err(AppError::NotAdmin)), "{refused:?}");
        let id_token = t.app.admin_of(&tokens.id_token).await;
        assert!(
            matches!(id_token, Err(AppError::InvalidToken)),
            "{id_token:?}"
        );
    }

    #[tokio::test]
    async fn a_name_is_a_local_user_or_else_nobody_without_directories() {
        let t = TestApp::start().await;
        assert_eq!(t.app.person_named(USER).unwrap(), Subject::new(USER));
        for unknown in ["nobody", "ldap:alice"] {
            let refused = t.app.person_named(unknown);
            assert!(
                matches!(refused, Err(AppError::UnknownPerson { .. })),
                "{unknown}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_cursor_has_the_shape_of_a_session_id() {
        assert!(parse_cursor("0123456789abcdef0123456789abcdef").is_some());
        for bad in ["", "../x", "a b", &"a".repeat(65)] {
            assert!(parse_cursor(bad).is_none(), "{bad:?}");
        }
    }
}
