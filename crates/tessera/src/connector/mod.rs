//! Where people come from: the connectors of the `connectors:` section (the users file, an LDAP
//! directory, an upstream OpenID Connect provider), what they say about a person ([`Identity`]), and the subject (`sub`) that names
//! that person in every token.
//!
//! `sub`: a local user's is their user name, as it always was (so existing RBAC bindings and
//! sessions keep working); everyone else's is `<connector id>:<their id in the directory>`, so
//! two connectors never give the same `sub`, and a person keeps theirs across logins and
//! renames as long as the directory keeps their id. Ids that are not printable text (Active
//! Directory's `objectGUID`) are written in unpadded base64url.

mod groups;
mod ldap;
mod oidc;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_core::id::Subject;

pub use self::ldap::Ldap;
pub use self::oidc::{Oidc, Upstream};
use crate::config::{ConnectorConfig, ConnectorKind, GroupMapping};
use crate::users::User;

/// What a connector says about a person: the claims tokens carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// What they typed at the login form (`preferred_username`).
    pub username: String,
    /// Their display name, if the directory has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Their e-mail address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Groups, after the `groups:` mapping.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// As the store keeps it.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "username": self.username,
            "name": self.name,
            "email": self.email,
            "groups": self.groups,
        })
        .to_string()
    }

    /// As the store kept it; `None` for a row this tessera cannot read.
    pub fn from_json(text: &str) -> Option<Identity> {
        serde_json::from_str(text).ok()
    }

    /// A local user as an identity (their groups mapped like everyone else's).
    pub fn of_local(user: &User, mapping: &GroupMapping) -> Identity {
        Identity {
            username: user.username.clone(),
            name: None,
            email: user.email.clone(),
            groups: groups::map(&user.groups, mapping),
        }
    }
}

/// A person found in a directory: their subject and what the directory says of them.
#[derive(Clone, Debug)]
pub struct Person {
    /// `<connector id>:<their id>`.
    pub subject: Subject,
    /// Their claims.
    pub identity: Identity,
}

/// Why a directory did not authenticate or confirm someone.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No such person, or the wrong password: the login form says only that.
    #[error("bad credentials")]
    BadCredentials,
    /// The directory says the person is disabled (Active Directory's `userAccountControl`).
    #[error("the account is disabled in the directory")]
    Disabled,
    /// The directory could not be asked (refused, timed out, TLS failed, bind refused): the
    /// message says which, for the log; never a password.
    #[error("{0}")]
    Unavailable(String),
}

/// What a re-validation found.
#[derive(Debug)]
pub enum Recheck {
    /// Still there, with these claims now.
    Confirmed(Identity),
    /// Gone from the directory, or disabled there; the reason for the audit log.
    Gone(&'static str),
}

/// One configured connector.
#[derive(Debug)]
pub struct Connector {
    /// Its id.
    pub id: String,
    /// What the login page shows.
    pub name: String,
    /// How it authenticates.
    pub kind: Kind,
}

/// How a connector authenticates.
#[derive(Debug)]
pub enum Kind {
    /// Against the users file.
    Local,
    /// Against an LDAP directory.
    Ldap(Box<Ldap>),
    /// At an upstream OpenID Connect provider, through the browser.
    Oidc(Box<Oidc>),
}

/// The connectors, in the login page's order, and the group mapping they share.
#[derive(Debug)]
pub struct Connectors {
    list: Vec<Arc<Connector>>,
    mapping: GroupMapping,
}

impl Connectors {
    /// Builds the connectors of the configuration: reads bind passwords and CA bundles, so a
    /// missing or exposed file stops the start with a sentence naming it.
    pub fn new(configs: &[ConnectorConfig], mapping: GroupMapping) -> Result<Connectors, String> {
        let list = configs
            .iter()
            .map(|c| {
                let kind = match &c.kind {
                    ConnectorKind::Local => Kind::Local,
                    ConnectorKind::Ldap(ldap) => Kind::Ldap(Box::new(
                        Ldap::new(&c.id, ldap).map_err(|e| format!("connector `{}`: {e}", c.id))?,
                    )),
                    ConnectorKind::Oidc(oidc) => Kind::Oidc(Box::new(
                        Oidc::new(&c.id, oidc).map_err(|e| format!("connector `{}`: {e}", c.id))?,
                    )),
                };
                Ok(Arc::new(Connector {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    kind,
                }))
            })
            .collect::<Result<_, String>>()?;
        Ok(Connectors { list, mapping })
    }

    /// Every connector, in order.
    pub fn all(&self) -> &[Arc<Connector>] {
        &self.list
    }

    /// The connector `id`.
    pub fn find(&self, id: &str) -> Option<&Arc<Connector>> {
        self.list.iter().find(|c| c.id == id)
    }

    /// The group mapping.
    pub fn mapping(&self) -> &GroupMapping {
        &self.mapping
    }

    /// The local connector, if one is configured.
    pub fn local(&self) -> Option<&Arc<Connector>> {
        self.list.iter().find(|c| matches!(c.kind, Kind::Local))
    }

    /// Whether any connector other than the users file is configured: then subjects with a
    /// `:` are directory people.
    pub fn has_directories(&self) -> bool {
        self.list.iter().any(|c| !matches!(c.kind, Kind::Local))
    }

    /// The connector a subject signed in through: the part before the `:` for directory
    /// people, the local connector for a bare user name.
    pub fn id_of<'a>(&'a self, subject: &'a Subject) -> Option<&'a str> {
        self.directory_id_of(subject)
            .or_else(|| self.local().map(|c| c.id.as_str()))
    }

    /// The part before the `:` of a directory person's subject (`<connector id>:<id>`), whether
    /// or not that connector is still configured; `None` for a local user.
    pub fn directory_id_of<'a>(&self, subject: &'a Subject) -> Option<&'a str> {
        let (id, _) = subject.as_str().split_once(':')?;
        self.has_directories().then_some(id)
    }

    /// The configured directory connector a directory person's subject names.
    pub fn directory_of(&self, subject: &Subject) -> Option<&Arc<Connector>> {
        let id = self.directory_id_of(subject)?;
        self.find(id).filter(|c| !matches!(c.kind, Kind::Local))
    }
}

impl Connector {
    /// How often a person's sessions check the directory again, and how long past the last
    /// good check they go on while it cannot be reached; `None` for the users file, which is
    /// read on every refresh.
    pub fn revalidation(&self) -> Option<(Duration, Duration)> {
        match &self.kind {
            Kind::Local => None,
            Kind::Ldap(ldap) => Some(ldap.revalidation()),
            Kind::Oidc(oidc) => Some(oidc.revalidation()),
        }
    }
}

/// `<connector id>:<id>` for an id the directory gives as bytes: kept as is when it is
/// printable text, else base64url without padding.
pub(crate) fn subject_for(connector_id: &str, id: &[u8], binary: bool) -> Subject {
    use base64::Engine as _;
    let printable = std::str::from_utf8(id)
        .ok()
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control));
    let encoded = match printable {
        Some(text) if !binary => text.to_owned(),
        _ => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id),
    };
    Subject::new(format!("{connector_id}:{encoded}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn a_binary_id_is_base64url_and_a_text_id_is_kept() {
        let guid = [0x4f, 0x00, 0xff, 0x10, 0xfe, 0xfb];
        assert_eq!(subject_for("ad", &guid, true).as_str(), "ad:TwD_EP77");
        assert_eq!(subject_for("ad", b"alice", false).as_str(), "ad:alice");
        assert_eq!(subject_for("ad", b"al\x01ce", false).as_str(), "ad:YWwBY2U");
        // An id that happens to be valid UTF-8 is still encoded when the attribute is binary.
        assert_eq!(subject_for("ad", b"abc", true).as_str(), "ad:YWJj");
    }
}
