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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

/// Open files kept for everything but client connections: the store, logs, listening sockets,
/// the runtime.
const RESERVED_FILES: u64 = 64;

/// How long a connection told to close (idle, or the server stopping) may take to finish what
/// it has in flight.
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
    /// on them, each request carrying `ConnectInfo(info(peer))`, until `shutdown` resolves;
    /// then lets the open connections finish for at most `GRACE` (10 s).
    pub async fn serve<C>(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        router: Router,
        info: fn(SocketAddr) -> C,
        shutdown: impl Future<Output = ()>,
    ) where
        C: Clone + Send + Sync + 'static,
    {
        let (stop, stopping) = watch::channel(());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(&e).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Some(admission) = self.gate.admit(peer.ip()) else {
                tracing::debug!(%peer, "over the connection cap: closed");
                continue;
            };
            // TCP_NODELAY: otherwise small answers (the proxy's 202 for nginx; the provider's
            // first answer on a connection, behind the TLS 1.3 session tickets) wait for the
            // client's delayed ACK, 40 ms later.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let io = Admitted {
                io: tcp,
                _admission: admission,
            };
            let connection = Connection {
                connections: self.clone(),
                router: router.clone(),
                info: info(peer),
                stopping: stopping.clone(),
            };
            tokio::spawn(connection.run(io, tls.clone()));
        }
        drop(listener);
        drop(stopping);
        stop.send_replace(());
        let _ = tokio::time::timeout(GRACE, stop.closed()).await;
    }
}

/// Connections open now, in total and per client address.
struct Gate {
    max_connections: usize,
    max_per_ip: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Gate {
    fn new(limits: &Limits, trusted_proxies: &[ipnet::IpNet]) -> Gate {
        Gate {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            exempt: trusted_proxies.to_vec(),
            open: Mutex::new(Open::default()),
        }
    }

    /// A place for a connection from `peer`, or `None` when a cap is reached. A trusted proxy
    /// carries many clients on its address: it counts towards `max_connections` only.
    fn admit(self: &Arc<Gate>, peer: IpAddr) -> Option<Admission> {
        let key = Some(client_key(peer)).filter(|_| !self.exempt.iter().any(|n| n.contains(&peer)));
        // A panic while counting cannot leave the counts half-updated: each is one statement.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_connections {
            return None;
        }
        if let Some(key) = key {
            let count = open.per_ip.entry(key).or_default();
            if *count >= self.max_per_ip {
                return None;
            }
            *count += 1;
        }
        open.total += 1;
        Some(Admission {
            gate: Arc::clone(self),
            key,
        })
    }
}

/// The per-address key: IPv4-mapped addresses as IPv4, IPv6 by its /64 (one subscriber's
/// prefix, from which it can pick any address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// A connection's place in the [`Gate`], given back when the connection's socket closes.
struct Admission {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(key) = self.key
            && let Some(count) = open.per_ip.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&key);
            }
        }
    }
}

/// A socket holding its [`Admission`]: the place is given back when the socket is dropped,
/// also when a websocket took it over from HTTP.
struct Admitted<T> {
    io: T,
    _admission: Admission,
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One accepted connection and what it needs to be served.
struct Connection<C> {
    connections: Connections,
    router: Router,
    info: C,
    stopping: watch::Receiver<()>,
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
        };
        let http = Arc::clone(&self.connections.http);
        let connection = http.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(e) = outcome {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            () = activity.idle(&limits) => tracing::debug!("idle connection: closing"),
            _ = self.stopping.changed() => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(GRACE, connection).await;
    }
}

/// What a connection is doing, for the idle watch: requests in flight, and a count of requests
/// started and finished that moves whenever anything happens.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    changes: AtomicU64,
}

impl Activity {
    fn start(self: &Arc<Activity>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changes.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Resolves when the connection has had no request for `header_read_timeout` from its
    /// start (covering the HTTP/2 preface and the version sniffing before hyper's own header
    /// timer runs), or later for a whole `idle_timeout` without one in flight (so closed
    /// between one and two `idle_timeout`s after its last answer). Polling a counter keeps
    /// requests free of timer resets.
    async fn idle(&self, limits: &Limits) {
        tokio::time::sleep(limits.header_read_timeout).await;
        let mut seen = 0;
        loop {
            let now = self.changes.load(Ordering::Relaxed);
            if now == seen && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
            tokio::time::sleep(limits.idle_timeout).await;
        }
    }
}

/// A request in flight, until its answer's body is sent (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The router as hyper calls it for one connection.
struct ConnectionService<C> {
    router: Router,
    info: C,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl<C: Clone + Send + Sync + 'static> hyper::service::Service<Request<Incoming>>
    for ConnectionService<C>
{
    type Response = Response<Tracked<Body>>;
    type Error = Infallible;
    type Future = TrackedAnswer;

    fn call(&self, request: Request<Incoming>) -> TrackedAnswer {
        let in_flight = self.activity.start();
        let mut request = request.map(|body| Body::new(DeadlineBody::new(body, self.body_timeout)));
        request
            .extensions_mut()
            .insert(ConnectInfo(self.info.clone()));
        TrackedAnswer {
            answer: self.router.clone().call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The router's answer, its body carrying the request's [`InFlight`].
    struct TrackedAnswer {
        #[pin]
        answer: axum::routing::future::RouteFuture<Infallible>,
        in_flight: Option<InFlight>,
    }
}

impl Future for TrackedAnswer {
    type Output = Result<Response<Tracked<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.answer.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked {
            body,
            _in_flight: in_flight,
        })))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that keeps its request in flight until it is sent.
    struct Tracked<B> {
        #[pin]
        body: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: HttpBody> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that must arrive whole within `timeout` of the first time it has to be
    /// waited for: a deadline for the whole body, not a gap between bytes (tower-http's
    /// `TimeoutBody`), which a client trickling a byte a second would never reach.
    struct DeadlineBody<B> {
        #[pin]
        body: B,
        timeout: Duration,
        #[pin]
        deadline: Option<Sleep>,
    }
}

impl<B> DeadlineBody<B> {
    fn new(body: B, timeout: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            body,
            timeout,
            deadline: None,
        }
    }
}

/// The error a request body ends with when its deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within http.body_timeout")]
struct BodyTimedOut;

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        if let Some(deadline) = this.deadline.as_pin_mut() {
            ready!(deadline.poll(cx));
        }
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

    fn limits(max_connections: usize, max_connections_per_ip: usize) -> Limits {
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

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_is_capped_and_its_places_come_back_on_close() {
        let gate = Arc::new(Gate::new(&limits(100, 2), &[]));
        let first = gate.admit(ip("192.0.2.1")).unwrap();
        let _second = gate.admit(ip("192.0.2.1")).unwrap();
        assert!(gate.admit(ip("192.0.2.1")).is_none());
        assert!(gate.admit(ip("192.0.2.2")).is_some(), "another address");
        drop(first);
        assert!(gate.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn the_process_is_capped_across_addresses() {
        let gate = Arc::new(Gate::new(&limits(2, 10), &[]));
        let held: Vec<_> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .map(|a| gate.admit(ip(a)).unwrap())
            .collect();
        assert!(gate.admit(ip("192.0.2.3")).is_none());
        drop(held);
        assert!(gate.admit(ip("192.0.2.3")).is_some());
        assert_eq!(
            gate.open.lock().unwrap().per_ip.len(),
            0,
            "nothing left behind"
        );
    }

    #[test]
    fn trusted_proxies_count_only_towards_the_process_cap() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let gate = Arc::new(Gate::new(&limits(3, 1), &trusted));
        let _a = gate.admit(ip("10.1.2.3")).unwrap();
        let _b = gate.admit(ip("10.1.2.3")).unwrap();
        let _c = gate.admit(ip("10.1.2.3")).unwrap();
        assert!(
            gate.admit(ip("10.1.2.3")).is_none(),
            "max_connections still holds"
        );
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let gate = Arc::new(Gate::new(&limits(100, 1), &[]));
        let _one = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(gate.admit(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_some());
        let _v4 = gate.admit(ip("192.0.2.7")).unwrap();
        assert!(gate.admit(ip("::ffff:192.0.2.7")).is_none());
    }

    #[test]
    fn max_connections_is_lowered_to_fit_the_open_files() {
        let fits = Connections::new(limits(10_000, 256), &[], Some(256));
        assert_eq!(fits.limits.max_connections, 96);
        let unlimited = Connections::new(limits(10_000, 256), &[], None);
        assert_eq!(unlimited.limits.max_connections, 10_000);
    }

    /// A byte every tick, for ever.
    struct Trickle(tokio::time::Interval);

    impl HttpBody for Trickle {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            ready!(self.0.poll_tick(cx));
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test]
    async fn a_body_must_arrive_whole_before_its_deadline_however_it_trickles() {
        let trickle = Trickle(tokio::time::interval(Duration::from_millis(50)));
        let mut body = std::pin::pin!(DeadlineBody::new(trickle, Duration::from_millis(500)));
        let mut frames = 0;
        let error = loop {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                Some(Ok(_)) => frames += 1,
                Some(Err(e)) => break e,
                None => panic!("a trickle never ends"),
            }
        };
        assert!(error.is::<BodyTimedOut>(), "{error}");
        assert!(frames > 1, "bytes came until the deadline: {frames}");
    }
}
