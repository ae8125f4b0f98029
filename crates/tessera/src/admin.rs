//! The admin commands on the server's configuration: `tessera sessions list|revoke` and
//! `tessera users disable|enable`. They open the configured store directly, beside running
//! servers (SQLite in WAL mode and PostgreSQL both allow it), which notice at once: a refresh,
//! a login and a code exchange read the session and the disabled mark from the store. They act
//! through the same [`App`] as the admin API, so their audit lines are the API's, with
//! `admin_uid: "cli"`: into the configured audit file, or onto standard error when the audit
//! goes to the server's standard output, which a command cannot reach.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tessera_core::clock::SystemClock;
use tessera_core::id::{ClientId, SessionId, Subject};
use tessera_store::{SessionFilter, SessionPage};

use crate::app::{Actor, App, RequestContext, SessionListing, SessionView, UseView};
use crate::audit::Audit;
use crate::config::Config;

/// Who the audit log says acted, for every command here.
const CLI_ADMIN: &str = "cli";
/// Sessions read from the store at a time while listing.
const PAGE: u32 = 1000;

/// What `tessera sessions revoke` ends.
pub enum RevokeTarget {
    /// One session.
    Session(String),
    /// A person's sessions, or only those of one client.
    Person {
        /// Their `sub`.
        user: String,
        /// Only this client's.
        client: Option<String>,
    },
}

/// `tessera sessions list`: a table, or with `json` the admin API's document. `limit` caps the
/// sessions shown (all by default); `next_cursor` then says whether there were more.
pub async fn list(
    config: Config,
    user: Option<String>,
    client: Option<String>,
    limit: Option<u32>,
    json: bool,
) -> Result<()> {
    let app = open(config).await?;
    let filter = SessionFilter {
        subject: user.map(Subject::new),
        client_id: client.map(ClientId::new),
    };
    let page = all_pages(&app, filter, limit).await?;
    let listing = app.session_listing(page);
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!("{}", table(&listing));
    }
    Ok(())
}

/// `tessera sessions revoke`: prints what ended; ending nothing is an error.
pub async fn revoke(config: Config, target: RevokeTarget) -> Result<()> {
    let app = open(config).await?;
    let done = revoke_with(&app, target).await;
    app.audit.flush();
    done
}

/// `tessera users disable`: ends every session of the person and keeps them out.
pub async fn disable(config: Config, name: &str) -> Result<()> {
    let app = open(config).await?;
    let subject = app.person_named(name)?;
    let ended = app
        .disable_user(subject, &cli_admin(), &RequestContext::default())
        .await;
    app.audit.flush();
    let ended = ended?;
    for session in &ended.sessions {
        println!(
            "ended session {} (client {})",
            session.id, session.client_id
        );
    }
    println!(
        "disabled {name}: {} ended; they cannot sign in or refresh until `tessera users enable {name}`",
        count(ended.sessions.len(), ended.sso_sessions)
    );
    Ok(())
}

/// `tessera users enable`.
pub async fn enable(config: Config, name: &str) -> Result<()> {
    let app = open(config).await?;
    let enabled = app
        .enable_user(Subject::new(name), &cli_admin(), &RequestContext::default())
        .await;
    app.audit.flush();
    if enabled? {
        println!("enabled {name}: they can sign in again");
    } else {
        println!("{name} was not disabled; nothing changed");
    }
    Ok(())
}

/// The [`App`] on the configured store, its audit as the module's doc says.
async fn open(config: Config) -> Result<App> {
    let store = crate::storage::open(&config.storage).await?;
    let audit = match &config.audit_file {
        Some(file) => Audit::start(Some(file))
            .with_context(|| format!("cannot open the audit log {}", file.display()))?,
        None => Audit::start_on_stderr().context("cannot start the audit writer")?,
    };
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("https://{}", config.listen));
    crate::serve::build_app(config, issuer, store, Arc::new(SystemClock), audit).await
}

fn cli_admin() -> Actor {
    Actor::Admin(CLI_ADMIN.into())
}

async fn revoke_with(app: &App, target: RevokeTarget) -> Result<()> {
    let ctx = RequestContext::default();
    match target {
        RevokeTarget::Session(id) => {
            let ended = app
                .end_session_by_id(SessionId::new(id.clone()), None, &cli_admin(), &ctx)
                .await?;
            if !ended {
                bail!("no live session has id {id}; `tessera sessions list` shows the live ones");
            }
            println!("ended session {id}");
        }
        RevokeTarget::Person { user, client } => {
            let filter = SessionFilter {
                subject: Some(Subject::new(user.clone())),
                client_id: client.clone().map(ClientId::new),
            };
            let ended = app.end_sessions(filter, &cli_admin(), &ctx).await?;
            if ended.sessions.is_empty() && ended.sso_sessions == 0 {
                let of_client = client
                    .map(|c| format!(" of client {c}"))
                    .unwrap_or_default();
                bail!(
                    "{user} has no live session{of_client}; `tessera sessions list --user {user}` shows theirs"
                );
            }
            for session in &ended.sessions {
                println!(
                    "ended session {} (client {})",
                    session.id, session.client_id
                );
            }
            println!(
                "{user}: {} ended",
                count(ended.sessions.len(), ended.sso_sessions)
            );
        }
    }
    Ok(())
}

/// Up to `limit` sessions (all without one), read a page at a time.
async fn all_pages(app: &App, filter: SessionFilter, limit: Option<u32>) -> Result<SessionPage> {
    let mut all = SessionPage {
        sessions: Vec::new(),
        next_after: None,
    };
    loop {
        let shown = u32::try_from(all.sessions.len()).unwrap_or(u32::MAX);
        let wanted = limit.map_or(PAGE, |l| l.saturating_sub(shown).min(PAGE));
        if wanted == 0 {
            return Ok(all);
        }
        let page = app
            .list_sessions(filter.clone(), all.next_after.take(), wanted)
            .await?;
        all.sessions.extend(page.sessions);
        all.next_after = page.next_after;
        if all.next_after.is_none() {
            return Ok(all);
        }
    }
}

/// "2 sessions and 1 SSO session".
fn count(sessions: usize, sso: u64) -> String {
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "{} and {}",
        plural(u64::try_from(sessions).unwrap_or(u64::MAX), "session"),
        plural(sso, "SSO session")
    )
}

/// The listing as aligned columns, one session a line.
fn table(listing: &SessionListing) -> String {
    if listing.sessions.is_empty() {
        return "no live sessions\n".into();
    }
    let header = [
        "ID",
        "USER",
        "CLIENT",
        "CONNECTOR",
        "FIRST USE",
        "LAST USE",
        "FROM",
        "EXPIRES",
    ];
    let rows: Vec<[String; 8]> = listing.sessions.iter().map(row).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    if listing.next_cursor.is_some() {
        let _ = writeln!(out, "(more sessions than --limit; raise it to see them)");
    }
    out
}

fn row(s: &SessionView) -> [String; 8] {
    [
        s.id.clone(),
        s.user.clone(),
        s.client_id.clone(),
        s.connector_id.clone().unwrap_or_else(|| "-".into()),
        readable(&s.first_use.at),
        readable(&s.last_use.at),
        from(&s.last_use),
        readable(&s.expires_at),
    ]
}

/// An RFC 3339 UTC time as `2026-12-06 20:07:43Z`: the same instant, easier on the eye.
fn readable(rfc3339: &str) -> String {
    rfc3339.replacen('T', " ", 1)
}

fn from(used: &UseView) -> String {
    used.ip.clone().unwrap_or_else(|| "-".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns_and_says_when_the_limit_cut_it() {
        let used = |at: &str, ip: Option<&str>| UseView {
            at: at.into(),
            ip: ip.map(Into::into),
            user_agent: None,
        };
        let session = |id: &str, user: &str, connector: Option<&str>| SessionView {
            id: id.into(),
            user: user.into(),
            client_id: "kubernetes".into(),
            connector_id: connector.map(Into::into),
            first_use: used("2026-12-06T09:12:03Z", Some("10.1.2.3")),
            last_use: used("2026-12-06T16:40:51Z", None),
            expires_at: "2026-12-06T16:55:51Z".into(),
        };
        let listing = SessionListing {
            sessions: vec![
                session("1c0e", "alice", None),
                session("7d2f", "ldap:bob", Some("ldap")),
            ],
            next_cursor: Some("7d2f".into()),
        };
        let table = table(&listing);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "ID    USER      CLIENT      CONNECTOR  FIRST USE             LAST USE              FROM  EXPIRES",
                "1c0e  alice     kubernetes  -          2026-12-06 09:12:03Z  2026-12-06 16:40:51Z  -     2026-12-06 16:55:51Z",
                "7d2f  ldap:bob  kubernetes  ldap       2026-12-06 09:12:03Z  2026-12-06 16:40:51Z  -     2026-12-06 16:55:51Z",
            ],
            "{table}"
        );
        assert!(lines[3].contains("--limit"), "{table}");
        let empty = SessionListing {
            sessions: Vec::new(),
            next_cursor: None,
        };
        assert_eq!(super::table(&empty), "no live sessions\n");
    }

    #[test]
    fn counts_say_one_and_many_in_words() {
        assert_eq!(count(1, 0), "1 session and 0 SSO sessions");
        assert_eq!(count(2, 1), "2 sessions and 1 SSO session");
    }
}
