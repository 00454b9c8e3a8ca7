//! postgres_changes: live database changes read by logical replication.
//!
//! CONTRACT between the connection code (lead) and this module (postgres helper). The
//! connection code calls only what is below; everything else in this folder is private to it.
//!
//! * [`ChangeFeed::start`] starts the background replication task (the database may be down:
//!   it retries with backoff) and returns at once. [`ChangeFeed::disabled`] is the feed used
//!   when no `--database-url` is given: every subscribe gets the error the real server sends.
//! * A channel that joined with `postgres_changes` items calls [`ChangeFeed::subscribe`] with
//!   its sub-topic, JWT claims, the items as sent with their reply ids, and a non-blocking
//!   sink. The sink receives [`FeedEvent`]s; the connection turns them into frames:
//!   - `Subscribed` → `system` `{"extension":"postgres_changes","status":"ok","message":"Subscribed to PostgreSQL","channel":<topic>}`
//!   - `Error(msg)` → `system` `{"extension":"postgres_changes","status":"error","message":msg,"channel":<topic>}`
//!   - `Change{ids,data}` → fan-out `postgres_changes` `{"ids":ids,"data":data}`
//! * Dropping the returned [`Subscription`] unsubscribes; `update_claims` follows an
//!   `access_token` push.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

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
}

/// One `postgres_changes` item of a join, with the id the join reply gave it.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The id echoed in the join reply.
    pub id: u32,
    /// The item exactly as the client sent it (`event`, `schema`, `table`, `filter`, ...).
    pub params: Value,
}

/// What the feed tells a subscribed channel.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// The subscription is live: changes committed from now on will be delivered.
    Subscribed,
    /// The subscription failed or the database went away; the text is the system message.
    Error(String),
    /// A change visible to the bindings `ids` of this channel.
    Change {
        /// Matching binding ids of this channel.
        ids: Vec<u32>,
        /// The `data` object (schema, table, type, commit_timestamp, columns, record, old_record, errors).
        data: Arc<Value>,
    },
}

/// A non-blocking callback; it must never wait (it runs on the feed's task).
pub type Sink = Arc<dyn Fn(FeedEvent) + Send + Sync>;

/// A channel's request to receive changes.
pub struct SubscribeRequest {
    /// The channel's sub-topic (`room1` for `realtime:room1`).
    pub topic: String,
    /// The channel's JWT claims (`role`, `sub`, ...), used for row-level security.
    pub claims: Value,
    /// The items of the join, in order.
    pub bindings: Vec<Binding>,
    /// Where events go.
    pub sink: Sink,
}

/// The change feed shared by all connections.
pub struct ChangeFeed {
    _private: (),
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    _private: (),
}

impl ChangeFeed {
    /// Start streaming from the database in the background.
    pub fn start(_config: PostgresConfig, _shutdown: CancellationToken) -> Arc<ChangeFeed> {
        todo!("postgres helper")
    }

    /// The feed when no database is configured.
    pub fn disabled() -> Arc<ChangeFeed> {
        Arc::new(ChangeFeed { _private: () })
    }

    /// Subscribe a channel. Returns at once; the outcome arrives through the sink.
    pub fn subscribe(&self, _request: SubscribeRequest) -> Subscription {
        Subscription { _private: () }
    }
}

impl Subscription {
    /// The channel swapped its token: use these claims from now on.
    pub fn update_claims(&self, _claims: Value) {}
}
