//! The account page's markup: one section per session (client, connector, first and last use,
//! expiry) with its "End this session" form, and the "Sign out everywhere" form. Pure: it
//! renders what it is given, every value escaped (user agents and addresses are whatever the
//! clients sent).

use tessera_core::clock::UnixMillis;
use tessera_core::id::{SsoId, Subject};
use tessera_store::{ListedSession, SessionUse};

use crate::web::html::{escape, hidden};

/// The page after "Sign out everywhere".
pub(super) const EVERYWHERE: &str = "<p>You are signed out everywhere: every application, \
     kubectl and browser that was signed in as you must sign in again.</p>";

/// What the page shows.
pub(super) struct Account<'a> {
    /// The issuer's path, that the forms' actions start with.
    pub(super) base: &'a str,
    /// Who is signed in.
    pub(super) subject: &'a Subject,
    /// The name of the directory they came from; `None` for a local user.
    pub(super) directory: Option<&'a str>,
    /// Their live sessions, most recently used first.
    pub(super) sessions: &'a [ListedSession],
    /// This browser's SSO session: sessions started from it are marked.
    pub(super) this_browser: &'a SsoId,
    /// The CSRF token every form carries.
    pub(super) csrf: &'a str,
}

/// The page's body.
pub(super) fn body(account: &Account<'_>) -> String {
    let csrf = hidden("csrf", account.csrf);
    let rows: String = account
        .sessions
        .iter()
        .map(|listed| row(account, listed, &csrf))
        .collect();
    let list = if rows.is_empty() {
        "<p>No application, kubectl or proxy is signed in as you right now.</p>".to_owned()
    } else {
        rows
    };
    format!(
        "<p>Signed in as <strong>{subject}</strong>.</p>{list}\
         <section class=\"everywhere\"><p>Ending every session also signs this browser out.</p>\
         <form method=\"post\" action=\"{action}\">{csrf}\
         <button type=\"submit\">Sign out everywhere</button></form></section>",
        subject = escape(account.subject.as_str()),
        action = escape(&format!("{}/account/sign-out-everywhere", account.base)),
    )
}

/// One session: what it is, where it was used, and its "End this session" form.
fn row(account: &Account<'_>, listed: &ListedSession, csrf: &str) -> String {
    let session = &listed.session;
    let here = session.sso_id.as_ref() == Some(account.this_browser);
    let (class, mark) = if here {
        (
            " this-browser",
            " <small>(signed in from this browser)</small>",
        )
    } else {
        ("", "")
    };
    let directory = account
        .directory
        .map(|name| format!("<dt>Signed in with</dt><dd>{}</dd>", escape(name)))
        .unwrap_or_default();
    let action = format!("{}/account/sessions/{}/end", account.base, session.id);
    format!(
        "<section class=\"session{class}\" data-session=\"{id}\"><h2>{client}{mark}</h2><dl>\
         <dt>Application</dt><dd class=\"client\">{client}</dd>{directory}\
         <dt>First used</dt><dd class=\"first-use\">{first}</dd>\
         <dt>Last used</dt><dd class=\"last-use\">{last}</dd>\
         <dt>Ends</dt><dd class=\"expires\">{expires}</dd></dl>\
         <form method=\"post\" action=\"{action}\">{csrf}\
         <button type=\"submit\">End this session</button></form></section>",
        id = escape(session.id.as_str()),
        client = escape(session.client_id.as_str()),
        first = used(&listed.first_use),
        last = used(&listed.last_use),
        expires = time(listed.expires_at),
        action = escape(&action),
    )
}

/// When, from which address and with which program (the `User-Agent` the client sent).
fn used(at: &SessionUse) -> String {
    let from = if at.from.ip.is_empty() {
        String::new()
    } else {
        format!(" from {}", escape(&at.from.ip))
    };
    let agent = if at.from.user_agent.is_empty() {
        String::new()
    } else {
        format!(
            "<br><small class=\"agent\">{}</small>",
            escape(&at.from.user_agent)
        )
    };
    format!("{}{from}{agent}", time(at.at))
}

/// An instant as people read it, in UTC, with the machine-readable form beside it.
fn time(at: UnixMillis) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(at.as_secs()) else {
        return "unknown".to_owned();
    };
    let text = format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let machine = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("<time datetime=\"{}\">{text}</time>", escape(&machine))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use tessera_core::id::{ClientId, SessionId};
    use tessera_store::{Origin, Session};

    use super::*;

    fn listed(id: &str, sso: &str, user_agent: &str) -> ListedSession {
        let at = UnixMillis(1_700_000_000_000);
        let session = Session {
            id: SessionId::new(id),
            subject: Subject::new("dev"),
            client_id: ClientId::new("kubernetes"),
            sso_id: Some(SsoId::new(sso)),
            scope: "openid".into(),
            auth_time: at,
            created_at: at,
            absolute_end: UnixMillis(at.0 + 3_600_000),
            revoked_at: None,
        };
        let used = SessionUse {
            at,
            from: Origin {
                ip: "192.0.2.7".into(),
                user_agent: user_agent.into(),
            },
        };
        ListedSession {
            session,
            first_use: used.clone(),
            last_use: used,
            expires_at: UnixMillis(at.0 + 900_000),
        }
    }

    #[test]
    fn each_session_shows_its_uses_and_an_end_form_and_marks_this_browsers() {
        let sessions = [
            listed("s1", "here", "kubectl/1.32"),
            listed("s2", "elsewhere", ""),
        ];
        let account = Account {
            base: "/id",
            subject: &Subject::new("dev"),
            directory: Some("Corporate LDAP"),
            sessions: &sessions,
            this_browser: &SsoId::new("here"),
            csrf: "c5rf",
        };
        let page = body(&account);
        assert!(page.contains("<section class=\"session this-browser\" data-session=\"s1\">"));
        assert!(page.contains("<section class=\"session\" data-session=\"s2\">"));
        assert_eq!(page.matches("(signed in from this browser)").count(), 1);
        assert!(page.contains(
            "<time datetime=\"2023-11-14T22:13:20Z\">2023-11-14 22:13:20 UTC</time> from 192.0.2.7<br><small class=\"agent\">kubectl/1.32</small>"
        ));
        assert!(page.contains("<dd class=\"expires\"><time datetime=\"2023-11-14T22:28:20Z\">"));
        assert!(page.contains("<dt>Signed in with</dt><dd>Corporate LDAP</dd>"));
        assert!(page.contains("action=\"/id/account/sessions/s1/end\"><input type=\"hidden\" name=\"csrf\" value=\"c5rf\">"));
        assert!(page.contains("action=\"/id/account/sign-out-everywhere\""));
    }

    #[test]
    fn what_clients_sent_is_text_not_markup() {
        let sessions = [listed("s1", "here", "<script>alert(1)</script>")];
        let account = Account {
            base: "",
            subject: &Subject::new("corp:<b>"),
            directory: None,
            sessions: &sessions,
            this_browser: &SsoId::new("other"),
            csrf: "c",
        };
        let page = body(&account);
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("corp:&lt;b&gt;"), "{page}");
        assert!(
            !page.contains("Signed in with"),
            "a local user names no directory"
        );
    }
}
