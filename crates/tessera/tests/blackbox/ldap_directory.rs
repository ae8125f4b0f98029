//! The test directory itself: what the LDAP connector's tests will rely on holds, checked with
//! OpenLDAP's own ldap-utils.

use tessera_core::clock::monotonic_now;

use crate::ldap::{
    ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, CAROL, CAROL_GUID, CAROL_PASSWORD, Directory,
    NOPASSWORD, PEOPLE,
};

/// The values of `attribute` in an LDIF answer (base64 values `attr:: …` decoded).
fn values(ldif: &str, attribute: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    ldif.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case(attribute) {
                return None;
            }
            Some(match value.strip_prefix(':') {
                Some(encoded) => base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .expect("base64 in LDIF"),
                None => value.trim().as_bytes().to_vec(),
            })
        })
        .collect()
}

fn texts(ldif: &str, attribute: &str) -> Vec<String> {
    values(ldif, attribute)
        .into_iter()
        .map(|v| String::from_utf8(v).expect("a text value"))
        .collect()
}

fn group(cn: &str) -> String {
    format!("cn={cn},ou=Groups,dc=corp,dc=example")
}

#[tokio::test]
async fn the_service_account_finds_alice_over_ldaps_with_her_groups_only_when_it_asks() {
    let started = monotonic_now();
    let directory = Directory::start().await;
    eprintln!("Directory::start took {:?}", started.elapsed());

    let with = directory
        .search_people("(uid=alice)", &["mail", "displayName", "memberOf"])
        .expect("the service account searches People over ldaps");
    assert_eq!(texts(&with, "dn"), [ALICE]);
    assert_eq!(texts(&with, "mail"), ["alice@corp.example"]);
    assert_eq!(texts(&with, "displayName"), ["Alice Liddell"]);
    let mut groups = texts(&with, "memberOf");
    groups.sort();
    assert_eq!(
        groups,
        [group("k8s-admins"), group("k8s-dev"), group("staff")]
    );

    let without = directory.search_people("(uid=alice)", &[]).unwrap();
    assert!(texts(&without, "memberOf").is_empty(), "{without}");
    assert!(texts(&without, "userPassword").is_empty(), "{without}");

    let members = directory
        .search(
            &directory.ldaps_url(),
            Some((directory.bind_dn(), directory.bind_password())),
            &[
                "-b",
                directory.groups_base(),
                "(member=uid=bob,ou=People,dc=corp,dc=example)",
                "cn",
            ],
        )
        .unwrap();
    assert_eq!(texts(&members, "cn"), ["k8s-dev"]);
    assert_eq!(
        std::fs::read_to_string(directory.bind_password_file()).unwrap(),
        directory.bind_password()
    );
}

#[tokio::test]
async fn starttls_on_the_plain_port_verifies_against_the_test_ca() {
    let directory = Directory::start().await;
    let bind = Some((directory.bind_dn(), directory.bind_password()));
    let found = directory
        .search(
            &directory.ldap_url(),
            bind,
            &["-ZZ", "-b", PEOPLE, "(uid=bob)", "uid"],
        )
        .expect("StartTLS then a search");
    assert_eq!(texts(&found, "uid"), ["bob"]);

    let elsewhere = tempfile::tempdir().unwrap();
    crate::support::write_test_pki(elsewhere.path(), "another CA");
    let mut command = directory.ldap_command("ldapsearch");
    command
        .env("LDAPTLS_CACERT", elsewhere.path().join("ca.pem"))
        .args(["-x", "-ZZ", "-H", &directory.ldap_url(), "-b", PEOPLE]);
    let output = command.output().unwrap();
    assert!(
        !output.status.success(),
        "a certificate from another CA is refused"
    );
}

#[tokio::test]
async fn wrong_empty_and_absent_passwords_do_not_bind_and_anonymous_reads_nothing() {
    let directory = Directory::start().await;
    let bind_as = |dn, password| directory.bind(dn, password);

    bind_as(ALICE, ALICE_PASSWORD).expect("alice binds with her password");
    bind_as(CAROL, CAROL_PASSWORD).expect("carol binds with hers");
    let wrong = bind_as(ALICE, "bob-password").unwrap_err();
    assert!(wrong.contains("Invalid credentials (49)"), "{wrong}");
    // RFC 4513 §5.1.2: a DN with an empty password is an unauthenticated bind; slapd refuses it.
    let empty = bind_as(ALICE, "").unwrap_err();
    assert!(empty.contains("(53)"), "{empty}");
    let none_set = bind_as(NOPASSWORD, "anything").unwrap_err();
    assert!(none_set.contains("Invalid credentials (49)"), "{none_set}");

    // The anonymous bind succeeds, and then even People is hidden from it.
    let anonymous = directory
        .search(&directory.ldaps_url(), None, &["-b", PEOPLE, "(uid=alice)"])
        .unwrap_err();
    assert!(anonymous.contains("No such object (32)"), "{anonymous}");
}

#[tokio::test]
async fn membership_and_password_changes_show_in_the_next_search() {
    let directory = Directory::start().await;
    directory.remove_member("k8s-dev", ALICE);
    let alice = directory
        .search_people("(uid=alice)", &["memberOf"])
        .unwrap();
    let mut groups = texts(&alice, "memberOf");
    groups.sort();
    assert_eq!(groups, [group("k8s-admins"), group("staff")]);

    directory.add_member("staff", BOB);
    let bob = directory.search_people("(uid=bob)", &["memberOf"]).unwrap();
    let mut groups = texts(&bob, "memberOf");
    groups.sort();
    assert_eq!(groups, [group("k8s-dev"), group("staff")]);

    directory.set_password(BOB, "new-bob-password");
    directory
        .bind(BOB, "new-bob-password")
        .expect("the new password binds");
    let old = directory.bind(BOB, BOB_PASSWORD).unwrap_err();
    assert!(old.contains("Invalid credentials (49)"), "{old}");
}

#[tokio::test]
async fn carol_is_found_by_account_name_with_her_binary_guid_until_she_is_deleted() {
    let directory = Directory::start().await;
    let carol = directory
        .search_people(
            "(&(sAMAccountName=carol)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
            &["objectGUID", "memberOf"],
        )
        .unwrap();
    assert_eq!(texts(&carol, "dn"), [CAROL]);
    assert_eq!(values(&carol, "objectGUID"), [CAROL_GUID.to_vec()]);
    assert_eq!(texts(&carol, "memberOf"), [group("Domain Admins")]);
    let disabled = directory
        .search_people(
            "(&(sAMAccountName=dave)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
            &[],
        )
        .unwrap();
    assert!(disabled.trim().is_empty(), "dave is disabled: {disabled}");

    directory.delete(CAROL);
    let gone = directory
        .search_people("(sAMAccountName=carol)", &[])
        .unwrap();
    assert!(gone.trim().is_empty(), "{gone}");
}

#[tokio::test]
async fn a_paused_directory_times_out_searches_answers_again_when_resumed_and_none_when_stopped() {
    let directory = Directory::start().await;
    let bind = Some((directory.bind_dn(), directory.bind_password()));
    let args = ["-b", PEOPLE, "(uid=alice)", "uid"];
    directory
        .search(&directory.ldap_url(), bind, &args)
        .expect("a search before the pause");

    directory.pause();
    // The kernel still accepts the connection; slapd never answers the bind: only the 1 s
    // timeout for an answer ends the wait.
    let mut hung = directory.ldap_command("ldapsearch");
    hung.env("LDAPTIMEOUT", "1")
        .args(["-o", "nettimeout=1", "-x", "-H", &directory.ldap_url()])
        .args(["-D", directory.bind_dn(), "-w", directory.bind_password()])
        .args(args);
    let hung = hung.output().unwrap();
    assert!(!hung.status.success(), "a frozen slapd answers nothing");
    let stderr = String::from_utf8_lossy(&hung.stderr);
    assert!(stderr.contains("Timed out"), "{stderr}");

    directory.resume();
    directory
        .search(&directory.ldap_url(), bind, &args)
        .expect("a search after the pause");

    directory.stop();
    let refused = directory
        .search(&directory.ldap_url(), bind, &args)
        .unwrap_err();
    assert!(refused.contains("Can't contact LDAP server"), "{refused}");
}
