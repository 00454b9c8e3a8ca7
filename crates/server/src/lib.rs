//! A Supabase Realtime server.
//!
//! It speaks the protocol of Supabase's own server (Phoenix channels over WebSocket, both
//! serializers), so the official JavaScript and Python clients connect to it unchanged:
//! broadcast, presence, postgres_changes (with a database), REST broadcast, JWT auth and
//! upstream's limits and error texts. With no database it serves broadcast and presence from
//! memory.
//!
//! Run it with the `supa-realtime-server serve` command, or embed it:
//!
//! ```no_run
//! use supa_realtime_server::{Config, Server};
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = Server::bind(Config::new("127.0.0.1:0".parse().unwrap())).await?;
//! println!("ws://{}/realtime/v1/websocket", server.local_addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod cli;
mod cluster;
pub mod config;
mod connection;
mod database;
mod fanout;
mod http;
mod limits;
mod metrics;
mod migrate;
mod outbox;
pub mod postgres;
mod presence;
mod registry;
mod replication;
mod state;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cluster::ClusterConfig;
pub use config::Config;

use crate::postgres::{ChangeFeed, PostgresConfig};
use crate::state::AppState;

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// Bind the configured address and start serving in the background.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(metrics::Metrics::new());
        // Cluster mode: the slot is read by the node holding its lease (cluster/slot.rs).
        let slot = match config.cluster.redis_url.is_some() {
            true => Some(
                cluster::SlotReader::new(&config.cluster, &config.slot_name, shutdown.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            false => None,
        };
        let feed = match &config.database_url {
            Some(url) => ChangeFeed::start_measured(
                PostgresConfig {
                    publication: config.publication.clone(),
                    slot_name: config.slot_name.clone(),
                    max_record_bytes: config.max_record_bytes,
                    resume_grace_ms: config.pg_resume_grace_ms,
                    ..PostgresConfig::new(url.clone())
                },
                shutdown.clone(),
                metrics.clone(),
                slot.clone()
                    .map(|s| Arc::new(s) as Arc<dyn postgres::SlotGate>),
            ),
            None => ChangeFeed::disabled(),
        };
        let database = match &config.database_url {
            Some(url) => Some(
                database::Database::start(url, shutdown.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let mut state = AppState::new(config, shutdown.clone(), feed, database.clone(), metrics);
        if let Some(slot) = slot {
            let (cluster, registry) = cluster::Cluster::start(
                &state.config.cluster,
                cluster::TenantCounters {
                    events: state.events.clone(),
                    joins: state.joins.clone(),
                    presence_events: state.presence_events.clone(),
                    db_events: state.db_events.clone(),
                    users: state.users.clone(),
                },
                state.metrics.clone(),
                slot,
                shutdown.clone(),
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            if state.config.database_url.is_some() {
                cluster.start_changes(state.feed.clone(), shutdown.clone());
            }
            state.registry = registry;
            state.cluster = Some(cluster);
        }
        let state = Arc::new(state);
        if let Some(db) = database {
            tokio::spawn(database::broadcast_stream::run(
                state.clone(),
                db,
                shutdown.clone(),
            ));
        }
        let app = http::router(state.clone());
        let header_timeout = Duration::from_millis(state.config.handshake_timeout_ms);
        let task = tokio::spawn(async move {
            http::serve(listener, app, header_timeout, shutdown).await;
            Ok(())
        });
        tracing::info!(%addr, database = state.config.database_url.is_some(), cluster = state.cluster.is_some(), "listening on {addr}");
        Ok(Server { addr, state, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stop accepting, close every socket with code 1012 (clients reconnect), and wait for
    /// them to go, at most the configured shutdown timeout.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        let deadline =
            Instant::now() + Duration::from_millis(self.state.config.shutdown_timeout_ms);
        while self.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.connection_count();
        if left > 0 {
            tracing::warn!(left, "shutdown timeout: connections still open");
        }
        if let Some(cluster) = &self.state.cluster {
            cluster.flush().await;
        }
        self.task.abort();
        tracing::info!("server stopped");
    }
}

/// Serve until SIGINT or SIGTERM, then shut down gracefully.
pub async fn run(config: Config) -> io::Result<()> {
    let server = Server::bind(config).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received: closing sockets");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
