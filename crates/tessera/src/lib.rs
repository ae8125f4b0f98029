//! tessera as a library: the provider's configuration, use cases and HTTP surface, used by the
//! `tessera` binary, the in-process tests and the benchmarks.

pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod connector;
pub mod dev;
pub mod file_mode;
pub mod http;
pub mod keys;
pub mod kube;
pub mod listener;
pub mod metrics;
mod path;
pub mod proxy;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod storage;
pub mod tls;
pub mod users;
pub mod web;
