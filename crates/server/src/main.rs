//! `supa-realtime-server`: the command line.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::json;
use supa_realtime_server::config::{Config, LogFormat, DEFAULT_JWT_SECRET};
use supa_realtime_server::postgres::{ChangeFeed, PostgresConfig};
use tracing_subscriber::EnvFilter;

/// A Supabase Realtime server: broadcast, presence and postgres_changes over the protocol
/// the official clients speak.
#[derive(Parser)]
#[command(version, about)]
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

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            role,
            sub,
            expires_in,
            jwt_secret,
        } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let mut claims = json!({"role": role, "iat": now, "exp": now + expires_in});
            if let Some(sub) = sub {
                claims["sub"] = json!(sub);
            }
            println!(
                "{}",
                supa_realtime_server::auth::sign_hs256(&jwt_secret, &claims)
            );
            ExitCode::SUCCESS
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
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(ChangeFeed::cleanup(&config)) {
                Ok(()) => {
                    println!(
                        "dropped slot {} and publication {}",
                        config.slot_name, config.publication
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(config) => {
            init_logging(&config);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(supa_realtime_server::run(*config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "server failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
