//! In-process tests (STYLE.md layer 4): the proxy's router driven through
//! `tower::ServiceExt::oneshot`, wired as `tessera serve` wires it, with the provider in the
//! same process, a temporary SQLite store, an echo upstream on a loopback port, and a
//! `ManualClock` that the tests advance instead of sleeping. What a timeout does is proven
//! here; the black-box suite keeps what only the binary or a browser can show.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// a panic is how a test reports failure
// The rig's items are `pub` for the test modules of this one binary.
#![allow(unreachable_pub)]

mod proxy;
mod proxy_external;
mod rig;
