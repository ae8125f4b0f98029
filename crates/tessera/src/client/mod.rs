//! The kubectl side: `tessera login`, the `tessera credential` exec plugin with its shared
//! token cache, and `tessera logout`.

pub mod cache;
pub mod credential;
pub mod kubeconfig;
pub mod login;
