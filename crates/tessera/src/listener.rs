//! How both listeners take connections: the provider's over TLS, the proxy's in cleartext (one
//! accept loop per core). Every connection is admitted against `http.max_connections` and
//! `http.max_connections_per_ip` (over either cap it is closed at once, and accepting goes on for
//! everyone else), must finish its TLS handshake within `tls_handshake_timeout`, send its
//! request headers within `header_read_timeout`, each request body within `body_timeout`, and
//! is closed after `idle_timeout` without a request in flight. The open-files limit is raised
//! at start, and the global cap kept below it, so that the caps, not `EMFILE`, decide who waits.
//!
//! The cost on the hot path: per connection, one lock of the `Gate` at accept and at close and
//! one timer; per request, two relaxed atomic additions and a reference count. A request body
//! arms its deadline only once it has to wait for bytes, and the timer lives inline in the body
//! that axum boxes anyway.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

mod activity;
mod deadline;
mod gate;

use self::activity::{Activity, Tracked, TrackedAnswer};
use self::deadline::DeadlineBody;
use self::gate::{Admitted, Gate};
use crate::shutdown::{Phase, Shutdown};

/// Open files kept for everything but client connections: the store, logs, listening sockets,
/// the runtime.
const RESERVED_FILES: u64 = 64;

/// How long an idle connection told to close may take to finish what it has in flight (when the
/// process stops, `http.shutdown_grace` bounds it instead).
const GRACE: Duration = Duration::from_secs(10);

/// How long accepting pauses after an error other than a client's reset (such as `EMFILE`).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The timeouts and caps of `http:` (validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request's headers (from the connection's start or the previous answer).
    pub header_read_timeout: Duration,
    /// Time a connection may stay open without a request in flight.
    pub idle_timeout: Duration,
    /// Time to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time to send a request's whole body, from the first wait for it.
    pub body_timeout: Duration,
    /// Most connections open at once in the process.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_ip: usize,
}

#[cfg(test)]
impl Limits {
    /// Caps for a test, with every timeout one second.
    pub(crate) fn caps(max_connections: usize, max_connections_per_ip: usize) -> Limits {
        let second = Duration::from_secs(1);
        Limits {
            header_read_timeout: second,
            idle_timeout: second,
            tls_handshake_timeout: second,
            body_timeout: second,
            max_connections,
            max_connections_per_ip,
        }
    }
}

/// Raises the soft open-files limit to the hard one and answers the soft limit now in force
/// (`None`: unlimited).
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.maximum != limit.current {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    limit.current
}

/// Serves connections for every listener of the process, all counted by one `Gate`.
#[derive(Clone)]
pub struct Connections {
    limits: Limits,
    gate: Arc<Gate>,
    http: Arc<auto::Builder<TokioExecutor>>,
}

impl Connections {
    /// `open_files` (from [`raise_open_files_limit`]) lowers `max_connections` to what the
    /// process can hold: a proxied connection needs a second file for its upstream.
    pub fn new(
        mut limits: Limits,
        trusted_proxies: &[ipnet::IpNet],
        open_files: Option<u64>,
    ) -> Connections {
        if let Some(files) = open_files {
            let fits = usize::try_from(files.saturating_sub(RESERVED_FILES) / 2)
                .unwrap_or(usize::MAX)
                .max(1);
            if fits < limits.max_connections {
                tracing::info!(
                    max_connections = fits,
                    open_files = files,
                    "http.max_connections lowered to fit the open-files limit"
                );
                limits.max_connections = fits;
            }
        }
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        // CONNECT for websockets over HTTP/2 (RFC 8441), as axum::serve enables it.
        http.http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol();
        Connections {
            limits,
            gate: Arc::new(Gate::new(&limits, trusted_proxies)),
            http: Arc::new(http),
        }
    }

    /// Accepts connections on `listener` (through TLS when `tls` is set) and serves `router`
    /// on them, each request carrying `ConnectInfo(info(peer))`, until `shutdown` reaches
    /// [`Phase::Closing`]; then lets the open connections finish what they have in flight
    /// until [`Phase::Cut`]. Answers how many were still open then (and so cut).
    pub async fn serve<C>(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        router: Router,
        info: fn(SocketAddr) -> C,
        shutdown: &Shutdown,
    ) -> usize
    where
        C: Clone + Send + Sync + 'static,
    {
        let (stop, stopping) = watch::channel(());
        let mut closing = std::pin::pin!(shutdown.reached(Phase::Closing));
        while let Some((tcp, peer)) = accept(&listener, &mut closing).await {
            let Some(io) = self.admit(tcp, peer) else {
                continue;
            };
            let connection = Connection {
                connections: self.clone(),
                router: router.clone(),
                info: info(peer),
                stopping: stopping.clone(),
                shutdown: shutdown.clone(),
            };
            tokio::spawn(connection.run(io, tls.clone()));
        }
        drop(listener);
        drop(stopping);
        stop.send_replace(());
        tokio::select! {
            () = stop.closed() => 0,
            () = shutdown.reached(Phase::Cut) => stop.receiver_count(),
        }
    }

    /// A place in the [`Gate`] for a connection from `peer`, or `None` (the connection is
    /// closed) when a cap is reached.
    fn admit(&self, tcp: TcpStream, peer: SocketAddr) -> Option<Admitted<TcpStream>> {
        let Some(admission) = self.gate.admit(peer.ip()) else {
            tracing::debug!(%peer, "over the connection cap: closed");
            return None;
        };
        // TCP_NODELAY: otherwise small answers (the proxy's 202 for nginx; the provider's
        // first answer on a connection, behind the TLS 1.3 session tickets) wait for the
        // client's delayed ACK, 40 ms later.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Some(Admitted::new(tcp, admission))
    }
}

/// One accepted connection and what it needs to be served.
struct Connection<C> {
    connections: Connections,
    router: Router,
    info: C,
    /// Holds a place in `serve`'s count of open connections until the connection ends.
    stopping: watch::Receiver<()>,
    shutdown: Shutdown,
}

impl<C: Clone + Send + Sync + 'static> Connection<C> {
    async fn run(self, tcp: Admitted<TcpStream>, tls: Option<TlsAcceptor>) {
        let Some(tls) = tls else {
            return self.serve(tcp).await;
        };
        let handshake = tls.accept(tcp);
        match tokio::time::timeout(self.connections.limits.tls_handshake_timeout, handshake).await {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out: closed"),
        }
    }

    async fn serve<T>(mut self, io: T)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.connections.limits;
        let activity = Arc::new(Activity::default());
        let service = ConnectionService {
            router: self.router,
            info: self.info,
            activity: Arc::clone(&activity),
            body_timeout: limits.body_timeout,
            shutdown: self.shutdown,
        };
        let http = Arc::clone(&self.connections.http);
        let connection = http.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let stopping = tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(e) = outcome {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            () = activity.idle(&limits) => {
                tracing::debug!("idle connection: closing");
                false
            }
            _ = self.stopping.changed() => true,
        };
        connection.as_mut().graceful_shutdown();
        if stopping {
            // Bounded by the process: its shutdown cuts what is left at `http.shutdown_grace`.
            let _ = connection.await;
        } else {
            let _ = tokio::time::timeout(GRACE, connection).await;
        }
    }
}

/// The router as hyper calls it for one connection.
struct ConnectionService<C> {
    router: Router,
    info: C,
    activity: Arc<Activity>,
    body_timeout: Duration,
    shutdown: Shutdown,
}

impl<C: Clone + Send + Sync + 'static> hyper::service::Service<Request<Incoming>>
    for ConnectionService<C>
{
    type Response = Response<Tracked<Body>>;
    type Error = Infallible;
    type Future = TrackedAnswer;

    fn call(&self, request: Request<Incoming>) -> TrackedAnswer {
        let in_flight = self.activity.start();
        // HTTP/2 has no `Connection` header (RFC 9113 §8.2.2): its connections get GOAWAY when
        // the listeners close.
        let shutdown =
            (request.version() <= hyper::Version::HTTP_11).then(|| self.shutdown.clone());
        let mut request = request.map(|body| Body::new(DeadlineBody::new(body, self.body_timeout)));
        request
            .extensions_mut()
            .insert(ConnectInfo(self.info.clone()));
        TrackedAnswer::new(self.router.clone().call(request), in_flight, shutdown)
    }
}

/// The next connection, or `None` once `shutdown` resolves; a failure to accept is logged and
/// waited out.
async fn accept<F: Future<Output = ()>>(
    listener: &TcpListener,
    shutdown: &mut Pin<&mut F>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => accept_failed(&e).await,
            },
            () = &mut *shutdown => return None,
        }
    }
}

async fn accept_failed(error: &io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(ACCEPT_RETRY).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn max_connections_is_lowered_to_fit_the_open_files() {
        let fits = Connections::new(Limits::caps(10_000, 256), &[], Some(256));
        assert_eq!(fits.limits.max_connections, 96);
        let unlimited = Connections::new(Limits::caps(10_000, 256), &[], None);
        assert_eq!(unlimited.limits.max_connections, 10_000);
    }
}
