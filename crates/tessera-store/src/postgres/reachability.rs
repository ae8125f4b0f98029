//! Telling a dead database from a slow one in milliseconds. sqlx's pool treats a refused
//! connection as a server still starting and retries it until the acquire timeout, so with
//! PostgreSQL stopped every request used to wait the whole `connect_timeout` (5 s) before its
//! 503, past a readiness probe's 1 s. An operation still running after [`PROBE_AFTER`] races a
//! plain TCP connect to the server: when that is refused or reset (nothing listens: the server
//! is stopped), the operation ends at once as unavailable. A slow network (the probe times out
//! or connects) leaves the operation its `connect_timeout`. Healthy operations finish before
//! the probe would start, so the database never sees it.

use std::future::Future;
use std::io::ErrorKind;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use tessera_core::clock::monotonic_now;

use crate::StoreError;

/// How long an operation runs before the server's address is probed.
const PROBE_AFTER: Duration = Duration::from_millis(50);

/// How long one probe's verdict stands, so a burst of slow operations during an outage probes
/// once, not once each.
const VERDICT_LIFETIME: Duration = Duration::from_millis(100);

/// Whether anything listens at the database's address.
pub(super) struct Reachability {
    /// `host:port` over TCP; `None` for a Unix socket, which is refused at once by itself.
    address: Option<(String, u16)>,
    /// The last refusal seen, and when: cached for [`VERDICT_LIFETIME`].
    refused: Mutex<Option<(Instant, String)>>,
}

impl Reachability {
    pub(super) fn new(connect: &PgConnectOptions) -> Reachability {
        let host = connect.get_host();
        let over_tcp = !host.starts_with('/');
        Reachability {
            address: over_tcp.then(|| (host.to_owned(), connect.get_port())),
            refused: Mutex::new(None),
        }
    }

    /// Runs `operation`; if it is still running after [`PROBE_AFTER`] and nothing listens at
    /// the server's address, ends it with [`StoreError::Unavailable`]. A refused address means
    /// the operation holds no live connection, so ending it loses nothing.
    pub(super) async fn guard<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some((host, port)) = &self.address else {
            return operation.await;
        };
        let mut operation = std::pin::pin!(operation);
        tokio::select! {
            biased;
            done = &mut operation => return done,
            () = tokio::time::sleep(PROBE_AFTER) => {}
        }
        let refused = async {
            match self.refusal(host, *port).await {
                Some(why) => why,
                // Something listens: the operation keeps its own bound.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = &mut operation => done,
            why = refused => Err(StoreError::Unavailable {
                source: format!("cannot connect to the database at {host}:{port}: {why}").into(),
            }),
        }
    }

    /// Why `host:port` refuses connections, or `None` when it accepts them or does not answer.
    async fn refusal(&self, host: &str, port: u16) -> Option<String> {
        if let Some(why) = self.recent_refusal() {
            return Some(why);
        }
        let why = match tokio::net::TcpStream::connect((host, port)).await {
            Ok(_) => return None,
            Err(e) if refused(e.kind()) => e.to_string(),
            // Unreachable networks, timeouts: not proof the server is down.
            Err(_) => return None,
        };
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((monotonic_now(), why.clone()));
        Some(why)
    }

    fn recent_refusal(&self) -> Option<String> {
        let refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, why) = refused.as_ref()?;
        (at.elapsed() < VERDICT_LIFETIME).then(|| why.clone())
    }
}

/// Errors that prove nothing listens at the address (a stopped server, a closed port).
fn refused(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use std::str::FromStr;

    use super::*;

    fn reachability(url: &str) -> Reachability {
        Reachability::new(&PgConnectOptions::from_str(url).unwrap())
    }

    async fn slow() -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_operation_against_a_port_where_nothing_listens_ends_unavailable() {
        // A port that was just free: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let guard = reachability(&format!("postgres://u@127.0.0.1:{port}/db"));
        let error = guard.guard(slow()).await.unwrap_err();
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!("127.0.0.1:{port}")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_slow_operation_against_a_listening_server_keeps_running() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let guard = reachability(&format!("postgres://u@127.0.0.1:{port}/db"));
        let finished = async {
            tokio::time::sleep(PROBE_AFTER * 4).await;
            Ok::<_, StoreError>(7)
        };
        assert_eq!(guard.guard(finished).await.unwrap(), 7);
    }

    #[test]
    fn a_unix_socket_is_not_probed() {
        assert!(
            reachability("postgres://u@%2Fvar%2Frun%2Fpostgresql/db")
                .address
                .is_none()
        );
    }
}
