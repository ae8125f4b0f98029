//! How far a stopping process has got. On SIGTERM or SIGINT the process goes through the
//! [`Phase`]s in order, each reached once and never left, on the clock of
//! `http.shutdown_grace` (G) from the signal:
//!
//! 1. `Draining`, at once: `/readyz` answers 503, and every HTTP/1 answer carries
//!    `Connection: close`, so that keep-alive clients reconnect (elsewhere, once the load
//!    balancer knows). The listeners keep accepting for G/2. Why not close them at once: a
//!    terminating pod leaves the Service's endpoints at the same moment it gets SIGTERM, and
//!    kube-proxy, ingress controllers and cloud load balancers take a few seconds more to stop
//!    sending new connections to it; refused in that window, they are errors for users who
//!    reached a healthy Service (what a `preStop: sleep` hook is for, built in).
//! 2. `Closing`, at G/2: the listeners close; each open connection finishes the requests it
//!    has in flight, then closes (HTTP/1 after its current answer, HTTP/2 with GOAWAY). The
//!    process ends as soon as none is left, so an idle replica stops at G/2.
//! 3. `Cut`, at G: connections still open are cut, and counted in the log.
//!
//! A second signal goes straight to `Cut`. The process then flushes the audit log and exits 0
//! either way: a stop that was asked for is not a failure. Set the pod's
//! `terminationGracePeriodSeconds` above G, or the kubelet's SIGKILL comes first.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

/// Where a process is on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// No signal yet.
    Serving,
    /// Unready; the listeners still accept.
    Draining,
    /// The listeners are closed; open connections finish what they have in flight.
    Closing,
    /// The grace has run out: whatever is still open is cut.
    Cut,
}

/// The shutdown state of the process, shared by the listeners and `/readyz`; cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown {
            phase: Arc::new(watch::Sender::new(Phase::Serving)),
        }
    }
}

impl Shutdown {
    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether a signal has come: the process is on its way out, and unready.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Resolves once the process has reached `phase` (at once if it is already past it).
    pub async fn reached(&self, phase: Phase) {
        let mut phases = self.phase.subscribe();
        // An error would mean the sender is gone, but `self` holds it.
        let _ = phases.wait_for(|now| *now >= phase).await;
    }

    /// Moves on to `phase`, unless the process is already there or further.
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|now| {
            let later = *now < phase;
            if later {
                *now = phase;
            }
            later
        });
    }
}

/// Listens for SIGTERM (the kubelet, systemd) and SIGINT (Ctrl-C) from now on, so that a
/// signal sent as soon as the process has announced itself is not missed, and takes `shutdown`
/// through its phases in the background when one comes, `grace` being `http.shutdown_grace`.
pub fn stop_on_signals(shutdown: &Shutdown, grace: Duration) -> std::io::Result<()> {
    let signals = Signals::install()?;
    tokio::spawn(on_signals(signals, shutdown.clone(), grace));
    Ok(())
}

/// The stop signals, listened for from the moment this is installed.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal to come.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            () = receive(&mut self.terminate) => "SIGTERM",
            () = receive(&mut self.interrupt) => "SIGINT",
        }
    }
}

/// Takes `shutdown` through its phases when the first signal comes; a second one cuts at once.
async fn on_signals(mut signals: Signals, shutdown: Shutdown, grace: Duration) {
    let first = signals.next().await;
    let accepting = grace / 2;
    tracing::info!(
        signal = first,
        ?grace,
        "stopping: /readyz fails from now, new connections are taken for half of \
         http.shutdown_grace, then requests in flight finish"
    );
    shutdown.advance(Phase::Draining);
    let timeline = async {
        tokio::time::sleep(accepting).await;
        shutdown.advance(Phase::Closing);
        tokio::time::sleep(grace.saturating_sub(accepting)).await;
    };
    tokio::select! {
        () = timeline => {}
        second = signals.next() => tracing::warn!(signal = second, "a second signal: stopping now"),
    }
    shutdown.advance(Phase::Cut);
}

/// Logs how the drain ended: `cut` connections were still open when the grace ran out.
pub fn report(cut: usize) {
    if cut == 0 {
        tracing::info!("every connection finished; stopped");
    } else {
        tracing::warn!(
            connections = cut,
            "http.shutdown_grace ran out: connections still open were cut"
        );
    }
}

/// Resolves on the next delivery of `signal`, or never once signals can no longer come.
async fn receive(signal: &mut Signal) {
    if signal.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_waiters_see_later_ones() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.is_draining());
        let closing = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.reached(Phase::Closing).await }
        });
        shutdown.advance(Phase::Cut);
        closing.await.unwrap();
        shutdown.advance(Phase::Draining);
        assert_eq!(shutdown.phase(), Phase::Cut);
        assert!(shutdown.is_draining());
        shutdown.reached(Phase::Draining).await;
    }
}
