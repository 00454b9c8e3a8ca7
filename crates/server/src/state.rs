//! What every connection and request shares: configuration, topics, limits, the change feed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::JwtVerifier;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::database::Database;
use crate::limits::RateCounter;
use crate::metrics::Metrics;
use crate::postgres::ChangeFeed;
use crate::registry::Registry;

/// Server-wide state, owned by one server instance (never a process global).
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) jwt: JwtVerifier,
    pub(crate) registry: Arc<Registry>,
    /// REST and database broadcasts and their deliveries (`max_events_per_second`); each
    /// socket's own pushes and deliveries count against its own budget instead.
    pub(crate) events: Arc<RateCounter>,
    /// Channel joins (`max_joins_per_second`).
    pub(crate) joins: Arc<RateCounter>,
    /// postgres_changes deliveries (`max_db_events_per_second`), when limited.
    pub(crate) db_events: Option<Arc<RateCounter>>,
    /// Presence tracks and diff deliveries (`max_presence_events_per_second`).
    pub(crate) presence_events: Arc<RateCounter>,
    /// Connections that have at least one channel (`max_concurrent_users`).
    pub(crate) users: Arc<AtomicUsize>,
    /// Open WebSocket connections.
    pub(crate) connections: AtomicUsize,
    next_conn: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) feed: Arc<ChangeFeed>,
    /// The project database, when one is configured (private channels, database broadcast).
    pub(crate) database: Option<Arc<Database>>,
    /// Cluster mode (`--redis-url`); `None` runs everything on this node alone.
    pub(crate) cluster: Option<Cluster>,
    /// Prometheus metrics (`GET /metrics`).
    pub(crate) metrics: Arc<Metrics>,
}

impl AppState {
    pub(crate) fn new(
        config: Config,
        shutdown: CancellationToken,
        feed: Arc<ChangeFeed>,
        database: Option<Arc<Database>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState {
            jwt: JwtVerifier::new(&config.jwt_secret),
            registry: Arc::new(Registry::new(metrics.clone())),
            events: Arc::new(RateCounter::new(config.max_events_per_second)),
            joins: Arc::new(RateCounter::new(config.max_joins_per_second)),
            presence_events: Arc::new(RateCounter::new(config.max_presence_events_per_second)),
            db_events: Some(
                config
                    .max_db_events_per_second
                    .unwrap_or(config.max_events_per_second),
            )
            .filter(|limit| *limit > 0)
            .map(|limit| Arc::new(RateCounter::new(limit))),
            users: Arc::new(AtomicUsize::new(0)),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            shutdown,
            feed,
            database,
            cluster: None,
            metrics,
            config,
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
