//! Sessions people and admins can see and end: the account page's list, "end this session" and
//! "sign out everywhere", the admin CLI and API's listing and revocation, and disabling a person.
//! Every ending is audited as `SessionRevoked` with a reason of its own.

use tessera_core::audit::{Event, Subjects};
use tessera_core::id::{SessionId, Subject};
use tessera_store::{DisabledUser, Ended, ListedSession, SessionFilter, SessionPage, SsoSession};

use super::{App, AppError, RequestContext};

/// A person ended one of their sessions on the account page.
const USER_ENDED: &str = "user_ended";
/// A person ended all their sessions on the account page.
const SIGN_OUT_EVERYWHERE: &str = "sign_out_everywhere";
/// An admin ended sessions (`tessera sessions revoke`, the admin API).
const ADMIN: &str = "admin";
/// An admin disabled the person (`tessera users disable`, the admin API); the store writes it.
const USER_DISABLED: &str = "user_disabled";

/// Who ends sessions, for the audit line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The person themselves, on the account page.
    Owner,
    /// An admin: their `sub` (the admin API) or `cli`.
    Admin(String),
}

impl Actor {
    fn admin_uid(&self) -> Option<String> {
        match self {
            Actor::Owner => None,
            Actor::Admin(uid) => Some(uid.clone()),
        }
    }
}

/// The most sessions one person's account page lists: more than anyone keeps by hand, few
/// enough for one page.
const ACCOUNT_PAGE_LIMIT: u32 = 200;

impl App {
    /// One page of the live sessions `filter` names, in a stable order (see
    /// [`tessera_store::Store::list_sessions`]).
    pub async fn list_sessions(
        &self,
        filter: SessionFilter,
        after: Option<SessionId>,
        limit: u32,
    ) -> Result<SessionPage, AppError> {
        Ok(self
            .store
            .list_sessions(filter, self.now(), after, limit)
            .await?)
    }

    /// The SSO session the account page is signed in with: the one `handle` names if it is
    /// live and was used within `session.sso_idle_timeout`, as `/authorize` would answer
    /// silently. Showing the page is a use of it, so its idle clock restarts.
    pub async fn account_sso(&self, handle: Option<&str>) -> Result<Option<SsoSession>, AppError> {
        let Some(sso) = self.sso_session(handle).await? else {
            return Ok(None);
        };
        let idle = u64::try_from(self.now().millis_since(sso.last_used_at)).unwrap_or(0);
        let limit = u64::try_from(self.config.sso_idle_timeout.as_millis()).unwrap_or(u64::MAX);
        if idle > limit {
            return Ok(None);
        }
        self.touch_sso(&sso).await?;
        Ok(Some(sso))
    }

    /// The name of the directory `subject` signed in through; `None` for a local user, whose
    /// connector is no news to anyone.
    pub fn directory_of(&self, subject: &Subject) -> Option<String> {
        self.connectors
            .directory_of(subject)
            .map(|connector| connector.name.clone())
    }

    /// A person's live sessions, most recently used first: what their account page shows.
    pub async fn sessions_of(&self, subject: &Subject) -> Result<Vec<ListedSession>, AppError> {
        let filter = SessionFilter {
            subject: Some(subject.clone()),
            client_id: None,
        };
        let page = self.list_sessions(filter, None, ACCOUNT_PAGE_LIMIT).await?;
        let mut sessions = page.sessions;
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_use.at));
        Ok(sessions)
    }

    /// Ends session `id` if it is `owner`'s (the account page) or whoever's for an admin;
    /// whether a live session ended. A session of someone else is left alone and answers
    /// `false`, as an unknown one does: a person cannot learn another's session ids this way.
    pub async fn end_session_by_id(
        &self,
        id: SessionId,
        owner: Option<&Subject>,
        actor: &Actor,
        ctx: &RequestContext,
    ) -> Result<bool, AppError> {
        let Some(session) = self.store.find_session(id).await? else {
            return Ok(false);
        };
        if owner.is_some_and(|owner| *owner != session.subject) {
            return Ok(false);
        }
        let reason = match actor {
            Actor::Owner => USER_ENDED,
            Actor::Admin(_) => ADMIN,
        };
        let ended = self
            .store
            .revoke_session(session.id.clone(), self.now(), reason)
            .await?;
        if ended {
            let who = Subjects {
                admin_uid: actor.admin_uid(),
                ..self.subjects(&session, ctx, None)
            };
            self.record(
                &Event::SessionRevoked {
                    reason: reason.into(),
                },
                &who,
            );
        }
        Ok(ended)
    }

    /// Ends every live session `filter` names (for a whole person, their SSO sessions too):
    /// "sign out everywhere" for the person themselves, `admin` for an admin.
    pub async fn end_sessions(
        &self,
        filter: SessionFilter,
        actor: &Actor,
        ctx: &RequestContext,
    ) -> Result<Ended, AppError> {
        let reason = match actor {
            Actor::Owner => SIGN_OUT_EVERYWHERE,
            Actor::Admin(_) => ADMIN,
        };
        let ended = self
            .store
            .revoke_sessions(filter, self.now(), reason)
            .await?;
        self.audit_ended(&ended, reason, actor, ctx);
        Ok(ended)
    }

    /// Disables `subject`: no login, no refresh, every session and SSO session ended at once,
    /// until [`App::enable_user`].
    pub async fn disable_user(
        &self,
        subject: Subject,
        actor: &Actor,
        ctx: &RequestContext,
    ) -> Result<Ended, AppError> {
        let record = DisabledUser {
            subject,
            disabled_at: self.now(),
            disabled_by: actor.admin_uid().unwrap_or_else(|| "self".into()),
        };
        let who = person_subjects(&record.subject, actor, ctx);
        let ended = self.store.disable_user(record).await?;
        self.record(&Event::UserDisabled, &who);
        self.audit_ended(&ended, USER_DISABLED, actor, ctx);
        Ok(ended)
    }

    /// Lets a disabled person sign in again; whether they were disabled (only then is it
    /// audited).
    pub async fn enable_user(
        &self,
        subject: Subject,
        actor: &Actor,
        ctx: &RequestContext,
    ) -> Result<bool, AppError> {
        let who = person_subjects(&subject, actor, ctx);
        let was_disabled = self.store.enable_user(subject).await?;
        if was_disabled {
            self.record(&Event::UserEnabled, &who);
        }
        Ok(was_disabled)
    }

    /// Whether an admin has disabled `subject`.
    pub async fn is_disabled(&self, subject: &Subject) -> Result<bool, AppError> {
        Ok(self
            .store
            .find_disabled_user(subject.clone())
            .await?
            .is_some())
    }

    fn audit_ended(&self, ended: &Ended, reason: &str, actor: &Actor, ctx: &RequestContext) {
        for session in &ended.sessions {
            let who = Subjects {
                admin_uid: actor.admin_uid(),
                ..self.subjects(session, ctx, None)
            };
            self.record(
                &Event::SessionRevoked {
                    reason: reason.into(),
                },
                &who,
            );
        }
    }
}

/// Who an admin's action on a person concerns: the person, the admin, where the request came from.
fn person_subjects(subject: &Subject, actor: &Actor, ctx: &RequestContext) -> Subjects {
    Subjects {
        uid: Some(subject.to_string()),
        admin_uid: actor.admin_uid(),
        ..ctx.subjects()
    }
}
