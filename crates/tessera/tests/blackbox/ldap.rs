//! A real OpenLDAP directory for the LDAP connector's tests: Debian's `slapd` (provided by
//! `scripts/test-tools slapd`) run unprivileged from a temp dir of its own, on two free loopback
//! ports (`ldaps://`, and `ldap://` offering StartTLS), with a test CA made at start, seeded with
//! people and groups in both membership styles (`member` on groups, `memberOf` on people) and
//! Active Directory-like people (`sAMAccountName`, binary `objectGUID`, `userAccountControl`).
//! Each [`Directory`] has its own ports, files and process, so tests run in parallel; its slapd
//! is killed by PID when it is dropped.
//!
//! Binds are slapd's defaults (RFC 4513 §5.1): an anonymous bind (no DN, no password) succeeds
//! but may read nothing (see the ACLs); an unauthenticated bind (a DN with an empty password) is
//! refused with `unwillingToPerform` (53), as `allow bind_anon_dn` is not set; a wrong or absent
//! password answers `invalidCredentials` (49). No `security` directive: a simple bind over
//! `ldap://` without StartTLS is accepted, so refusing cleartext is the connector's job.
//!
//! Who may read what: the service account `cn=tessera,ou=Services` reads People and Groups
//! (never `userPassword`); each person reads their own entry; anonymous reads nothing. The
//! `memberOf` overlay keeps `memberOf` on people as their groups change; it is operational, so
//! a search returns it only when asked for by name. Groups are `groupOfNames`, which must keep
//! one `member` (RFC 4519 §3.5): removing a group's last member is refused, and deleting a
//! person who is the last member of a group leaves their DN there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tessera_core::clock::monotonic_now;

use crate::cluster::{Process, free_port, signal, test_tools};
use crate::support::{write_private, write_test_pki};

/// The directory's suffix.
pub const SUFFIX: &str = "dc=corp,dc=example";
/// Where the people are.
pub const PEOPLE: &str = "ou=People,dc=corp,dc=example";
/// Where the groups are.
pub const GROUPS: &str = "ou=Groups,dc=corp,dc=example";
/// The service account the connector binds as to search.
pub const SERVICE_DN: &str = "cn=tessera,ou=Services,dc=corp,dc=example";
/// The service account's password.
pub const SERVICE_PASSWORD: &str = "tessera-bind-password";

/// alice: `inetOrgPerson`, member of k8s-admins, k8s-dev and staff.
pub const ALICE: &str = "uid=alice,ou=People,dc=corp,dc=example";
/// bob: `inetOrgPerson`, member of k8s-dev.
pub const BOB: &str = "uid=bob,ou=People,dc=corp,dc=example";
/// carol: AD-like (`sAMAccountName` carol, `userAccountControl` 512: enabled), member of
/// Domain Admins.
pub const CAROL: &str = "cn=Carol Doe,ou=People,dc=corp,dc=example";
/// dave: AD-like and disabled (`userAccountControl` 514: ACCOUNTDISABLE set), in no group.
pub const DAVE: &str = "cn=Dave Roe,ou=People,dc=corp,dc=example";
/// A person without `userPassword`: no password binds as them.
pub const NOPASSWORD: &str = "cn=nopassword,ou=People,dc=corp,dc=example";
/// carol's `objectGUID`: 16 raw bytes, not UTF-8 (a NUL, 0xff), as AD's are.
pub const CAROL_GUID: [u8; 16] = [
    0x00, 0xff, 0x10, 0x7a, 0x9c, 0x3e, 0x4b, 0x11, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef, 0x0a, 0x0d,
];
/// dave's `objectGUID`.
pub const DAVE_GUID: [u8; 16] = [
    0xda, 0x7e, 0x00, 0x01, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
];

/// The people's passwords (each `NAME-password`).
pub const ALICE_PASSWORD: &str = "alice-password";
pub const BOB_PASSWORD: &str = "bob-password";
pub const CAROL_PASSWORD: &str = "carol-password";
pub const DAVE_PASSWORD: &str = "dave-password";

/// The root DN, which ACLs do not restrict; only the mutation helpers bind as it.
const ADMIN_DN: &str = "cn=admin,dc=corp,dc=example";
const ADMIN_PASSWORD: &str = "admin-password";

/// How long an ldap-utils command may wait for slapd, to connect and for each answer, before
/// it fails instead of hanging (a paused directory).
const TOOL_TIMEOUT_SECS: &str = "10";

/// A running slapd with the seed data. Fields drop in order: the process, then its files.
pub struct Directory {
    process: Process,
    dir: tempfile::TempDir,
    ldap_port: u16,
    ldaps_port: u16,
}

impl Directory {
    /// Makes a CA and certificates, writes the configuration and starts slapd on two free
    /// ports (again on others if one was taken in the meantime), then seeds it.
    pub async fn start() -> Directory {
        let dir = tempfile::tempdir().unwrap();
        write_test_pki(dir.path(), "tessera test directory CA");
        write_private(&dir.path().join("bind-password"), SERVICE_PASSWORD);
        std::fs::write(dir.path().join("ad.schema"), AD_SCHEMA).unwrap();
        std::fs::write(dir.path().join("slapd.conf"), slapd_conf(dir.path())).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut failures = Vec::new();
        for _ in 0..5 {
            let (ldap_port, ldaps_port) = (free_port(), free_port());
            match launch(dir.path(), ldap_port, ldaps_port).await {
                Ok(process) => {
                    let directory = Directory {
                        process,
                        dir,
                        ldap_port,
                        ldaps_port,
                    };
                    // Through slapd, not slapadd: the memberOf overlay runs only on operations.
                    directory.add(&seed());
                    return directory;
                }
                Err(failure) => failures.push(failure),
            }
        }
        panic!("slapd did not start:\n{}", failures.join("\n----\n"));
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// `ldap://127.0.0.1:PORT`, which offers StartTLS (RFC 4511 §4.14) with the same certificate.
    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// The test CA (PEM) that signed the directory's certificate (for 127.0.0.1 and localhost).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The service account's DN.
    pub fn bind_dn(&self) -> &'static str {
        SERVICE_DN
    }

    /// The service account's password.
    pub fn bind_password(&self) -> &'static str {
        SERVICE_PASSWORD
    }

    /// A file (mode 0600) holding the service account's password, without a trailing newline.
    pub fn bind_password_file(&self) -> PathBuf {
        self.dir.path().join("bind-password")
    }

    /// The base DN of the people.
    pub fn people_base(&self) -> &'static str {
        PEOPLE
    }

    /// The base DN of the groups.
    pub fn groups_base(&self) -> &'static str {
        GROUPS
    }

    /// The DN of the group `cn`.
    pub fn group_dn(&self, cn: &str) -> String {
        format!("cn={cn},{GROUPS}")
    }

    /// An ldap-utils command (`ldapsearch`, `ldapmodify`, …) set up to trust only the test CA
    /// (the environment overrides ldap.conf; HOME and the working directory are the temp dir, so
    /// no user's ldaprc is read) and give up on a silent slapd after 10 s (`LDAPTIMEOUT` for
    /// each answer, `LDAPNETWORK_TIMEOUT` for connecting, as ldap.conf(5) names them; `.env` or
    /// `-o nettimeout=N` overrides them). The caller adds `-H`, the bind and the rest.
    pub fn ldap_command(&self, tool: &str) -> Command {
        let mut command = Command::new(tools().bin.join(tool));
        command
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("LDAPTLS_CACERT", self.ca_file())
            .env("LDAPTLS_REQCERT", "demand")
            .env("LDAPTIMEOUT", TOOL_TIMEOUT_SECS)
            .env("LDAPNETWORK_TIMEOUT", TOOL_TIMEOUT_SECS);
        command
    }

    /// `ldapsearch -x -LLL` with the given bind, URL and arguments (base, filter, attributes…);
    /// the answer's LDIF or, when it fails, the exit code and what it printed.
    pub fn search(
        &self,
        url: &str,
        bind: Option<(&str, &str)>,
        args: &[&str],
    ) -> Result<String, String> {
        let mut command = self.ldap_command("ldapsearch");
        command.args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", url]);
        if let Some((dn, password)) = bind {
            command.args(["-D", dn, "-w", password]);
        }
        outcome(&command.args(args).output().expect("ldapsearch runs"))
    }

    /// Binds as `dn` with `password` over ldaps and reads that entry; `Err` names the LDAP
    /// result, e.g. `Invalid credentials (49)`.
    pub fn bind(&self, dn: &str, password: &str) -> Result<String, String> {
        self.search(
            &self.ldaps_url(),
            Some((dn, password)),
            &["-b", dn, "-s", "base"],
        )
    }

    /// Searches People for `filter` as the service account over ldaps.
    pub fn search_people(&self, filter: &str, attributes: &[&str]) -> Result<String, String> {
        let mut args = vec!["-b", PEOPLE, filter];
        args.extend(attributes);
        self.search(
            &self.ldaps_url(),
            Some((SERVICE_DN, SERVICE_PASSWORD)),
            &args,
        )
    }

    /// Adds entries (LDIF) as the root DN.
    pub fn add(&self, ldif: &str) {
        self.admin("ldapmodify", &["-a"], Some(ldif));
    }

    /// Applies an LDIF change record (`dn: …`, `changetype: modify`, …) as the root DN.
    pub fn modify(&self, ldif: &str) {
        self.admin("ldapmodify", &[], Some(ldif));
    }

    /// Deletes an entry as the root DN (the memberOf overlay drops it from its groups, except
    /// from a group it is the last member of).
    pub fn delete(&self, dn: &str) {
        self.admin("ldapdelete", &[dn], None);
    }

    /// Adds `user_dn` to the group `group_cn`'s `member` (the overlay adds its `memberOf`).
    pub fn add_member(&self, group_cn: &str, user_dn: &str) {
        let group = self.group_dn(group_cn);
        self.modify(&format!(
            "dn: {group}\nchangetype: modify\nadd: member\nmember: {user_dn}\n"
        ));
    }

    /// Removes `user_dn` from the group `group_cn` (refused when it is the last member).
    pub fn remove_member(&self, group_cn: &str, user_dn: &str) {
        let group = self.group_dn(group_cn);
        self.modify(&format!(
            "dn: {group}\nchangetype: modify\ndelete: member\nmember: {user_dn}\n"
        ));
    }

    /// Sets a password with the Password Modify operation (RFC 3062), as an administrator
    /// would; slapd stores it salted (`{SSHA}`).
    pub fn set_password(&self, dn: &str, password: &str) {
        self.admin("ldappasswd", &["-s", password, dn], None);
    }

    /// Freezes slapd (SIGSTOP): connections are accepted by the kernel, nothing is answered.
    pub fn pause(&self) {
        signal("-STOP", self.process.pid());
    }

    /// Lets a paused slapd go on (SIGCONT).
    pub fn resume(&self) {
        signal("-CONT", self.process.pid());
    }

    /// Kills slapd (SIGKILL, by PID): the directory is unreachable from now on.
    pub fn stop(&self) {
        self.process.kill();
    }

    /// Runs an ldap-utils tool as the root DN over ldap:// and panics with what it printed
    /// when it fails.
    fn admin(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write as _;
        let mut command = self.ldap_command(tool);
        command
            .args([
                "-x",
                "-H",
                &self.ldap_url(),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PASSWORD,
            ])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{tool}: {e}"));
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let output = child.wait_with_output().unwrap();
        outcome(&output).unwrap_or_else(|failure| {
            panic!(
                "{tool} {args:?} failed: {failure}\nslapd printed:\n{}",
                self.process.output()
            )
        })
    }
}

/// The paths `scripts/test-tools slapd` prints.
struct Tools {
    slapd: PathBuf,
    /// ldapsearch, ldapmodify, ldapadd, ldapdelete, ldappasswd.
    bin: PathBuf,
    modules: PathBuf,
    schema: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let paths = test_tools(&["slapd"]);
        let [slapd, bin, modules, schema] = <[PathBuf; 4]>::try_from(paths)
            .unwrap_or_else(|paths| panic!("test-tools slapd printed {paths:?}"));
        Tools {
            slapd,
            bin,
            modules,
            schema,
        }
    })
}

/// Starts slapd in the foreground and waits until it listens on both ports; `Err` with what
/// it printed when it exits first (a port taken in the meantime, say).
async fn launch(dir: &Path, ldap_port: u16, ldaps_port: u16) -> Result<Process, String> {
    let urls = format!("ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/");
    let process = Process::spawn(
        format!("slapd on ports {ldap_port} and {ldaps_port}"),
        Command::new(&tools().slapd)
            .current_dir(dir)
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .args(["-h", &urls])
            // -d keeps it in the foreground, logging to stderr: one line per operation.
            .args(["-d", "stats"]),
    );
    let pid = process.pid().to_string();
    let started = monotonic_now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(status) = process.exited() {
            return Err(format!("slapd exited ({status}):\n{}", process.output()));
        }
        // slapd writes its PID file after binding both ports, and listens right after: both
        // ports answering and the file naming our child mean both listeners are ours.
        if std::fs::read_to_string(dir.join("slapd.pid")).is_ok_and(|p| p.trim() == pid)
            && tokio::net::TcpStream::connect(("127.0.0.1", ldap_port))
                .await
                .is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", ldaps_port))
                .await
                .is_ok()
        {
            return Ok(process);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!(
        "slapd did not listen within 20 s:\n{}",
        process.output()
    ))
}

/// The ldap-utils answer: stdout on success, else the exit code and what it printed.
fn outcome(output: &Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The three attributes of AD's user objects a connector reads, with AD's own OIDs, and an
/// auxiliary class that lets an `inetOrgPerson` carry them.
const AD_SCHEMA: &str = "\
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.2 NAME 'objectGUID'
    EQUALITY octetStringMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
    EQUALITY integerMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 2.25.8635407910342386420532162994442612898.1 NAME 'adAccount' AUXILIARY
    MAY ( sAMAccountName $ objectGUID $ userAccountControl ) )
";

/// slapd.conf: schemas, modules, TLS, one mdb database with the memberOf overlay, and ACLs.
fn slapd_conf(dir: &Path) -> String {
    let tools = tools();
    let (d, schema, modules) = (
        dir.display(),
        tools.schema.display(),
        tools.modules.display(),
    );
    // Debian builds the mdb backend as a module; another build may have it built in.
    let back_mdb = if tools.modules.join("back_mdb.la").exists() {
        "moduleload back_mdb"
    } else {
        ""
    };
    let admin = ssha(ADMIN_PASSWORD);
    format!(
        r#"include "{schema}/core.schema"
include "{schema}/cosine.schema"
include "{schema}/inetorgperson.schema"
include "{schema}/nis.schema"
include "{d}/ad.schema"
modulepath "{modules}"
{back_mdb}
moduleload memberof
pidfile "{d}/slapd.pid"
argsfile "{d}/slapd.args"
TLSCACertificateFile "{d}/ca.pem"
TLSCertificateFile "{d}/server.pem"
TLSCertificateKeyFile "{d}/server-key.pem"

database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {admin}
directory "{d}/data"
index objectClass eq
index uid,cn,mail,sAMAccountName,member eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true

access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to dn.subtree="{PEOPLE}"
    by dn.exact="{SERVICE_DN}" read
    by self read
    by * none
access to dn.subtree="{GROUPS}"
    by dn.exact="{SERVICE_DN}" read
    by * none
access to *
    by self read
    by * none
"#
    )
}

/// The seed entries, people before the groups that name them (the overlay adds `memberOf`
/// only to entries that exist).
fn seed() -> String {
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: corp\no: Corp\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: People\n\n\
         dn: {GROUPS}\nobjectClass: organizationalUnit\nou: Groups\n\n\
         dn: ou=Services,{SUFFIX}\nobjectClass: organizationalUnit\nou: Services\n\n\
         dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n\
         cn: tessera\nuserPassword: {}\n\n",
        ssha(SERVICE_PASSWORD)
    );
    ldif += &person(ALICE, "alice", "Alice Liddell", Some(ALICE_PASSWORD));
    ldif += &person(BOB, "bob", "Bob Baker", Some(BOB_PASSWORD));
    ldif += &ad_person(CAROL, "carol", "Carol Doe", CAROL_GUID, 512, CAROL_PASSWORD);
    ldif += &ad_person(DAVE, "dave", "Dave Roe", DAVE_GUID, 514, DAVE_PASSWORD);
    ldif += &format!(
        "dn: {NOPASSWORD}\nobjectClass: inetOrgPerson\ncn: nopassword\nsn: nopassword\n\
         uid: nopassword\n\n"
    );
    for (group, members) in [
        ("k8s-admins", &[ALICE][..]),
        ("k8s-dev", &[ALICE, BOB][..]),
        ("staff", &[ALICE][..]),
        ("Domain Admins", &[CAROL][..]),
    ] {
        ldif += &format!("dn: cn={group},{GROUPS}\nobjectClass: groupOfNames\ncn: {group}\n");
        for member in members {
            ldif += &format!("member: {member}\n");
        }
        ldif += "\n";
    }
    ldif
}

/// An `inetOrgPerson` with `uid`, `mail` NAME@corp.example and `displayName`.
fn person(dn: &str, uid: &str, name: &str, password: Option<&str>) -> String {
    let surname = name.rsplit(' ').next().unwrap_or(name);
    let mut entry = format!(
        "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {name}\nsn: {surname}\n\
         displayName: {name}\nmail: {uid}@corp.example\n"
    );
    if let Some(password) = password {
        entry += &format!("userPassword: {}\n", ssha(password));
    }
    entry + "\n"
}

/// An AD-like person: named by `cn`, with `sAMAccountName`, `objectGUID` and
/// `userAccountControl` (512 enabled, 514 disabled), and no `uid`.
fn ad_person(
    dn: &str,
    account: &str,
    name: &str,
    guid: [u8; 16],
    control: u32,
    pw: &str,
) -> String {
    let surname = name.rsplit(' ').next().unwrap_or(name);
    format!(
        "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: adAccount\ncn: {name}\nsn: {surname}\n\
         displayName: {name}\nmail: {account}@corp.example\nsAMAccountName: {account}\n\
         objectGUID:: {}\nuserAccountControl: {control}\nuserPassword: {}\n\n",
        STANDARD.encode(guid),
        ssha(pw)
    )
}

/// `{SSHA}` as slappasswd writes it: base64(SHA-1(password ‖ salt) ‖ salt), 8 random bytes of
/// salt.
fn ssha(password: &str) -> String {
    use aws_lc_rs::digest;
    let salt: [u8; 8] = rand::random();
    let mut context = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(password.as_bytes());
    context.update(&salt);
    let mut hash = context.finish().as_ref().to_vec();
    hash.extend_from_slice(&salt);
    format!("{{SSHA}}{}", STANDARD.encode(hash))
}
