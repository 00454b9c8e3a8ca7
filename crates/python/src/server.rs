//! The realtime server, inside the wheel: `supa_realtime._native.server_main(argv)` is the
//! `supa-realtime-server` command line (`python -m supa_realtime.server`, the
//! `supa-realtime-server` console script, and the pytest plugin's `realtime_server` fixture
//! all run it).
//!
//! # Why linked in, not shipped as a binary
//!
//! The server crate is a library with a thin `main`; linking it into the extension module
//! gives one artifact per platform that is already abi3, built by the same `maturin build`,
//! of the same version as the client it is tested with, with nothing to find on `PATH`. A
//! shipped executable would need maturin's data-scripts layout, a second build, and a lookup
//! at run time. The cost is size: the module also carries axum and tokio-postgres.
//!
//! # Implementation
//!
//! The server runs on a runtime of its own (all cores, not the client's two workers) with the
//! GIL released for its whole life; it ends on SIGINT/SIGTERM (the server's own signal
//! handling), after which Python sees the pending KeyboardInterrupt, if any.
//!
//! The argument grammar is the server binary's (`serve`, `token`); the binary's `main` is
//! private to it, so it is restated here for the two subcommands a Python user needs.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use serde_json::json;
use supa_realtime_server::config::{Config, LogFormat, DEFAULT_JWT_SECRET};
use tracing_subscriber::EnvFilter;

/// A Supabase Realtime server: broadcast, presence and postgres_changes over the protocol
/// the official clients speak.
#[derive(Parser)]
#[command(name = "supa-realtime-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket and REST (in memory unless --database-url is given).
    Serve(Box<Config>),
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
    // A subscriber may exist already (the process embeds other Rust code that logs); the
    // server's logs then go there.
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn token(role: String, sub: Option<String>, expires_in: i64, secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut claims = json!({"role": role, "iat": now, "exp": now + expires_in});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    supa_realtime_server::auth::sign_hs256(secret, &claims)
}

/// Run the server command line with `argv` (`argv[0]` is the program name); returns the
/// exit status. Usage errors, `--help` and `--version` print as the binary's do.
#[pyfunction]
pub(crate) fn server_main(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    // The caller may have configured `logging` after the module was imported: read the level
    // now, so the first lines (the listen address) are not filtered by the import-time level.
    crate::logging::refresh_level(py);
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Ok(e.exit_code());
        }
    };
    match cli.command {
        Command::Token {
            role,
            sub,
            expires_in,
            jwt_secret,
        } => {
            println!("{}", token(role, sub, expires_in, &jwt_secret));
            Ok(0)
        }
        Command::Serve(config) => {
            init_logging(&config);
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| PyRuntimeError::new_err(format!("cannot start the runtime: {e}")))?;
            let result = py.detach(|| runtime.block_on(supa_realtime_server::run(*config)));
            match result {
                Ok(()) => Ok(0),
                Err(e) => {
                    tracing::error!(error = %e, "server failed");
                    eprintln!("error: {e}");
                    Ok(1)
                }
            }
        }
    }
}
