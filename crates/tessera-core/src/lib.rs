//! The pure heart of tessera: identifiers, opaque tokens, the refresh-token redeem decision,
//! PKCE, JWT signing and audit events, and the small vocabulary the server and the kubectl
//! client share (durations as written, paths as a shell reads them). No I/O lives here: time
//! arrives through [`clock::Clock`] and randomness as arguments, so every rule is tested
//! without a server.
#![warn(missing_docs)]

pub mod audit;
pub mod clock;
pub mod duration;
pub mod id;
pub mod jwt;
pub mod pkce;
pub mod redeem;
pub mod seal;
pub mod shell;
pub mod token;
