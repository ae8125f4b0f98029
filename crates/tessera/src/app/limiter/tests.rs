//! The limiter's guarantees, each a scenario with a fixed clock: the limit per window, slots
//! held by attempts in flight, a bounded table, and refusals reported once.

use super::*;

const MINUTE: Duration = Duration::from_secs(60);
const T: UnixMillis = UnixMillis(1_000_000);

fn user(name: &str) -> Vec<LimitKey> {
    vec![LimitKey::user(name), LimitKey::address("10.0.0.1")]
}

fn fail(limiter: &Limiter, keys: Vec<LimitKey>, now: UnixMillis) {
    limiter.begin(keys, now).unwrap().failed();
}

#[test]
fn failures_block_after_the_limit_until_the_window_ends() {
    let limiter = Limiter::new("test", 2, MINUTE, CAPACITY);
    fail(&limiter, user("dev"), T);
    fail(&limiter, user("dev"), T);
    let refused = limiter.begin(vec![LimitKey::user("dev")], T).unwrap_err();
    assert_eq!(refused.retry_after, 61);
    assert!(limiter.begin(vec![LimitKey::user("other")], T).is_ok());
    assert!(limiter.begin(user("dev"), T.plus(MINUTE)).is_ok());
}

#[test]
fn attempts_in_flight_take_slots_so_racing_guesses_cannot_exceed_the_limit() {
    let limiter = Limiter::new("test", 3, MINUTE, CAPACITY);
    let racing: Vec<Attempt<'_>> = (0..3)
        .map(|_| limiter.begin(user("dev"), T).unwrap())
        .collect();
    let refused = limiter.begin(user("dev"), T).unwrap_err();
    assert_eq!(refused.retry_after, 1, "in-flight attempts end soon");
    assert!(refused.busy, "held back by attempts in flight only");
    assert!(!refused.first, "waiting is no refusal worth an audit line");
    let mut racing = racing.into_iter();
    racing.next().unwrap().succeeded();
    let fourth = limiter
        .begin(user("dev"), T)
        .expect("a success frees its slot");
    racing.for_each(Attempt::failed);
    fourth.failed();
    let refused = limiter.begin(user("dev"), T).unwrap_err();
    assert_eq!(refused.retry_after, 61);
    assert!(!refused.busy, "held back by failures");
}

#[tokio::test]
async fn a_settling_attempt_wakes_those_waiting_on_its_keys() {
    let limiter = Limiter::new("test", 1, MINUTE, CAPACITY);
    let first = limiter.begin(user("dev"), T).unwrap();
    let settled = limiter.settled();
    let mut settled = std::pin::pin!(settled);
    settled.as_mut().enable();
    assert!(limiter.begin(user("dev"), T).unwrap_err().busy);
    first.succeeded();
    settled.await;
    limiter.begin(user("dev"), T).unwrap().succeeded();
}

#[test]
fn a_dropped_attempt_counts_as_a_failure_and_leaks_no_slot() {
    let limiter = Limiter::new("test", 2, MINUTE, CAPACITY);
    drop(limiter.begin(user("dev"), T).unwrap());
    let second = limiter.begin(user("dev"), T).unwrap();
    assert!(
        limiter.begin(user("dev"), T).is_err(),
        "one failure, one in flight"
    );
    second.succeeded();
    let third = limiter.begin(user("dev"), T).unwrap();
    drop(third);
    assert_eq!(limiter.begin(user("dev"), T).unwrap_err().retry_after, 61);
    // After the window the slots are free again: nothing leaked.
    let later = T.plus(MINUTE);
    let both: Vec<_> = (0..2)
        .map(|_| limiter.begin(user("dev"), later).unwrap())
        .collect();
    both.into_iter().for_each(Attempt::succeeded);
}

#[test]
fn successes_leave_no_entry_behind() {
    let limiter = Limiter::new("test", 2, MINUTE, CAPACITY);
    for i in 0..100 {
        limiter
            .begin(user(&format!("u{i}")), T)
            .unwrap()
            .succeeded();
    }
    assert_eq!(limiter.lock().entries.len(), 0);
}

#[test]
fn the_table_stays_bounded_under_a_spray_of_names() {
    let limiter = Limiter::new("test", 5, MINUTE, 64);
    for i in 0..10_000 {
        let keys = vec![
            LimitKey::user(&format!("spray-{i}")),
            LimitKey::address(&format!("10.0.{}.{}", i / 256 % 256, i % 256)),
        ];
        if let Ok(attempt) = limiter.begin(keys, T) {
            attempt.failed();
        }
        assert!(limiter.lock().entries.len() <= 64);
    }
}

#[test]
fn a_spray_of_names_does_not_reset_a_blocked_victim() {
    let limiter = Limiter::new("test", 3, MINUTE, 64);
    for _ in 0..3 {
        fail(&limiter, vec![LimitKey::user("victim")], T);
    }
    for i in 0..10_000 {
        fail(&limiter, vec![LimitKey::user(&format!("spray-{i}"))], T);
    }
    assert!(limiter.begin(vec![LimitKey::user("victim")], T).is_err());
}

#[test]
fn keys_in_flight_are_never_evicted_and_a_full_table_refuses() {
    let limiter = Limiter::new("test", 5, MINUTE, 4);
    let held: Vec<_> = (0..4)
        .map(|i| {
            limiter
                .begin(vec![LimitKey::user(&format!("u{i}"))], T)
                .unwrap()
        })
        .collect();
    assert_eq!(
        limiter.begin(vec![LimitKey::user("late")], T).unwrap_err(),
        Refusal {
            retry_after: 1,
            first: false,
            busy: false,
        }
    );
    drop(held);
    assert!(limiter.begin(vec![LimitKey::user("late")], T).is_ok());
}

#[test]
fn the_first_refusal_of_a_window_is_reported_and_the_rest_summarised_when_it_ends() {
    let limiter = Limiter::new("test", 1, MINUTE, CAPACITY);
    fail(&limiter, user("dev"), T);
    let firsts: Vec<bool> = (0..50)
        .map(|_| limiter.begin(user("dev"), T).unwrap_err().first)
        .collect();
    assert!(firsts[0]);
    assert!(firsts[1..].iter().all(|first| !first));
    assert_eq!(limiter.close_windows(T), []);
    let mut closed = limiter.close_windows(T.plus(MINUTE));
    closed.sort_by_key(|c| format!("{:?}", c.key));
    assert_eq!(
        closed,
        [
            ClosedWindow {
                key: LimitKey::address("10.0.0.1"),
                refused: 50
            },
            ClosedWindow {
                key: LimitKey::user("dev"),
                refused: 50
            },
        ]
    );
    assert_eq!(limiter.close_windows(T.plus(MINUTE)), [], "reported once");
    fail(&limiter, user("dev"), T.plus(MINUTE));
    assert!(
        limiter
            .begin(user("dev"), T.plus(MINUTE))
            .unwrap_err()
            .first,
        "a new window"
    );
}

#[test]
fn a_key_renewed_by_its_next_attempt_reports_its_closed_window() {
    let limiter = Limiter::new("test", 1, MINUTE, CAPACITY);
    fail(&limiter, vec![LimitKey::user("dev")], T);
    assert!(limiter.begin(vec![LimitKey::user("dev")], T).is_err());
    let later = T.plus(MINUTE);
    limiter
        .begin(vec![LimitKey::user("dev")], later)
        .unwrap()
        .succeeded();
    assert_eq!(
        limiter.close_windows(later),
        [ClosedWindow {
            key: LimitKey::user("dev"),
            refused: 1
        }]
    );
}

#[test]
fn keys_are_bounded_and_ipv6_counts_per_slash_64() {
    assert_eq!(
        LimitKey::address("2001:db8:1:2:aaaa::1"),
        LimitKey::address("2001:db8:1:2:bbbb::2")
    );
    assert_eq!(
        LimitKey::address("::ffff:10.0.0.1"),
        LimitKey::address("10.0.0.1")
    );
    assert_ne!(
        LimitKey::address("2001:db8:1:3::1"),
        LimitKey::address("2001:db8:1:2::1")
    );
    let LimitKey::User(long) = LimitKey::user(&"é".repeat(1000)) else {
        unreachable!()
    };
    assert!(long.len() <= MAX_KEY_LEN);
}
