//! What a connection is doing, for the idle watch: the requests in flight, each until its
//! answer's body is sent (or dropped). A process shutting down closes HTTP/1 connections after
//! their current answer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::{Body, HttpBody};
use http_body::{Frame, SizeHint};
use hyper::Response;
use hyper::header::{self, HeaderValue};

use super::Limits;
use crate::shutdown::Shutdown;

/// What a connection is doing, for the idle watch: requests in flight, and a count of requests
/// started and finished that moves whenever anything happens.
#[derive(Default)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    changes: AtomicU64,
}

impl Activity {
    /// A request starts: in flight until the returned [`InFlight`] is dropped.
    pub(super) fn start(self: &Arc<Activity>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changes.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Resolves when the connection has had no request for `header_read_timeout` from its
    /// start (covering the HTTP/2 preface and the version sniffing before hyper's own header
    /// timer runs), or later for a whole `idle_timeout` without one in flight (so closed
    /// between one and two `idle_timeout`s after its last answer). Polling a counter keeps
    /// requests free of timer resets.
    pub(super) async fn idle(&self, limits: &Limits) {
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
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.changes.fetch_add(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The router's answer, its body carrying the request's [`InFlight`].
    pub(super) struct TrackedAnswer {
        #[pin]
        answer: axum::routing::future::RouteFuture<Infallible>,
        in_flight: Option<InFlight>,
        // Set for HTTP/1 requests: a process shutting down asks the client to close.
        shutdown: Option<Shutdown>,
    }
}

impl Future for TrackedAnswer {
    type Output = Result<Response<Tracked<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.answer.poll(cx));
        if this.shutdown.as_ref().is_some_and(Shutdown::is_draining) {
            // Not over an upgrade's `Connection: upgrade`: the websocket is already promised.
            response
                .headers_mut()
                .entry(header::CONNECTION)
                .or_insert(HeaderValue::from_static("close"));
        }
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked {
            body,
            _in_flight: in_flight,
        })))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that keeps its request in flight until it is sent.
    pub(super) struct Tracked<B> {
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

impl TrackedAnswer {
    /// The router's `answer` to a request that is `in_flight`, closing its connection after
    /// it once `shutdown` (if given) is draining.
    pub(super) fn new(
        answer: axum::routing::future::RouteFuture<Infallible>,
        in_flight: InFlight,
        shutdown: Option<Shutdown>,
    ) -> TrackedAnswer {
        TrackedAnswer {
            answer,
            in_flight: Some(in_flight),
            shutdown,
        }
    }
}
