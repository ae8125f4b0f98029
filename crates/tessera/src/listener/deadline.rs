//! The whole-body deadline of a request (`http.body_timeout`): a client that trickles its body
//! is cut off when the deadline passes, however steadily its bytes come.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

pin_project_lite::pin_project! {
    /// A request body that must arrive whole within `timeout` of the first time it has to be
    /// waited for: a deadline for the whole body, not a gap between bytes (tower-http's
    /// `TimeoutBody`), which a client trickling a byte a second would never reach.
    pub(super) struct DeadlineBody<B> {
        #[pin]
        body: B,
        timeout: Duration,
        #[pin]
        deadline: Option<Sleep>,
    }
}

impl<B> DeadlineBody<B> {
    pub(super) fn new(body: B, timeout: Duration) -> DeadlineBody<B> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use std::convert::Infallible;

    use super::*;

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
