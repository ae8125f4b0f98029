//! The store conformance suite: every backend must pass every test here, unchanged.
//!
//! Test bodies are backend-agnostic functions of `&dyn Store` (or `&Arc<dyn Store>` when tasks
//! share it, or `&dyn Backend` when a test reopens the data). [`conformance_suite!`] turns each
//! body into one `#[tokio::test]` per backend; a new backend (PostgreSQL) joins by implementing
//! [`Backend`] and adding one `conformance_suite!(postgres, Postgres::fresh().await);` line.
//!
//! Times are fixed instants, never the wall clock: the store takes `now` as an argument.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::redeem::{Decision, OnReplay, RedeemPolicy, RejectReason};
use tessera_core::token::{REFRESH_TOKEN_PREFIX, RotationKey, Secret, TokenHash};
use tessera_store::{
    AuthCode, CodeRedemption, CopyReport, DisabledUser, Ended, IdentityRecord, MigrationReport,
    NewRefreshToken, Origin, PostgresOptions, PostgresStore, ProxyRefreshOutcome, ProxySession,
    RedeemRequest, Redemption, RefreshTokenRow, RevalidationOutcome, SecretRow, Session,
    SessionFilter, SessionRow, SessionStart, Snapshot, SqliteStore, SsoSession, Store, StoreError,
    StoredKey, Synchronous, copy_store, migrate_only,
};

/// One backend under test: a private place for data and a way to open stores on it.
#[async_trait]
trait Backend: Send + Sync {
    /// Opens a store on this backend's data; every call reaches the same data, as a restart or
    /// a second replica would.
    async fn open(&self) -> Arc<dyn Store>;
}

/// Expands every test body below into one `#[tokio::test]` per backend, inside `mod $backend`.
/// `$fresh` is evaluated once per test and must yield a [`Backend`] with empty, private data.
macro_rules! conformance_suite {
    ($backend:ident, $fresh:expr) => {
        mod $backend {
            use super::*;

            conformance_suite!(@instantiate $fresh;
                store: [
                    secret_or_insert_keeps_the_first_value,
                    signing_keys_come_back_oldest_first,
                    a_signing_key_is_added_only_when_no_fresh_one_exists,
                    ending_an_sso_session_leaves_the_sessions_it_started,
                    a_listing_shows_one_persons_live_sessions_with_first_and_last_use,
                    a_listing_pages_in_a_stable_order,
                    revoking_a_persons_sessions_ends_their_sso_and_proxy_sessions,
                    revoking_one_clients_sessions_keeps_the_sso_session,
                    revoking_a_session_deletes_the_proxy_sessions_holding_its_tokens,
                    a_disabled_person_loses_everything_until_enabled,
                    touching_an_sso_session_moves_its_idle_clock_forward_only,
                    a_code_is_claimed_once_then_reported_as_used,
                    first_redemption_rotates_and_stores_the_successor,
                    successor_never_outlives_its_session,
                    reuse_without_grace_is_a_replay_that_revokes_the_session,
                    replay_under_reject_policy_leaves_the_session_live,
                    reuse_inside_grace_answers_the_stored_successor_expiry,
                    grace_requiring_the_same_ip_treats_another_ip_as_a_replay,
                    token_of_another_client_is_rejected_and_left_unused,
                    expired_token_is_rejected_and_nothing_changes,
                    session_past_its_absolute_end_is_rejected,
                    unknown_token_is_rejected_without_a_session,
                    revoking_a_session_answers_true_only_the_first_time,
                    find_returns_what_was_stored,
                    count_active_sessions_skips_revoked_and_ended_ones,
                    a_store_that_answers_answers_ping,
                    sweep_deletes_what_can_never_be_used_again,
                    a_sweep_of_many_batches_deletes_everything_due_and_nothing_else,
                    an_empty_store_exports_an_empty_snapshot,
                    an_import_that_fails_half_way_writes_nothing,
                    a_proxy_session_is_found_as_it_was_stored,
                    touching_a_proxy_session_never_moves_it_backward,
                    a_refresh_claim_against_stale_tokens_fails,
                    an_expired_refresh_lease_can_be_claimed_again,
                    a_finished_refresh_stores_the_new_tokens_and_moves_the_claim_on,
                    an_abandoned_refresh_releases_the_lease,
                    deleting_a_proxy_session_answers_true_only_the_first_time,
                    sweep_deletes_proxy_sessions_past_their_absolute_end,
                    a_saved_identity_is_found_as_it_was_stored,
                    a_revalidation_is_claimed_once_and_only_against_the_last_check,
                    a_confirmed_revalidation_stores_the_new_claims_and_keeps_the_upstream_token,
                    a_disabled_identity_can_no_longer_be_claimed_until_the_next_login,
                    an_abandoned_revalidation_releases_the_lease_and_keeps_the_last_check,
                ],
                shared: [
                    fifty_concurrent_redemptions_rotate_exactly_once,
                    fifty_concurrent_redemptions_inside_grace_converge_on_one_successor,
                    fifty_concurrent_redemptions_under_reject_policy_leave_the_session_live,
                    concurrent_redemptions_of_many_sessions_are_each_decided_as_if_alone,
                    fifty_concurrent_refresh_claims_grant_exactly_one_lease,
                    fifty_concurrent_revalidation_claims_grant_exactly_one_lease,
                ],
                backend: [
                    reopening_the_database_keeps_every_row,
                    a_second_store_on_the_same_data_sees_the_first_ones_writes,
                    replicas_redeeming_one_token_at_once_rotate_exactly_once,
                    replicas_redeeming_inside_grace_converge_on_one_successor,
                    replicas_storing_a_secret_at_once_agree_on_one_value,
                    replicas_finding_a_signing_key_due_at_once_add_one,
                    a_code_reused_on_a_replica_while_its_session_starts_leaves_it_revoked,
                    replicas_claiming_one_refresh_at_once_grant_exactly_one_lease,
                    replicas_claiming_one_revalidation_at_once_grant_exactly_one_lease,
                ],
            );
        }
    };
    (@instantiate $fresh:expr;
        store: [$($store:ident),* $(,)?],
        shared: [$($shared:ident),* $(,)?],
        backend: [$($reopen:ident),* $(,)?] $(,)?
    ) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $store() {
                let backend = $fresh;
                let store = backend.open().await;
                super::$store(&*store).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $shared() {
                let backend = $fresh;
                let store = backend.open().await;
                super::$shared(&store).await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $reopen() {
                let backend = $fresh;
                super::$reopen(&backend).await;
            }
        )*
    };
}

conformance_suite!(sqlite, Sqlite::fresh());
conformance_suite!(postgres, Postgres::fresh().await);

/// Expands the copy tests (`tessera storage copy`) for one (source, target) pair of backends,
/// inside `mod $pair`. `$from` and `$to` are evaluated for every backend a test needs and must
/// yield a [`Backend`] with empty, private data.
macro_rules! copy_suite {
    ($pair:ident, $from:expr, $to:expr) => {
        mod $pair {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_copy_answers_every_token_as_the_source_would() {
                let (from, to) = ($from, $to);
                super::a_copy_answers_every_token_as_the_source_would(&from, &to).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn copying_into_a_non_empty_target_fails_and_leaves_it_unchanged() {
                let from = $from;
                let fresh_target = async || {
                    let backend: Box<dyn Backend> = Box::new($to);
                    backend
                };
                super::copying_into_a_non_empty_target_fails_and_leaves_it_unchanged(
                    &from,
                    fresh_target,
                )
                .await;
            }
        }
    };
}

copy_suite!(sqlite_to_postgres, Sqlite::fresh(), Postgres::fresh().await);
copy_suite!(postgres_to_sqlite, Postgres::fresh().await, Sqlite::fresh());
copy_suite!(sqlite_to_sqlite, Sqlite::fresh(), Sqlite::fresh());
copy_suite!(
    postgres_to_postgres,
    Postgres::fresh().await,
    Postgres::fresh().await
);

/// SQLite in a temporary directory that lives as long as the backend.
struct Sqlite {
    dir: TempDir,
}

impl Sqlite {
    fn fresh() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("tessera.db")
    }
}

#[async_trait]
impl Backend for Sqlite {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&self.path(), Synchronous::Normal).unwrap())
    }
}

/// The database the PostgreSQL tests use when `TESSERA_TEST_POSTGRES_URL` is not set.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// PostgreSQL in a schema of its own (`t_<pid>_<counter>_<random>`), dropped with the backend,
/// so tests run side by side in one database and leave nothing behind. An unreachable database
/// fails the test: these tests never skip.
struct Postgres {
    url: String,
    schema: String,
}

impl Postgres {
    async fn fresh() -> Postgres {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = std::env::var("TESSERA_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let schema = format!(
            "t_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let backend = Postgres { url, schema };
        drop(backend.admin().await);
        backend
    }

    /// Options for a store on this backend's schema. Its connections carry the schema's name
    /// as `application_name`, so a test can find them and the cleanup can end them.
    fn options(&self) -> PostgresOptions {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        PostgresOptions {
            url: format!("{}{separator}application_name={}", self.url, self.schema),
            password: None,
            max_connections: 5,
            connect_timeout: Duration::from_secs(10),
            schema: Some(self.schema.clone()),
        }
    }

    /// A connection of the test's own, outside every store, with the schema on its path.
    async fn admin(&self) -> PgConnection {
        let connecting = PgConnection::connect(&self.url);
        let mut c = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("{}: {e}", self.unreachable()),
            Err(_) => panic!("{}: no answer within 10 s", self.unreachable()),
        };
        c.execute(format!("SET search_path TO \"{}\"", self.schema).as_str())
            .await
            .unwrap();
        c
    }

    fn unreachable(&self) -> String {
        format!(
            "PostgreSQL is not reachable at {} (set TESSERA_TEST_POSTGRES_URL to a database \
             the tests may create schemas in; the PostgreSQL tests do not skip)",
            self.url
        )
    }
}

#[async_trait]
impl Backend for Postgres {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(PostgresStore::connect(self.options()).await.unwrap())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime: a thread with a runtime of its own.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut c = PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                // After a failed test, tasks of its stores may still hold transactions (and
                // locks) in the schema: end their connections first, then drop; retry in case
                // the drop still lost a deadlock to one of them.
                let mut outcome = Ok(());
                for _ in 0..5 {
                    let ended = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(&schema)
                    .execute(&mut c)
                    .await;
                    let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    outcome = match ended {
                        Ok(_) => c.execute(drop.as_str()).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    if outcome.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcome.map_err(|e| e.to_string())?;
                c.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        let failure = match dropped {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the cleanup thread panicked".to_owned(),
        };
        let message = format!("cannot drop the test schema {}: {failure}", self.schema);
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test bodies, backend-agnostic.

async fn secret_or_insert_keeps_the_first_value(store: &dyn Store) {
    let first = store.secret_or_insert("rotation", vec![1; 32]).await;
    assert_eq!(first.unwrap(), vec![1; 32]);
    let second = store.secret_or_insert("rotation", vec![2; 32]).await;
    assert_eq!(second.unwrap(), vec![1; 32]);
    let other = store.secret_or_insert("cookie", vec![3; 32]).await;
    assert_eq!(other.unwrap(), vec![3; 32]);
}

async fn signing_keys_come_back_oldest_first(store: &dyn Store) {
    assert_eq!(store.signing_keys().await.unwrap(), vec![]);
    let newer = key("k2", T0.plus(Duration::from_secs(60)));
    let older = key("k1", T0);
    store.add_signing_key(newer.clone()).await.unwrap();
    store.add_signing_key(older.clone()).await.unwrap();
    assert_eq!(store.signing_keys().await.unwrap(), vec![older, newer]);
}

async fn a_signing_key_is_added_only_when_no_fresh_one_exists(store: &dyn Store) {
    let due_after = T0.plus(Duration::from_secs(60));
    assert!(
        store
            .add_signing_key_unless_fresh(key("first", T0), UnixMillis(0))
            .await
            .unwrap()
    );
    // A key created after `fresh_after` is fresh: nothing is added.
    let early = key("early", T0.plus(Duration::from_secs(1)));
    assert!(
        !store
            .add_signing_key_unless_fresh(early, UnixMillis(T0.0 - 1))
            .await
            .unwrap()
    );
    // Once the newest key is older than `fresh_after`, the new one goes in.
    let due = key("due", due_after);
    assert!(store.add_signing_key_unless_fresh(due, T0).await.unwrap());
    // Keys of another algorithm do not count.
    let other = StoredKey {
        alg: "ES256".into(),
        ..key("es", due_after)
    };
    assert!(store.add_signing_key_unless_fresh(other, T0).await.unwrap());
    let kids: Vec<String> = store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["first", "due", "es"]);
}

async fn touching_an_sso_session_moves_its_idle_clock_forward_only(store: &dyn Store) {
    let sso = alices_sso(&secret(100));
    store.create_sso(sso.clone()).await.unwrap();
    let later = T0.plus(Duration::from_secs(600));
    store.touch_sso(sso.handle, later).await.unwrap();
    store.touch_sso(sso.handle, USED).await.unwrap();
    let found = store.find_sso(sso.handle).await.unwrap().unwrap();
    assert_eq!(found.last_used_at, later);
    assert_eq!((found.auth_time, found.expires_at), (T0, T0.plus(LIFETIME)));
    // An unknown handle is nothing to touch.
    store.touch_sso(secret(101).hash(), later).await.unwrap();
}

async fn ending_an_sso_session_leaves_the_sessions_it_started(store: &dyn Store) {
    let handle = secret(100);
    let sso = alices_sso(&handle);
    store.create_sso(sso.clone()).await.unwrap();
    assert_eq!(store.find_sso(handle.hash()).await.unwrap(), Some(sso));
    assert_eq!(store.find_sso(secret(101).hash()).await.unwrap(), None);
    let kubectl = Session {
        sso_id: Some(SsoId::new("sso-1")),
        ..session("s-kubectl", T0)
    };
    start(store, kubectl, &secret(1)).await;

    let later = T0.plus(Duration::from_secs(5));
    assert!(store.end_sso(SsoId::new("sso-1"), later).await.unwrap());
    let found = store.find_sso(handle.hash()).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(later));
    let kubectl = store.find_session(sid("s-kubectl")).await.unwrap().unwrap();
    assert_eq!(
        kubectl.revoked_at, None,
        "a browser's sign-out is not kubectl's"
    );
    assert!(!store.end_sso(SsoId::new("sso-1"), later).await.unwrap());
}

/// Filters: one person, one person's sessions of one client.
fn of(subject: &str, client_id: Option<&str>) -> SessionFilter {
    SessionFilter {
        subject: Some(Subject::new(subject)),
        client_id: client_id.map(ClientId::new),
    }
}

fn person(id: &str, subject: &str, created_at: UnixMillis) -> Session {
    Session {
        subject: Subject::new(subject),
        ..session(id, created_at)
    }
}

async fn a_listing_shows_one_persons_live_sessions_with_first_and_last_use(store: &dyn Store) {
    start(store, session("a-laptop", T0), &secret(1)).await;
    start(store, session("a-ci", T0), &secret(2)).await;
    start(store, session("a-revoked", T0), &secret(3)).await;
    start(store, session("a-lapsed", T0), &secret(4)).await;
    start(store, person("b-laptop", "bob", T0), &secret(5)).await;
    let dashboard = Session {
        client_id: ClientId::new("dashboard"),
        ..session("a-dashboard", T0.plus(Duration::from_secs(120)))
    };
    start(store, dashboard, &secret(6)).await;
    store
        .revoke_session(sid("a-revoked"), T0, "admin")
        .await
        .unwrap();
    // The laptop refreshed twice from another address; the last use is the second.
    let first = T0.plus(Duration::from_secs(60));
    let second = T0.plus(Duration::from_secs(120));
    redeem_from(
        store,
        &secret(1),
        first,
        no_grace(OnReplay::RevokeSession),
        "10.9.9.9",
    )
    .await;
    redeem_from(
        store,
        &next(&secret(1)),
        second,
        no_grace(OnReplay::RevokeSession),
        "10.9.9.8",
    )
    .await;
    // Past the first token's lifetime, a session never refreshed has lapsed.
    let now = T0.plus(TTL).plus(Duration::from_secs(1));
    redeem_from(
        store,
        &secret(2),
        T0.plus(TTL - Duration::from_secs(1)),
        no_grace(OnReplay::RevokeSession),
        IP,
    )
    .await;

    let page = store
        .list_sessions(of("alice", None), now, None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = page
        .sessions
        .iter()
        .map(|s| s.session.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["a-ci", "a-dashboard", "a-laptop"],
        "live, alice's, by id"
    );
    assert_eq!(page.next_after, None);
    let laptop = &page.sessions[2];
    assert_eq!(laptop.first_use.at, T0);
    assert_eq!(laptop.first_use.from, origin(IP));
    assert_eq!(laptop.last_use.at, second);
    assert_eq!(laptop.last_use.from, origin("10.9.9.8"));
    assert_eq!(
        laptop.expires_at,
        second.plus(TTL),
        "the live token's expiry"
    );
    assert_eq!(laptop.session.client_id, client());

    let dashboard_only = store
        .list_sessions(of("alice", Some("dashboard")), now, None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = dashboard_only
        .sessions
        .iter()
        .map(|s| s.session.id.as_str())
        .collect();
    assert_eq!(ids, ["a-dashboard"]);
    let everyone = SessionFilter::default();
    let all = store.list_sessions(everyone, now, None, 10).await.unwrap();
    assert_eq!(all.sessions.len(), 3, "bob's session lapsed too");
}

async fn a_listing_pages_in_a_stable_order(store: &dyn Store) {
    for n in 0..7u8 {
        start(store, session(&format!("s-{n}"), T0), &secret(n)).await;
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_sessions(of("alice", None), T0, after.clone(), 3)
            .await
            .unwrap();
        assert!(page.sessions.len() <= 3);
        seen.extend(
            page.sessions
                .iter()
                .map(|s| s.session.id.as_str().to_owned()),
        );
        match page.next_after {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|n| format!("s-{n}")).collect();
    assert_eq!(seen, expected);
    // A session ending between two pages shifts nothing: the next page starts after an id.
    let first = store
        .list_sessions(of("alice", None), T0, None, 3)
        .await
        .unwrap();
    store.revoke_session(sid("s-1"), T0, "admin").await.unwrap();
    let second = store
        .list_sessions(of("alice", None), T0, first.next_after, 3)
        .await
        .unwrap();
    let ids: Vec<&str> = second
        .sessions
        .iter()
        .map(|s| s.session.id.as_str())
        .collect();
    assert_eq!(ids, ["s-3", "s-4", "s-5"]);
}

async fn revoking_a_persons_sessions_ends_their_sso_and_proxy_sessions(store: &dyn Store) {
    let sso = alices_sso(&secret(100));
    store.create_sso(sso).await.unwrap();
    start(store, session("a-1", T0), &secret(1)).await;
    start(store, session("a-2", T0), &secret(2)).await;
    start(store, person("b-1", "bob", T0), &secret(3)).await;
    let proxy = ProxySession {
        session_id: Some(sid("a-2")),
        ..proxy_session(&secret(110), T0)
    };
    store.create_proxy_session(proxy).await.unwrap();
    let bobs_proxy = ProxySession {
        session_id: Some(sid("b-1")),
        ..proxy_session(&secret(111), T0)
    };
    store.create_proxy_session(bobs_proxy).await.unwrap();

    let later = T0.plus(Duration::from_secs(5));
    let ended = store
        .revoke_sessions(of("alice", None), later, "sign_out_everywhere")
        .await
        .unwrap();
    let mut ids: Vec<&str> = ended.sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a-1", "a-2"]);
    assert_eq!(ended.sso_sessions, 1);
    let sso = store.find_sso(secret(100).hash()).await.unwrap().unwrap();
    assert_eq!(sso.revoked_at, Some(later));
    assert_eq!(
        store.find_proxy_session(secret(110).hash()).await.unwrap(),
        None
    );
    assert!(
        store
            .find_proxy_session(secret(111).hash())
            .await
            .unwrap()
            .is_some()
    );
    let bob = store.find_session(sid("b-1")).await.unwrap().unwrap();
    assert_eq!(bob.revoked_at, None);
    assert_eq!(
        revoked_reason(store, "a-1").await.as_deref(),
        Some("sign_out_everywhere")
    );
    // Nothing left to end; an empty filter never ends everyone's.
    let again = store
        .revoke_sessions(of("alice", None), later, "admin")
        .await;
    assert_eq!(again.unwrap(), Ended::default());
    let nobody = store
        .revoke_sessions(SessionFilter::default(), later, "admin")
        .await;
    assert_eq!(nobody.unwrap(), Ended::default());
    assert_eq!(
        store
            .find_session(sid("b-1"))
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
}

async fn revoking_one_clients_sessions_keeps_the_sso_session(store: &dyn Store) {
    let sso = alices_sso(&secret(100));
    store.create_sso(sso).await.unwrap();
    start(store, session("a-kubectl", T0), &secret(1)).await;
    let dashboard = Session {
        client_id: ClientId::new("dashboard"),
        ..session("a-dashboard", T0)
    };
    start(store, dashboard, &secret(2)).await;
    let ended = store
        .revoke_sessions(of("alice", Some("dashboard")), T0, "admin")
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 1);
    assert_eq!(ended.sessions[0].id, sid("a-dashboard"));
    assert_eq!(ended.sso_sessions, 0);
    let sso = store.find_sso(secret(100).hash()).await.unwrap().unwrap();
    assert_eq!(sso.revoked_at, None);
    let kubectl = store.find_session(sid("a-kubectl")).await.unwrap().unwrap();
    assert_eq!(kubectl.revoked_at, None);
}

async fn revoking_a_session_deletes_the_proxy_sessions_holding_its_tokens(store: &dyn Store) {
    start(store, session("a-1", T0), &secret(1)).await;
    let proxy = ProxySession {
        session_id: Some(sid("a-1")),
        ..proxy_session(&secret(110), T0)
    };
    store.create_proxy_session(proxy.clone()).await.unwrap();
    assert_eq!(
        store.find_proxy_session(secret(110).hash()).await.unwrap(),
        Some(proxy)
    );
    assert!(
        store
            .revoke_session(sid("a-1"), T0, "user_ended")
            .await
            .unwrap()
    );
    assert_eq!(
        store.find_proxy_session(secret(110).hash()).await.unwrap(),
        None
    );
}

async fn a_disabled_person_loses_everything_until_enabled(store: &dyn Store) {
    start(store, session("a-1", T0), &secret(1)).await;
    start(store, person("b-1", "bob", T0), &secret(2)).await;
    let mallory = Subject::new("alice");
    assert_eq!(
        store.find_disabled_user(mallory.clone()).await.unwrap(),
        None
    );
    let record = DisabledUser {
        subject: mallory.clone(),
        disabled_at: T0,
        disabled_by: "cli".into(),
    };
    let ended = store.disable_user(record.clone()).await.unwrap();
    assert_eq!(ended.sessions.len(), 1);
    assert_eq!(
        revoked_reason(store, "a-1").await.as_deref(),
        Some("user_disabled")
    );
    let refused = redeem(store, &secret(1), T0, no_grace(OnReplay::RevokeSession)).await;
    assert!(
        matches!(refused.decision, Decision::Reject(_)),
        "{:?}",
        refused.decision
    );
    // Disabling again keeps the first record.
    let again = DisabledUser {
        disabled_at: T0.plus(Duration::from_secs(9)),
        disabled_by: "admin-2".into(),
        ..record.clone()
    };
    assert_eq!(store.disable_user(again).await.unwrap(), Ended::default());
    assert_eq!(
        store.find_disabled_user(mallory.clone()).await.unwrap(),
        Some(record)
    );
    assert!(store.enable_user(mallory.clone()).await.unwrap());
    assert!(!store.enable_user(mallory.clone()).await.unwrap());
    assert_eq!(store.find_disabled_user(mallory).await.unwrap(), None);
    let bob = store.find_session(sid("b-1")).await.unwrap().unwrap();
    assert_eq!(bob.revoked_at, None);
}

async fn a_code_is_claimed_once_then_reported_as_used(store: &dyn Store) {
    let code = secret(50);
    let stored = AuthCode {
        hash: code.hash(),
        client_id: client(),
        redirect_uri: "http://127.0.0.1:8000/callback".into(),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        nonce: Some("n-0S6_WzA2Mj".into()),
        scope: "openid email groups".into(),
        session_id: sid("s-from-code"),
        sso_id: Some(SsoId::new("sso-1")),
        subject: Subject::new("alice"),
        auth_time: T0,
        expires_at: T0.plus(Duration::from_secs(60)),
    };
    store.insert_code(stored.clone()).await.unwrap();

    let first = store.redeem_code(code.hash(), T0).await.unwrap();
    assert_eq!(first, CodeRedemption::Claimed(Box::new(stored)));
    let second = store.redeem_code(code.hash(), T0).await.unwrap();
    assert_eq!(
        second,
        CodeRedemption::AlreadyUsed {
            session_id: sid("s-from-code")
        }
    );
    let unknown = store.redeem_code(secret(51).hash(), T0).await.unwrap();
    assert_eq!(unknown, CodeRedemption::Unknown);
}

async fn first_redemption_rotates_and_stores_the_successor(store: &dyn Store) {
    let t = secret(1);
    let s = start(store, session("s1", T0), &t).await;
    let now = T0.plus(Duration::from_secs(30));

    let r = redeem(store, &t, now, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Rotate);
    assert_eq!(r.session, Some(s));
    assert_eq!(r.successor_expires_at, now.plus(TTL));

    let spent = store.find_refresh_token(t.hash()).await.unwrap().unwrap();
    assert_eq!(spent.used_at, Some(now));
    let successor = next(&t);
    let stored = store.find_refresh_token(successor.hash()).await.unwrap();
    let stored = stored.expect("the successor is stored");
    assert_eq!(stored.issued_at, now);
    assert_eq!(stored.expires_at, now.plus(TTL));
    assert_eq!(stored.used_at, None);
    assert_eq!(stored.client_id, client());
    assert_eq!(stored.session.id, sid("s1"));

    let later = now.plus(Duration::from_secs(30));
    let r = redeem(store, &successor, later, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Rotate);
    assert_eq!(r.successor_expires_at, later.plus(TTL));
    assert!(
        store
            .find_refresh_token(next(&successor).hash())
            .await
            .unwrap()
            .is_some()
    );
}

async fn successor_never_outlives_its_session(store: &dyn Store) {
    let t = secret(1);
    let short = Session {
        absolute_end: T0.plus(Duration::from_secs(600)),
        ..session("s1", T0)
    };
    start(store, short, &t).await;
    let now = T0.plus(Duration::from_secs(60));

    let r = redeem(store, &t, now, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Rotate);
    assert_eq!(r.successor_expires_at, T0.plus(Duration::from_secs(600)));
    let stored = store.find_refresh_token(next(&t).hash()).await.unwrap();
    assert_eq!(
        stored.unwrap().expires_at,
        T0.plus(Duration::from_secs(600))
    );
}

async fn reuse_without_grace_is_a_replay_that_revokes_the_session(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let policy = no_grace(OnReplay::RevokeSession);
    redeem_expecting_rotate(store, &t, T0, policy).await;

    let replayed_at = T0.plus(Duration::from_millis(1_500));
    let r = redeem_from(store, &t, replayed_at, policy, "10.9.9.9").await;
    assert_eq!(
        r.decision,
        Decision::Replay {
            revoke_session: true,
            first_used_ip: IP.into(),
            first_used_ms_ago: 1_500,
        }
    );
    let before = r.session.expect("a replay names its session");
    assert_eq!(before.revoked_at, None, "the session as it was before");

    let after = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(after.revoked_at, Some(replayed_at));
    assert_eq!(store.count_active_sessions(replayed_at).await.unwrap(), 0);
    let r = redeem(store, &next(&t), replayed_at, policy).await;
    assert_eq!(r.decision, Decision::Reject(RejectReason::SessionRevoked));
}

async fn replay_under_reject_policy_leaves_the_session_live(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let policy = no_grace(OnReplay::Reject);
    redeem_expecting_rotate(store, &t, T0, policy).await;

    let now = T0.plus(Duration::from_secs(1));
    let r = redeem(store, &t, now, policy).await;
    assert!(
        matches!(
            r.decision,
            Decision::Replay {
                revoke_session: false,
                ..
            }
        ),
        "{:?}",
        r.decision
    );
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, None);
    let r = redeem(store, &next(&t), now, policy).await;
    assert_eq!(r.decision, Decision::Rotate);
}

async fn reuse_inside_grace_answers_the_stored_successor_expiry(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let policy = grace(5_000, false);
    let first = redeem_expecting_rotate(store, &t, T0, policy).await;

    let now = T0.plus(Duration::from_millis(4_999));
    let r = redeem_from(store, &t, now, policy, "10.2.2.2").await;
    assert_eq!(
        r.decision,
        Decision::Grace {
            first_used_ip: IP.into(),
            first_used_ms_ago: 4_999,
        }
    );
    assert_eq!(r.successor_expires_at, first.successor_expires_at);
    let stored = store.find_refresh_token(next(&t).hash()).await.unwrap();
    let stored = stored.unwrap();
    assert_eq!(r.successor_expires_at, stored.expires_at);
    assert_eq!(stored.used_at, None, "grace hands out the successor unused");
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, None);

    let too_late = T0.plus(Duration::from_millis(5_000));
    let r = redeem(store, &t, too_late, policy).await;
    assert!(matches!(r.decision, Decision::Replay { .. }));
}

async fn grace_requiring_the_same_ip_treats_another_ip_as_a_replay(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let policy = grace(60_000, true);
    redeem_expecting_rotate(store, &t, T0, policy).await;
    let now = T0.plus(Duration::from_secs(1));

    let same = redeem_from(store, &t, now, policy, IP).await;
    assert!(matches!(same.decision, Decision::Grace { .. }));
    let other = redeem_from(store, &t, now, policy, "10.9.9.9").await;
    assert!(matches!(
        other.decision,
        Decision::Replay {
            revoke_session: true,
            ..
        }
    ));
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, Some(now));
}

async fn token_of_another_client_is_rejected_and_left_unused(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let policy = no_grace(OnReplay::RevokeSession);
    let mut stolen = request(&t, T0, policy);
    stolen.client_id = ClientId::new("demo");

    let r = store.redeem_refresh_token(stolen.clone()).await.unwrap();
    assert_eq!(r.decision, Decision::Reject(RejectReason::OtherClient));
    let info = store.find_refresh_token(t.hash()).await.unwrap().unwrap();
    assert_eq!(info.used_at, None, "the rejected claim was rolled back");
    assert_eq!(
        store.find_refresh_token(next(&t).hash()).await.unwrap(),
        None
    );

    redeem_expecting_rotate(store, &t, T0, policy).await;
    // Once used, the other client's attempt is still refused as such, not taken for a replay.
    let r = store.redeem_refresh_token(stolen).await.unwrap();
    assert_eq!(r.decision, Decision::Reject(RejectReason::OtherClient));
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, None);
}

async fn expired_token_is_rejected_and_nothing_changes(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let expiry = T0.plus(TTL);

    let r = redeem(store, &t, expiry, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Reject(RejectReason::TokenExpired));
    let info = store.find_refresh_token(t.hash()).await.unwrap().unwrap();
    assert_eq!(info.used_at, None);
    assert_eq!(info.session.revoked_at, None);
    assert_eq!(
        store.find_refresh_token(next(&t).hash()).await.unwrap(),
        None
    );
}

async fn session_past_its_absolute_end_is_rejected(store: &dyn Store) {
    let t = secret(1);
    let short = Session {
        absolute_end: T0.plus(Duration::from_secs(60)),
        ..session("s1", T0)
    };
    start(store, short, &t).await;
    let end = T0.plus(Duration::from_secs(60));

    let r = redeem(store, &t, end, grace(60_000, false)).await;
    assert_eq!(r.decision, Decision::Reject(RejectReason::SessionEnded));
    let info = store.find_refresh_token(t.hash()).await.unwrap().unwrap();
    assert_eq!(info.used_at, None);
    assert_eq!(
        store.find_refresh_token(next(&t).hash()).await.unwrap(),
        None
    );
}

async fn unknown_token_is_rejected_without_a_session(store: &dyn Store) {
    start(store, session("s1", T0), &secret(1)).await;
    let r = redeem(store, &secret(2), T0, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Reject(RejectReason::UnknownToken));
    assert_eq!(r.session, None);
    assert_eq!(
        store
            .find_refresh_token(next(&secret(2)).hash())
            .await
            .unwrap(),
        None
    );
}

async fn revoking_a_session_answers_true_only_the_first_time(store: &dyn Store) {
    let t = secret(1);
    start(store, session("s1", T0), &t).await;
    let now = T0.plus(Duration::from_secs(10));

    assert!(store.revoke_session(sid("s1"), now, "admin").await.unwrap());
    let later = now.plus(Duration::from_secs(10));
    assert!(
        !store
            .revoke_session(sid("s1"), later, "admin")
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_session(sid("nope"), now, "admin")
            .await
            .unwrap()
    );
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, Some(now), "the first revocation's time stays");

    let r = redeem(store, &t, later, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Reject(RejectReason::SessionRevoked));
}

async fn find_returns_what_was_stored(store: &dyn Store) {
    let t = secret(1);
    let stored = Session {
        sso_id: Some(SsoId::new("sso-1")),
        auth_time: T0,
        ..session("s1", T0.plus(Duration::from_secs(2)))
    };
    start(store, stored.clone(), &t).await;

    assert_eq!(
        store.find_session(sid("s1")).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(store.find_session(sid("s2")).await.unwrap(), None);
    let info = store.find_refresh_token(t.hash()).await.unwrap().unwrap();
    assert_eq!(info.client_id, client());
    assert_eq!(info.issued_at, stored.created_at);
    assert_eq!(info.expires_at, stored.created_at.plus(TTL));
    assert_eq!(info.used_at, None);
    assert_eq!(info.session, stored);
    assert_eq!(
        store.find_refresh_token(secret(2).hash()).await.unwrap(),
        None
    );
}

async fn a_store_that_answers_answers_ping(store: &dyn Store) {
    store.ping().await.unwrap();
    start(store, session("live", T0), &secret(1)).await;
    store.ping().await.unwrap();
}

async fn count_active_sessions_skips_revoked_and_ended_ones(store: &dyn Store) {
    assert_eq!(store.count_active_sessions(T0).await.unwrap(), 0);
    let ends_soon = Session {
        absolute_end: T0.plus(Duration::from_secs(60)),
        ..session("ends-soon", T0)
    };
    start(store, ends_soon, &secret(1)).await;
    start(store, session("live", T0), &secret(2)).await;
    start(store, session("revoked", T0), &secret(3)).await;
    assert_eq!(store.count_active_sessions(T0).await.unwrap(), 3);

    store
        .revoke_session(sid("revoked"), T0, "admin")
        .await
        .unwrap();
    assert_eq!(store.count_active_sessions(T0).await.unwrap(), 2);
    let at_end = T0.plus(Duration::from_secs(60));
    assert_eq!(store.count_active_sessions(at_end).await.unwrap(), 1);
}

async fn sweep_deletes_what_can_never_be_used_again(store: &dyn Store) {
    let ended = Session {
        absolute_end: T0.plus(Duration::from_secs(60)),
        ..session("ended", T0)
    };
    start(store, ended, &secret(1)).await;
    start(store, session("live", T0), &secret(2)).await;
    start(store, session("revoked", T0), &secret(3)).await;
    store
        .revoke_session(sid("revoked"), T0, "admin")
        .await
        .unwrap();
    let sso = SsoSession {
        handle: secret(4).hash(),
        id: SsoId::new("sso-old"),
        subject: Subject::new("alice"),
        auth_time: T0,
        last_used_at: T0,
        expires_at: T0.plus(Duration::from_secs(60)),
        revoked_at: None,
    };
    store.create_sso(sso).await.unwrap();

    let now = T0.plus(Duration::from_secs(60));
    // The ended session and its token, the expired SSO session: three rows.
    assert_eq!(store.sweep(now).await.unwrap(), 3);
    assert_eq!(store.find_session(sid("ended")).await.unwrap(), None);
    assert_eq!(
        store.find_refresh_token(secret(1).hash()).await.unwrap(),
        None
    );
    assert_eq!(store.find_sso(secret(4).hash()).await.unwrap(), None);
    assert!(store.find_session(sid("live")).await.unwrap().is_some());
    // Revoked sessions stay until their end, so a replay of their tokens is still recognised.
    assert!(store.find_session(sid("revoked")).await.unwrap().is_some());
    assert!(
        store
            .find_refresh_token(secret(3).hash())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.sweep(now).await.unwrap(), 0);
}

/// More ended sessions than one sweep transaction takes (the backends sweep in batches, so a
/// large sweep never holds refreshes behind it for long).
async fn a_sweep_of_many_batches_deletes_everything_due_and_nothing_else(store: &dyn Store) {
    const ENDED: u16 = 600;
    let token = |i: u16| {
        let mut bytes = [0xEE; 32];
        bytes[..2].copy_from_slice(&i.to_le_bytes());
        Secret::from_random(REFRESH_TOKEN_PREFIX, bytes)
    };
    for i in 0..ENDED {
        let ended = Session {
            absolute_end: T0.plus(Duration::from_secs(60)),
            ..session(&format!("ended-{i}"), T0)
        };
        start(store, ended, &token(i)).await;
    }
    start(store, session("live", T0), &token(ENDED)).await;

    let now = T0.plus(Duration::from_secs(60));
    assert_eq!(store.sweep(now).await.unwrap(), 2 * u64::from(ENDED));
    for i in [0, ENDED / 2, ENDED - 1] {
        assert_eq!(
            store
                .find_session(sid(&format!("ended-{i}")))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.find_refresh_token(token(i).hash()).await.unwrap(),
            None
        );
    }
    assert!(store.find_session(sid("live")).await.unwrap().is_some());
    assert!(
        store
            .find_refresh_token(token(ENDED).hash())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.sweep(now).await.unwrap(), 0);
}

async fn fifty_concurrent_redemptions_rotate_exactly_once(store: &Arc<dyn Store>) {
    let decisions = race(store, grace(0, false)).await;
    assert_eq!(count(&decisions, |d| *d == Decision::Rotate), 1);
    let refused = count(&decisions, |d| {
        matches!(
            d,
            Decision::Replay {
                revoke_session: true,
                ..
            } | Decision::Reject(RejectReason::SessionRevoked)
        )
    });
    assert_eq!(refused, RACERS - 1, "{decisions:?}");
    // One revocation, recorded once: later losers find the session revoked.
    assert_eq!(
        count(&decisions, |d| matches!(d, Decision::Replay { .. })),
        1,
        "{decisions:?}"
    );
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert!(s.revoked_at.is_some(), "a replay revokes the session");
}

/// Redemptions of many sessions at once, refused ones among them (unknown tokens, a token of
/// another client): SQLite commits the redemptions queued together in one transaction, so a
/// refusal must roll back only its own claim, and every rotation must be kept.
async fn concurrent_redemptions_of_many_sessions_are_each_decided_as_if_alone(
    store: &Arc<dyn Store>,
) {
    const SESSIONS: u8 = 40;
    // One more session, whose token only another client presents.
    for n in 0..=SESSIONS {
        start(&**store, session(&format!("many-{n}"), T0), &secret(n)).await;
    }
    let now = T0.plus(Duration::from_secs(1));
    let policy = grace(0, false);
    let mut requests: Vec<RedeemRequest> = (0..SESSIONS)
        .map(|n| request(&secret(n), now, policy))
        .collect();
    // Tokens nobody issued, and the last session's token presented by another client.
    requests.extend((200..220).map(|n| request(&secret(n), now, policy)));
    requests.push(RedeemRequest {
        client_id: ClientId::new("dashboard"),
        ..request(&secret(SESSIONS), now, policy)
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let hash = request.hash;
                (hash, store.redeem_refresh_token(request).await.unwrap())
            })
        })
        .collect();
    let mut rotated = 0;
    for task in tasks {
        let (hash, redemption) = task.await.unwrap();
        match redemption.decision {
            Decision::Rotate => rotated += 1,
            Decision::Reject(RejectReason::UnknownToken | RejectReason::OtherClient) => {}
            other => panic!("{} answered {other:?}", hash.to_hex()),
        }
    }
    assert_eq!(rotated, usize::from(SESSIONS));
    for n in 0..SESSIONS {
        let found = store.find_refresh_token(next(&secret(n)).hash()).await;
        assert!(found.unwrap().is_some(), "session {n}'s successor was kept");
        let s = store.find_session(sid(&format!("many-{n}"))).await.unwrap();
        assert_eq!(s.unwrap().revoked_at, None);
    }
    let refused = next(&secret(SESSIONS)).hash();
    assert!(store.find_refresh_token(refused).await.unwrap().is_none());
    let r = redeem(&**store, &secret(SESSIONS), now, policy).await;
    assert_eq!(
        r.decision,
        Decision::Rotate,
        "the refused claim was rolled back"
    );
}

async fn fifty_concurrent_redemptions_inside_grace_converge_on_one_successor(
    store: &Arc<dyn Store>,
) {
    let decisions = race(store, grace(60_000, false)).await;
    assert_eq!(count(&decisions, |d| *d == Decision::Rotate), 1);
    let graced = count(&decisions, |d| matches!(d, Decision::Grace { .. }));
    assert_eq!(graced, RACERS - 1, "{decisions:?}");
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, None);
    let later = T0.plus(Duration::from_secs(2));
    let r = redeem(&**store, &next(&secret(1)), later, grace(60_000, false)).await;
    assert_eq!(
        r.decision,
        Decision::Rotate,
        "the one successor is still fresh"
    );
}

async fn fifty_concurrent_redemptions_under_reject_policy_leave_the_session_live(
    store: &Arc<dyn Store>,
) {
    let decisions = race(store, no_grace(OnReplay::Reject)).await;
    assert_eq!(count(&decisions, |d| *d == Decision::Rotate), 1);
    let refused = count(&decisions, |d| {
        matches!(
            d,
            Decision::Replay {
                revoke_session: false,
                ..
            }
        )
    });
    assert_eq!(refused, RACERS - 1, "{decisions:?}");
    let s = store.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, None);
}

async fn reopening_the_database_keeps_every_row(backend: &dyn Backend) {
    let t = secret(1);
    {
        let store = backend.open().await;
        store
            .secret_or_insert("rotation", vec![1; 32])
            .await
            .unwrap();
        store.add_signing_key(key("k1", T0)).await.unwrap();
        start(&*store, session("s1", T0), &t).await;
        redeem_expecting_rotate(&*store, &t, T0, no_grace(OnReplay::RevokeSession)).await;
    }
    // Each open runs the migrations again; they must find nothing left to do.
    for _ in 0..2 {
        let store = backend.open().await;
        let value = store.secret_or_insert("rotation", vec![2; 32]).await;
        assert_eq!(value.unwrap(), vec![1; 32]);
        assert_eq!(store.signing_keys().await.unwrap(), vec![key("k1", T0)]);
        let spent = store.find_refresh_token(t.hash()).await.unwrap().unwrap();
        assert_eq!(spent.used_at, Some(T0));
        assert_eq!(spent.session, session("s1", T0));
        let successor = store.find_refresh_token(next(&t).hash()).await.unwrap();
        assert_eq!(successor.unwrap().used_at, None);
    }
    let store = backend.open().await;
    let r = redeem(&*store, &next(&t), T0, no_grace(OnReplay::RevokeSession)).await;
    assert_eq!(r.decision, Decision::Rotate);
}

async fn a_second_store_on_the_same_data_sees_the_first_ones_writes(backend: &dyn Backend) {
    let (one, two) = (backend.open().await, backend.open().await);
    let t = secret(1);
    start(&*one, session("s1", T0), &t).await;
    redeem_expecting_rotate(&*two, &t, T0, no_grace(OnReplay::RevokeSession)).await;
    let r = redeem(&*one, &t, T0, no_grace(OnReplay::RevokeSession)).await;
    assert!(matches!(r.decision, Decision::Replay { .. }));
    let s = two.find_session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(s.revoked_at, Some(T0));
}

async fn replicas_redeeming_one_token_at_once_rotate_exactly_once(backend: &dyn Backend) {
    let (stores, redemptions) = race_on_replicas(backend, no_grace(OnReplay::RevokeSession)).await;
    let decisions: Vec<Decision> = redemptions.into_iter().map(|r| r.decision).collect();
    assert_eq!(
        count(&decisions, |d| *d == Decision::Rotate),
        1,
        "{decisions:?}"
    );
    let refused = count(&decisions, |d| {
        matches!(
            d,
            Decision::Replay {
                revoke_session: true,
                ..
            } | Decision::Reject(RejectReason::SessionRevoked)
        )
    });
    assert_eq!(refused, decisions.len() - 1, "{decisions:?}");
    // However many losers read the session live before it was revoked, one revocation counts.
    assert_eq!(
        count(&decisions, |d| matches!(d, Decision::Replay { .. })),
        1,
        "{decisions:?}"
    );
    for store in &stores {
        let s = store.find_session(sid("s1")).await.unwrap().unwrap();
        assert!(s.revoked_at.is_some(), "every replica sees the revocation");
    }
}

async fn replicas_redeeming_inside_grace_converge_on_one_successor(backend: &dyn Backend) {
    let policy = grace(60_000, false);
    let (stores, redemptions) = race_on_replicas(backend, policy).await;
    let rotated: Vec<&Redemption> = redemptions
        .iter()
        .filter(|r| r.decision == Decision::Rotate)
        .collect();
    assert_eq!(rotated.len(), 1, "{redemptions:?}");
    let expiry = rotated[0].successor_expires_at;
    for r in &redemptions {
        assert!(
            matches!(r.decision, Decision::Rotate | Decision::Grace { .. }),
            "{:?}",
            r.decision
        );
        assert_eq!(r.successor_expires_at, expiry, "one successor for all");
    }
    let t = secret(1);
    for store in &stores {
        let successor = store.find_refresh_token(next(&t).hash()).await.unwrap();
        let successor = successor.expect("the one successor is stored");
        assert_eq!(successor.expires_at, expiry);
        assert_eq!(successor.used_at, None);
        assert_eq!(successor.session.revoked_at, None);
    }
    let later = T0.plus(Duration::from_secs(2));
    let r = redeem(&*stores[REPLICAS - 1], &next(&t), later, policy).await;
    assert_eq!(r.decision, Decision::Rotate);
}

async fn replicas_storing_a_secret_at_once_agree_on_one_value(backend: &dyn Backend) {
    let stores = replicas(backend).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(REPLICAS * RACERS_PER_REPLICA));
    let tasks: Vec<_> = (0..REPLICAS * RACERS_PER_REPLICA)
        .map(|i| {
            let store = Arc::clone(&stores[i % REPLICAS]);
            let barrier = Arc::clone(&barrier);
            let candidate = vec![u8::try_from(i).unwrap(); 32];
            tokio::spawn(async move {
                barrier.wait().await;
                store.secret_or_insert("rotation", candidate).await.unwrap()
            })
        })
        .collect();
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap());
    }
    assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
}

async fn replicas_finding_a_signing_key_due_at_once_add_one(backend: &dyn Backend) {
    let stores = replicas(backend).await;
    let racers = REPLICAS * RACERS_PER_REPLICA;
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let store = Arc::clone(&stores[i % REPLICAS]);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                // An empty store: every racer finds the first key due.
                store
                    .add_signing_key_unless_fresh(key(&format!("k{i}"), T0), UnixMillis(0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut added = Vec::new();
    for task in tasks {
        added.push(task.await.unwrap());
    }
    assert_eq!(added.iter().filter(|a| **a).count(), 1, "{added:?}");
    for store in &stores {
        assert_eq!(store.signing_keys().await.unwrap().len(), 1);
    }
}

async fn a_code_reused_on_a_replica_while_its_session_starts_leaves_it_revoked(
    backend: &dyn Backend,
) {
    let (first, second) = (backend.open().await, backend.open().await);
    for round in 0..20_u8 {
        let code = secret(100 + round);
        let id = format!("s-code-{round}");
        first
            .insert_code(AuthCode {
                hash: code.hash(),
                client_id: client(),
                redirect_uri: "http://127.0.0.1:8000/callback".into(),
                code_challenge: None,
                nonce: None,
                scope: "openid".into(),
                session_id: sid(&id),
                sso_id: None,
                subject: Subject::new("alice"),
                auth_time: T0,
                expires_at: T0.plus(Duration::from_secs(60)),
            })
            .await
            .unwrap();
        let claimed = first.redeem_code(code.hash(), T0).await.unwrap();
        assert!(matches!(claimed, CodeRedemption::Claimed(_)), "{claimed:?}");

        // The exchange goes on to start the session while the code comes back on a replica.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let token = secret(200 + round);
        let starting = {
            let (store, barrier, id) = (Arc::clone(&first), Arc::clone(&barrier), id.clone());
            let first_token = NewRefreshToken {
                hash: token.hash(),
                issued_at: T0,
                expires_at: T0.plus(TTL),
            };
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .start_session(session(&id, T0), first_token, origin(IP))
                    .await
                    .unwrap()
            })
        };
        let reusing = {
            let (store, barrier) = (Arc::clone(&second), Arc::clone(&barrier));
            let hash = code.hash();
            tokio::spawn(async move {
                barrier.wait().await;
                let reused = store.redeem_code(hash, T0).await.unwrap();
                let CodeRedemption::AlreadyUsed { session_id } = reused else {
                    panic!("a second use of a code: {reused:?}");
                };
                store
                    .revoke_session(session_id, T0, "code_reuse")
                    .await
                    .unwrap();
            })
        };
        let started = starting.await.unwrap();
        reusing.await.unwrap();

        let s = first.find_session(sid(&id)).await.unwrap();
        let s = s.expect("the session, or its revoked tombstone, is there");
        assert!(
            s.revoked_at.is_some(),
            "round {round}: {started:?} left it live"
        );
        let r = redeem(&*second, &token, T0, no_grace(OnReplay::RevokeSession)).await;
        let expected = match started {
            SessionStart::Started => Decision::Reject(RejectReason::SessionRevoked),
            SessionStart::CodeReused => Decision::Reject(RejectReason::UnknownToken),
        };
        assert_eq!(r.decision, expected, "round {round}");
    }
}

async fn a_proxy_session_is_found_as_it_was_stored(store: &dyn Store) {
    let leased = ProxySession {
        refresh_lease_until: Some(T0.plus(LEASE)),
        sealed: vec![0, 255, 1, 254],
        ..proxy_session(&secret(1), T0)
    };
    store.create_proxy_session(leased.clone()).await.unwrap();
    let plain = proxy_session(&secret(2), T0);
    store.create_proxy_session(plain.clone()).await.unwrap();
    let found = store.find_proxy_session(secret(1).hash()).await.unwrap();
    assert_eq!(found, Some(leased));
    let found = store.find_proxy_session(secret(2).hash()).await.unwrap();
    assert_eq!(found, Some(plain));
    let missing = store.find_proxy_session(secret(3).hash()).await.unwrap();
    assert_eq!(missing, None);
}

async fn touching_a_proxy_session_never_moves_it_backward(store: &dyn Store) {
    let handle = secret(1).hash();
    store
        .create_proxy_session(proxy_session(&secret(1), T0))
        .await
        .unwrap();
    let later = T0.plus(Duration::from_secs(60));
    store.touch_proxy_session(handle, later).await.unwrap();
    // A touch that arrives late, or from a replica whose clock is behind.
    let earlier = T0.plus(Duration::from_secs(10));
    store.touch_proxy_session(handle, earlier).await.unwrap();
    let found = store.find_proxy_session(handle).await.unwrap();
    let expected = ProxySession {
        last_seen_at: later,
        ..proxy_session(&secret(1), T0)
    };
    assert_eq!(found, Some(expected), "only last_seen_at moves, forward");
    // A session gone (signed out on another tab) is nothing to touch, and no error.
    let gone = secret(2).hash();
    store.touch_proxy_session(gone, later).await.unwrap();
    assert_eq!(store.find_proxy_session(gone).await.unwrap(), None);
}

async fn a_refresh_claim_against_stale_tokens_fails(store: &dyn Store) {
    let handle = secret(1).hash();
    let refreshed_at = T0.plus(Duration::from_secs(300));
    let session = ProxySession {
        refreshed_at,
        ..proxy_session(&secret(1), T0)
    };
    store.create_proxy_session(session.clone()).await.unwrap();
    let now = refreshed_at.plus(Duration::from_secs(1));
    // A request that read the session before its last refresh holds spent tokens.
    let stale = store.claim_proxy_refresh(handle, T0, now, now.plus(LEASE));
    assert!(!stale.await.unwrap());
    let found = store.find_proxy_session(handle).await.unwrap();
    assert_eq!(found, Some(session), "a refused claim leaves no lease");
    let current = store.claim_proxy_refresh(handle, refreshed_at, now, now.plus(LEASE));
    assert!(current.await.unwrap());
    let missing = store.claim_proxy_refresh(secret(2).hash(), T0, now, now.plus(LEASE));
    assert!(!missing.await.unwrap(), "no session, nothing to refresh");
}

async fn an_expired_refresh_lease_can_be_claimed_again(store: &dyn Store) {
    let handle = secret(1).hash();
    store
        .create_proxy_session(proxy_session(&secret(1), T0))
        .await
        .unwrap();
    let now = T0.plus(Duration::from_secs(60));
    let lease_until = now.plus(LEASE);
    assert!(
        store
            .claim_proxy_refresh(handle, T0, now, lease_until)
            .await
            .unwrap()
    );
    // Held until the last millisecond of the lease, whoever asks.
    let just_before = UnixMillis(lease_until.0 - 1);
    for at in [now, just_before] {
        let held = store.claim_proxy_refresh(handle, T0, at, at.plus(LEASE));
        assert!(!held.await.unwrap(), "claimed at {at:?} inside the lease");
    }
    // Run out (the replica refreshing it died): the next claim takes it over.
    let taken_over = lease_until.plus(LEASE);
    let again = store.claim_proxy_refresh(handle, T0, lease_until, taken_over);
    assert!(again.await.unwrap());
    let found = store.find_proxy_session(handle).await.unwrap().unwrap();
    assert_eq!(found.refresh_lease_until, Some(taken_over));
}

async fn a_finished_refresh_stores_the_new_tokens_and_moves_the_claim_on(store: &dyn Store) {
    let handle = secret(1).hash();
    store
        .create_proxy_session(proxy_session(&secret(1), T0))
        .await
        .unwrap();
    let now = T0.plus(Duration::from_secs(60));
    let claimed = store.claim_proxy_refresh(handle, T0, now, now.plus(LEASE));
    assert!(claimed.await.unwrap());
    let refreshed_at = now.plus(Duration::from_secs(1));
    let outcome = ProxyRefreshOutcome::Refreshed {
        sealed: b"new tokens".to_vec(),
        refreshed_at,
    };
    store.finish_proxy_refresh(handle, outcome).await.unwrap();
    let expected = ProxySession {
        last_seen_at: refreshed_at,
        refreshed_at,
        refresh_lease_until: None,
        sealed: b"new tokens".to_vec(),
        ..proxy_session(&secret(1), T0)
    };
    assert_eq!(
        store.find_proxy_session(handle).await.unwrap(),
        Some(expected)
    );

    let later = refreshed_at.plus(Duration::from_secs(60));
    let old = store.claim_proxy_refresh(handle, T0, later, later.plus(LEASE));
    assert!(!old.await.unwrap(), "the old tokens are spent");
    let new = store.claim_proxy_refresh(handle, refreshed_at, later, later.plus(LEASE));
    assert!(new.await.unwrap());

    // A request seen while the refresh ran keeps its later last_seen_at.
    let seen = later.plus(Duration::from_secs(10));
    store.touch_proxy_session(handle, seen).await.unwrap();
    let outcome = ProxyRefreshOutcome::Refreshed {
        sealed: b"newer tokens".to_vec(),
        refreshed_at: later.plus(Duration::from_secs(1)),
    };
    store.finish_proxy_refresh(handle, outcome).await.unwrap();
    let found = store.find_proxy_session(handle).await.unwrap().unwrap();
    assert_eq!(found.last_seen_at, seen);
    assert_eq!(found.sealed, b"newer tokens");
}

async fn an_abandoned_refresh_releases_the_lease(store: &dyn Store) {
    let handle = secret(1).hash();
    let session = proxy_session(&secret(1), T0);
    store.create_proxy_session(session.clone()).await.unwrap();
    let now = T0.plus(Duration::from_secs(60));
    let claimed = store.claim_proxy_refresh(handle, T0, now, now.plus(LEASE));
    assert!(claimed.await.unwrap());
    store
        .finish_proxy_refresh(handle, ProxyRefreshOutcome::Abandoned)
        .await
        .unwrap();
    let found = store.find_proxy_session(handle).await.unwrap();
    assert_eq!(
        found,
        Some(session),
        "the tokens and times are left as they were"
    );
    // The next request retries at once, well inside the lease it would have waited for.
    let retried = store.claim_proxy_refresh(handle, T0, now, now.plus(LEASE));
    assert!(retried.await.unwrap());
}

async fn deleting_a_proxy_session_answers_true_only_the_first_time(store: &dyn Store) {
    let (gone, kept) = (secret(1).hash(), secret(2).hash());
    for handle in [secret(1), secret(2)] {
        let session = proxy_session(&handle, T0);
        store.create_proxy_session(session).await.unwrap();
    }
    assert!(store.delete_proxy_session(gone).await.unwrap());
    assert!(!store.delete_proxy_session(gone).await.unwrap());
    assert_eq!(store.find_proxy_session(gone).await.unwrap(), None);
    assert!(store.find_proxy_session(kept).await.unwrap().is_some());
    // A refresh that ends after its session was deleted (a sign-out meanwhile) brings
    // nothing back, and is no error.
    let outcome = ProxyRefreshOutcome::Refreshed {
        sealed: b"new tokens".to_vec(),
        refreshed_at: T0.plus(Duration::from_secs(1)),
    };
    store.finish_proxy_refresh(gone, outcome).await.unwrap();
    let abandoned = store.finish_proxy_refresh(gone, ProxyRefreshOutcome::Abandoned);
    abandoned.await.unwrap();
    assert_eq!(store.find_proxy_session(gone).await.unwrap(), None);
}

async fn sweep_deletes_proxy_sessions_past_their_absolute_end(store: &dyn Store) {
    let end = T0.plus(Duration::from_secs(60));
    let ended = ProxySession {
        absolute_end: end,
        ..proxy_session(&secret(1), T0)
    };
    store.create_proxy_session(ended).await.unwrap();
    store
        .create_proxy_session(proxy_session(&secret(2), T0))
        .await
        .unwrap();
    assert_eq!(store.sweep(UnixMillis(end.0 - 1)).await.unwrap(), 0);
    assert_eq!(store.sweep(end).await.unwrap(), 1);
    assert_eq!(
        store.find_proxy_session(secret(1).hash()).await.unwrap(),
        None
    );
    let live = store.find_proxy_session(secret(2).hash()).await.unwrap();
    assert!(live.is_some());
    assert_eq!(store.sweep(end).await.unwrap(), 0);
}

async fn fifty_concurrent_refresh_claims_grant_exactly_one_lease(store: &Arc<dyn Store>) {
    race_for_a_lease(std::slice::from_ref(store), RACERS).await;
}

async fn replicas_claiming_one_refresh_at_once_grant_exactly_one_lease(backend: &dyn Backend) {
    let stores = replicas(backend).await;
    race_for_a_lease(&stores, REPLICAS * RACERS_PER_REPLICA).await;
}

async fn a_saved_identity_is_found_as_it_was_stored(store: &dyn Store) {
    let carol = identity("corp-ad:carol");
    assert_eq!(
        store.find_identity(carol.subject.clone()).await.unwrap(),
        None
    );
    store.save_identity(carol.clone()).await.unwrap();
    let found = store.find_identity(carol.subject.clone()).await.unwrap();
    assert_eq!(found, Some(carol.clone()));
    let shown = format!("{:?}", found.unwrap());
    assert!(
        shown.contains("<sealed>") && !shown.contains("5, 5"),
        "{shown}"
    );

    // A new login replaces the row whole: new claims, and the directory's word again.
    let disabled = T0.plus(Duration::from_secs(60));
    let claimed = store.claim_revalidation(carol.subject.clone(), T0, T0, T0.plus(LEASE));
    assert!(claimed.await.unwrap());
    let gone = RevalidationOutcome::Disabled(disabled);
    store
        .finish_revalidation(carol.subject.clone(), gone)
        .await
        .unwrap();
    let again = IdentityRecord {
        claims: r#"{"preferred_username":"carol","groups":[]}"#.into(),
        checked_at: USED,
        upstream: None,
        ..carol.clone()
    };
    store.save_identity(again.clone()).await.unwrap();
    let found = store.find_identity(carol.subject.clone()).await.unwrap();
    assert_eq!(found, Some(again));
    assert_eq!(
        store.find_identity(Subject::new("carol")).await.unwrap(),
        None
    );
}

async fn a_revalidation_is_claimed_once_and_only_against_the_last_check(store: &dyn Store) {
    let carol = identity("corp-ad:carol");
    let subject = || carol.subject.clone();
    store.save_identity(carol.clone()).await.unwrap();
    let now = T0.plus(Duration::from_secs(600));
    let lease = now.plus(LEASE);
    // Nobody claims what is not there, nor against a check that is not the last one.
    let absent = store.claim_revalidation(Subject::new("okta:nobody"), T0, now, lease);
    assert!(!absent.await.unwrap());
    let stale = store.claim_revalidation(subject(), T0.plus(Duration::from_secs(1)), now, lease);
    assert!(!stale.await.unwrap());
    assert!(
        store
            .claim_revalidation(subject(), T0, now, lease)
            .await
            .unwrap()
    );
    // Held: a second claim before the lease runs out fails, one at its end succeeds.
    let during = lease.plus(Duration::ZERO);
    let before_end = store.claim_revalidation(subject(), T0, now, during);
    assert!(!before_end.await.unwrap());
    let later = lease.plus(LEASE);
    assert!(
        store
            .claim_revalidation(subject(), T0, lease, later)
            .await
            .unwrap()
    );
    let found = store.find_identity(subject()).await.unwrap().unwrap();
    assert_eq!(found.check_lease_until, Some(later));
}

async fn a_confirmed_revalidation_stores_the_new_claims_and_keeps_the_upstream_token(
    store: &dyn Store,
) {
    let carol = identity("corp-ad:carol");
    let subject = || carol.subject.clone();
    store.save_identity(carol.clone()).await.unwrap();
    let now = T0.plus(Duration::from_secs(600));
    assert!(
        store
            .claim_revalidation(subject(), T0, now, now.plus(LEASE))
            .await
            .unwrap()
    );
    let claims = r#"{"preferred_username":"carol","groups":[]}"#.to_owned();
    let confirmed = RevalidationOutcome::Confirmed {
        claims: claims.clone(),
        checked_at: now,
        upstream: None,
    };
    store
        .finish_revalidation(subject(), confirmed)
        .await
        .unwrap();
    let found = store.find_identity(subject()).await.unwrap().unwrap();
    let expected = IdentityRecord {
        claims: claims.clone(),
        checked_at: now,
        ..carol.clone()
    };
    assert_eq!(
        found, expected,
        "no new upstream token keeps the stored one"
    );

    // The next check claims against the new time, and a rotated upstream token replaces it.
    let later = now.plus(Duration::from_secs(600));
    let old = store.claim_revalidation(subject(), T0, later, later.plus(LEASE));
    assert!(!old.await.unwrap());
    assert!(
        store
            .claim_revalidation(subject(), now, later, later.plus(LEASE))
            .await
            .unwrap()
    );
    let rotated = RevalidationOutcome::Confirmed {
        claims,
        checked_at: later,
        upstream: Some(vec![6; 40]),
    };
    store.finish_revalidation(subject(), rotated).await.unwrap();
    let found = store.find_identity(subject()).await.unwrap().unwrap();
    assert_eq!(found.upstream, Some(vec![6; 40]));
    assert_eq!((found.checked_at, found.check_lease_until), (later, None));
}

async fn a_disabled_identity_can_no_longer_be_claimed_until_the_next_login(store: &dyn Store) {
    let carol = identity("corp-ad:carol");
    let subject = || carol.subject.clone();
    store.save_identity(carol.clone()).await.unwrap();
    let now = T0.plus(Duration::from_secs(600));
    assert!(
        store
            .claim_revalidation(subject(), T0, now, now.plus(LEASE))
            .await
            .unwrap()
    );
    let gone = RevalidationOutcome::Disabled(now);
    store.finish_revalidation(subject(), gone).await.unwrap();
    let found = store.find_identity(subject()).await.unwrap().unwrap();
    assert_eq!(
        (found.disabled_at, found.check_lease_until),
        (Some(now), None)
    );
    let later = now.plus(LEASE);
    let claimed = store.claim_revalidation(subject(), T0, later, later.plus(LEASE));
    assert!(
        !claimed.await.unwrap(),
        "a disabled person is not checked again"
    );
    store.save_identity(carol.clone()).await.unwrap();
    assert!(
        store
            .claim_revalidation(subject(), T0, later, later.plus(LEASE))
            .await
            .unwrap()
    );
}

async fn an_abandoned_revalidation_releases_the_lease_and_keeps_the_last_check(store: &dyn Store) {
    let carol = identity("corp-ad:carol");
    let subject = || carol.subject.clone();
    store.save_identity(carol.clone()).await.unwrap();
    let now = T0.plus(Duration::from_secs(600));
    assert!(
        store
            .claim_revalidation(subject(), T0, now, now.plus(LEASE))
            .await
            .unwrap()
    );
    let abandoned = RevalidationOutcome::Abandoned;
    store
        .finish_revalidation(subject(), abandoned)
        .await
        .unwrap();
    let found = store.find_identity(subject()).await.unwrap();
    assert_eq!(found, Some(carol.clone()));
    // Released at once: the next refresh may try again without waiting for the lease.
    let soon = now.plus(Duration::from_secs(1));
    assert!(
        store
            .claim_revalidation(subject(), T0, soon, soon.plus(LEASE))
            .await
            .unwrap()
    );
}

async fn fifty_concurrent_revalidation_claims_grant_exactly_one_lease(store: &Arc<dyn Store>) {
    race_for_a_revalidation(std::slice::from_ref(store), RACERS).await;
}

async fn replicas_claiming_one_revalidation_at_once_grant_exactly_one_lease(backend: &dyn Backend) {
    let stores = replicas(backend).await;
    race_for_a_revalidation(&stores, REPLICAS * RACERS_PER_REPLICA).await;
}

async fn an_empty_store_exports_an_empty_snapshot(store: &dyn Store) {
    let snapshot = store.export_snapshot().await.unwrap();
    assert_eq!(snapshot, Snapshot::default());
    assert!(snapshot.is_empty());
    assert_eq!(snapshot.counts(), CopyReport::default());
    // An empty snapshot goes into an empty store, and leaves it empty (so still a target).
    let report = store.import_snapshot(snapshot).await.unwrap();
    assert_eq!(report.total(), 0);
    assert_eq!(store.export_snapshot().await.unwrap(), Snapshot::default());
}

async fn an_import_that_fails_half_way_writes_nothing(store: &dyn Store) {
    // Good rows first, then a refresh token of a session the snapshot does not hold.
    let orphan = RefreshTokenRow {
        hash: secret(1).hash(),
        session_id: sid("nowhere"),
        client_id: client(),
        issued_at: T0,
        expires_at: T0.plus(TTL),
        used_at: None,
        used_ip: None,
        used_user_agent: None,
        successor_hash: None,
    };
    let broken = Snapshot {
        secrets: vec![SecretRow {
            name: "rotation".into(),
            value: vec![1; 32],
        }],
        signing_keys: vec![key("k1", T0)],
        refresh_tokens: vec![orphan],
        ..Snapshot::default()
    };
    let failed = store.import_snapshot(broken).await;
    assert!(
        matches!(failed, Err(StoreError::Query { .. })),
        "{failed:?}"
    );
    assert_eq!(store.export_snapshot().await.unwrap(), Snapshot::default());

    // Nothing was left behind: the store is still an empty target.
    let good = Snapshot {
        secrets: vec![SecretRow {
            name: "rotation".into(),
            value: vec![1; 32],
        }],
        signing_keys: vec![key("k1", T0)],
        ..Snapshot::default()
    };
    let report = store.import_snapshot(good.clone()).await.unwrap();
    assert_eq!(report, good.counts());
    assert_eq!(store.export_snapshot().await.unwrap(), good);
    assert_eq!(store.signing_keys().await.unwrap(), vec![key("k1", T0)]);
    let rotation = store.secret_or_insert("rotation", vec![2; 32]).await;
    assert_eq!(rotation.unwrap(), vec![1; 32]);
}

/// When the copied tokens of [`populate_for_copy`] were used: `graced` at [`USED`], the others
/// earlier. The copy is then checked at [`CHECKED`], inside a 5-second grace of [`USED`].
const USED: UnixMillis = UnixMillis(T0.0 + 60_000);
const CHECKED: UnixMillis = UnixMillis(USED.0 + 2_000);
const COPY_GRACE: u64 = 5_000;

/// What [`populate_for_copy`] leaves for the checks.
struct CopyFixture {
    sso: SsoSession,
    fresh_code: AuthCode,
    /// The successor expiry of `graced`'s first rotation.
    graced_successor_expires_at: UnixMillis,
}

fn code_for_copy(code: &Secret, session_id: &str) -> AuthCode {
    AuthCode {
        hash: code.hash(),
        client_id: client(),
        redirect_uri: "http://127.0.0.1:8000/callback".into(),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        nonce: Some("n-0S6_WzA2Mj".into()),
        scope: "openid email groups".into(),
        session_id: sid(session_id),
        sso_id: Some(SsoId::new("sso-1")),
        subject: Subject::new("alice"),
        auth_time: T0,
        expires_at: T0.plus(Duration::from_secs(600)),
    }
}

/// An installation with sessions in every state:
/// - `live`, started from SSO session `sso-1`, its first token spent at T0 + 10 s, so
///   `next(secret(1))` is its fresh token;
/// - `graced`: `secret(2)` spent at [`USED`];
/// - `spent`: `secret(3)` spent at T0 + 10 s;
/// - `revoked`: `secret(4)` never used, the session revoked at T0 + 20 s;
/// - `s-code-reused`: the revoked placeholder that a second use of code `secret(51)` put in;
/// - code `secret(50)`, never used; two secrets, two signing keys;
/// - the [`proxy_sessions_for_copy`].
async fn populate_for_copy(store: &dyn Store) -> CopyFixture {
    store
        .secret_or_insert("rotation", vec![42; 32])
        .await
        .unwrap();
    store.secret_or_insert("cookie", vec![7; 32]).await.unwrap();
    store.add_signing_key(key("k1", T0)).await.unwrap();
    store
        .add_signing_key(key("k2", T0.plus(Duration::from_secs(60))))
        .await
        .unwrap();
    let sso = alices_sso(&secret(100));
    store.create_sso(sso.clone()).await.unwrap();

    let fresh_code = code_for_copy(&secret(50), "s-code-fresh");
    store.insert_code(fresh_code.clone()).await.unwrap();
    store
        .insert_code(code_for_copy(&secret(51), "s-code-reused"))
        .await
        .unwrap();
    let claimed = store.redeem_code(secret(51).hash(), T0).await.unwrap();
    assert!(matches!(claimed, CodeRedemption::Claimed(_)), "{claimed:?}");
    let reused = store.redeem_code(secret(51).hash(), T0).await.unwrap();
    assert!(
        matches!(reused, CodeRedemption::AlreadyUsed { .. }),
        "{reused:?}"
    );

    let early = T0.plus(Duration::from_secs(10));
    let live = Session {
        sso_id: Some(SsoId::new("sso-1")),
        ..session("live", T0)
    };
    start(store, live, &secret(1)).await;
    redeem_expecting_rotate(store, &secret(1), early, no_grace(OnReplay::RevokeSession)).await;

    start(store, session("graced", T0), &secret(2)).await;
    let graced = redeem_expecting_rotate(store, &secret(2), USED, grace(COPY_GRACE, false)).await;

    start(store, session("spent", T0), &secret(3)).await;
    redeem_expecting_rotate(store, &secret(3), early, no_grace(OnReplay::RevokeSession)).await;

    start(store, session("revoked", T0), &secret(4)).await;
    let revoked_at = T0.plus(Duration::from_secs(20));
    assert!(
        store
            .revoke_session(sid("revoked"), revoked_at, "admin")
            .await
            .unwrap()
    );

    for proxy in proxy_sessions_for_copy() {
        store.create_proxy_session(proxy).await.unwrap();
    }
    store
        .save_identity(identity("corp-ad:carol"))
        .await
        .unwrap();
    let leased = identity("okta:dave");
    store.save_identity(leased.clone()).await.unwrap();
    let lease = USED.plus(LEASE);
    let claimed = store
        .claim_revalidation(leased.subject, T0, T0, lease)
        .await;
    assert!(claimed.unwrap());

    let disabled = DisabledUser {
        subject: Subject::new("mallory"),
        disabled_at: T0,
        disabled_by: "admin-1".into(),
    };
    store.disable_user(disabled).await.unwrap();

    CopyFixture {
        sso,
        fresh_code,
        graced_successor_expires_at: graced.successor_expires_at,
    }
}

/// Two proxy sessions: `secret(110)` refreshed once, idle; `secret(111)` with a refresh in
/// flight, its lease running past [`CHECKED`].
fn proxy_sessions_for_copy() -> [ProxySession; 2] {
    let idle = ProxySession {
        last_seen_at: T0.plus(Duration::from_secs(40)),
        refreshed_at: T0.plus(Duration::from_secs(30)),
        sealed: vec![9; 48],
        ..proxy_session(&secret(110), T0)
    };
    let refreshing = ProxySession {
        last_seen_at: USED,
        refresh_lease_until: Some(USED.plus(LEASE)),
        ..proxy_session(&secret(111), T0)
    };
    [idle, refreshing]
}

/// Row counts of what [`populate_for_copy`] stores.
const COPIED: CopyReport = CopyReport {
    secrets: 2,
    signing_keys: 2,
    sso_sessions: 1,
    auth_codes: 2,
    sessions: 5,
    refresh_tokens: 7,
    proxy_sessions: 2,
    identities: 2,
    disabled_users: 1,
};

async fn a_copy_answers_every_token_as_the_source_would(from: &dyn Backend, to: &dyn Backend) {
    let source = from.open().await;
    let fixture = populate_for_copy(&*source).await;
    let target = to.open().await;
    let report = copy_store(&*source, &*target).await.unwrap();
    assert_eq!(report, COPIED);
    assert_eq!(
        report.to_string(),
        "5 sessions, 7 refresh tokens, 2 authorization codes, 1 SSO session, 2 signing keys, \
         2 secrets, 2 proxy sessions, 2 directory identities, 1 disabled user"
    );

    // Every row, every column, whatever the backends; the source is left as it was.
    let exported = source.export_snapshot().await.unwrap();
    assert_eq!(exported.counts(), COPIED);
    assert_eq!(target.export_snapshot().await.unwrap(), exported);
    let shown = format!("{exported:?}");
    assert!(
        shown.contains("<32 bytes>") && !shown.contains("42, 42") && !shown.contains("107, 49"),
        "a snapshot's Debug hides secrets and private keys: {shown}"
    );
    let token = |t: &Secret| {
        exported
            .refresh_tokens
            .iter()
            .find(|row| row.hash == t.hash())
            .cloned()
            .unwrap()
    };
    assert_eq!(
        token(&secret(2)).successor_hash,
        Some(next(&secret(2)).hash())
    );
    assert_eq!(token(&secret(2)).used_ip.as_deref(), Some(IP));
    let reasons: Vec<_> = exported
        .sessions
        .iter()
        .map(|row| (row.session.id.as_str(), row.revoked_reason.as_deref()))
        .collect();
    assert!(reasons.contains(&("revoked", Some("admin"))), "{reasons:?}");
    assert!(
        reasons.contains(&("s-code-reused", Some("code_reuse"))),
        "{reasons:?}"
    );

    // The same keys and secrets, so the target signs and derives successors alike.
    assert_eq!(
        target.signing_keys().await.unwrap(),
        source.signing_keys().await.unwrap()
    );
    assert_eq!(
        target.signing_keys().await.unwrap(),
        vec![key("k1", T0), key("k2", T0.plus(Duration::from_secs(60)))]
    );
    for (name, value) in [("rotation", vec![42; 32]), ("cookie", vec![7; 32])] {
        let kept = target.secret_or_insert(name, vec![0; 32]).await.unwrap();
        assert_eq!(kept, value, "{name}");
    }
    assert_eq!(
        target.count_active_sessions(CHECKED).await.unwrap(),
        source.count_active_sessions(CHECKED).await.unwrap()
    );
    assert_eq!(target.count_active_sessions(CHECKED).await.unwrap(), 3);

    // The live chain's fresh token rotates.
    let r = redeem(
        &*target,
        &next(&secret(1)),
        CHECKED,
        no_grace(OnReplay::RevokeSession),
    )
    .await;
    assert_eq!(r.decision, Decision::Rotate);
    assert_eq!(r.successor_expires_at, CHECKED.plus(TTL));
    let live = r.session.unwrap();
    assert_eq!(live.sso_id, Some(SsoId::new("sso-1")));

    // The token used inside its grace answers the same successor, still unused.
    let r = redeem_from(
        &*target,
        &secret(2),
        CHECKED,
        grace(COPY_GRACE, false),
        "10.2.2.2",
    )
    .await;
    assert_eq!(
        r.decision,
        Decision::Grace {
            first_used_ip: IP.into(),
            first_used_ms_ago: 2_000,
        }
    );
    assert_eq!(r.successor_expires_at, fixture.graced_successor_expires_at);
    let successor = target.find_refresh_token(next(&secret(2)).hash()).await;
    let successor = successor.unwrap().expect("the successor came across");
    assert_eq!(successor.used_at, None);
    assert_eq!(successor.expires_at, fixture.graced_successor_expires_at);
    assert_eq!(successor.session.id, sid("graced"));

    // A used token, under a no-grace policy and outside the grace, is a replay.
    let r = redeem(&*target, &secret(3), CHECKED, no_grace(OnReplay::Reject)).await;
    assert_eq!(
        r.decision,
        Decision::Replay {
            revoke_session: false,
            first_used_ip: IP.into(),
            first_used_ms_ago: 52_000,
        }
    );
    let r = redeem(&*target, &secret(3), CHECKED, grace(COPY_GRACE, false)).await;
    assert!(
        matches!(
            r.decision,
            Decision::Replay {
                revoke_session: true,
                ..
            }
        ),
        "{:?}",
        r.decision
    );
    let spent = target.find_session(sid("spent")).await.unwrap().unwrap();
    assert_eq!(spent.revoked_at, Some(CHECKED));

    // The revoked session stays revoked.
    let revoked = target.find_session(sid("revoked")).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(T0.plus(Duration::from_secs(20))));
    let r = redeem(
        &*target,
        &secret(4),
        CHECKED,
        no_grace(OnReplay::RevokeSession),
    )
    .await;
    assert_eq!(r.decision, Decision::Reject(RejectReason::SessionRevoked));
    let again = target
        .revoke_session(sid("revoked"), CHECKED, "admin")
        .await;
    assert!(!again.unwrap(), "revoked already");

    // Codes: the unused one is claimed once, the reused one stays refused with its session.
    let claimed = target.redeem_code(secret(50).hash(), CHECKED).await;
    assert_eq!(
        claimed.unwrap(),
        CodeRedemption::Claimed(Box::new(fixture.fresh_code))
    );
    let reused = target.redeem_code(secret(51).hash(), CHECKED).await;
    assert_eq!(
        reused.unwrap(),
        CodeRedemption::AlreadyUsed {
            session_id: sid("s-code-reused")
        }
    );
    let first = NewRefreshToken {
        hash: secret(60).hash(),
        issued_at: CHECKED,
        expires_at: CHECKED.plus(TTL),
    };
    let started = target
        .start_session(session("s-code-reused", CHECKED), first, origin(IP))
        .await;
    assert_eq!(started.unwrap(), SessionStart::CodeReused);

    // The SSO session came across, and the person it belongs to with their sessions.
    let found = target.find_sso(fixture.sso.handle).await.unwrap();
    assert_eq!(found, Some(fixture.sso));
    let alice = SessionFilter {
        subject: Some(Subject::new("alice")),
        client_id: None,
    };
    let listed = target
        .list_sessions(alice, CHECKED, None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = listed
        .sessions
        .iter()
        .map(|s| s.session.id.as_str())
        .collect();
    assert_eq!(ids, ["graced", "live"], "the replay above revoked `spent`");
    assert_eq!(listed.sessions[1].first_use.from, origin(IP));
    assert!(target.end_sso(SsoId::new("sso-1"), CHECKED).await.unwrap());
    let disabled = target.find_disabled_user(Subject::new("mallory")).await;
    assert_eq!(disabled.unwrap().unwrap().disabled_by, "admin-1");

    // The proxy's sessions came across, a refresh in flight still holding its lease.
    let [idle, refreshing] = proxy_sessions_for_copy();
    for proxy in [&idle, &refreshing] {
        let found = target.find_proxy_session(proxy.handle).await.unwrap();
        assert_eq!(found.as_ref(), Some(proxy));
    }
    let lease = CHECKED.plus(LEASE);
    let held = target.claim_proxy_refresh(refreshing.handle, T0, CHECKED, lease);
    assert!(!held.await.unwrap(), "the lease is still held");
    let idle_claim = target.claim_proxy_refresh(idle.handle, idle.refreshed_at, CHECKED, lease);
    assert!(idle_claim.await.unwrap());

    // None of this touched the source.
    assert_eq!(source.export_snapshot().await.unwrap(), exported);
}

async fn copying_into_a_non_empty_target_fails_and_leaves_it_unchanged(
    from: &dyn Backend,
    fresh_target: impl AsyncFn() -> Box<dyn Backend>,
) {
    let source = from.open().await;
    populate_for_copy(&*source).await;

    // One row of any kind is enough to refuse.
    let cases: [(&str, &[&str]); 8] = [
        ("a secret", &["secrets"]),
        ("a signing key", &["signing_keys"]),
        ("an SSO session", &["sso_sessions"]),
        ("a code", &["auth_codes"]),
        ("a session", &["sessions", "refresh_tokens"]),
        ("a proxy session", &["proxy_sessions"]),
        ("an identity", &["identities"]),
        ("a disabled user", &["disabled_users"]),
    ];
    for (what, tables) in cases {
        let backend = fresh_target().await;
        let target = backend.open().await;
        match what {
            "a secret" => drop(target.secret_or_insert("rotation", vec![1; 32]).await),
            "a signing key" => target.add_signing_key(key("other", T0)).await.unwrap(),
            "an SSO session" => target
                .create_sso(SsoSession {
                    handle: secret(200).hash(),
                    id: SsoId::new("sso-other"),
                    subject: Subject::new("bob"),
                    auth_time: T0,
                    last_used_at: T0,
                    expires_at: T0.plus(LIFETIME),
                    revoked_at: None,
                })
                .await
                .unwrap(),
            "a code" => target
                .insert_code(code_for_copy(&secret(201), "s-other"))
                .await
                .unwrap(),
            "a proxy session" => target
                .create_proxy_session(proxy_session(&secret(203), T0))
                .await
                .unwrap(),
            "an identity" => target.save_identity(identity("okta:eve")).await.unwrap(),
            "a disabled user" => drop(
                target
                    .disable_user(DisabledUser {
                        subject: Subject::new("eve"),
                        disabled_at: T0,
                        disabled_by: "cli".into(),
                    })
                    .await
                    .unwrap(),
            ),
            _ => drop(start(&*target, session("other", T0), &secret(202)).await),
        }
        let before = target.export_snapshot().await.unwrap();
        assert!(!before.is_empty());
        let copied = copy_store(&*source, &*target).await;
        match copied {
            Err(StoreError::NotEmpty { tables: found }) => {
                assert_eq!(found, tables, "{what}");
            }
            other => panic!("a target holding {what} was copied into: {other:?}"),
        }
        assert_eq!(target.export_snapshot().await.unwrap(), before, "{what}");
    }

    // Copying twice: the second copy finds the first one's rows, says so and writes nothing.
    let backend = fresh_target().await;
    let target = backend.open().await;
    assert_eq!(copy_store(&*source, &*target).await.unwrap(), COPIED);
    let copied = target.export_snapshot().await.unwrap();
    let error = copy_store(&*source, &*target).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::NotEmpty { tables } if tables.len() == 9),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the target database is not empty (it holds rows in secrets, signing_keys, \
         sso_sessions, auth_codes, sessions, refresh_tokens, proxy_sessions, identities, \
         disabled_users): a copy goes only into an empty database, so nothing was written"
    );
    assert_eq!(target.export_snapshot().await.unwrap(), copied);
    let r = redeem(
        &*target,
        &next(&secret(1)),
        CHECKED,
        no_grace(OnReplay::RevokeSession),
    )
    .await;
    assert_eq!(r.decision, Decision::Rotate, "the target still works");
}

/// What only PostgreSQL has: a migration table and lock, a connection pool, a network.
mod postgres_only {
    use super::*;

    #[tokio::test]
    async fn a_database_newer_than_this_binary_is_refused() {
        let backend = Postgres::fresh().await;
        drop(backend.open().await);
        let mut admin = backend.admin().await;
        admin
            .execute("INSERT INTO schema_migrations (version) VALUES (99)")
            .await
            .unwrap();
        let opened = PostgresStore::connect(backend.options()).await;
        assert!(
            matches!(
                opened,
                Err(StoreError::SchemaTooNew {
                    found: 99,
                    known: 5
                })
            ),
            "{:?}",
            opened.err()
        );
        let migrated = migrate_only(&backend.options()).await;
        assert!(
            matches!(migrated, Err(StoreError::SchemaTooNew { .. })),
            "{migrated:?}"
        );
    }

    /// More rows than one batched INSERT of an import takes (5 000), both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_copy_larger_than_one_batch_comes_across_whole() {
        let snapshot = large_snapshot(5_001);
        let (sqlite, postgres, back) = (Sqlite::fresh(), Postgres::fresh().await, Sqlite::fresh());
        let source = sqlite.open().await;
        source.import_snapshot(snapshot.clone()).await.unwrap();
        let target = postgres.open().await;
        let report = copy_store(&*source, &*target).await.unwrap();
        assert_eq!(report, snapshot.counts());
        assert_eq!(target.export_snapshot().await.unwrap(), snapshot);
        let again = back.open().await;
        copy_store(&*target, &*again).await.unwrap();
        assert_eq!(again.export_snapshot().await.unwrap(), snapshot);
        assert_eq!(target.count_active_sessions(T0).await.unwrap(), 5_001);
    }

    #[tokio::test]
    async fn migrate_only_reports_what_it_applied() {
        let backend = Postgres::fresh().await;
        let report = migrate_only(&backend.options()).await.unwrap();
        assert_eq!(
            report,
            MigrationReport {
                found: 0,
                applied: vec![1, 2, 3, 4, 5],
                current: 5
            }
        );
        let store = PostgresStore::connect(backend.options()).await.unwrap();
        let again = store.migrate().await.unwrap();
        assert_eq!(
            again,
            MigrationReport {
                found: 5,
                applied: vec![],
                current: 5
            }
        );
    }

    /// An installation from before the proxy: the migration adds its table, and nothing else
    /// changes.
    #[tokio::test]
    async fn a_version_1_database_gains_proxy_sessions_and_keeps_its_rows() {
        let backend = Postgres::fresh().await;
        let store = backend.open().await;
        start(&*store, session("s1", T0), &secret(1)).await;
        let before = store.export_snapshot().await.unwrap();
        store
            .secret_or_insert("rotation", vec![1; 32])
            .await
            .unwrap();
        // Back to version 1, as the previous tessera left it.
        let mut admin = backend.admin().await;
        admin
            .execute(
                format!(
                    "{BACK_TO_VERSION_1} DELETE FROM schema_migrations WHERE version IN (2, 3, 4, 5)"
                )
                .as_str(),
            )
            .await
            .unwrap();
        let report = migrate_only(&backend.options()).await.unwrap();
        let expected = MigrationReport {
            found: 1,
            applied: vec![2, 3, 4, 5],
            current: 5,
        };
        assert_eq!(report, expected);
        let store = backend.open().await;
        let rotation = store.secret_or_insert("rotation", vec![2; 32]).await;
        assert_eq!(rotation.unwrap(), vec![1; 32]);
        let after = store.export_snapshot().await.unwrap();
        assert_eq!(after.sessions, as_version_1(before.clone()).sessions);
        assert_eq!(after.refresh_tokens, before.refresh_tokens);
        let proxy = proxy_session(&secret(2), T0);
        store.create_proxy_session(proxy.clone()).await.unwrap();
        let found = store.find_proxy_session(proxy.handle).await.unwrap();
        assert_eq!(found, Some(proxy));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_starting_at_once_migrate_one_at_a_time() {
        let backend = Postgres::fresh().await;
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let options = backend.options();
                tokio::spawn(async move { migrate_only(&options).await.unwrap() })
            })
            .collect();
        let mut applied = Vec::new();
        for task in tasks {
            applied.extend(task.await.unwrap().applied);
        }
        assert_eq!(
            applied,
            vec![1, 2, 3, 4, 5],
            "exactly one replica applied each version"
        );
        let store = backend.open().await;
        start(&*store, session("s1", T0), &secret(1)).await;
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable_within_the_bound() {
        // A port that accepts connections and never answers, like a partitioned server.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let options = PostgresOptions {
            url: format!("postgres://postgres@127.0.0.1:{port}/test"),
            password: None,
            max_connections: 2,
            connect_timeout: Duration::from_millis(300),
            schema: None,
        };
        let bound = Duration::from_secs(5);
        let opened = tokio::time::timeout(bound, PostgresStore::connect(options.clone()))
            .await
            .expect("connect gives up within its bound");
        assert!(
            matches!(opened, Err(StoreError::Unavailable { .. })),
            "{:?}",
            opened.err()
        );
        let migrated = tokio::time::timeout(bound, migrate_only(&options))
            .await
            .expect("migrate gives up within its bound");
        assert!(
            matches!(migrated, Err(StoreError::Unavailable { .. })),
            "{migrated:?}"
        );
        drop(silent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exhausted_pool_is_unavailable_within_the_bound() {
        let backend = Postgres::fresh().await;
        let name = backend.schema.clone();
        let options = PostgresOptions {
            max_connections: 1,
            connect_timeout: Duration::from_millis(300),
            ..backend.options()
        };
        let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(options).await.unwrap());
        let t = secret(1);
        start(&*store, session("s1", T0), &t).await;

        // Another client holds the token's row lock: the redeem waits on it with the one
        // connection of the pool.
        let mut holder = backend.admin().await;
        holder.execute("BEGIN").await.unwrap();
        holder
            .execute("SELECT * FROM refresh_tokens FOR UPDATE")
            .await
            .unwrap();
        let redeeming = {
            let store = Arc::clone(&store);
            let request = request(&t, T0, no_grace(OnReplay::RevokeSession));
            tokio::spawn(async move { store.redeem_refresh_token(request).await })
        };
        let mut admin = backend.admin().await;
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}' \
             AND wait_event_type = 'Lock'"
        );
        for attempt in 0.. {
            let row = sqlx::query_scalar::<_, i64>(&waiting)
                .fetch_one(&mut admin)
                .await
                .unwrap();
            if row == 1 {
                break;
            }
            assert!(attempt < 500, "the redeem never waited on the row lock");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let starved = tokio::time::timeout(Duration::from_secs(5), store.find_session(sid("s1")))
            .await
            .expect("an exhausted pool answers within its bound");
        assert!(
            matches!(starved, Err(StoreError::Unavailable { .. })),
            "{starved:?}"
        );
        let message = starved.unwrap_err().to_string();
        assert!(
            message.starts_with("the database is unavailable"),
            "{message}"
        );

        holder.execute("COMMIT").await.unwrap();
        let r = redeeming.await.unwrap().unwrap();
        assert_eq!(r.decision, Decision::Rotate);
        assert!(store.find_session(sid("s1")).await.unwrap().is_some());
    }
}

/// A snapshot of `sessions` sessions, each with a spent first token and its fresh successor,
/// and as many proxy sessions.
fn large_snapshot(sessions: u32) -> Snapshot {
    let hash = |n: u32, kind: u8| {
        let mut bytes = [kind; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        TokenHash(bytes)
    };
    let mut snapshot = Snapshot::default();
    for n in 0..sessions {
        let id = format!("s-{n:06}");
        let used = T0.plus(Duration::from_millis(u64::from(n)));
        snapshot.sessions.push(SessionRow {
            session: session(&id, T0),
            revoked_reason: None,
            started_from: Some(origin(IP)),
        });
        snapshot.refresh_tokens.push(RefreshTokenRow {
            hash: hash(n, 1),
            session_id: sid(&id),
            client_id: client(),
            issued_at: T0,
            expires_at: T0.plus(TTL),
            used_at: Some(used),
            used_ip: Some(IP.into()),
            used_user_agent: Some(UA.into()),
            successor_hash: Some(hash(n, 2)),
        });
        snapshot.refresh_tokens.push(RefreshTokenRow {
            hash: hash(n, 2),
            session_id: sid(&id),
            client_id: client(),
            issued_at: used,
            expires_at: used.plus(TTL),
            used_at: None,
            used_ip: None,
            used_user_agent: None,
            successor_hash: None,
        });
        // Pushed in handle order: the first bytes of a handle are `n`, big-endian.
        snapshot.proxy_sessions.push(ProxySession {
            handle: hash(n, 3),
            refresh_lease_until: (n % 2 == 0).then_some(used),
            ..proxy_session(&secret(0), used)
        });
    }
    snapshot.refresh_tokens.sort_by_key(|t| t.hash.0);
    snapshot
}

/// What only SQLite has: its schema version lives in `PRAGMA user_version`, and its files.
mod sqlite_only {
    use super::*;

    /// The database holds the signing, rotation and cookie keys (issue 11).
    #[tokio::test]
    async fn the_database_and_its_wal_and_shm_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let backend = Sqlite::fresh();
        let store = backend.open().await;
        store
            .secret_or_insert("rotation", vec![1; 32])
            .await
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", backend.path().display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
    }

    /// Checkpoints run beside the writer (issue 14): the database file takes in the WAL's
    /// pages while the store is open and before the writer would checkpoint itself (at 4000
    /// frames), and the WAL starts over rather than growing with every write.
    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer_and_starts_over() {
        /// A WAL frame: its header and one page of the default 4096 bytes.
        const FRAME: u64 = 24 + 4096;
        let backend = Sqlite::fresh();
        let store = backend.open().await;
        let db_len = || std::fs::metadata(backend.path()).unwrap().len();
        let wal = format!("{}-wal", backend.path().display());
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let write = |n: u32| {
            let mut random = [0; 32];
            random[..4].copy_from_slice(&n.to_be_bytes());
            let first = Secret::from_random(REFRESH_TOKEN_PREFIX, random);
            let session = session(&format!("s-{n:06}"), T0);
            let store = Arc::clone(&store);
            async move { start(&*store, session, &first).await }
        };

        let before = db_len();
        let mut written = 0u32;
        while wal_len() < 1500 * FRAME {
            written += 1;
            write(written).await;
        }
        let mut waited = 0;
        while db_len() <= before {
            assert!(
                waited < 500,
                "no checkpoint copied the WAL while the store was open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }

        // Five times what fills a WAL of 4000 frames at this rate. It starts over each time
        // the writer's checkpoint has copied all of it: SQLite then counts a new checkpoint
        // sequence in the WAL's header and reuses the file from its start.
        let sequence = || {
            let header = std::fs::read(&wal).unwrap();
            u32::from_be_bytes(header[12..16].try_into().unwrap())
        };
        let first_sequence = sequence();
        let per_write = wal_len() as f64 / FRAME as f64 / f64::from(written);
        let more = (5.0 * 4000.0 / per_write) as u32;
        for _ in 0..more {
            written += 1;
            write(written).await;
        }
        let frames = wal_len() / FRAME;
        assert!(frames < 4100, "the WAL grew to {frames} frames");
        assert!(
            sequence() >= first_sequence + 2,
            "the WAL did not start over"
        );
        let sessions = store.export_snapshot().await.unwrap().sessions.len();
        assert_eq!(sessions, written as usize);
    }

    #[tokio::test]
    async fn a_database_newer_than_this_binary_is_refused() {
        let backend = Sqlite::fresh();
        drop(backend.open().await);
        let raw = rusqlite::Connection::open(backend.path()).unwrap();
        raw.pragma_update(None, "user_version", 99).unwrap();
        drop(raw);
        let opened = SqliteStore::open(&backend.path(), Synchronous::Normal);
        assert!(
            matches!(
                opened,
                Err(StoreError::SchemaTooNew {
                    found: 99,
                    known: 5
                })
            ),
            "{:?}",
            opened.err()
        );
    }

    /// An installation from before the proxy: the migration adds its table, and nothing else
    /// changes.
    #[tokio::test]
    async fn a_version_1_database_gains_proxy_sessions_and_keeps_its_rows() {
        let backend = Sqlite::fresh();
        let store = backend.open().await;
        start(&*store, session("s1", T0), &secret(1)).await;
        store
            .secret_or_insert("rotation", vec![1; 32])
            .await
            .unwrap();
        let before = store.export_snapshot().await.unwrap();
        drop(store);
        // Back to version 1, as the previous tessera left it.
        let raw = rusqlite::Connection::open(backend.path()).unwrap();
        raw.execute_batch(&format!("{BACK_TO_VERSION_1} PRAGMA user_version = 1"))
            .unwrap();
        drop(raw);
        let store = backend.open().await;
        assert_eq!(store.export_snapshot().await.unwrap(), as_version_1(before));
        let proxy = proxy_session(&secret(2), T0);
        store.create_proxy_session(proxy.clone()).await.unwrap();
        let found = store.find_proxy_session(proxy.handle).await.unwrap();
        assert_eq!(found, Some(proxy));
        let raw = rusqlite::Connection::open(backend.path()).unwrap();
        let version: i64 = raw
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 5);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Takes a database of the current schema back to version 1, as the first tessera left it.
const BACK_TO_VERSION_1: &str = "DROP TABLE proxy_sessions; DROP TABLE identities; \
     DROP TABLE disabled_users; DROP INDEX sessions_by_subject; DROP INDEX sessions_by_client; \
     DROP INDEX sso_sessions_by_subject; ALTER TABLE sessions DROP COLUMN created_ip; \
     ALTER TABLE sessions DROP COLUMN created_user_agent; \
     ALTER TABLE refresh_tokens DROP COLUMN used_user_agent; \
     ALTER TABLE sso_sessions DROP COLUMN last_used_at;";

/// `snapshot` as a database migrated from version 1 holds it: where sessions started was not
/// recorded then.
fn as_version_1(mut snapshot: Snapshot) -> Snapshot {
    for row in &mut snapshot.sessions {
        row.started_from = None;
    }
    snapshot
}

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const TTL: Duration = Duration::from_secs(15 * 60);
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
const IP: &str = "10.1.1.1";
const UA: &str = "kubectl/v1.32.0 (linux/amd64)";
const RACERS: usize = 50;
/// How long a proxy refresh claim holds its session.
const LEASE: Duration = Duration::from_secs(30);

fn secret(n: u8) -> Secret {
    Secret::from_random(REFRESH_TOKEN_PREFIX, [n; 32])
}

/// The successor of `t`, derived as the server derives it.
fn next(t: &Secret) -> Secret {
    t.successor(&RotationKey::new(vec![42; 32]))
}

fn client() -> ClientId {
    ClientId::new("kubernetes")
}

fn sid(id: &str) -> SessionId {
    SessionId::new(id)
}

fn key(kid: &str, created_at: UnixMillis) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        alg: "RS256".into(),
        pkcs8: kid.as_bytes().to_vec(),
        created_at,
    }
}

fn session(id: &str, created_at: UnixMillis) -> Session {
    Session {
        id: sid(id),
        subject: Subject::new("alice"),
        client_id: client(),
        sso_id: None,
        scope: "openid groups".into(),
        auth_time: created_at,
        created_at,
        absolute_end: created_at.plus(LIFETIME),
        revoked_at: None,
    }
}

/// Starts `session` with `first` as its refresh token, issued at the session's start.
async fn start(store: &dyn Store, session: Session, first: &Secret) -> Session {
    let token = NewRefreshToken {
        hash: first.hash(),
        issued_at: session.created_at,
        expires_at: session.created_at.plus(TTL).min(session.absolute_end),
    };
    store
        .start_session(session.clone(), token, origin(IP))
        .await
        .unwrap();
    session
}

/// A request from `ip` with kubectl's user agent.
fn origin(ip: &str) -> Origin {
    Origin {
        ip: ip.into(),
        user_agent: UA.into(),
    }
}

/// Why session `id` was revoked, as the store keeps it.
async fn revoked_reason(store: &dyn Store, id: &str) -> Option<String> {
    let exported = store.export_snapshot().await.unwrap();
    let row = exported
        .sessions
        .into_iter()
        .find(|r| r.session.id == sid(id));
    row.unwrap().revoked_reason
}

/// Alice's SSO session `sso-1`, signed in at [`T0`], its cookie handle `handle`.
fn alices_sso(handle: &Secret) -> SsoSession {
    SsoSession {
        handle: handle.hash(),
        id: SsoId::new("sso-1"),
        subject: Subject::new("alice"),
        auth_time: T0,
        last_used_at: T0,
        expires_at: T0.plus(LIFETIME),
        revoked_at: None,
    }
}

/// A proxy session with cookie handle `handle`, logged in at `created_at` with the tokens it
/// got then, and no refresh in flight.
fn proxy_session(handle: &Secret, created_at: UnixMillis) -> ProxySession {
    ProxySession {
        handle: handle.hash(),
        created_at,
        last_seen_at: created_at,
        absolute_end: created_at.plus(LIFETIME),
        refreshed_at: created_at,
        refresh_lease_until: None,
        sealed: b"sealed tokens".to_vec(),
        session_id: None,
    }
}

fn no_grace(on_replay: OnReplay) -> RedeemPolicy {
    RedeemPolicy {
        grace_period: Duration::ZERO,
        grace_requires_same_ip: false,
        on_replay,
    }
}

fn grace(millis: u64, same_ip: bool) -> RedeemPolicy {
    RedeemPolicy {
        grace_period: Duration::from_millis(millis),
        grace_requires_same_ip: same_ip,
        on_replay: OnReplay::RevokeSession,
    }
}

fn request(t: &Secret, now: UnixMillis, policy: RedeemPolicy) -> RedeemRequest {
    RedeemRequest {
        hash: t.hash(),
        successor: next(t).hash(),
        client_id: client(),
        ip: IP.into(),
        user_agent: UA.into(),
        now,
        policy,
        ttl: TTL,
    }
}

async fn redeem(
    store: &dyn Store,
    t: &Secret,
    now: UnixMillis,
    policy: RedeemPolicy,
) -> Redemption {
    redeem_from(store, t, now, policy, IP).await
}

async fn redeem_from(
    store: &dyn Store,
    t: &Secret,
    now: UnixMillis,
    policy: RedeemPolicy,
    ip: &str,
) -> Redemption {
    let request = RedeemRequest {
        ip: ip.into(),
        ..request(t, now, policy)
    };
    store.redeem_refresh_token(request).await.unwrap()
}

async fn redeem_expecting_rotate(
    store: &dyn Store,
    t: &Secret,
    now: UnixMillis,
    policy: RedeemPolicy,
) -> Redemption {
    let r = redeem(store, t, now, policy).await;
    assert_eq!(r.decision, Decision::Rotate);
    r
}

/// Starts session `s1` and has [`RACERS`] tasks redeem its first token at the same instant.
async fn race(store: &Arc<dyn Store>, policy: RedeemPolicy) -> Vec<Decision> {
    let t = secret(1);
    start(&**store, session("s1", T0), &t).await;
    let now = T0.plus(Duration::from_secs(1));
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(store), Arc::clone(&barrier));
            let request = request(&t, now, policy);
            tokio::spawn(async move {
                barrier.wait().await;
                store.redeem_refresh_token(request).await.unwrap().decision
            })
        })
        .collect();
    let mut decisions = Vec::with_capacity(RACERS);
    for task in tasks {
        decisions.push(task.await.unwrap());
    }
    decisions
}

const REPLICAS: usize = 4;
const RACERS_PER_REPLICA: usize = 10;

/// Stores proxy session `secret(1)` and has `racers` tasks, spread over `stores`, claim its
/// refresh at the same instant, each asking a lease of its own length; checks that exactly
/// one won and that the stored lease is the winner's.
async fn race_for_a_lease(stores: &[Arc<dyn Store>], racers: usize) {
    let handle = secret(1).hash();
    stores[0]
        .create_proxy_session(proxy_session(&secret(1), T0))
        .await
        .unwrap();
    let now = T0.plus(Duration::from_secs(60));
    let claim = move |store: Arc<dyn Store>, lease_until| async move {
        let claim = store.claim_proxy_refresh(handle, T0, now, lease_until);
        claim.await.unwrap()
    };
    let winner = race_for_one_lease(stores, racers, now, claim).await;
    for store in stores {
        let found = store.find_proxy_session(handle).await.unwrap().unwrap();
        assert_eq!(found.refresh_lease_until, Some(winner));
    }
}

/// Has `racers` tasks, spread over `stores`, run `claim(store, lease_until)` at the same
/// instant, each with a lease of its own ending after `now`: exactly one wins; its lease.
async fn race_for_one_lease<F, Fut>(
    stores: &[Arc<dyn Store>],
    racers: usize,
    now: UnixMillis,
    claim: F,
) -> UnixMillis
where
    F: Fn(Arc<dyn Store>, UnixMillis) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let lease_of = |i: usize| now.plus(LEASE + Duration::from_millis(u64::try_from(i).unwrap()));
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let store = Arc::clone(&stores[i % stores.len()]);
            let (barrier, lease_until, claim) = (Arc::clone(&barrier), lease_of(i), claim.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                claim(store, lease_until).await
            })
        })
        .collect();
    let mut won = Vec::with_capacity(racers);
    for task in tasks {
        won.push(task.await.unwrap());
    }
    let winners: Vec<usize> = (0..racers).filter(|&i| won[i]).collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    lease_of(winners[0])
}

/// What a directory said of `subject` at [`T0`], never re-validated since.
fn identity(subject: &str) -> IdentityRecord {
    let connector_id = subject.split(':').next().unwrap_or_default().to_owned();
    IdentityRecord {
        subject: Subject::new(subject),
        connector_id,
        claims: format!(r#"{{"preferred_username":"{subject}","groups":["k8s-dev"]}}"#),
        checked_at: T0,
        check_lease_until: None,
        upstream: Some(vec![5; 40]),
        disabled_at: None,
    }
}

/// Saves [`identity`] `corp-ad:carol` and has `racers` tasks, spread over `stores`, claim its
/// re-validation at the same instant: exactly one wins, and every store sees its lease.
async fn race_for_a_revalidation(stores: &[Arc<dyn Store>], racers: usize) {
    let carol = identity("corp-ad:carol");
    stores[0].save_identity(carol.clone()).await.unwrap();
    let now = T0.plus(Duration::from_secs(600));
    let subject = carol.subject.clone();
    let claim = move |store: Arc<dyn Store>, lease_until| {
        let subject = subject.clone();
        async move {
            let claim = store.claim_revalidation(subject, T0, now, lease_until);
            claim.await.unwrap()
        }
    };
    let winner = race_for_one_lease(stores, racers, now, claim).await;
    for store in stores {
        let found = store.find_identity(carol.subject.clone()).await.unwrap();
        assert_eq!(found.unwrap().check_lease_until, Some(winner));
    }
}

/// [`REPLICAS`] stores on the backend's data, as so many processes would open.
async fn replicas(backend: &dyn Backend) -> Vec<Arc<dyn Store>> {
    let mut stores = Vec::with_capacity(REPLICAS);
    for _ in 0..REPLICAS {
        stores.push(backend.open().await);
    }
    stores
}

/// Starts session `s1` and has [`RACERS_PER_REPLICA`] tasks on each of [`REPLICAS`] stores
/// redeem its first token at the same instant.
async fn race_on_replicas(
    backend: &dyn Backend,
    policy: RedeemPolicy,
) -> (Vec<Arc<dyn Store>>, Vec<Redemption>) {
    let stores = replicas(backend).await;
    let t = secret(1);
    start(&*stores[0], session("s1", T0), &t).await;
    let now = T0.plus(Duration::from_secs(1));
    let racers = REPLICAS * RACERS_PER_REPLICA;
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let (store, barrier) = (Arc::clone(&stores[i % REPLICAS]), Arc::clone(&barrier));
            let request = request(&t, now, policy);
            tokio::spawn(async move {
                barrier.wait().await;
                store.redeem_refresh_token(request).await.unwrap()
            })
        })
        .collect();
    let mut redemptions = Vec::with_capacity(racers);
    for task in tasks {
        redemptions.push(task.await.unwrap());
    }
    (stores, redemptions)
}

fn count(decisions: &[Decision], matching: impl Fn(&Decision) -> bool) -> usize {
    decisions.iter().filter(|d| matching(d)).count()
}
