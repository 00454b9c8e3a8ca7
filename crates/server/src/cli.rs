//! The `supa-realtime-server` command line: `serve`, `token`, `cleanup-postgres`.
//!
//! It lives in the library, not in `main.rs`, because two programs run it: the binary, and
//! the Python wheel (`python -m supa_realtime.server`), which links this crate into its native
//! module. Both parse the same grammar and behave the same.

use std::ffi::OsString;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, DEFAULT_JWT_SECRET};
use crate::postgres::{ChangeFeed, PostgresConfig};

/// A Supabase Realtime server: broadcast, presence and postgres_changes over the protocol
/// the official clients speak.
#[derive(Parser)]
#[command(name = "supa-realtime-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket and REST (in memory unless --database-url is given).
    Serve(Box<Config>),
    /// Drop the replication slot and publication postgres_changes created (run it while no
    /// server uses them). The slot is permanent so that no committed change is skipped across
    /// restarts; a database that will not see this server again should have it dropped, or
    /// it keeps WAL forever.
    CleanupPostgres {
        /// The database.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The slot to drop.
        #[arg(
            long,
            env = "SLOT_NAME",
            default_value = "supabase_realtime_replication_slot"
        )]
        slot_name: String,
        /// The publication to drop.
        #[arg(long, env = "PUBLICATION", default_value = "supabase_realtime")]
        publication: String,
    },
    /// Print a signed JWT for local testing.
    Token {
        /// The `role` claim.
        #[arg(long, default_value = "authenticated")]
        role: String,
        /// The `sub` claim (user id).
        #[arg(long)]
        sub: Option<String>,
        /// Seconds until `exp`.
        #[arg(long, default_value_t = 3600)]
        expires_in: i64,
        /// Secret to sign with.
        #[arg(long, env = "JWT_SECRET", default_value = DEFAULT_JWT_SECRET, hide_env_values = true)]
        jwt_secret: String,
    },
}

/// Run the command line with `args` (the first is the program name) and return the exit
/// status. Usage errors, `--help` and `--version` print as clap prints them. Blocks until the
/// command is done (`serve`: until SIGINT/SIGTERM).
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        Command::Token {
            role,
            sub,
            expires_in,
            jwt_secret,
        } => {
            println!("{}", token(&role, sub.as_deref(), expires_in, &jwt_secret));
            0
        }
        Command::CleanupPostgres {
            database_url,
            slot_name,
            publication,
        } => {
            let config = PostgresConfig {
                slot_name,
                publication,
                ..PostgresConfig::new(database_url)
            };
            let Some(runtime) = runtime() else { return 1 };
            match runtime.block_on(ChangeFeed::cleanup(&config)) {
                Ok(()) => {
                    println!(
                        "dropped slot {} and publication {}",
                        config.slot_name, config.publication
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Command::Serve(config) => {
            init_logging(&config);
            let Some(runtime) = runtime() else { return 1 };
            match runtime.block_on(crate::run(*config)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "server failed");
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            None
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A subscriber may exist already (the Python module bridges `tracing` to `logging`); the
    // server's logs then go there.
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A JWT for local testing, signed with `secret`.
fn token(role: &str, sub: Option<&str>, expires_in: i64, secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut claims = json!({"role": role, "iat": now, "exp": now + expires_in});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    crate::auth::sign_hs256(secret, &claims)
}
