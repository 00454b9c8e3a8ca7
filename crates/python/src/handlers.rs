//! Handlers: what a registered Python callback wants, and the events forwarded to Python.

use pyo3::prelude::*;
use supa_realtime::{
    BroadcastMessage, ChannelStatus, ClientEvent, Error, ErrorKind, PostgresChange, PresenceEvent,
    SystemMessage,
};

/// Which presence events a spec-style handler wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PresenceKind {
    All,
    Sync,
    Join,
    Leave,
}

impl PresenceKind {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "*" => Some(PresenceKind::All),
            "sync" => Some(PresenceKind::Sync),
            "join" => Some(PresenceKind::Join),
            "leave" => Some(PresenceKind::Leave),
            _ => None,
        }
    }
}

/// What a handler wants and the arguments its callback receives.
#[derive(Debug, Clone)]
pub(crate) enum Shape {
    /// `on("broadcast", {"event": e}, cb)`: `cb(payload)` with the sender's payload, or
    /// `cb(payload, message)` when the callback takes two arguments.
    BroadcastUser { event: String, with_message: bool },
    /// `on_broadcast(e, cb)`: `cb({"event", "payload", ["meta"]})` (official shape).
    BroadcastOfficial { event: String },
    /// `on("presence", {"event": e}, cb)`: `cb(dict)` (see the package docs).
    PresenceSpec { kind: PresenceKind },
    /// `on_presence_sync(cb)`: `cb()`.
    PresenceSync,
    /// `on_presence_join(cb)`: `cb(key, current_presences, new_presences)`.
    PresenceJoin,
    /// `on_presence_leave(cb)`: `cb(key, current_presences, left_presences)`.
    PresenceLeave,
    /// `on("postgres_changes", ..)`: `cb({schema, table, commit_timestamp, eventType, new, old, errors})`.
    PostgresSpec,
    /// `on_postgres_changes(..)`: `cb({"data": {..., "type", "record", "old_record", "columns"}, "ids"})`.
    PostgresOfficial,
    /// `on("system", {}, cb)`: `cb({"extension", "status", "message", "channel"})`.
    SystemSpec,
    /// `on_system(cb)`: `cb(SystemPayload)` with attributes as the official package.
    SystemOfficial,
    /// `subscribe(callback)`: `cb(RealtimeSubscribeStates, Exception | None)` on every
    /// SUBSCRIBED / TIMED_OUT / CLOSED / CHANNEL_ERROR.
    SubscribeState,
    /// `channel.on_error(cb)`: `cb(exception)` on CHANNEL_ERROR and TIMED_OUT.
    ChannelError,
    /// `channel.on_close(cb)`: `cb()` (or `cb(reason)`) on CLOSED.
    ChannelClose { with_reason: bool },
    /// `realtime.on_open(cb)`: `cb()`.
    ClientOpen,
    /// `realtime.on_close(cb)`: `cb()`, `cb(reason)` or `cb(code, reason)` by arity.
    ClientClose { nargs: u8 },
    /// `realtime.on_error(cb)`: `cb(exception)`.
    ClientError,
}

/// A registered callback.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) callback: Py<PyAny>,
    pub(crate) shape: Shape,
}

/// An event as forwarded to Python.
#[derive(Debug)]
pub(crate) enum Event {
    Broadcast(BroadcastMessage),
    /// A presence event; `Sync` carries the state at that sync.
    Presence(PresenceEvent),
    Postgres(PostgresChange),
    System(SystemMessage),
    Status(ChannelStatus),
    Client(ClientEvent),
    /// A channel error that is not a status: a report of dropped events.
    Error(Error),
}

impl Handler {
    pub(crate) fn wants(&self, ev: &Event) -> bool {
        match (&self.shape, ev) {
            (
                Shape::BroadcastUser { event, .. } | Shape::BroadcastOfficial { event },
                Event::Broadcast(m),
            ) => m.matches(event),
            (Shape::PresenceSpec { kind }, Event::Presence(p)) => matches!(
                (kind, p),
                (PresenceKind::All, _)
                    | (PresenceKind::Sync, PresenceEvent::Sync { .. })
                    | (PresenceKind::Join, PresenceEvent::Join { .. })
                    | (PresenceKind::Leave, PresenceEvent::Leave { .. })
            ),
            (Shape::PresenceSync, Event::Presence(PresenceEvent::Sync { .. })) => true,
            (Shape::PresenceJoin, Event::Presence(PresenceEvent::Join { .. })) => true,
            (Shape::PresenceLeave, Event::Presence(PresenceEvent::Leave { .. })) => true,
            (Shape::PostgresSpec | Shape::PostgresOfficial, Event::Postgres(_)) => true,
            (Shape::SystemSpec | Shape::SystemOfficial, Event::System(_)) => true,
            (Shape::SubscribeState, Event::Status(s)) => matches!(
                s,
                ChannelStatus::Subscribed
                    | ChannelStatus::TimedOut
                    | ChannelStatus::Closed { .. }
                    | ChannelStatus::ChannelError { .. }
            ),
            (Shape::ChannelError, Event::Status(s)) => {
                matches!(
                    s,
                    ChannelStatus::TimedOut | ChannelStatus::ChannelError { .. }
                )
            }
            (Shape::ChannelError, Event::Error(e)) => e.kind() == ErrorKind::Overflow,
            (Shape::ChannelClose { .. }, Event::Status(s)) => {
                matches!(s, ChannelStatus::Closed { .. })
            }
            (Shape::ClientOpen, Event::Client(ClientEvent::Open)) => true,
            (Shape::ClientClose { .. }, Event::Client(ClientEvent::Close { .. })) => true,
            (Shape::ClientError, Event::Client(ClientEvent::Error(_))) => true,
            _ => false,
        }
    }
}
