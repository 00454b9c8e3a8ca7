//! The events a client reports: channel events, socket events, and which of them a
//! consumer wants.
//!
//! Events reach consumers through bounded queues; how a slow consumer is handled (the socket
//! slows down, or events are dropped and reported) is in [`queue`](crate::queue), what an
//! event weighs in its byte bounds in `weight.rs`.
//! Dropping a stream unregisters it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::broadcast::BroadcastMessage;
use crate::config::ChannelStatus;
use crate::error::Error;
use crate::postgres::PostgresChange;
use crate::presence::PresenceEvent;

/// A `system` message from the server about a channel (PROTOCOL.md §9.4).
#[derive(Debug, Clone, PartialEq)]
pub struct SystemMessage {
    /// `postgres_changes` or `system`.
    pub extension: String,
    /// `ok` or `error`.
    pub status: String,
    /// The text.
    pub message: String,
    /// The sub-topic, when present.
    pub channel: Option<String>,
}

impl SystemMessage {
    pub(crate) fn from_payload(p: &Value) -> SystemMessage {
        let s = |k: &str| {
            p.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        SystemMessage {
            extension: s("extension"),
            status: s("status"),
            message: s("message"),
            channel: p.get("channel").and_then(Value::as_str).map(str::to_owned),
        }
    }

    /// Whether the status is `error`.
    pub fn is_error(&self) -> bool {
        self.status == "error"
    }
}

/// Everything a channel reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// A broadcast.
    Broadcast(Arc<BroadcastMessage>),
    /// A presence join, leave or sync.
    Presence(Arc<PresenceEvent>),
    /// A database change.
    PostgresChanges(Arc<PostgresChange>),
    /// A `system` message.
    System(Arc<SystemMessage>),
    /// The channel's status changed (`SUBSCRIBED`, `TIMED_OUT`, `CLOSED`, `CHANNEL_ERROR`, ...).
    Status(ChannelStatus),
    /// Consumers of this channel that opted into a drop policy
    /// ([`Overflow::DropNewest`](crate::Overflow::DropNewest) / [`Overflow::DropOldest`](crate::Overflow::DropOldest)) were too slow and `count` events
    /// were dropped since the last report (`total` since the channel was created). Sent to
    /// error listeners ([`RealtimeChannel::on_error`](crate::RealtimeChannel::on_error),
    /// [`RealtimeChannel::events`](crate::RealtimeChannel::events)), a few times a second at most.
    Dropped {
        /// Dropped since the last report.
        count: u64,
        /// Dropped on this channel so far.
        total: u64,
    },
}

/// Socket-level events of a client.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// The socket opened.
    Open,
    /// The socket closed (the client may be reconnecting).
    Close {
        /// Close code, when the peer sent one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// A connection attempt failed, a heartbeat went unanswered, or reconnecting gave up.
    Error(Error),
    /// The next connection attempt is in `delay`.
    Reconnecting {
        /// Failed attempts in a row so far.
        attempt: u32,
        /// Delay before the attempt.
        delay: Duration,
    },
    /// A heartbeat was answered after `latency`.
    Heartbeat {
        /// Round trip.
        latency: Duration,
    },
}

/// Which channel events a subscriber wants.
#[derive(Debug, Clone)]
pub(crate) enum EventFilter {
    All,
    Broadcast(String),
    Presence,
    /// The postgres binding at this index.
    Postgres(usize),
    System,
    Status,
    /// Error statuses and drop reports (`on_error`).
    Errors,
}

impl EventFilter {
    pub(crate) fn wants(&self, ev: &ChannelEvent, pg_matches: &[usize]) -> bool {
        match (self, ev) {
            (EventFilter::All, _) => true,
            (EventFilter::Broadcast(e), ChannelEvent::Broadcast(m)) => m.matches(e),
            (EventFilter::Presence, ChannelEvent::Presence(_)) => true,
            (EventFilter::Postgres(i), ChannelEvent::PostgresChanges(_)) => pg_matches.contains(i),
            (EventFilter::System, ChannelEvent::System(_)) => true,
            (EventFilter::Status, ChannelEvent::Status(_)) => true,
            (EventFilter::Errors, ChannelEvent::Status(s)) => s.error_kind().is_some(),
            (EventFilter::Errors, ChannelEvent::Dropped { .. }) => true,
            _ => false,
        }
    }
}
