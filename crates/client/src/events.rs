//! Events as streams over bounded queues, and callbacks driven by them.
//!
//! # Slow consumers
//!
//! Every stream (and every callback, which is a stream drained by its own task) has its own
//! bounded queue of [`ClientOptions::event_queue_capacity`](crate::ClientOptions::event_queue_capacity)
//! events. The connection task never waits for a consumer: when a queue is full the **new**
//! event is dropped for that consumer only, counted in [`EventStream::dropped`], and logged
//! with `tracing::warn!` (once per burst). Other consumers and the socket are unaffected.
//! Dropping a stream unregisters it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::broadcast::BroadcastMessage;
use crate::channel::ChannelStatus;
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
            _ => false,
        }
    }
}

/// The sending half of one consumer's queue, owned by the connection task.
#[derive(Debug)]
pub(crate) struct Subscriber<E> {
    tx: mpsc::Sender<E>,
    dropped: Arc<AtomicU64>,
    warned: bool,
}

impl<E> Subscriber<E> {
    /// Offer an event; `false` when the consumer is gone and should be removed.
    pub(crate) fn offer(&mut self, ev: E) -> bool {
        match self.tx.try_send(ev) {
            Ok(()) => {
                self.warned = false;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.warned {
                    tracing::warn!(
                        dropped = n,
                        "slow consumer: event queue full, dropping new events"
                    );
                    self.warned = true;
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A new queue: the task's half and the consumer's half.
pub(crate) fn queue<E>(capacity: usize) -> (Subscriber<E>, mpsc::Receiver<E>, Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        Subscriber {
            tx,
            dropped: dropped.clone(),
            warned: false,
        },
        rx,
        dropped,
    )
}

/// A stream of events of type `T` (e.g. [`BroadcastMessage`] from
/// [`RealtimeChannel::broadcasts`](crate::RealtimeChannel::broadcasts)).
///
/// It is a [`futures_util::Stream`]; [`recv`](Self::recv) and
/// [`blocking_recv`](Self::blocking_recv) are shortcuts. It ends when the channel is removed
/// or the client shuts down.
pub struct EventStream<T, S = ChannelEvent> {
    rx: mpsc::Receiver<S>,
    map: fn(S) -> Option<T>,
    dropped: Arc<AtomicU64>,
}

impl<T, S> std::fmt::Debug for EventStream<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl<T, S> EventStream<T, S> {
    pub(crate) fn new(
        rx: mpsc::Receiver<S>,
        map: fn(S) -> Option<T>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        EventStream { rx, map, dropped }
    }

    /// The next event, or `None` when the stream has ended.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let raw = self.rx.recv().await?;
            if let Some(v) = (self.map)(raw) {
                return Some(v);
            }
        }
    }

    /// The next event, waiting on this thread. Must not be called from async code.
    pub fn blocking_recv(&mut self) -> Option<T> {
        loop {
            let raw = self.rx.blocking_recv()?;
            if let Some(v) = (self.map)(raw) {
                return Some(v);
            }
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        loop {
            let raw = self.rx.try_recv().ok()?;
            if let Some(v) = (self.map)(raw) {
                return Some(v);
            }
        }
    }

    /// Up to `limit` queued events, waiting for the first one (for batching consumers such
    /// as language bindings). Empty when the stream has ended.
    pub async fn recv_many(&mut self, limit: usize) -> Vec<T> {
        let mut raw = Vec::new();
        self.rx.recv_many(&mut raw, limit.max(1)).await;
        raw.into_iter().filter_map(self.map).collect()
    }

    /// How many events were dropped because this consumer was too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T, S> Stream for EventStream<T, S> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(raw)) => {
                    if let Some(v) = (self.map)(raw) {
                        return Poll::Ready(Some(v));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T, S> Unpin for EventStream<T, S> {}

/// Drain `stream` on a task of `rt`, calling `f` for each event. Callbacks never run on the
/// connection task; a callback that blocks delays only its own events.
pub(crate) fn spawn_callback<T, S, F>(
    rt: &tokio::runtime::Handle,
    mut stream: EventStream<T, S>,
    f: F,
) where
    T: Send + 'static,
    S: Send + 'static,
    F: Fn(T) + Send + 'static,
{
    rt.spawn(async move {
        while let Some(ev) = stream.recv().await {
            f(ev);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_new_events_and_counts() {
        let (mut sub, rx, _) = queue::<u32>(2);
        let mut stream = EventStream::new(rx, Some, sub.dropped.clone());
        for i in 0..5 {
            assert!(sub.offer(i));
        }
        assert_eq!(stream.dropped(), 3);
        assert_eq!(stream.try_recv(), Some(0));
        assert_eq!(stream.try_recv(), Some(1));
        assert_eq!(stream.try_recv(), None);
        drop(stream);
        assert!(!sub.offer(9), "closed consumers are reported");
    }
}
