//! Consumer queues and flow control: how events get from the connection task to streams and
//! callbacks without ever being lost silently.
//!
//! # The path of an event
//!
//! Every stream (and every callback, which is a stream drained by its own task) has its own
//! bounded queue: at most [`ClientOptions::event_queue_capacity`] events and
//! [`ClientOptions::event_queue_bytes`] bytes of payload (one event always fits). The
//! connection task owns the sending half, a subscriber, and offers each event to it:
//!
//! * there is room: the event goes into the queue;
//! * the queue is full and the consumer's [`Overflow`] is
//!   - [`Backpressure`](Overflow::Backpressure) (the default): the event waits, in order, in
//!     the subscriber's *backlog* on the task. The backlogs of all consumers of a client are
//!     bounded together ([`ClientOptions::backlog_events`], [`ClientOptions::backlog_bytes`]);
//!     when they are full the task **stops reading the socket** until a consumer has made
//!     room. TCP then pushes back on the server, whose own slow-consumer policy decides what
//!     happens (and says so with a close reason). Nothing is dropped.
//!   - [`DropNewest`](Overflow::DropNewest): the new event is dropped;
//!   - [`DropOldest`](Overflow::DropOldest): the event waits in the backlog (up to the queue's
//!     capacity again), and the oldest waiting event is dropped to make room.
//!
//!   Status changes and drop reports are never dropped (they wait in the backlog).
//!
//!   Every drop is counted (per stream: [`EventStream::dropped`]; per channel:
//!   [`RealtimeChannel::dropped_events`](crate::RealtimeChannel::dropped_events); per client:
//!   [`RealtimeClient::dropped_events`](crate::RealtimeClient::dropped_events)) and reported,
//!   a few times a second at most, as a `tracing` warning with the count and as a
//!   [`ChannelEvent::Dropped`](crate::ChannelEvent::Dropped) to the channel's error listeners
//!   ([`RealtimeChannel::on_error`](crate::RealtimeChannel::on_error)).
//!
//! # Waking the task
//!
//! A `Flow` is shared by a client's task and all its streams. While some backlog is not
//! empty the task sets `waiting` and sleeps on one `Notify`; a stream that takes events out
//! of its queue and finds `waiting` set and its queue at or below half full wakes it. The
//! half-full low-water mark makes the task move events in chunks of half a queue instead of
//! waking once per event.
//!
//! [`ClientOptions::event_queue_capacity`]: crate::ClientOptions::event_queue_capacity
//! [`ClientOptions::event_queue_bytes`]: crate::ClientOptions::event_queue_bytes
//! [`ClientOptions::backlog_events`]: crate::ClientOptions::backlog_events
//! [`ClientOptions::backlog_bytes`]: crate::ClientOptions::backlog_bytes

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{mpsc, Notify};

/// What a consumer's queue does when the consumer falls behind (see the [module
/// docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Overflow {
    /// Slow the reading of the socket until the consumer has made room. Nothing is lost.
    #[default]
    Backpressure,
    /// Drop the event that does not fit; count and report it.
    DropNewest,
    /// Drop the oldest event not yet handed to the consumer; count and report it.
    DropOldest,
}

impl Overflow {
    /// `backpressure`, `drop_newest` or `drop_oldest`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Backpressure => "backpressure",
            Overflow::DropNewest => "drop_newest",
            Overflow::DropOldest => "drop_oldest",
        }
    }

    /// The policy named by [`as_str`](Self::as_str) (case-insensitive, `-` or `_`).
    pub fn parse(s: &str) -> Option<Overflow> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "backpressure" => Some(Overflow::Backpressure),
            "drop_newest" => Some(Overflow::DropNewest),
            "drop_oldest" => Some(Overflow::DropOldest),
            _ => None,
        }
    }
}

/// What the queues need to know of an event.
pub(crate) trait Weigh {
    /// The size it counts for in byte bounds: its payload plus a fixed overhead.
    fn weight(&self) -> usize;
    /// A status change or a drop report: never dropped by a drop policy (they are few, and
    /// losing one would hide what happened, the drops included).
    fn is_control(&self) -> bool {
        false
    }
}

/// Flow-control state shared by a client's connection task and all its streams.
#[derive(Debug)]
pub(crate) struct Flow {
    /// Set by the task while it waits for room.
    waiting: AtomicBool,
    notify: Notify,
    /// Events and bytes waiting in backpressure backlogs (only the task changes these; atomics
    /// because subscribers, which the task owns, are also dropped with channels).
    backlog_events: AtomicUsize,
    backlog_bytes: AtomicUsize,
    /// Events in any backlog (drop-oldest ones too): the task must keep moving them.
    pending: AtomicUsize,
    /// Drops not yet reported.
    unreported: AtomicBool,
    /// Every drop of the client.
    dropped: AtomicU64,
}

impl Flow {
    pub(crate) fn new() -> Arc<Flow> {
        Arc::new(Flow {
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
            backlog_events: AtomicUsize::new(0),
            backlog_bytes: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            unreported: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether the backpressure backlogs hold at least `events` events or `bytes` bytes.
    pub(crate) fn backlog_full(&self, events: usize, bytes: usize) -> bool {
        self.backlog_events.load(Ordering::Relaxed) >= events.max(1)
            || self.backlog_bytes.load(Ordering::Relaxed) >= bytes.max(1)
    }

    /// Whether some backlog holds events the task must move.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    /// Announce that the task is about to wait for room. Call before the last check for
    /// room, so that a consumer that makes room after the check wakes the task.
    pub(crate) fn arm(&self) {
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// Resolves after a consumer made room (or at once if one did since [`arm`](Self::arm)).
    pub(crate) async fn room(&self) {
        self.notify.notified().await;
    }

    /// Whether drops happened since the last call.
    pub(crate) fn take_unreported(&self) -> bool {
        self.unreported.swap(false, Ordering::Relaxed)
    }

    /// Every event this client dropped.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn wake(&self) {
        if self.waiting.swap(false, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// State of one queue shared by its two halves.
#[derive(Debug)]
struct Shared {
    flow: Arc<Flow>,
    capacity: usize,
    max_bytes: usize,
    /// Bytes in the queue.
    bytes: AtomicUsize,
    dropped: AtomicU64,
}

/// How a queue is bounded and what it does when full.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueSpec {
    pub(crate) capacity: usize,
    pub(crate) max_bytes: usize,
    pub(crate) overflow: Overflow,
}

/// The sending half of one consumer's queue, owned by the connection task.
#[derive(Debug)]
pub(crate) struct Subscriber<E> {
    tx: mpsc::Sender<(E, usize)>,
    shared: Arc<Shared>,
    overflow: Overflow,
    /// Events that did not fit yet, oldest first, with their weights.
    backlog: VecDeque<(E, usize)>,
    /// Drops not yet reported.
    unreported: u64,
    /// The channel's drop counter, when the subscriber belongs to a channel.
    channel_dropped: Option<Arc<AtomicU64>>,
}

impl<E: Weigh> Subscriber<E> {
    /// Count this subscriber's drops in `counter` too (the channel's).
    pub(crate) fn count_in(&mut self, counter: Arc<AtomicU64>) {
        self.channel_dropped = Some(counter);
    }

    fn has_room(&self, weight: usize) -> bool {
        if self.tx.capacity() == 0 {
            return false;
        }
        let queued = self.shared.bytes.load(Ordering::Acquire);
        queued == 0 || queued + weight <= self.shared.max_bytes
    }

    fn send_now(&mut self, ev: E, weight: usize) -> bool {
        self.shared.bytes.fetch_add(weight, Ordering::AcqRel);
        match self.tx.try_send((ev, weight)) {
            Ok(()) => true,
            Err(_) => {
                self.shared.bytes.fetch_sub(weight, Ordering::AcqRel);
                false
            }
        }
    }

    fn drop_one(&mut self) {
        self.unreported += 1;
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.channel_dropped {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let flow = &self.shared.flow;
        flow.dropped.fetch_add(1, Ordering::Relaxed);
        flow.unreported.store(true, Ordering::Relaxed);
    }

    fn push_backlog(&mut self, ev: E, weight: usize) {
        let flow = &self.shared.flow;
        flow.pending.fetch_add(1, Ordering::Relaxed);
        if self.overflow == Overflow::Backpressure {
            flow.backlog_events.fetch_add(1, Ordering::Relaxed);
            flow.backlog_bytes.fetch_add(weight, Ordering::Relaxed);
        }
        self.backlog.push_back((ev, weight));
    }

    fn pop_backlog(&mut self) -> Option<(E, usize)> {
        let (ev, weight) = self.backlog.pop_front()?;
        let flow = &self.shared.flow;
        flow.pending.fetch_sub(1, Ordering::Relaxed);
        if self.overflow == Overflow::Backpressure {
            flow.backlog_events.fetch_sub(1, Ordering::Relaxed);
            flow.backlog_bytes.fetch_sub(weight, Ordering::Relaxed);
        }
        Some((ev, weight))
    }

    /// Offer an event; `false` when the consumer is gone and should be removed.
    pub(crate) fn offer(&mut self, ev: E) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let weight = ev.weight();
        if self.backlog.is_empty() && self.has_room(weight) {
            if self.send_now(ev, weight) {
                return true;
            }
            return !self.tx.is_closed();
        }
        match self.overflow {
            Overflow::Backpressure => self.push_backlog(ev, weight),
            _ if ev.is_control() => self.push_backlog(ev, weight),
            Overflow::DropNewest => self.drop_one(),
            Overflow::DropOldest => {
                self.push_backlog(ev, weight);
                if self.backlog.len() > self.shared.capacity {
                    if let Some(i) = self.backlog.iter().position(|(e, _)| !e.is_control()) {
                        // Drop-oldest backlogs do not count toward the pause, only as pending.
                        if self.backlog.remove(i).is_some() {
                            self.shared.flow.pending.fetch_sub(1, Ordering::Relaxed);
                        }
                        self.drop_one();
                    }
                }
            }
        }
        true
    }

    /// Move backlog into the queue while there is room; `false` when the consumer is gone.
    pub(crate) fn flush(&mut self) -> bool {
        if self.tx.is_closed() {
            self.clear();
            return false;
        }
        while let Some((_, weight)) = self.backlog.front() {
            if !self.has_room(*weight) {
                break;
            }
            let Some((ev, weight)) = self.pop_backlog() else {
                break;
            };
            if !self.send_now(ev, weight) {
                self.clear();
                return false;
            }
        }
        true
    }

    /// Whether events wait in the backlog.
    #[cfg(test)]
    pub(crate) fn is_backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Drops since the last call.
    pub(crate) fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.unreported)
    }

    fn clear(&mut self) {
        while self.pop_backlog().is_some() {}
    }
}

impl<E> Drop for Subscriber<E> {
    fn drop(&mut self) {
        let flow = &self.shared.flow;
        for (_, weight) in self.backlog.drain(..) {
            flow.pending.fetch_sub(1, Ordering::Relaxed);
            if self.overflow == Overflow::Backpressure {
                flow.backlog_events.fetch_sub(1, Ordering::Relaxed);
                flow.backlog_bytes.fetch_sub(weight, Ordering::Relaxed);
            }
        }
    }
}

/// A new queue: the task's half and the consumer's half.
pub(crate) fn queue<E>(flow: &Arc<Flow>, spec: QueueSpec) -> (Subscriber<E>, Receiver<E>) {
    let capacity = spec.capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        flow: flow.clone(),
        capacity,
        max_bytes: spec.max_bytes.max(1),
        bytes: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
    });
    (
        Subscriber {
            tx,
            shared: shared.clone(),
            overflow: spec.overflow,
            backlog: VecDeque::new(),
            unreported: 0,
            channel_dropped: None,
        },
        Receiver {
            rx,
            handle: QueueHandle { shared },
        },
    )
}

/// The consumer's half of a queue, before it is typed as an [`EventStream`].
#[derive(Debug)]
pub(crate) struct Receiver<E> {
    rx: mpsc::Receiver<(E, usize)>,
    handle: QueueHandle,
}

/// The consumer's view of its queue's shared state (opaque outside this module).
#[derive(Debug)]
pub(crate) struct QueueHandle {
    shared: Arc<Shared>,
}

impl QueueHandle {
    /// Account for `weight` bytes taken out; wake the task at the low-water mark.
    fn took(&self, weight: usize, left: usize) {
        self.shared.bytes.fetch_sub(weight, Ordering::AcqRel);
        let flow = &self.shared.flow;
        if flow.waiting.load(Ordering::Relaxed)
            && left <= self.shared.capacity / 2
            && self.shared.bytes.load(Ordering::Relaxed) <= self.shared.max_bytes / 2
        {
            flow.wake();
        }
    }
}

impl Drop for QueueHandle {
    /// A consumer that goes away while the task waits for room must wake it: its backlog is
    /// discarded then, and reading may resume.
    fn drop(&mut self) {
        self.shared.flow.wake();
    }
}

/// A stream of events of type `T` (e.g. [`BroadcastMessage`](crate::BroadcastMessage) from
/// [`RealtimeChannel::broadcasts`](crate::RealtimeChannel::broadcasts)).
///
/// It is a [`futures_util::Stream`]; [`recv`](Self::recv) and
/// [`blocking_recv`](Self::blocking_recv) are shortcuts. It ends when the channel is removed
/// or the client shuts down. A stream that is not read slows the socket down (by default;
/// see [`Overflow`]): read it, or drop it.
pub struct EventStream<T, S = crate::ChannelEvent> {
    rx: mpsc::Receiver<(S, usize)>,
    map: fn(S) -> Option<T>,
    handle: QueueHandle,
}

impl<T, S> std::fmt::Debug for EventStream<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl<T, S> EventStream<T, S> {
    /// How many events were dropped because this consumer was too slow (always 0 under
    /// [`Overflow::Backpressure`]).
    pub fn dropped(&self) -> u64 {
        self.handle.shared.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn new(rx: Receiver<S>, map: fn(S) -> Option<T>) -> Self {
        EventStream {
            rx: rx.rx,
            map,
            handle: rx.handle,
        }
    }

    fn took(&self, weight: usize) {
        self.handle.took(weight, self.rx.len());
    }

    /// The next event, or `None` when the stream has ended.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let (raw, weight) = self.rx.recv().await?;
            self.took(weight);
            if let Some(v) = (self.map)(raw) {
                return Some(v);
            }
        }
    }

    /// The next event, waiting on this thread. Must not be called from async code.
    pub fn blocking_recv(&mut self) -> Option<T> {
        loop {
            let (raw, weight) = self.rx.blocking_recv()?;
            self.took(weight);
            if let Some(v) = (self.map)(raw) {
                return Some(v);
            }
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        loop {
            let (raw, weight) = self.rx.try_recv().ok()?;
            self.took(weight);
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
        let weight: usize = raw.iter().map(|(_, w)| w).sum();
        self.took(weight);
        raw.into_iter().filter_map(|(e, _)| (self.map)(e)).collect()
    }
}

impl<T, S> Stream for EventStream<T, S> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some((raw, weight))) => {
                    self.took(weight);
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
/// connection task; a callback that blocks delays only its own events (and, under
/// [`Overflow::Backpressure`], the reading of the socket once its queue is full).
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

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            10
        }
    }

    fn spec(capacity: usize, overflow: Overflow) -> QueueSpec {
        QueueSpec {
            capacity,
            max_bytes: 1 << 20,
            overflow,
        }
    }

    fn pair(
        capacity: usize,
        overflow: Overflow,
    ) -> (Arc<Flow>, Subscriber<u32>, EventStream<u32, u32>) {
        let flow = Flow::new();
        let (sub, rx) = queue::<u32>(&flow, spec(capacity, overflow));
        (flow, sub, EventStream::new(rx, Some))
    }

    #[test]
    fn backpressure_keeps_everything_in_order() {
        let (flow, mut sub, mut stream) = pair(2, Overflow::Backpressure);
        for i in 0..5 {
            assert!(sub.offer(i));
        }
        assert_eq!(stream.dropped(), 0);
        assert!(flow.backlog_full(3, usize::MAX));
        assert!(!flow.backlog_full(4, usize::MAX));
        let mut got = Vec::new();
        while got.len() < 5 {
            while let Some(v) = stream.try_recv() {
                got.push(v);
            }
            assert!(sub.flush());
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(!flow.has_pending());
        assert_eq!(flow.dropped(), 0);
    }

    #[test]
    fn drop_newest_counts_and_keeps_the_first() {
        let (flow, mut sub, mut stream) = pair(2, Overflow::DropNewest);
        for i in 0..5 {
            assert!(sub.offer(i));
        }
        assert_eq!(stream.dropped(), 3);
        assert_eq!(flow.dropped(), 3);
        assert!(flow.take_unreported());
        assert_eq!(sub.take_unreported(), 3);
        assert_eq!(stream.try_recv(), Some(0));
        assert_eq!(stream.try_recv(), Some(1));
        assert_eq!(stream.try_recv(), None);
        drop(stream);
        assert!(!sub.offer(9), "closed consumers are reported");
    }

    #[test]
    fn drop_oldest_keeps_the_latest() {
        let (flow, mut sub, mut stream) = pair(2, Overflow::DropOldest);
        for i in 0..6 {
            assert!(sub.offer(i));
        }
        // Queue holds 0, 1; the backlog kept the two latest of 2..6.
        assert_eq!(stream.dropped(), 2);
        assert!(
            !flow.backlog_full(1, usize::MAX),
            "drop policies never pause the socket"
        );
        let mut got = Vec::new();
        while let Some(v) = stream.try_recv() {
            got.push(v);
        }
        assert!(sub.flush());
        while let Some(v) = stream.try_recv() {
            got.push(v);
        }
        assert_eq!(got, vec![0, 1, 4, 5]);
    }

    #[tokio::test]
    async fn a_consumer_at_half_full_wakes_the_waiting_task() {
        let (flow, mut sub, mut stream) = pair(4, Overflow::Backpressure);
        for i in 0..6 {
            sub.offer(i);
        }
        flow.arm();
        assert_eq!(stream.try_recv(), Some(0)); // 3 left: above half
        let woke = tokio::time::timeout(std::time::Duration::from_millis(50), flow.room()).await;
        assert!(woke.is_err(), "not woken above the low-water mark");
        assert_eq!(stream.try_recv(), Some(1)); // 2 left: half
        tokio::time::timeout(std::time::Duration::from_secs(5), flow.room())
            .await
            .expect("woken at the low-water mark");
        assert!(sub.flush());
        assert!(!sub.is_backlogged());
    }

    #[derive(Debug, PartialEq)]
    enum Ev {
        Data(u32),
        Control,
    }

    impl Weigh for Ev {
        fn weight(&self) -> usize {
            10
        }
        fn is_control(&self) -> bool {
            matches!(self, Ev::Control)
        }
    }

    #[test]
    fn control_events_are_never_dropped() {
        for overflow in [Overflow::DropNewest, Overflow::DropOldest] {
            let flow = Flow::new();
            let (mut sub, rx) = queue::<Ev>(&flow, spec(1, overflow));
            let mut stream = EventStream::new(rx, Some);
            sub.offer(Ev::Data(0));
            sub.offer(Ev::Control);
            sub.offer(Ev::Data(1));
            sub.offer(Ev::Control);
            sub.offer(Ev::Data(2));
            let mut got = Vec::new();
            loop {
                while let Some(e) = stream.try_recv() {
                    got.push(e);
                }
                if !flow.has_pending() {
                    break;
                }
                sub.flush();
            }
            assert_eq!(
                got.iter().filter(|e| **e == Ev::Control).count(),
                2,
                "{overflow:?}: {got:?}"
            );
            assert_eq!(got.len() as u64 + stream.dropped(), 5, "{overflow:?}");
            assert!(
                !flow.backlog_full(1, usize::MAX),
                "{overflow:?}: never pauses the socket"
            );
        }
    }

    #[tokio::test]
    async fn a_stream_dropped_while_the_task_waits_wakes_it() {
        let (flow, mut sub, stream) = pair(1, Overflow::Backpressure);
        sub.offer(0);
        sub.offer(1);
        flow.arm();
        drop(stream);
        tokio::time::timeout(std::time::Duration::from_secs(5), flow.room())
            .await
            .expect("woken by the drop");
        assert!(!sub.flush(), "the consumer is gone");
        assert!(!flow.has_pending());
    }

    #[test]
    fn dropping_a_subscriber_releases_its_backlog() {
        let (flow, mut sub, _stream) = pair(1, Overflow::Backpressure);
        for i in 0..4 {
            sub.offer(i);
        }
        assert!(flow.has_pending());
        drop(sub);
        assert!(!flow.has_pending());
        assert!(!flow.backlog_full(1, usize::MAX));
    }
}
