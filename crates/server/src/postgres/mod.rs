//! postgres_changes: live database changes read by logical replication.
//!
//! # What callers use
//!
//! * [`ChangeFeed::start`] starts the feed's task (the database may be down: it retries with
//!   backoff) and returns at once. [`ChangeFeed::disabled`] is the feed used when no
//!   `--database-url` is given: every subscribe gets the error the real server sends.
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
//!
//! # Design: one owner task
//!
//! All state of the feed (the subscriptions, the phase of the database session, the
//! delivered position, the status counters) belongs to one task. [`ChangeFeed`] and
//! [`Subscription`] are handles that send it commands and never wait; health gets its
//! answer by oneshot. Work that must await the database runs elsewhere and reports back as
//! a command: compiling a subscription (the activator), the RLS checks of a batch (polled by
//! the same task, answered in stream order). No lock is shared, and a late answer is
//! recognised by its ticket, not by re-checking shared flags.
//!
//! # Reading order
//!
//! Imports point one way, from the task down to the vocabulary, so the files read in the
//! order a change travels, from the slot to the socket:
//!
//! 1. `feed.rs`: the task. Connects, waits for its turn (resume grace, the cluster's slot
//!    lease), streams the slot (`crate::replication::stream`), confirms positions; handles
//!    commands while it waits and between frames.
//! 2. `owner.rs`: the task's state (`Core`) and how each command changes it;
//!    `command.rs` the messages; `activate.rs` the activator that compiles subscriptions
//!    (`subscribe.rs`: parameters, filters cast by the database, upstream's error texts).
//! 3. `dispatch.rs`: one decoded change → the channels whose bindings match (the index of
//!    `registry.rs`, filters by `eval.rs`/`filter.rs`), the RLS checks it needs (batched by
//!    `rls.rs`), then the deliveries once the checks are answered.
//! 4. `event.rs`: the [`ChangeFrame`] handed to each sink, made once per (outcome, topic,
//!    ids) and encoded once per serializer by the fan-out's `Encoded`.
//! 5. The sink belongs to the connection (`connection/join.rs`): the database-events limit
//!    (`connection/db_events.rs`), then the socket's outbox.
//!
//! Leaves used along the way: `catalog.rs` (tables, columns, grants), `setup.rs` (the
//! publication and the slot), `config.rs`, `error.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod activate;
mod catalog;
mod command;
mod config;
mod dispatch;
mod error;
mod eval;
mod event;
mod feed;
mod filter;
mod owner;
mod registry;
mod rls;
mod setup;
mod subscribe;

/// The text-to-JSON typing, shared with the client (one implementation).
use supa_realtime_protocol::pg_types as types;

use crate::metrics::Metrics;
use command::Command;
pub use config::PostgresConfig;
pub use error::FeedError;
pub use event::{Binding, ChangeData, ChangeFrame, FeedEvent, Sink, SubscribeRequest};
pub(crate) use event::{ChangePosition, DB_UNAVAILABLE};
pub(crate) use feed::SlotGate;

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
