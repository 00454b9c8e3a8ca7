//! The `serve` flags of cluster mode. Without `--redis-url` none of this is used.

use std::time::Duration;

use clap::Args;

/// Cluster mode: several nodes act as one through Redis.
#[derive(Debug, Clone, Args)]
pub struct ClusterConfig {
    /// Redis URL (`redis://host:port/db`); turns cluster mode on. Every node given the same
    /// Redis and prefix is one cluster.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel this cluster uses, so clusters can share a Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "supa-realtime")]
    pub redis_prefix: String,

    /// A node's presences are leased for this long and refreshed every third of it: when a
    /// node dies, its presences leave for everyone within this time plus one sweep (1 s).
    #[arg(long, env = "CLUSTER_PRESENCE_TTL_MS", default_value_t = 15_000)]
    pub cluster_presence_ttl_ms: u64,

    /// Messages kept per topic in Redis, so a node that missed some can catch up.
    #[arg(long, env = "CLUSTER_HISTORY_SIZE", default_value_t = 1000)]
    pub cluster_history_size: usize,

    /// How long a topic's history is kept after its last message, in seconds.
    #[arg(long, env = "CLUSTER_HISTORY_TTL_S", default_value_t = 300)]
    pub cluster_history_ttl_s: u64,

    /// Broadcasts a node keeps while Redis is unreachable, to publish once it is back. Past
    /// this, the topics concerned are reported lost (`phx_error` on every node) instead.
    #[arg(long, env = "CLUSTER_OUTAGE_BUFFER", default_value_t = 10_000)]
    pub cluster_outage_buffer: usize,

    /// postgres_changes deliveries a node's inbox keeps for it (it reads them as they come).
    /// A node stalled past this loses the oldest: its postgres_changes channels get
    /// `phx_error` and rejoin.
    #[arg(long, env = "CLUSTER_INBOX_MAX", default_value_t = 200_000)]
    pub cluster_inbox_max: usize,

    /// The replication slot's reader holds its lease this long and renews it every third of
    /// it: when the reader dies, another node reads the slot within about this time.
    #[arg(long, env = "CLUSTER_SLOT_LEASE_MS", default_value_t = 5_000)]
    pub cluster_slot_lease_ms: u64,
}

impl ClusterConfig {
    pub(crate) fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.cluster_presence_ttl_ms.max(300))
    }
}
