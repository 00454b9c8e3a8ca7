//! The database side of private channels and database broadcast (PROTOCOL.md §9.2, §10.6).
//!
//! * [`crate::migrate`] (below this module and postgres_changes, which both need it) brings the
//!   database to the shape of a Supabase project (schema `realtime`, `realtime.messages`,
//!   `realtime.send`, `auth.*`, the roles), once, under an advisory lock.
//! * [`authorization`] answers "may these claims read / write this topic?" by evaluating the
//!   RLS policies on `realtime.messages`, as upstream does.
//! * [`replay`] reads stored messages for `broadcast.replay`.
//! * [`broadcast_stream`] streams inserts into `realtime.messages` by logical replication and
//!   fans them out to the topic's subscribers; in cluster mode [`broadcast_cluster`] reads them
//!   on one node for the cluster and publishes them through Redis.
//!
//! The server keeps running without the database: until it is reachable, private joins get
//! upstream's `UnableToConnectToProject` error and broadcast/presence on public channels work.

pub(crate) mod authorization;
pub(crate) mod broadcast_cluster;
pub(crate) mod broadcast_stream;
pub(crate) mod replay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// Upstream's answer when the project database cannot be used.
pub(crate) const UNABLE_TO_CONNECT: &str =
    "UnableToConnectToProject: Realtime was unable to connect to the project database";

/// How long one authorization query may take before the join is refused.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// Not migrated yet, or the pool could not give a connection.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed.
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// A query took too long.
    #[error("query timed out")]
    Timeout,
}

/// The project database: a small connection pool, ready once migrated.
pub(crate) struct Database {
    pub(crate) url: String,
    pool: Pool,
    ready: AtomicBool,
    /// Set while database broadcasts are being streamed.
    pub(crate) streaming: AtomicBool,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Database {
    /// Make the pool and start migrating in the background (retrying while the database is
    /// down); also keeps the daily partitions of `realtime.messages` ahead of time.
    pub(crate) fn start(url: &str, shutdown: CancellationToken) -> Result<Arc<Database>, String> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("invalid database URL: {e}"))?;
        let mut config = config;
        config.application_name("supa_realtime_rs");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .wait_timeout(Some(QUERY_TIMEOUT))
            .create_timeout(Some(QUERY_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let db = Arc::new(Database {
            url: url.to_owned(),
            pool,
            ready: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
        });
        tokio::spawn(maintain(db.clone(), shutdown));
        Ok(db)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// A pooled connection, once the database is migrated.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        if !self.is_ready() {
            return Err(DbError::Unavailable("not migrated yet".into()));
        }
        self.pool
            .get()
            .await
            .map_err(|e| DbError::Unavailable(e.to_string()))
    }
}

/// Migrate (retrying with backoff until it works), then keep partitions a few days ahead.
async fn maintain(db: Arc<Database>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let client = db.pool.get().await.map_err(|e| e.to_string())?;
            crate::migrate::run(&client)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database migrations not applied yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    db.ready.store(true, Ordering::SeqCst);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        if let Ok(client) = db.pool.get().await {
            let r = client
                .batch_execute(
                    "SELECT realtime.rs_ensure_message_partitions(); SELECT realtime.rs_drop_old_message_partitions();",
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "partition maintenance failed");
            }
        }
    }
}
