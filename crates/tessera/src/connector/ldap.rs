//! The LDAP connector (OpenLDAP, Active Directory): a login binds as the service account,
//! finds the person by user name (RFC 4515-escaped into the filter), reads their groups, and
//! binds as them with the password they typed; a re-validation does the same without their
//! password. Every conversation is bounded by `timeout`, over TLS only (`ldaps://` or
//! StartTLS), and never logs a password.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{
    Ldap as Conn, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, StdStream, ldap_escape,
};

use super::{DirectoryError, Identity, Person, Recheck, groups, subject_for};
use crate::config::{GroupMapping, GroupSearch, LdapConfig, UserSearch};

/// LDAP result code 49: wrong DN or password (RFC 4511 §4.1.9).
const INVALID_CREDENTIALS: u32 = 49;
/// LDAP result code 32: the base DN of a search does not exist.
const NO_SUCH_OBJECT: u32 = 32;
/// Active Directory's `userAccountControl` bit for a disabled account (ACCOUNTDISABLE).
const ACCOUNT_DISABLED: u64 = 0x2;
/// Attributes whose values are bytes, not text, whatever they happen to decode as.
const BINARY_IDS: [&str; 2] = ["objectGUID", "objectSid"];

/// One `type: ldap` connector, ready to connect.
pub struct Ldap {
    connector_id: String,
    url: String,
    /// `host:port` of `url`, which this connector connects to itself (see [`Ldap::connect`]).
    address: String,
    settings: LdapConnSettings,
    bind_dn: String,
    bind_password: String,
    user_search: UserSearch,
    group_search: Option<GroupSearch>,
    timeout: Duration,
    revalidate_interval: Duration,
    revalidate_max_staleness: Duration,
}

impl std::fmt::Debug for Ldap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ldap")
            .field("connector_id", &self.connector_id)
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .finish_non_exhaustive()
    }
}

impl Ldap {
    /// Reads the bind password and the CA bundle of `config`.
    pub fn new(connector_id: &str, config: &LdapConfig) -> Result<Ldap, String> {
        let bind_password = read_password(&config.bind_password_file)?;
        let tls = tessera_oidc::tls_client_config(config.certificate_authority.as_deref())
            .map_err(|e| format!("certificate_authority: {e}"))?;
        let settings = LdapConnSettings::new()
            .set_config(Arc::new(tls))
            .set_starttls(config.start_tls)
            .set_conn_timeout(config.timeout);
        let default_port = if config.url.scheme() == "ldaps" {
            636
        } else {
            389
        };
        let host = config.url.host_str().unwrap_or("localhost");
        Ok(Ldap {
            connector_id: connector_id.to_owned(),
            address: format!("{host}:{}", config.url.port().unwrap_or(default_port)),
            url: config.url.to_string(),
            settings,
            bind_dn: config.bind_dn.clone(),
            bind_password,
            user_search: config.user_search.clone(),
            group_search: config.group_search.clone(),
            timeout: config.timeout,
            revalidate_interval: config.revalidate_interval,
            revalidate_max_staleness: config.revalidate_max_staleness,
        })
    }

    /// The bound on one conversation with the directory.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `(revalidate_interval, revalidate_max_staleness)`.
    pub fn revalidation(&self) -> (Duration, Duration) {
        (self.revalidate_interval, self.revalidate_max_staleness)
    }

    /// Authenticates `username` with `password`. An empty password is refused before anything
    /// is sent: to LDAP a bind with a DN and no password is an unauthenticated bind that many
    /// servers accept (RFC 4513 §5.1.2), and it must never count as a login.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        mapping: &GroupMapping,
    ) -> Result<Person, DirectoryError> {
        if password.is_empty() || username.is_empty() {
            return Err(DirectoryError::BadCredentials);
        }
        self.bounded(async {
            let mut conn = self.connect().await?;
            let entry = self
                .find_person(&mut conn, username)
                .await?
                .ok_or(DirectoryError::BadCredentials)?;
            let groups = self.groups_of(&mut conn, &entry).await?;
            // Their own password last: this bind makes the connection theirs.
            let bound = conn.simple_bind(&entry.dn, password).await.map_err(io)?;
            match bound.rc {
                0 => {}
                INVALID_CREDENTIALS => return Err(DirectoryError::BadCredentials),
                rc => return Err(refused("the person's bind", rc, &bound.text)),
            }
            if disabled(&entry) {
                return Err(DirectoryError::Disabled);
            }
            drop(conn.unbind().await);
            self.person(&entry, &groups, mapping)
        })
        .await
    }

    /// Looks up again the person `username` who signed in as `subject`: still there with the
    /// same id and not disabled, their claims now; else why not.
    pub async fn recheck(
        &self,
        username: &str,
        subject: &str,
        mapping: &GroupMapping,
    ) -> Result<Recheck, DirectoryError> {
        self.bounded(async {
            let mut conn = self.connect().await?;
            let Some(entry) = self.find_person(&mut conn, username).await? else {
                return Ok(Recheck::Gone("not_found"));
            };
            let person = self.person(&entry, &[], mapping)?;
            if person.subject.as_str() != subject {
                // The name now belongs to someone else: the one who signed in is gone.
                return Ok(Recheck::Gone("not_found"));
            }
            if disabled(&entry) {
                return Ok(Recheck::Gone("disabled"));
            }
            let groups = self.groups_of(&mut conn, &entry).await?;
            drop(conn.unbind().await);
            Ok(Recheck::Confirmed(
                self.person(&entry, &groups, mapping)?.identity,
            ))
        })
        .await
    }

    /// Runs one conversation with the directory within `timeout`.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, DirectoryError>>,
    ) -> Result<T, DirectoryError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(DirectoryError::Unavailable(format!(
                    "{} did not answer within {:?}",
                    self.url, self.timeout
                )))
            })
    }

    /// A TLS connection bound as the service account. The TCP connection is opened here, with
    /// `TCP_NODELAY`: ldap3 leaves Nagle's algorithm on, and a bind written right behind the
    /// TLS handshake's last message then waits for the server's delayed ACK (about 40 ms on
    /// Linux, measured by bench/connector), which every login and re-validation would pay.
    async fn connect(&self) -> Result<Conn, DirectoryError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            DirectoryError::Unavailable(format!("cannot reach {}: {e}", self.url))
        };
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| unreachable(&e))?;
        tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
        let tcp = tcp.into_std().map_err(|e| unreachable(&e))?;
        let settings = self.settings.clone().set_std_stream(StdStream::Tcp(tcp));
        let (driver, mut conn) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| unreachable(&e))?;
        ldap3::drive!(driver);
        let bound = conn
            .simple_bind(&self.bind_dn, &self.bind_password)
            .await
            .map_err(io)?;
        if bound.rc != 0 {
            return Err(refused("the service account's bind", bound.rc, &bound.text));
        }
        Ok(conn)
    }

    /// The one person entry whose user name is `username`, if there is exactly one.
    async fn find_person(
        &self,
        conn: &mut Conn,
        username: &str,
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        let search = &self.user_search;
        let filter = format!(
            "(&{}({}={}))",
            search.filter,
            search.username_attribute,
            ldap_escape(username)
        );
        let mut attributes = vec![
            search.username_attribute.as_str(),
            search.email_attribute.as_str(),
            search.name_attribute.as_str(),
            "userAccountControl",
        ];
        attributes.extend(search.id_attribute.as_deref());
        if let Some(groups) = &self.group_search {
            attributes.extend(
                groups
                    .user_matchers
                    .iter()
                    .map(|m| m.user_attribute.as_str())
                    .filter(|a| !is_dn(a)),
            );
        }
        let found = conn
            .search(&search.base_dn, Scope::Subtree, &filter, attributes)
            .await
            .map_err(io)?;
        let (entries, result) = (found.0, found.1);
        if result.rc != 0 {
            return Err(refused("the search for people", result.rc, &result.text));
        }
        let mut entries = entries.into_iter().map(SearchEntry::construct);
        match (entries.next(), entries.next()) {
            (Some(entry), None) => Ok(Some(entry)),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => {
                tracing::warn!(
                    connector = %self.connector_id,
                    "more than one entry has this user name; refusing the login (make \
                     user_search.filter or username_attribute select one person)"
                );
                Ok(None)
            }
        }
    }

    /// The names of the groups `person` belongs to, through every user matcher.
    async fn groups_of(
        &self,
        conn: &mut Conn,
        person: &SearchEntry,
    ) -> Result<Vec<String>, DirectoryError> {
        let Some(search) = &self.group_search else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        for matcher in &search.user_matchers {
            let values: Vec<String> = if is_dn(&matcher.user_attribute) {
                vec![person.dn.clone()]
            } else {
                text_values(person, &matcher.user_attribute)
            };
            for value in values {
                let groups = if is_dn(&matcher.group_attribute) {
                    self.group_named_by(conn, search, &value).await?
                } else {
                    let filter = format!(
                        "(&{}({}={}))",
                        search.filter,
                        matcher.group_attribute,
                        ldap_escape(value.as_str())
                    );
                    self.groups_matching(conn, search, &search.base_dn, Scope::Subtree, &filter)
                        .await?
                };
                for entry in groups {
                    if seen.insert(entry.dn.to_ascii_lowercase()) {
                        names.extend(text_values(&entry, &search.name_attribute));
                    }
                }
            }
        }
        Ok(names)
    }

    /// The group whose DN is `dn` (a `memberOf` value), if it is under the group base and
    /// matches the group filter.
    async fn group_named_by(
        &self,
        conn: &mut Conn,
        search: &GroupSearch,
        dn: &str,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let base = search.base_dn.to_ascii_lowercase();
        if !dn.to_ascii_lowercase().ends_with(&base) {
            return Ok(Vec::new());
        }
        self.groups_matching(conn, search, dn, Scope::Base, &search.filter)
            .await
    }

    async fn groups_matching(
        &self,
        conn: &mut Conn,
        search: &GroupSearch,
        base: &str,
        scope: Scope,
        filter: &str,
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let found = conn
            .search(base, scope, filter, vec![search.name_attribute.as_str()])
            .await
            .map_err(io)?;
        match found.1.rc {
            0 => Ok(found.0.into_iter().map(SearchEntry::construct).collect()),
            NO_SUCH_OBJECT => Ok(Vec::new()),
            rc => Err(refused("the search for groups", rc, &found.1.text)),
        }
    }

    /// What `entry` says of the person, with `groups` mapped.
    fn person(
        &self,
        entry: &SearchEntry,
        groups: &[String],
        mapping: &GroupMapping,
    ) -> Result<Person, DirectoryError> {
        let search = &self.user_search;
        let subject = match &search.id_attribute {
            None => subject_for(&self.connector_id, entry.dn.as_bytes(), false),
            Some(attribute) => {
                let binary = BINARY_IDS.iter().any(|b| b.eq_ignore_ascii_case(attribute));
                let id = first_bytes(entry, attribute).ok_or_else(|| {
                    DirectoryError::Unavailable(format!(
                        "the entry of {} has no {attribute} (user_search.id_attribute)",
                        entry.dn
                    ))
                })?;
                subject_for(&self.connector_id, &id, binary)
            }
        };
        let first = |attribute: &str| text_values(entry, attribute).into_iter().next();
        let username = first(&search.username_attribute).ok_or_else(|| {
            DirectoryError::Unavailable(format!(
                "the entry of {} has no {} (user_search.username_attribute)",
                entry.dn, search.username_attribute
            ))
        })?;
        Ok(Person {
            subject,
            identity: Identity {
                username,
                name: first(&search.name_attribute),
                email: first(&search.email_attribute),
                groups: groups::map(groups, mapping),
            },
        })
    }
}

/// `distinguishedName` (or `dn`) names the entry's DN, stored as an attribute or not.
fn is_dn(attribute: &str) -> bool {
    attribute.eq_ignore_ascii_case("distinguishedName") || attribute.eq_ignore_ascii_case("dn")
}

/// The text values of `attribute` (names are case-insensitive in LDAP).
fn text_values(entry: &SearchEntry, attribute: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(attribute))
        .flat_map(|(_, values)| values.iter().cloned())
        .collect()
}

/// The first value of `attribute` as bytes, text or binary.
fn first_bytes(entry: &SearchEntry, attribute: &str) -> Option<Vec<u8>> {
    let text = text_values(entry, attribute).into_iter().next();
    text.map(String::into_bytes).or_else(|| {
        entry
            .bin_attrs
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
            .and_then(|(_, values)| values.first().cloned())
    })
}

/// Active Directory's disabled flag; directories without `userAccountControl` never say so.
fn disabled(entry: &SearchEntry) -> bool {
    text_values(entry, "userAccountControl")
        .first()
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|flags| flags & ACCOUNT_DISABLED != 0)
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands it
fn io(e: ldap3::LdapError) -> DirectoryError {
    DirectoryError::Unavailable(format!("the directory connection failed: {e}"))
}

fn refused(what: &str, rc: u32, text: &str) -> DirectoryError {
    DirectoryError::Unavailable(format!(
        "the directory refused {what} (LDAP result {rc}: {text})"
    ))
}

/// The bind password from its file: private to tessera's user, one line, not empty.
fn read_password(path: &Path) -> Result<String, String> {
    crate::file_mode::require_private(&[path]).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "bind_password_file: cannot read {}: {e}; write the service account's password \
             there",
            path.display()
        )
    })?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!(
            "bind_password_file: {} is empty; write the service account's password there",
            path.display()
        ));
    }
    Ok(password.to_owned())
}
