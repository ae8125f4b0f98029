//! Replicas (issue 5): three `tessera serve` processes on one PostgreSQL database behind a real
//! nginx (round-robin). One-time refresh tokens hold across replicas, a replay on one replica
//! ends the session on all of them, a rotated key reaches every replica, a replica killed under
//! load loses no token it answered, and a database outage or an exhausted pool answers 503 fast
//! and heals without a restart. See `cluster.rs` for the harness.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use tessera_core::clock::monotonic_now;

use crate::cluster::{
    Cluster, Forwarder, PG_PORT, assert_invalid_grant, refresh_token, try_refresh,
};
use crate::support::{jwt_header, verify_jwt};

/// Redemptions of one token sent at once.
const SIMULTANEOUS: usize = 200;

/// Refresh outcomes by name (`rotated`, `grace_reuse`, `replay`, `rejected`).
type Counts = BTreeMap<&'static str, u64>;

/// Per replica, the refresh outcomes it counted, and the sum over all replicas.
async fn outcomes(cluster: &Cluster) -> (Vec<Counts>, Counts) {
    let per_replica = join_all(cluster.replicas.iter().map(|r| cluster.redemptions(r))).await;
    let mut total = BTreeMap::new();
    for counts in &per_replica {
        for (outcome, n) in counts {
            *total.entry(*outcome).or_insert(0) += n;
        }
    }
    (per_replica, total)
}

/// Asserts that each replica served part of the redemptions, and returns how many each did.
fn assert_spread(per_replica: &[Counts], expected_total: u64) -> Vec<u64> {
    let served: Vec<u64> = per_replica.iter().map(|c| c.values().sum()).collect();
    assert_eq!(
        served.iter().sum::<u64>(),
        expected_total,
        "every redemption is counted once: {per_replica:?}"
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "nginx spread the redemptions over every replica: {served:?}"
    );
    served
}

fn summary(answers: &[(StatusCode, Value)]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (status, body) in answers {
        let key = format!("{status} {}", body["error"].as_str().unwrap_or(""));
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_200_simultaneous_redemptions_without_grace_give_exactly_one_success() {
    let cluster = Cluster::behind_nginx(3, &[]).await;
    let front = cluster.issuer.clone();
    let token = refresh_token(&cluster.login(&front).await);

    let answers = join_all((0..SIMULTANEOUS).map(|_| cluster.refresh(&front, &token))).await;

    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one fresh success: {:?}",
        summary(&answers)
    );
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_invalid_grant(*status, body, "a losing redemption");
    }
    let successor = refresh_token(winners[0]);
    assert_ne!(successor, token);

    let (per_replica, total) = outcomes(&cluster).await;
    let served = assert_spread(&per_replica, SIMULTANEOUS as u64);
    eprintln!("redemptions per replica {served:?}, outcomes {total:?}");
    assert_eq!(total["rotated"], 1, "{per_replica:?}");
    assert_eq!(total["grace_reuse"], 0, "{per_replica:?}");
    assert!(
        total["replay"] >= 1,
        "the losers are replays: {per_replica:?}"
    );

    // The replays revoked the session (on_replay: revoke_session): the winner's successor is
    // dead too, on every replica.
    for replica in &cluster.replicas {
        let (status, body) = cluster.refresh(&replica.url, &successor).await;
        assert_invalid_grant(status, &body, &format!("the successor at {}", replica.name));
    }
    assert_eq!(cluster.audit_events("TokenRefreshed", 1).await.len(), 1);
    let revoked = cluster.audit_events("SessionRevoked", 1).await;
    let replays = cluster.audit_events("RefreshTokenReplayDetected", 1).await;
    eprintln!(
        "audit: {} RefreshTokenReplayDetected, {} SessionRevoked for one session",
        replays.len(),
        revoked.len()
    );
    // However many losers read the session as live, one revocation is recorded:
    // see replicas_concurrent_replays_revoke_and_audit_the_session_once.
    assert_eq!(revoked.len(), 1, "{revoked:#?}");
    assert_eq!(revoked[0]["reason"], "replay");
    assert_eq!(total["replay"], 1, "{per_replica:?}");
}

/// With PostgreSQL, concurrent replays of one token may each read the session as live before
/// the first revocation commits. Only the replay whose `UPDATE sessions … WHERE revoked_at IS
/// NULL` changes the row counts as the replay; the others answer as for a revoked session, as a
/// single SQLite server does (rotation.rs). Here a psql transaction holding `FOR SHARE` on the
/// session makes the first revocation wait, so every replay sent meanwhile reads it as live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_concurrent_replays_revoke_and_audit_the_session_once() {
    const REPLAYS: usize = 9;
    let cluster = Cluster::behind_nginx(3, &[]).await;
    let front = cluster.issuer.clone();
    let used = refresh_token(&cluster.login(&front).await);
    let (status, rotated) = cluster.refresh(&front, &used).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");

    let mut holder = cluster
        .db
        .spawn_psql("BEGIN; SELECT 1 FROM sessions FOR SHARE; SELECT pg_sleep(1.5); COMMIT;");
    // Sleeping, so past its SELECT … FOR SHARE.
    let sleeping = "SELECT count(*) FROM pg_stat_activity \
                    WHERE datname = current_database() AND wait_event = 'PgSleep'";
    let held = monotonic_now();
    while cluster.db.psql(sleeping) != "1" {
        assert!(
            held.elapsed() < Duration::from_secs(5),
            "psql holds the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answers = join_all((0..REPLAYS).map(|i| {
        let replica = &cluster.replicas[i % 3];
        cluster.refresh(&replica.url, &used)
    }))
    .await;
    assert!(holder.wait().await.unwrap().success());
    for (status, body) in &answers {
        assert_invalid_grant(*status, body, "a replay");
    }

    let (per_replica, total) = outcomes(&cluster).await;
    let revoked = cluster.audit_events("SessionRevoked", 1).await;
    let replays = cluster.audit_events("RefreshTokenReplayDetected", 1).await;
    eprintln!(
        "{REPLAYS} concurrent replays: outcomes {total:?} ({per_replica:?}); \
         audit: {} RefreshTokenReplayDetected, {} SessionRevoked",
        replays.len(),
        revoked.len()
    );
    assert_eq!(
        revoked.len(),
        1,
        "one revocation of one session is audited once: {revoked:#?}"
    );
    assert_eq!(
        total["replay"], 1,
        "later replays find the session revoked: {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_200_simultaneous_redemptions_with_grace_all_get_the_same_successor() {
    let cluster =
        Cluster::behind_nginx(3, &[("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "5000")]).await;
    let front = cluster.issuer.clone();
    let token = refresh_token(&cluster.login(&front).await);

    let started = monotonic_now();
    let answers = join_all((0..SIMULTANEOUS).map(|_| cluster.refresh(&front, &token))).await;
    let took = started.elapsed();

    for (status, body) in &answers {
        assert_eq!(
            *status,
            StatusCode::OK,
            "every redemption inside the grace succeeds ({took:?} for all): {body} {:?}",
            summary(&answers)
        );
    }
    let successor = refresh_token(&answers[0].1);
    assert_ne!(successor, token);
    let distinct: std::collections::BTreeSet<String> =
        answers.iter().map(|(_, b)| refresh_token(b)).collect();
    assert_eq!(distinct.len(), 1, "one chain, not {}", distinct.len());

    let (per_replica, total) = outcomes(&cluster).await;
    let served = assert_spread(&per_replica, SIMULTANEOUS as u64);
    eprintln!("redemptions per replica {served:?}, outcomes {total:?}, all answered in {took:?}");
    assert_eq!(total["rotated"], 1, "{per_replica:?}");
    assert_eq!(
        total["grace_reuse"],
        SIMULTANEOUS as u64 - 1,
        "{per_replica:?}"
    );
    assert_eq!(
        cluster
            .audit_events("ExpiredRefreshTokenUsed", SIMULTANEOUS - 1)
            .await
            .len(),
        SIMULTANEOUS - 1
    );

    // The one chain goes on, on any replica.
    let (status, next) = cluster.refresh(&cluster.replicas[2].url, &successor).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_ne!(refresh_token(&next), successor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_replay_on_one_replica_ends_the_session_on_the_others_at_once() {
    let cluster = Cluster::behind_nginx(3, &[]).await;
    let front = cluster.issuer.clone();
    let [one, two, three] = [0, 1, 2].map(|i| &cluster.replicas[i]);
    let victim = cluster.login(&front).await;
    let bystander = refresh_token(&cluster.login(&front).await);

    let used = refresh_token(&victim);
    let (status, rotated) = cluster.refresh(&front, &used).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let current = refresh_token(&rotated);
    let access_token = rotated["access_token"].as_str().unwrap().to_owned();
    let introspect = |token: String| {
        let cluster = &cluster;
        async move {
            let (status, info) = cluster
                .post_as_demo(&three.url, "/introspect", &[("token", &token)])
                .await;
            assert_eq!(status, StatusCode::OK, "introspection at replica 3: {info}");
            info["active"].clone()
        }
    };
    assert_eq!(introspect(access_token.clone()).await, true);
    assert_eq!(introspect(current.clone()).await, true);

    // The replay, at replica 1's own port.
    let (status, body) = cluster.refresh(&one.url, &used).await;
    assert_invalid_grant(status, &body, "the replay at replica 1");
    let replays = cluster.audit_events("RefreshTokenReplayDetected", 1).await;
    assert_eq!(replays.len(), 1, "{replays:?}");
    assert_eq!(replays[0]["session_revoked"], true);

    // At once on replicas 2 and 3: the current successor is refused by both (presented at the
    // same moment, so a live session would have let one of them through).
    let (at_two, at_three) = tokio::join!(
        cluster.refresh(&two.url, &current),
        cluster.refresh(&three.url, &current)
    );
    assert_invalid_grant(at_two.0, &at_two.1, "the successor at replica 2");
    assert_invalid_grant(at_three.0, &at_three.1, "the successor at replica 3");
    assert_eq!(
        introspect(access_token).await,
        false,
        "the session's access token"
    );
    assert_eq!(
        introspect(current).await,
        false,
        "the session's refresh token"
    );

    // Only that session: another login of the same user goes on, on replica 3.
    let (status, body) = cluster.refresh(&three.url, &bystander).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another session is untouched: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_publish_a_rotated_key_within_their_reload_interval() {
    // Access tokens in RS256 too: one algorithm, so the rotation adds exactly one key.
    let cluster = Cluster::behind_nginx(
        3,
        &[
            ("TESSERA_KEYS__RELOAD_INTERVAL", "1s"),
            ("TESSERA_TOKENS__ACCESS_TOKEN_ALG", "RS256"),
        ],
    )
    .await;
    let front = cluster.issuer.clone();
    let tokens = cluster.login(&front).await;
    let old_id_token = tokens["id_token"].as_str().unwrap().to_owned();
    let old_kid = jwt_header(&old_id_token)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    for replica in &cluster.replicas {
        let kids = kids(&cluster.jwks(replica).await);
        assert_eq!(
            kids,
            vec![old_kid.clone()],
            "{} before the rotation",
            replica.name
        );
    }

    let cli_started = monotonic_now();
    let out = cluster.cli(&["keys", "rotate"]).await;
    let cli_took = cli_started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keys rotate: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated_at = monotonic_now();
    let new_kid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("added signing key "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("keys rotate names the new key: {stdout}"))
        .to_owned();

    // Each replica, asked directly, publishes the new key within its 1 s reload interval.
    let waits = join_all(cluster.replicas.iter().map(|replica| {
        let (cluster, new_kid) = (&cluster, &new_kid);
        async move {
            loop {
                let published = kids(&cluster.jwks(replica).await);
                if published.contains(new_kid) {
                    return (rotated_at.elapsed(), published);
                }
                assert!(
                    rotated_at.elapsed() < Duration::from_secs(10),
                    "{} still publishes only {published:?} 10 s after the rotation",
                    replica.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }))
    .await;
    for (replica, (took, published)) in cluster.replicas.iter().zip(&waits) {
        eprintln!(
            "{} published {new_kid} {took:?} after `keys rotate` returned (it ran {cli_took:?})",
            replica.name
        );
        assert!(
            published.contains(&old_kid),
            "the previous key stays published: {published:?}"
        );
        assert!(
            *took < Duration::from_secs(4),
            "{} took {took:?} for a 1 s reload interval",
            replica.name
        );
    }

    // A token signed after the rotation by replica 1 uses the new key and verifies with
    // replica 3's JWKS; so does one signed before it, with the previous key.
    let (status, refreshed) = cluster
        .refresh(&cluster.replicas[0].url, &refresh_token(&tokens))
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let jwks3 = cluster.jwks(&cluster.replicas[2]).await;
    for name in ["id_token", "access_token"] {
        let jwt = refreshed[name].as_str().unwrap();
        assert_eq!(jwt_header(jwt)["kid"], new_kid.as_str(), "{name}");
        verify_jwt(&jwks3, jwt, &front, "kubernetes")
            .unwrap_or_else(|e| panic!("{name} of replica 1 against replica 3's JWKS: {e}"));
    }
    verify_jwt(&jwks3, &old_id_token, &front, "kubernetes")
        .unwrap_or_else(|e| panic!("an id_token signed before the rotation: {e}"));
    let rotations = cluster.audit_events("KeyRotated", 2).await;
    assert!(
        rotations.iter().any(|e| e["kid"] == new_kid.as_str()),
        "{rotations:?}"
    );
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// What one refresh of a chain got.
#[derive(Debug)]
enum Outcome {
    /// 200 with this successor.
    Rotated(String),
    /// No answer, or a 5xx: the redemption may or may not have committed.
    Failed(String),
    /// Any other answer: the chain is broken.
    Refused(StatusCode, Value),
}

/// One chain's history: each presented token, what came back, and when (since the start).
type Chain = Vec<(String, Outcome, Duration)>;

/// Refreshes a chain through `front` until `until`, retrying a token whose redemption failed
/// (inside the grace period a retry gets the same successor whether or not the failed attempt
/// committed), so the chain always ends on a token answered 200.
async fn run_chain(
    http: reqwest::Client,
    front: String,
    first: String,
    started: std::time::Instant,
    until: Duration,
) -> Chain {
    let mut chain = Chain::new();
    let mut token = first;
    let mut failures_in_a_row = 0;
    while started.elapsed() < until || failures_in_a_row > 0 {
        let outcome = match try_refresh(&http, &front, &token).await {
            Ok((StatusCode::OK, body)) => Outcome::Rotated(refresh_token(&body)),
            // nginx's own 502 page is HTML: the status says it all.
            Ok((status, body)) if status.is_server_error() => Outcome::Failed(match body {
                Value::String(_) => status.to_string(),
                json => format!("{status} {json}"),
            }),
            Ok((status, body)) => Outcome::Refused(status, body),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        let next = match &outcome {
            Outcome::Rotated(next) => Some(next.clone()),
            _ => None,
        };
        let stop = matches!(outcome, Outcome::Refused(..));
        chain.push((token.clone(), outcome, started.elapsed()));
        if stop {
            break;
        }
        match next {
            Some(next) => {
                token = next;
                failures_in_a_row = 0;
            }
            None => {
                failures_in_a_row += 1;
                if failures_in_a_row > 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_replica_killed_mid_load_loses_no_token_answered_200() {
    const CHAINS: usize = 16;
    const GRACE: Duration = Duration::from_millis(2000);
    let kill_at = Duration::from_millis(1200);
    let run_for = Duration::from_millis(3000);
    let cluster =
        Cluster::behind_nginx(3, &[("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "2000")]).await;
    let front = cluster.issuer.clone();
    let firsts = join_all((0..CHAINS).map(|_| cluster.login(&front))).await;

    let started = monotonic_now();
    let chains = join_all(firsts.iter().map(|tokens| {
        tokio::spawn(run_chain(
            cluster.http.clone(),
            front.clone(),
            refresh_token(tokens),
            started,
            run_for,
        ))
    }));
    let killer = async {
        tokio::time::sleep(kill_at).await;
        cluster.replicas[1].kill();
        started.elapsed()
    };
    let (chains, killed_at) = tokio::join!(chains, killer);
    let chains: Vec<Chain> = chains.into_iter().map(Result::unwrap).collect();
    assert!(!cluster.replicas[1].running());

    // What happened.
    let requests: usize = chains.iter().map(Vec::len).sum();
    let failed: Vec<(usize, &str, Duration)> = chains
        .iter()
        .enumerate()
        .flat_map(|(i, chain)| {
            chain
                .iter()
                .filter_map(move |(_, outcome, at)| match outcome {
                    Outcome::Failed(why) => Some((i, why.as_str(), *at)),
                    _ => None,
                })
        })
        .collect();
    // nginx's view: which replica answered what (by port), and what nginx answered.
    let names: HashMap<String, String> = cluster
        .replicas
        .iter()
        .map(|r| (r.addr.to_string(), r.name.clone()))
        .collect();
    let mut upstreams: BTreeMap<String, usize> = BTreeMap::new();
    for line in cluster.nginx().access_log() {
        let fields: Vec<&str> = line.split('|').collect();
        let tried: Vec<&str> = fields[0]
            .split(", ")
            .map(|a| names.get(a).map_or(a, String::as_str))
            .collect();
        let key = format!("{} -> {} -> {}", tried.join(", "), fields[1], fields[2]);
        *upstreams.entry(key).or_insert(0) += 1;
    }
    let survivors_counted: Vec<_> =
        join_all([0, 2].map(|i| cluster.redemptions(&cluster.replicas[i]))).await;
    eprintln!(
        "{CHAINS} chains, {requests} refreshes, replica 2 killed at {killed_at:?}; {} failed: \
         {failed:?}\nnginx (replicas tried -> their statuses -> answer): {upstreams:#?}\n\
         outcomes counted by replicas 1 and 3: {survivors_counted:?}",
        failed.len()
    );

    for (i, chain) in chains.iter().enumerate() {
        // No chain broke, and none forked: a token answered 200 twice had the same successor.
        let mut successors: HashMap<&str, &str> = HashMap::new();
        for (token, outcome, at) in chain {
            match outcome {
                Outcome::Refused(status, body) => {
                    panic!("chain {i} was refused at {at:?}: {status} {body}; {chain:?}")
                }
                Outcome::Rotated(next) => {
                    let first = successors.entry(token.as_str()).or_insert(next.as_str());
                    assert_eq!(*first, next.as_str(), "chain {i} forked at {at:?}");
                }
                Outcome::Failed(_) => {}
            }
        }
        assert!(
            matches!(chain.last(), Some((_, Outcome::Rotated(_), _))),
            "chain {i} ends on a token answered 200: {:?}",
            chain.last()
        );
        assert!(
            chain
                .iter()
                .any(|(_, o, at)| matches!(o, Outcome::Rotated(_)) && *at > killed_at),
            "chain {i} went on after the kill"
        );
    }

    // Every chain's last token answered 200 is redeemable exactly once on a survivor.
    let last: Vec<String> = chains
        .iter()
        .map(|chain| match chain.last() {
            Some((_, Outcome::Rotated(next), _)) => next.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let survivors = [&cluster.replicas[0], &cluster.replicas[2]];
    let first = join_all(
        last.iter()
            .enumerate()
            .map(|(i, t)| cluster.refresh(&survivors[i % 2].url, t)),
    )
    .await;
    for (i, (status, body)) in first.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "chain {i}'s last token: {body}");
    }
    // Past the grace period, a second presentation is a replay.
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    let second = join_all(
        last.iter()
            .enumerate()
            .map(|(i, t)| cluster.refresh(&survivors[(i + 1) % 2].url, t)),
    )
    .await;
    for (i, (status, body)) in second.iter().enumerate() {
        assert_invalid_grant(*status, body, &format!("chain {i}'s last token again"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_a_replica_cut_off_from_postgres_answers_503_fast_and_recovers_without_restart() {
    let forwarder = Forwarder::start(PG_PORT).await;
    let cluster = Cluster::single(
        forwarder.port,
        &[("TESSERA_STORAGE__POOL__CONNECT_TIMEOUT", "2s")],
    )
    .await;
    let replica = &cluster.replicas[0];
    let base = replica.url.clone();
    let first = refresh_token(&cluster.login(&base).await);
    let (status, rotated) = cluster.refresh(&base, &first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let pending = refresh_token(&rotated);

    forwarder.cut();
    let started = monotonic_now();
    let (status, text) =
        tokio::time::timeout(Duration::from_secs(10), cluster.get(&base, "/readyz"))
            .await
            .expect("/readyz answers within 10 s of the outage");
    let readyz_took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");

    let started = monotonic_now();
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), cluster.refresh(&base, &pending))
            .await
            .expect("a refresh answers within 10 s of the outage");
    let refresh_took = started.elapsed();
    eprintln!(
        "during the outage: /readyz 503 after {readyz_took:?}, refresh 503 after {refresh_took:?}"
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        refresh_took < Duration::from_secs(2) + Duration::from_millis(2500),
        "503 within connect_timeout (2 s) and a margin, not {refresh_took:?}"
    );
    // A login during the outage: the form needs no database, signing in does.
    let browser = crate::support::client(&cluster.ca, true);
    let form = browser
        .get(format!("{base}/authorize"))
        .query(&crate::support::AuthParams::kubernetes().pairs())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK, "the login form is shown");
    let mut fields = crate::support::hidden_fields(&form.text().await.unwrap());
    fields.push(("username".into(), "dev".into()));
    fields.push(("password".into(), crate::support::PASSWORD.into()));
    let started = monotonic_now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        browser.post(format!("{base}/login")).form(&fields).send(),
    )
    .await
    .expect("a login answers within 10 s of the outage")
    .unwrap();
    let login_took = started.elapsed();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    eprintln!("during the outage: login 503 after {login_took:?}");
    assert!(replica.running());

    forwarder.restore();
    let recovered = cluster.wait_ready(&base).await;
    eprintln!("after the restore: /readyz 200 after {recovered:?}");
    // Nothing half-written: the token presented during the outage works once.
    let (status, next) = cluster.refresh(&base, &pending).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the token presented during the outage: {next}"
    );
    let (status, after) = cluster.refresh(&base, &refresh_token(&next)).await;
    assert_eq!(status, StatusCode::OK, "refreshes work again: {after}");
    let (status, body) = cluster.refresh(&base, &pending).await;
    assert_invalid_grant(status, &body, "the outage token a second time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_an_exhausted_pool_answers_503_within_the_connect_timeout_and_recovers() {
    const REQUESTS: usize = 10;
    let connect_timeout = Duration::from_secs(1);
    let lock_for = Duration::from_secs(4);
    let cluster = Cluster::single(
        PG_PORT,
        &[
            ("TESSERA_STORAGE__POOL__MAX_CONNECTIONS", "1"),
            ("TESSERA_STORAGE__POOL__CONNECT_TIMEOUT", "1s"),
        ],
    )
    .await;
    let base = cluster.replicas[0].url.clone();
    let tokens = join_all((0..REQUESTS).map(|_| cluster.login(&base))).await;
    let tokens: Vec<String> = tokens.iter().map(refresh_token).collect();

    let mut holder = cluster.db.spawn_psql(&format!(
        "BEGIN; LOCK TABLE refresh_tokens IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
        lock_for.as_secs()
    ));
    let held = monotonic_now();
    loop {
        let granted = cluster.db.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'refresh_tokens' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        );
        if granted == "1" {
            break;
        }
        assert!(
            held.elapsed() < Duration::from_secs(5),
            "psql took the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = monotonic_now();
    let answers = join_all(tokens.iter().map(|t| async {
        let answer = cluster.refresh(&base, t).await;
        (answer, started.elapsed())
    }))
    .await;
    let lock_released = holder.wait().await.unwrap();
    assert!(lock_released.success(), "the psql holding the lock");
    let timings: Vec<String> = answers
        .iter()
        .map(|((s, b), t)| format!("{} {} {t:?}", s.as_u16(), b["error"].as_str().unwrap_or("")))
        .collect();
    eprintln!(
        "{REQUESTS} refreshes with one connection held behind a {lock_for:?} lock: {timings:?}"
    );

    // Nothing hangs past the lock (no deadlock); all but the request that got the one
    // connection answer 503 within the connect timeout and a margin.
    let unavailable: Vec<&Duration> = answers
        .iter()
        .filter(|((status, body), _)| {
            *status == StatusCode::SERVICE_UNAVAILABLE && body["error"] == "temporarily_unavailable"
        })
        .map(|(_, took)| took)
        .collect();
    assert!(
        unavailable.len() >= REQUESTS - 1,
        "the requests without a connection answer 503: {timings:?}"
    );
    for took in &unavailable {
        assert!(
            **took < connect_timeout + Duration::from_millis(1500),
            "503 within connect_timeout (1 s) and a margin: {timings:?}"
        );
    }
    for ((status, body), took) in &answers {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} {body}"
        );
        assert!(*took < lock_for + Duration::from_secs(3), "{timings:?}");
    }

    // After the lock: every token refused with 503 was left untouched and works once.
    cluster.wait_ready(&base).await;
    for (((status, _), _), token) in answers.iter().zip(&tokens) {
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            let (status, body) = cluster.refresh(&base, token).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "a token refused with 503, afterwards: {body}"
            );
        }
    }
}

/// Issue 12, fault 1: three replicas started together on an empty database each created a
/// signing key of their own and published different JWKS. Key creation is once per due time
/// across replicas: from their first answers on, all publish the same keys, and when rotation
/// falls due for all of them at once, one key is made per due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_12_replicas_started_together_publish_one_key_set_and_rotate_once_per_due_time() {
    const ROTATION_MS: i64 = 3000;
    let cluster = Cluster::started_together(
        3,
        &[
            ("TESSERA_KEYS__ROTATION_INTERVAL", "3s"),
            ("TESSERA_KEYS__RELOAD_INTERVAL", "1s"),
        ],
    )
    .await;
    let first: Vec<Value> = join_all(cluster.replicas.iter().map(|r| cluster.jwks(r))).await;
    for (replica, jwks) in cluster.replicas.iter().zip(&first) {
        // One key per algorithm: RS256 for id_tokens, ES256 for access tokens.
        assert_eq!(kids(jwks).len(), 2, "{}: {jwks}", replica.name);
        assert_eq!(jwks, &first[0], "{} publishes other keys", replica.name);
    }

    // Every replica checks every second whether rotation is due; let it fall due twice. Each
    // algorithm rotates on its own; the id_tokens' RS256 keys tell.
    let created = || -> Vec<i64> {
        cluster
            .db
            .psql("SELECT created_at FROM signing_keys WHERE alg = 'RS256' ORDER BY created_at")
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    };
    let started = monotonic_now();
    while created().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no rotation: {:?}",
            created()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let created = created();
    for pair in created.windows(2) {
        assert!(
            pair[1] - pair[0] >= ROTATION_MS,
            "two keys within one rotation interval (created at {created:?})"
        );
    }
    // Between two rotations, all replicas publish the same set again (each reloads every 1 s).
    let started = monotonic_now();
    loop {
        let now: Vec<Value> = join_all(cluster.replicas.iter().map(|r| cluster.jwks(r))).await;
        if now.iter().all(|jwks| jwks == &now[0]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "replicas disagree: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 12, fault 2: with PostgreSQL stopped (connections refused at once), `/readyz` and
/// `/token` each took the whole `connect_timeout` (5 s) to answer 503: past the kubelet's 1 s
/// readiness probe, and users waited 5 s. Both must answer within that 1 s, with the default
/// `connect_timeout` kept for a slow network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_12_a_stopped_database_answers_503_within_a_readiness_probes_second() {
    let forwarder = Forwarder::start(PG_PORT).await;
    let cluster = Cluster::single(forwarder.port, &[]).await;
    let replica = &cluster.replicas[0];
    let base = replica.url.clone();
    let first = refresh_token(&cluster.login(&base).await);

    forwarder.refuse().await;
    // As the kubelet probes: a 1 s timeout.
    let (status, text) =
        tokio::time::timeout(Duration::from_secs(1), cluster.get(&base, "/readyz"))
            .await
            .expect("/readyz answers within the kubelet's 1 s probe timeout");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    for attempt in 0..3 {
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(1), cluster.refresh(&base, &first))
                .await
                .unwrap_or_else(|_| panic!("refresh {attempt} answers within 1 s"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    }

    forwarder.listen_again().await;
    cluster.wait_ready(&base).await;
    let (status, body) = cluster.refresh(&base, &first).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the token refused during the outage: {body}"
    );
}
