//! Black-box tests: each starts the real `tessera` binary on a random loopback port with its own
//! data directory and speaks HTTPS to it, as kubectl, a browser or an RP library would.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// a panic is how a test reports failure
// The harness is shared by test modules; not every module uses every helper.
#![allow(unreachable_pub, dead_code)]

mod browser;
mod cluster;
mod ldap;
mod oidc_upstream;
mod python;
mod support;
mod upstream;

mod account;
mod admin;
mod bad_input;
mod connector_chromium;
mod deploy;
mod endpoints;
mod file_modes;
mod flow;
mod image;
mod keys;
mod kube_api;
mod kubectl;
mod kubectl_connector;
mod kubectl_plugin;
mod ldap_directory;
mod ldap_login;
mod listener_limits;
mod login_limits;
mod oidc_connector;
mod oidc_library;
mod postgres_tls;
mod provider_hardening;
mod proxy;
mod proxy_chromium;
mod proxy_external;
mod proxy_faults;
mod proxy_hostile;
mod proxy_limits;
mod replicas;
mod rotation;
mod shutdown;
mod storage_copy;
mod users_reload;
