//! The kubectl side of tessera: `login` (the browser login that writes the kubeconfig),
//! `credential` (the exec plugin kubectl runs before its requests, with the token cache every
//! tool shares) and `logout`. Both `tessera` and the small `kubectl-tessera` run these commands;
//! this crate links nothing of the server, so the plugin kubectl starts again and again loads
//! only what a credential needs.
#![warn(missing_docs)]

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

pub mod browser;
pub mod cache;
pub mod credential;
pub mod invocation;
mod kube_user;
pub mod kubeconfig;
pub mod login;
pub mod logout;
mod loopback;
mod renewal;

use credential::CredentialArgs;
use login::LoginArgs;
use logout::LogoutArgs;

/// The client's commands, as `tessera` and `kubectl-tessera` both take them.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Log in through the browser and write the cluster, user and context into the kubeconfig.
    Login(LoginArgs),
    /// Print a Kubernetes ExecCredential (kubectl runs this; see `tessera login`).
    Credential(CredentialArgs),
    /// Revoke the cached session at the server and delete it from the token cache.
    Logout(LogoutArgs),
}

impl Command {
    /// Runs the command. `credential` starts an async runtime only when it must refresh: a
    /// cached answer is read and printed without one.
    pub fn run(self) -> Result<()> {
        match self {
            Command::Login(args) => runtime()?.block_on(login::login(&args)),
            Command::Credential(args) => credential::credential(&args),
            Command::Logout(args) => runtime()?.block_on(logout::logout(&args)),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `kubectl-tessera`: the client alone, as a kubectl plugin (`kubectl tessera login`).
#[derive(Parser)]
#[command(
    name = "kubectl-tessera",
    version,
    about = "Kubernetes access with short-lived credentials that never lose a session: the kubectl plugin of tessera"
)]
struct Plugin {
    #[command(subcommand)]
    command: Command,
}

/// The `main` of `kubectl-tessera`: runs the command line's command and says, in one
/// sentence, what went wrong.
pub fn plugin_main() -> ExitCode {
    match Plugin::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
