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
//!   - `Change(frame)` → the `postgres_changes` message `{"data":..,"ids":..}` for the
//!     channel's topic, already made (and encoded once per serializer) for every channel of
//!     that topic that gets the same change with the same ids
//! * Dropping the returned [`Subscription`] unsubscribes; `update_claims` follows an
//!   `access_token` push.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod activate;
mod catalog;
mod dispatch;
mod error;
mod eval;
mod feed;
mod filter;
mod owner;
mod registry;
mod rls;
mod setup;
mod subscribe;

/// The text-to-JSON typing, shared with the client (one implementation).
use supa_realtime_protocol::pg_types as types;

use crate::fanout::{Body, Encoded};
pub(crate) use feed::SlotGate;

use crate::metrics::Metrics;
pub use error::FeedError;
use owner::Command;

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
    /// A change visible to some bindings of this channel.
    Change(ChangeFrame),
}

/// One `postgres_changes` message (`{"data": .., "ids": ..}` for a topic), shared by every
/// channel of that topic that gets the same change with the same ids: it goes through the
/// fan-out's encode-once cell, so it is serialized once per serializer, not once per channel.
#[derive(Debug, Clone)]
pub struct ChangeFrame(Arc<Encoded>, ChangePosition);

/// Where a change stands in the slot's stream: the commit LSN of its transaction and its
/// ordinal among the transaction's changes. The same on every reader of the WAL, and
/// increasing along the stream, so a receiver can drop what a new reader sends again.
/// `(0, 0)`: unknown.
pub(crate) type ChangePosition = (u64, u32);

impl ChangeFrame {
    /// A message made elsewhere (another cluster node's reader): `payload` is its JSON text.
    pub(crate) fn from_raw(wire_topic: String, payload: String, at: ChangePosition) -> Self {
        ChangeFrame(
            Arc::new(Encoded::new(Body::Raw {
                topic: wire_topic,
                event: supa_realtime_protocol::event::POSTGRES_CHANGES,
                payload,
            })),
            at,
        )
    }

    /// The wire topic and JSON text of the payload.
    pub(crate) fn raw(&self) -> Option<(&str, &str)> {
        match self.0.body() {
            Body::Raw { topic, payload, .. } => Some((topic, payload)),
            _ => None,
        }
    }

    /// Where the change stands in the stream.
    pub(crate) fn position(&self) -> ChangePosition {
        self.1
    }

    /// The message for `topic` (the sub-topic), ids and data.
    pub(crate) fn new(
        topic: &str,
        ids: &[u32],
        data: &ChangeData,
        at: ChangePosition,
    ) -> ChangeFrame {
        // Keys in upstream's (sorted) order: data, ids.
        let payload = format!(
            "{{\"data\":{},\"ids\":{}}}",
            data.json(),
            Value::from(ids.to_vec())
        );
        ChangeFrame(
            Arc::new(Encoded::new(Body::Raw {
                topic: format!("{}{topic}", supa_realtime_protocol::TOPIC_PREFIX),
                event: supa_realtime_protocol::event::POSTGRES_CHANGES,
                payload,
            })),
            at,
        )
    }

    /// The frame for a socket using `serializer`.
    pub(crate) fn frame(
        &self,
        serializer: supa_realtime_protocol::Serializer,
    ) -> Option<axum::extract::ws::Message> {
        self.0.frame(serializer)
    }

    /// The payload as JSON.
    pub(crate) fn payload(&self) -> Value {
        match self.0.body() {
            Body::Raw { payload, .. } => serde_json::from_str(payload).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// A change's `data` object, shared by every channel it goes to, with its JSON text made on
/// first use: a change fanned out to many channels is serialized once, not once per channel.
#[derive(Debug)]
pub struct ChangeData {
    value: Value,
    json: std::sync::OnceLock<String>,
}

impl ChangeData {
    /// Wrap a `data` object.
    pub fn new(value: Value) -> Self {
        ChangeData {
            value,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The object.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Its JSON text, made once.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| self.value.to_string())
    }
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

/// The change feed shared by all connections: a handle that sends commands to the feed's
/// task (owner.rs), which owns every subscription.
pub struct ChangeFeed {
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// Subscription ids are chosen here, so a subscription can be dropped (and its
    /// `Unsubscribe` sent) before the task has handled its `Subscribe`.
    next_id: AtomicU64,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    commands: Option<mpsc::UnboundedSender<Command>>,
    id: u64,
}

/// What channels are told when the database cannot be reached (upstream's text for a tenant
/// database it cannot connect to).
pub(crate) const DB_UNAVAILABLE: &str = "Realtime was unable to connect to the project database";

/// The text a channel gets when the server has no database: the real server's text for a
/// project database it cannot connect to (it has no "postgres_changes disabled" mode).
pub const NO_DATABASE_MESSAGE: &str = DB_UNAVAILABLE;

/// How long health waits for the feed's task to answer (it may be inside a long database
/// call).
const STATUS_WAIT: Duration = Duration::from_secs(2);

impl ChangeFeed {
    /// Start streaming from the database in the background.
    pub fn start(config: PostgresConfig, shutdown: CancellationToken) -> Arc<ChangeFeed> {
        Self::start_measured(config, shutdown, Arc::new(Metrics::new()), None)
    }

    /// [`ChangeFeed::start`], counting into the server's metrics; with a `gate` (cluster mode)
    /// the slot is streamed only while the gate grants it.
    pub(crate) fn start_measured(
        config: PostgresConfig,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        gate: Option<Arc<dyn SlotGate>>,
    ) -> Arc<ChangeFeed> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let task = feed::Feed {
            cfg: config,
            metrics,
            gate,
            commands: commands.clone(),
            inbox,
        };
        tokio::spawn(feed::run(task, shutdown));
        Arc::new(ChangeFeed {
            commands: Some(commands),
            next_id: AtomicU64::new(1),
        })
    }

    /// The feed when no database is configured.
    pub fn disabled() -> Arc<ChangeFeed> {
        Arc::new(ChangeFeed {
            commands: None,
            next_id: AtomicU64::new(1),
        })
    }

    /// Subscribe a channel. Returns at once; the outcome arrives through the sink.
    ///
    /// Call it after the join reply was queued: a refusal may reach the sink immediately.
    pub fn subscribe(&self, request: SubscribeRequest) -> Subscription {
        let Some(commands) = &self.commands else {
            (request.sink)(FeedEvent::Error(NO_DATABASE_MESSAGE.to_string()));
            return Subscription {
                commands: None,
                id: 0,
            };
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = commands.send(Command::Subscribe {
            id,
            topic: request.topic,
            claims: request.claims,
            bindings: request.bindings,
            sink: request.sink.clone(),
        });
        if sent.is_err() {
            // the feed's task ended (server shutting down)
            (request.sink)(FeedEvent::Error(NO_DATABASE_MESSAGE.to_string()));
        }
        Subscription {
            commands: Some(commands.clone()),
            id,
        }
    }

    /// A JSON summary for health endpoints and logs: state (`starting`, `connected`,
    /// `streaming`, `standby`, `down`, or `enabled: false`), confirmed LSN, last error,
    /// counters.
    pub async fn status(&self) -> Value {
        let Some(commands) = &self.commands else {
            return serde_json::json!({"enabled": false});
        };
        let (reply, answer) = oneshot::channel();
        if commands.send(Command::Status { reply }).is_err() {
            return serde_json::json!({"enabled": true, "state": "stopped"});
        }
        match tokio::time::timeout(STATUS_WAIT, answer).await {
            Ok(Ok(status)) => status,
            _ => serde_json::json!({"enabled": true, "state": "busy"}),
        }
    }

    /// Drop the replication slot and the publication (run while no feed uses them).
    pub async fn cleanup(config: &PostgresConfig) -> Result<(), FeedError> {
        feed::cleanup(config).await
    }
}

/// Parse a postgres_changes `filter` string without a database: `Err` carries the system
/// message a client would get. For fuzz targets and tooling.
#[doc(hidden)]
pub fn check_filter(filter: &str) -> Result<usize, String> {
    filter::parse(filter).map(|conds| conds.len())
}

impl Subscription {
    /// The channel swapped its token: use these claims from now on.
    pub fn update_claims(&self, claims: Value) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Claims {
                id: self.id,
                claims,
            });
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Unsubscribe { id: self.id });
        }
    }
}
