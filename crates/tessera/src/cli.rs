//! The command line: `serve`, `proxy`, `login`, `credential`, `logout`, `keys rotate`,
//! `sessions list|revoke`, `users hash|disable|enable`, `kube apiserver-config`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tessera_core::clock::{Clock, SystemClock};

use crate::admin::{self, RevokeTarget};
use crate::audit::Audit;
use crate::config::{Config, Storage};
use crate::kube::{
    ApiserverTrust, AuthenticationConfigVersion, SESSION_ID_EXTRA, unverifiable_by_apiserver,
};
use crate::serve::{self, ServeOptions};
use tessera_store::{PostgresOptions, StorageUrl};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Kubernetes access with short-lived credentials that never lose a session"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OpenID Connect provider.
    Serve {
        /// Create (on first start) and use a development data directory: CA, certificate,
        /// user `dev`, clients `kubernetes` and `demo`, SQLite.
        #[arg(long)]
        dev: bool,
        /// The data directory for --dev.
        #[arg(long, default_value = "tessera-data")]
        data_dir: PathBuf,
        /// The configuration file (tessera.yaml).
        #[arg(long, conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Address to listen on; port 0 picks a free one.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the authenticating reverse proxy alone, in front of `proxy.provider`.
    Proxy {
        /// The configuration file with a `proxy:` section.
        #[arg(long)]
        config: PathBuf,
        /// Overrides `proxy.listen`; port 0 picks a free one.
        #[arg(long)]
        listen: Option<String>,
    },
    // `login`, `credential`, `logout`: the kubectl side, also `kubectl-tessera` on its own.
    #[command(flatten)]
    Client(tessera_client::Command),
    /// Run the database migrations and exit (`serve` also runs them at start).
    Migrate(ConfigArg),
    /// Work on whole databases.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// List and end people's sessions (on the server's configuration; servers may be running).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Manage people: hash a local password, disable or enable someone.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Kubernetes integration.
    Kube {
        #[command(subcommand)]
        command: KubeCommand,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Copy every session, token, key and secret into an empty database, e.g. from the embedded
    /// SQLite to PostgreSQL. Stop the servers first: what they write during the copy is lost.
    Copy {
        /// Source: sqlite://PATH or postgres://…
        #[arg(long)]
        from: String,
        /// Target (must be empty): sqlite://PATH or postgres://… (password from
        /// TESSERA_STORAGE_PASSWORD)
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new signing key; JWKS keeps publishing the previous one.
    Rotate(ConfigArg),
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List live sessions: id, person, client, connector, first and last use, expiry.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this person's (a local user name, or a directory person's sub).
        #[arg(long)]
        user: Option<String>,
        /// Only this client's.
        #[arg(long)]
        client: Option<String>,
        /// Print the admin API's JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Show at most this many (default: all).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// End one session by id, or every session of a person (of one client with --client).
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The session's id, as `tessera sessions list` shows it.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        session_id: Option<String>,
        /// End this person's sessions (and their SSO sessions, without --client).
        #[arg(long)]
        user: Option<String>,
        /// Only this client's sessions of --user.
        #[arg(long, requires = "user")]
        client: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Read a password from standard input and print its argon2id hash.
    Hash,
    /// End every session of a person at once and refuse their logins and refreshes.
    Disable {
        #[command(flatten)]
        config: ConfigArg,
        /// A local user name, or a directory person's sub as `tessera sessions list` shows it.
        user: String,
    },
    /// Let a disabled person sign in again.
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        /// The name `tessera users disable` was given.
        user: String,
    },
}

#[derive(Subcommand)]
enum KubeCommand {
    /// Print kube-apiserver flags and an AuthenticationConfiguration for this issuer.
    ApiserverConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// The client id kubectl uses.
        #[arg(long, default_value = "kubernetes")]
        client_id: String,
        /// The AuthenticationConfiguration's version: v1 (Kubernetes 1.34+) or v1beta1
        /// (1.30 to 1.33).
        #[arg(long, value_enum, default_value = "v1")]
        api_version: AuthenticationConfigVersion,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file; default: DATA_DIR/tessera.yaml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory of `serve --dev`.
    #[arg(long, default_value = "tessera-data")]
    data_dir: PathBuf,
}

impl ConfigArg {
    fn load(&self) -> Result<Config> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tessera.yaml"));
        let env: Vec<(String, String)> = std::env::vars().collect();
        Ok(Config::load(&path, &env)?)
    }
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            dev,
            data_dir,
            config,
            listen,
        } => runtime()?.block_on(serve::run(ServeOptions {
            dev,
            data_dir,
            config,
            listen,
        })),
        Command::Proxy { config, listen } => {
            runtime()?.block_on(crate::proxy::run_standalone(&config, listen.as_deref()))
        }
        Command::Client(command) => command.run(),
        Command::Migrate(config) => runtime()?.block_on(migrate(&config)),
        Command::Storage {
            command: StorageCommand::Copy { from, to },
        } => runtime()?.block_on(copy_storage(&from, &to)),
        Command::Keys {
            command: KeysCommand::Rotate(config),
        } => runtime()?.block_on(rotate_keys(&config)),
        Command::Sessions { command } => runtime()?.block_on(sessions(command)),
        Command::Users {
            command: UsersCommand::Hash,
        } => hash_password(),
        Command::Users {
            command: UsersCommand::Disable { config, user },
        } => runtime()?.block_on(admin::disable(config.load()?, &user)),
        Command::Users {
            command: UsersCommand::Enable { config, user },
        } => runtime()?.block_on(admin::enable(config.load()?, &user)),
        Command::Kube {
            command:
                KubeCommand::ApiserverConfig {
                    config,
                    client_id,
                    api_version,
                },
        } => apiserver_config(&config, &client_id, api_version),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn sessions(command: SessionsCommand) -> Result<()> {
    match command {
        SessionsCommand::List {
            config,
            user,
            client,
            json,
            limit,
        } => admin::list(config.load()?, user, client, limit, json).await,
        SessionsCommand::Revoke {
            config,
            session_id,
            user,
            client,
        } => {
            let target = match (session_id, user) {
                (Some(id), _) => RevokeTarget::Session(id),
                (None, Some(user)) => RevokeTarget::Person { user, client },
                (None, None) => bail!("name a session id, or a person with --user"),
            };
            admin::revoke(config.load()?, target).await
        }
    }
}

async fn migrate(arg: &ConfigArg) -> Result<()> {
    let config = arg.load()?;
    match &config.storage {
        Storage::Sqlite { path, synchronous } => {
            // Opening an SQLite database migrates it, under its own write lock.
            crate::storage::open_sqlite(path, *synchronous)?;
            println!("{} is at the current schema version", path.display());
        }
        Storage::Postgres(options) => {
            let report = tessera_store::migrate_only(options).await?;
            if report.applied.is_empty() {
                println!(
                    "the database is at schema version {}; nothing to do",
                    report.current
                );
            } else {
                println!(
                    "migrated the database from schema version {} to {} (applied {:?})",
                    report.found, report.current, report.applied
                );
            }
        }
    }
    Ok(())
}

async fn copy_storage(from: &str, to: &str) -> Result<()> {
    let source = storage_from_url(from, true).context("--from")?;
    let target = storage_from_url(to, false).context("--to")?;
    let source = crate::storage::open(&source).await?;
    let target = crate::storage::open(&target).await?;
    let report = tessera_store::copy_store(source.as_ref(), target.as_ref()).await?;
    println!("copied {report}");
    Ok(())
}

/// A storage URL given on the command line; a source SQLite file must exist (opening would
/// otherwise create an empty one and copy nothing).
fn storage_from_url(url: &str, must_exist: bool) -> Result<Storage> {
    match StorageUrl::parse(url).map_err(anyhow::Error::msg)? {
        StorageUrl::Sqlite(path) => {
            if must_exist && !path.exists() {
                bail!("{} does not exist", path.display());
            }
            Ok(Storage::Sqlite {
                path,
                synchronous: tessera_store::Synchronous::Full,
            })
        }
        StorageUrl::Postgres(url) => Ok(Storage::Postgres(PostgresOptions {
            password: std::env::var("TESSERA_STORAGE_PASSWORD").ok(),
            ..PostgresOptions::new(url)
        })),
    }
}

async fn rotate_keys(arg: &ConfigArg) -> Result<()> {
    let config = arg.load()?;
    let store = crate::storage::open(&config.storage).await?;
    let now = SystemClock.now();
    let algs = [config.signing_alg, config.access_token_alg];
    let audit = Audit::start(config.audit_file.as_deref())?;
    let added = crate::keys::rotate_if_due(store.as_ref(), &algs, now, None, &audit).await?;
    for (kid, alg) in &added {
        println!("added signing key {kid} ({})", alg.as_str());
    }
    println!(
        "running servers pick the new key up within {}s",
        config.key_reload_interval.as_secs()
    );
    audit.flush();
    Ok(())
}

fn hash_password() -> Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("cannot read the password from standard input")?;
    let password = input
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&input);
    if password.is_empty() {
        bail!(
            "standard input was empty; pipe the password in, e.g. `printf %s 'secret' | tessera users hash`"
        );
    }
    let hash = crate::secret::hash_password(password)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    println!("{hash}");
    Ok(())
}

fn apiserver_config(
    arg: &ConfigArg,
    client_id: &str,
    api_version: AuthenticationConfigVersion,
) -> Result<()> {
    let config = arg.load()?;
    if let Some(refusal) = unverifiable_by_apiserver(config.signing_alg) {
        bail!("{refusal}.");
    }
    let trust = ApiserverTrust {
        issuer: config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("https://{}", config.listen)),
        client_id: client_id.to_owned(),
        certificate_authority: dev_ca(&config)?,
        signing_alg: config.signing_alg,
    };
    println!("# kube-apiserver flags (legacy form; they cannot map the session id):");
    for flag in trust.flags() {
        println!("{flag}");
    }
    println!();
    println!(
        "# Or structured authentication (--authentication-config=FILE; v1: Kubernetes 1.34+, \
         --api-version v1beta1: 1.30+). `{SESSION_ID_EXTRA}` in the user's extra names the \
         tessera session in the cluster's audit log."
    );
    let structured = trust.authentication_configuration(api_version);
    print!(
        "{}",
        structured.context("cannot render the AuthenticationConfiguration")?
    );
    Ok(())
}

/// The CA `serve --dev` made next to the configuration, if any: its path and PEM.
fn dev_ca(config: &Config) -> Result<Option<(PathBuf, String)>> {
    let Some(ca) = config
        .path
        .parent()
        .map(|d| d.join("ca.pem"))
        .filter(|p| p.exists())
    else {
        return Ok(None);
    };
    let pem =
        std::fs::read_to_string(&ca).with_context(|| format!("cannot read {}", ca.display()))?;
    Ok(Some((std::fs::canonicalize(&ca).unwrap_or(ca), pem)))
}
