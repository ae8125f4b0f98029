//! The `connectors:` and `groups:` sections: where people come from (the local users file, an
//! LDAP directory or Active Directory, an upstream OpenID Connect provider), and how the groups they bring are mapped.
//!
//! Without a `connectors:` section the users file is the one, implicit `local` connector, as it
//! always was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use url::Url;

use super::{Invalid, duration};

/// One entry of `connectors:`, told apart by its `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum RawConnector {
    /// The users file (`users.file`).
    Local(RawLocal),
    /// An LDAP directory or Active Directory.
    Ldap(Box<RawLdap>),
    /// An upstream OpenID Connect provider.
    Oidc(Box<RawOidc>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocal {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    /// Stable id: part of every person's `sub`, session and audit line, and of the callback
    /// URL the upstream must register (`{issuer}/callback/{id}`).
    id: String,
    /// Shown on the login page's button.
    #[serde(default)]
    name: Option<String>,
    /// The upstream's issuer URL (https://), as its discovery document states it.
    issuer: String,
    /// tessera's client id at the upstream.
    client_id: String,
    /// A file holding the client secret (readable by tessera's user only).
    client_secret_file: PathBuf,
    /// PEM bundle the upstream's certificate must chain to; unset: the system's roots.
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
    /// The scopes asked for; `openid` is required, `offline_access` brings the refresh token
    /// that re-validation redeems.
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    /// Which id_token claims carry what.
    #[serde(default)]
    claims: RawClaims,
    /// How long one step at the upstream (discovery, keys, a code or a refresh) may take.
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_revalidate_interval")]
    revalidate_interval: String,
    #[serde(default = "default_revalidate_max_staleness")]
    revalidate_max_staleness: String,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "groups", "offline_access"]
        .map(str::to_owned)
        .to_vec()
}

/// `claims:` of an `oidc` connector: the id_token claim read for each of tessera's claims.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawClaims {
    username: String,
    email: String,
    groups: String,
    name: String,
}

impl Default for RawClaims {
    fn default() -> RawClaims {
        RawClaims {
            username: "preferred_username".into(),
            email: "email".into(),
            groups: "groups".into(),
            name: "name".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLdap {
    /// Stable id: part of every person's `sub`, session and audit line.
    id: String,
    /// Shown on the login page.
    #[serde(default)]
    name: Option<String>,
    /// `ldaps://host:636`, or `ldap://host:389` with `start_tls: true`.
    url: String,
    #[serde(default)]
    start_tls: bool,
    /// PEM bundle the directory's certificate must chain to; unset: the system's roots.
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
    /// The service account that searches for people and groups.
    bind_dn: String,
    /// A file holding its password (readable by tessera's user only).
    bind_password_file: PathBuf,
    user_search: RawUserSearch,
    #[serde(default)]
    group_search: Option<RawGroupSearch>,
    /// How long one connection, bind or search may take.
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_revalidate_interval")]
    revalidate_interval: String,
    #[serde(default = "default_revalidate_max_staleness")]
    revalidate_max_staleness: String,
}

fn default_timeout() -> String {
    "5s".into()
}

fn default_revalidate_interval() -> String {
    "5m".into()
}

fn default_revalidate_max_staleness() -> String {
    "15m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserSearch {
    base_dn: String,
    #[serde(default = "default_user_filter")]
    filter: String,
    #[serde(default = "default_username_attribute")]
    username_attribute: String,
    /// Unset: the entry's DN, which changes when the person is moved or renamed.
    #[serde(default)]
    id_attribute: Option<String>,
    #[serde(default = "default_email_attribute")]
    email_attribute: String,
    #[serde(default = "default_name_attribute")]
    name_attribute: String,
}

fn default_user_filter() -> String {
    "(objectClass=person)".into()
}

fn default_username_attribute() -> String {
    "uid".into()
}

fn default_email_attribute() -> String {
    "mail".into()
}

fn default_name_attribute() -> String {
    "cn".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupSearch {
    base_dn: String,
    #[serde(default = "default_group_filter")]
    filter: String,
    user_matchers: Vec<RawUserMatcher>,
    #[serde(default = "default_group_name_attribute")]
    name_attribute: String,
}

fn default_group_filter() -> String {
    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))".into()
}

fn default_group_name_attribute() -> String {
    "cn".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserMatcher {
    user_attribute: String,
    group_attribute: String,
}

/// The `groups:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGroups {
    /// Put before every kept name, e.g. `corp:`.
    prefix: String,
    /// Regexes on the renamed names; when set, a group none of them matches is dropped.
    include: Vec<String>,
    /// Directory name → name in tokens.
    rename: HashMap<String, String>,
}

/// A validated connector.
#[derive(Clone, Debug)]
pub struct ConnectorConfig {
    /// Its id.
    pub id: String,
    /// What the login page shows.
    pub name: String,
    /// How it authenticates.
    pub kind: ConnectorKind,
}

/// The kinds of connector.
#[derive(Clone, Debug)]
pub enum ConnectorKind {
    /// The users file.
    Local,
    /// An LDAP directory.
    Ldap(Box<LdapConfig>),
    /// An upstream OpenID Connect provider.
    Oidc(Box<OidcConfig>),
}

/// A validated `type: oidc` connector.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The upstream's issuer, without a trailing `/`.
    pub issuer: String,
    /// tessera's client id there.
    pub client_id: String,
    /// The file holding the client secret, read at start.
    pub client_secret_file: PathBuf,
    /// The CA bundle, if not the system's roots.
    pub certificate_authority: Option<PathBuf>,
    /// The scopes asked for, `openid` among them.
    pub scopes: Vec<String>,
    /// Which id_token claims carry what.
    pub claims: ClaimNames,
    /// The bound on each step of a login or a re-validation at the upstream.
    pub timeout: Duration,
    /// How old the last check of a person may be before a refresh checks again.
    pub revalidate_interval: Duration,
    /// How long past the last good check refreshes go on while the upstream is unreachable.
    pub revalidate_max_staleness: Duration,
}

/// The id_token claims an `oidc` connector reads.
#[derive(Clone, Debug)]
pub struct ClaimNames {
    /// `preferred_username` in tessera's tokens.
    pub username: String,
    /// `email`.
    pub email: String,
    /// `groups` (a list of strings, or one string).
    pub groups: String,
    /// `name`.
    pub name: String,
}

/// A validated `type: ldap` connector.
#[derive(Clone, Debug)]
pub struct LdapConfig {
    /// `ldaps://` or `ldap://` (then with StartTLS).
    pub url: Url,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub start_tls: bool,
    /// The CA bundle, if not the system's roots.
    pub certificate_authority: Option<PathBuf>,
    /// The service account's DN.
    pub bind_dn: String,
    /// The file holding its password, read at start.
    pub bind_password_file: PathBuf,
    /// How people are found.
    pub user_search: UserSearch,
    /// How their groups are found, if they are.
    pub group_search: Option<GroupSearch>,
    /// The bound on each connection, bind and search.
    pub timeout: Duration,
    /// How old the last check of a person may be before a refresh checks again.
    pub revalidate_interval: Duration,
    /// How long past the last good check refreshes go on while the directory is unreachable.
    pub revalidate_max_staleness: Duration,
}

/// `user_search`.
#[derive(Clone, Debug)]
pub struct UserSearch {
    /// Where people are.
    pub base_dn: String,
    /// Which entries are people.
    pub filter: String,
    /// What they type at the login form.
    pub username_attribute: String,
    /// Their stable id; `None` is the entry's DN.
    pub id_attribute: Option<String>,
    /// Their e-mail address.
    pub email_attribute: String,
    /// Their display name.
    pub name_attribute: String,
}

/// `group_search`.
#[derive(Clone, Debug)]
pub struct GroupSearch {
    /// Where groups are.
    pub base_dn: String,
    /// Which entries are groups.
    pub filter: String,
    /// How a person is matched to groups, tried in order and combined.
    pub user_matchers: Vec<UserMatcher>,
    /// The group's name.
    pub name_attribute: String,
}

/// One way to find a person's groups: a group belongs to the person when the group's
/// `group_attribute` holds a value of the person's `user_attribute`. `distinguishedName` on
/// either side means the entry's DN, whether or not the server stores it as an attribute.
#[derive(Clone, Debug)]
pub struct UserMatcher {
    /// On the person's entry (`distinguishedName`, `memberOf`, `uid`, …).
    pub user_attribute: String,
    /// On the group's entry (`member`, `memberUid`, `distinguishedName`, …).
    pub group_attribute: String,
}

/// The validated `groups:` section.
#[derive(Clone, Debug, Default)]
pub struct GroupMapping {
    /// Put before every kept name.
    pub prefix: String,
    /// When not empty, only names matching one of these are kept.
    pub include: Vec<Regex>,
    /// Renames applied first.
    pub rename: HashMap<String, String>,
}

/// The connectors, in the order the login page lists them. Without a `connectors:` section:
/// the implicit `local` connector.
pub(super) fn validate(
    raw: Option<Vec<RawConnector>>,
    users_file: Option<&Path>,
    base: &Path,
) -> Result<Vec<ConnectorConfig>, Invalid> {
    let Some(raw) = raw else {
        return Ok(vec![ConnectorConfig {
            id: "local".into(),
            name: "Local account".into(),
            kind: ConnectorKind::Local,
        }]);
    };
    if raw.is_empty() {
        return Err((
            "connectors".into(),
            "is empty: list at least one connector, or remove the key to use users.file".into(),
        ));
    }
    let mut connectors: Vec<ConnectorConfig> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let key = format!("connectors[{i}]");
        let connector =
            connector(c, users_file, base).map_err(|(under, m)| (format!("{key}{under}"), m))?;
        if connectors.iter().any(|known| known.id == connector.id) {
            return Err((
                format!("{key}.id"),
                format!("connector id `{}` appears twice", connector.id),
            ));
        }
        connectors.push(connector);
    }
    Ok(connectors)
}

/// One connector; an error's key is the part under `connectors[i]`.
fn connector(
    raw: RawConnector,
    users_file: Option<&Path>,
    base: &Path,
) -> Result<ConnectorConfig, Invalid> {
    let (id, name, kind) = match raw {
        RawConnector::Local(local) => {
            if users_file.is_none() {
                return Err((
                    ".type".into(),
                    "a `local` connector needs users.file to be set".into(),
                ));
            }
            (local.id, local.name, ConnectorKind::Local)
        }
        RawConnector::Ldap(ldap_raw) => {
            let id = ldap_raw.id.clone();
            let name = ldap_raw.name.clone();
            let ldap = ldap(*ldap_raw, base)?;
            (id, name, ConnectorKind::Ldap(Box::new(ldap)))
        }
        RawConnector::Oidc(oidc_raw) => {
            let id = oidc_raw.id.clone();
            let name = oidc_raw.name.clone();
            let oidc = oidc(*oidc_raw, base)?;
            (id, name, ConnectorKind::Oidc(Box::new(oidc)))
        }
    };
    check_id(&id)?;
    Ok(ConnectorConfig {
        name: name.unwrap_or_else(|| id.clone()),
        id,
        kind,
    })
}

/// Ids go into every `sub` (`<id>:<person>`), so they are short and carry no `:`.
fn check_id(id: &str) -> Result<(), Invalid> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err((
            ".id".into(),
            format!("`{id}` is not a connector id: use 1 to 64 letters, digits, `-`, `_` or `.`"),
        ))
    }
}

fn ldap(raw: RawLdap, base: &Path) -> Result<LdapConfig, Invalid> {
    let url = Url::parse(&raw.url).map_err(|e| (".url".to_owned(), format!("{e}")))?;
    match (url.scheme(), raw.start_tls) {
        ("ldaps", false) | ("ldap", true) => {}
        ("ldaps", true) => {
            return Err((
                ".start_tls".into(),
                "an ldaps:// URL is already TLS; remove start_tls or use ldap://".into(),
            ));
        }
        ("ldap", false) => {
            return Err((
                ".url".into(),
                "ldap:// without `start_tls: true` would send passwords in clear text; use \
                 ldaps:// or set start_tls: true"
                    .into(),
            ));
        }
        _ => {
            return Err((
                ".url".into(),
                format!("`{}` is not an ldaps:// or ldap:// URL", raw.url),
            ));
        }
    }
    if url.host_str().is_none() {
        return Err((".url".into(), format!("`{}` names no host", raw.url)));
    }
    let check_dn = |key: &str, dn: &str| {
        if dn.trim().is_empty() {
            Err((key.to_owned(), "must not be empty".to_owned()))
        } else {
            Ok(())
        }
    };
    check_dn(".bind_dn", &raw.bind_dn)?;
    check_dn(".user_search.base_dn", &raw.user_search.base_dn)?;
    let user_search = UserSearch {
        base_dn: raw.user_search.base_dn,
        filter: filter(".user_search.filter", &raw.user_search.filter)?,
        username_attribute: raw.user_search.username_attribute,
        id_attribute: raw.user_search.id_attribute,
        email_attribute: raw.user_search.email_attribute,
        name_attribute: raw.user_search.name_attribute,
    };
    let group_search = raw
        .group_search
        .map(|g| {
            check_dn(".group_search.base_dn", &g.base_dn)?;
            if g.user_matchers.is_empty() {
                return Err((
                    ".group_search.user_matchers".to_owned(),
                    "must list at least one {user_attribute, group_attribute}".to_owned(),
                ));
            }
            Ok(GroupSearch {
                base_dn: g.base_dn,
                filter: filter(".group_search.filter", &g.filter)?,
                user_matchers: g
                    .user_matchers
                    .into_iter()
                    .map(|m| UserMatcher {
                        user_attribute: m.user_attribute,
                        group_attribute: m.group_attribute,
                    })
                    .collect(),
                name_attribute: g.name_attribute,
            })
        })
        .transpose()?;
    let (revalidate_interval, revalidate_max_staleness) =
        revalidation(&raw.revalidate_interval, &raw.revalidate_max_staleness)?;
    Ok(LdapConfig {
        url,
        start_tls: raw.start_tls,
        certificate_authority: raw.certificate_authority.map(|p| base.join(p)),
        bind_dn: raw.bind_dn,
        bind_password_file: base.join(raw.bind_password_file),
        user_search,
        group_search,
        timeout: duration(".timeout", &raw.timeout)?,
        revalidate_interval,
        revalidate_max_staleness,
    })
}

fn oidc(raw: RawOidc, base: &Path) -> Result<OidcConfig, Invalid> {
    let issuer = raw.issuer.trim_end_matches('/').to_owned();
    let url = Url::parse(&issuer).map_err(|e| (".issuer".to_owned(), format!("{e}")))?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err((
            ".issuer".into(),
            format!("`{}` is not an https:// URL", raw.issuer),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err((
            ".issuer".into(),
            "an issuer has no query or fragment (OpenID Connect Discovery §2)".into(),
        ));
    }
    if raw.client_id.is_empty() {
        return Err((".client_id".into(), "must not be empty".into()));
    }
    if !raw.scopes.iter().any(|s| s == "openid") {
        return Err((
            ".scopes".into(),
            "must include `openid`; add `offline_access` too, or re-validation has no refresh \
             token to redeem"
                .into(),
        ));
    }
    if let Some(bad) = raw
        .scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err((".scopes".into(), format!("`{bad}` is not a scope")));
    }
    let (revalidate_interval, revalidate_max_staleness) =
        revalidation(&raw.revalidate_interval, &raw.revalidate_max_staleness)?;
    Ok(OidcConfig {
        issuer,
        client_id: raw.client_id,
        client_secret_file: base.join(raw.client_secret_file),
        certificate_authority: raw.certificate_authority.map(|p| base.join(p)),
        scopes: raw.scopes,
        claims: ClaimNames {
            username: raw.claims.username,
            email: raw.claims.email,
            groups: raw.claims.groups,
            name: raw.claims.name,
        },
        timeout: duration(".timeout", &raw.timeout)?,
        revalidate_interval,
        revalidate_max_staleness,
    })
}

/// `revalidate_interval` and `revalidate_max_staleness`, the second at least the first.
fn revalidation(interval: &str, max_staleness: &str) -> Result<(Duration, Duration), Invalid> {
    let interval = duration(".revalidate_interval", interval)?;
    let max_staleness = duration(".revalidate_max_staleness", max_staleness)?;
    if max_staleness < interval {
        return Err((
            ".revalidate_max_staleness".into(),
            "must be at least revalidate_interval".into(),
        ));
    }
    Ok((interval, max_staleness))
}

/// A search filter from the file: parenthesised, so it can be combined with `(&…)`.
fn filter(key: &str, text: &str) -> Result<String, Invalid> {
    let text = text.trim().to_owned();
    if text.starts_with('(') && text.ends_with(')') {
        Ok(text)
    } else {
        Err((
            key.to_owned(),
            format!("`{text}` is not an LDAP filter in parentheses, like (objectClass=person)"),
        ))
    }
}

/// The validated `groups:` section.
pub(super) fn validate_groups(raw: RawGroups) -> Result<GroupMapping, Invalid> {
    let include = raw
        .include
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Regex::new(text).map_err(|e| (format!("groups.include[{i}]"), e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(GroupMapping {
        prefix: raw.prefix,
        include,
        rename: raw.rename,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::super::Config;

    /// Loads `yaml` from a private file; the error's text when it is refused.
    fn refusal(yaml: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.yaml");
        std::fs::write(&path, yaml).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        match Config::load(&path, &[]) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    const LDAP: &str = "connectors:\n  - id: corp\n    type: ldap\n    url: ldaps://dc1:636\n\
                        \x20   bind_dn: cn=tessera\n    bind_password_file: pw\n\
                        \x20   user_search: {base_dn: \"ou=People\"}\n";

    #[test]
    fn without_connectors_the_users_file_is_the_one_local_connector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.yaml");
        std::fs::write(&path, "users:\n  file: users.yaml\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = Config::load(&path, &[]).unwrap();
        let ids: Vec<&str> = config.connectors.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["local"]);
    }

    #[test]
    fn a_cleartext_or_malformed_ldap_connector_is_refused_naming_the_key() {
        let plain = LDAP.replace("ldaps://dc1:636", "ldap://dc1:389");
        let said = refusal(&plain);
        assert!(
            said.contains("`connectors[0].url`") && said.contains("clear text"),
            "{said}"
        );
        let both = LDAP.replace("bind_dn:", "start_tls: true\n    bind_dn:");
        assert!(refusal(&both).contains("`connectors[0].start_tls`"));
        let filter = LDAP.replace("base_dn: \"ou=People\"", "base_dn: x, filter: uid=x");
        assert!(refusal(&filter).contains("`connectors[0].user_search.filter`"));
        let stale = LDAP.to_owned() + "    revalidate_interval: 20m\n";
        assert!(refusal(&stale).contains("`connectors[0].revalidate_max_staleness`"));
        let twice = LDAP.to_owned() + &LDAP.replace("connectors:\n", "");
        assert!(refusal(&twice).contains("connector id `corp` appears twice"));
        let bad_id = LDAP.replace("id: corp", "id: \"corp:ad\"");
        assert!(refusal(&bad_id).contains("is not a connector id"));
        let unknown = LDAP.replace("bind_dn:", "bind_pasword: x\n    bind_dn:");
        assert!(
            refusal(&unknown).contains("bind_pasword"),
            "{}",
            refusal(&unknown)
        );
    }

    #[test]
    fn a_local_connector_needs_the_users_file_and_regexes_must_compile() {
        let local = "connectors:\n  - id: local\n    type: local\n";
        assert!(refusal(local).contains("needs users.file"));
        let regex = "groups:\n  include: [\"^k8s-(\"]\n";
        assert!(refusal(regex).contains("`groups.include[0]`"));
    }

    const OIDC: &str = "connectors:\n  - id: okta\n    type: oidc\n    issuer: https://corp.okta.example/\n\
                        \x20   client_id: tessera\n    client_secret_file: okta-secret\n";

    #[test]
    fn an_oidc_connector_has_the_documented_defaults() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.yaml");
        std::fs::write(&path, OIDC).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = Config::load(&path, &[]).unwrap();
        let super::ConnectorKind::Oidc(oidc) = &config.connectors[0].kind else {
            panic!("an oidc connector");
        };
        assert_eq!(
            oidc.issuer, "https://corp.okta.example",
            "no trailing slash"
        );
        assert_eq!(oidc.client_secret_file, dir.path().join("okta-secret"));
        assert_eq!(
            oidc.scopes,
            ["openid", "profile", "email", "groups", "offline_access"]
        );
        assert_eq!(oidc.claims.username, "preferred_username");
        assert_eq!(oidc.claims.groups, "groups");
        assert_eq!(oidc.timeout.as_secs(), 5);
        assert_eq!(oidc.revalidate_interval.as_secs(), 300);
        assert_eq!(oidc.revalidate_max_staleness.as_secs(), 900);
        assert_eq!(config.connectors[0].name, "okta");
    }

    #[test]
    fn an_oidc_connector_without_https_or_openid_is_refused_naming_the_key() {
        let http = OIDC.replace("https://corp", "http://corp");
        assert!(refusal(&http).contains("`connectors[0].issuer`"));
        let scopes = OIDC.to_owned() + "    scopes: [profile, offline_access]\n";
        let said = refusal(&scopes);
        assert!(
            said.contains("`connectors[0].scopes`") && said.contains("openid"),
            "{said}"
        );
        let unknown = OIDC.to_owned() + "    claims: {user: upn}\n";
        assert!(refusal(&unknown).contains("user"));
        let no_secret = OIDC.replace("    client_secret_file: okta-secret\n", "");
        assert!(refusal(&no_secret).contains("client_secret_file"));
    }
}
