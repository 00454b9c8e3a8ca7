//! Settings of the change feed.

/// Settings of the change feed.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user:pass@host:port/db`
    pub database_url: String,
    /// Publication whose tables are streamed (`supabase_realtime`).
    pub publication: String,
    /// Replication slot name.
    pub slot_name: String,
    /// Above this size a change is delivered with `errors: ["Error 413: Payload Too Large"]`.
    pub max_record_bytes: usize,
    /// After a process start with an existing slot, streaming starts this long after the
    /// start, so channels that rejoin in time also get what was committed while the server
    /// was down (env `REALTIME_PG_RESUME_GRACE_MS`, default 3000).
    pub resume_grace_ms: u64,
}

impl PostgresConfig {
    /// Upstream defaults: publication `supabase_realtime`, slot
    /// `supabase_realtime_replication_slot`, 1 MiB records.
    pub fn new(database_url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            database_url: database_url.into(),
            publication: "supabase_realtime".into(),
            slot_name: "supabase_realtime_replication_slot".into(),
            max_record_bytes: 1024 * 1024,
            resume_grace_ms: std::env::var("REALTIME_PG_RESUME_GRACE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3000),
        }
    }
}
