//! The task that owns the socket: read loop, writer hand-off, heartbeat, timers, the
//! reconnect state machine and every channel's state.
//!
//! # Reading under backpressure
//!
//! Every frame read is routed at once: replies resolve their pushes, heartbeat replies are
//! timed, `phx_close`/`phx_error`/`system`/`access_token` change the channel, and the events
//! that result are offered to the consumers' queues ([`crate::queue`]). An event that does
//! not fit a backpressure consumer's queue waits in that consumer's backlog on this task, in
//! order. So control frames never wait behind broadcasts while the backlogs have room: the
//! task keeps reading and handling them.
//!
//! Only when the backlogs are full ([`ClientOptions::backlog_events`] /
//! [`ClientOptions::backlog_bytes`]) does the task stop reading the socket, until a consumer
//! has drained its queue to half. Then the kernel's buffers fill and TCP pushes back on the
//! server. (Frames the server queued for us before its own replies, heartbeat replies
//! included, are read in order: the server cannot put a reply ahead of what it already
//! queued.)
//!
//! # Liveness under backpressure
//!
//! A heartbeat's reply may thus sit unread, in the kernel's buffers while reading is paused
//! or behind broadcasts the server queued first while a slow consumer paces our reading.
//! The server is therefore declared dead only when it has been *silent*: no reply to the
//! heartbeat **and no frame at all** for `heartbeat_timeout`, counting only the time the task
//! was reading. Frames arriving prove the server alive; time paused by our own consumers
//! proves nothing either way. A hung server (e.g. SIGSTOP) sends nothing new: once what it
//! had sent before is read (milliseconds, with consumers that keep up), it is silent and is
//! noticed within `hb_interval + heartbeat_timeout`, as without backpressure. Writing is
//! never paused, so heartbeats keep going out and the server does not see us as silent.
//!
//! [`ClientOptions::backlog_events`]: crate::ClientOptions::backlog_events
//! [`ClientOptions::backlog_bytes`]: crate::ClientOptions::backlog_bytes

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use supa_realtime_protocol::binary::{self, ServerBinary};
use supa_realtime_protocol::presence::{state_from_wire, PresenceDiff, PresenceSync};
use supa_realtime_protocol::{
    event as ev, Message, Serializer, ServerFrame, Status, UserBroadcast, UserPayload, WireFrame,
    PHOENIX_TOPIC,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::time::{delay_queue, DelayQueue};

use super::backoff::{reconnect_delay, rejoin_delay};
use super::state::{CloseReason, ConnectionState, Input, ReconnectPolicy};
use super::{ChannelId, ChannelParts, Command, PushKind, PushOutcome};
use crate::auth::refresh_delay;
use crate::broadcast::{BroadcastMessage, BroadcastPayload};
use crate::config::{ChannelConfig, ChannelStatus};
use crate::endpoint::Endpoint;
use crate::error::{is_auth_reason, Error, ErrorKind, Result};
use crate::events::{ChannelEvent, ClientEvent, EventFilter, SystemMessage};
use crate::options::{ClientOptions, OfflinePolicy};
use crate::postgres::{match_bindings, PostgresChange, PostgresChangesFilter};
use crate::presence::{PresenceEvent, PresenceState};
use crate::queue::{Flow, Subscriber};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Ws>> + Send>>;
type Waiter = oneshot::Sender<Result<()>>;

/// Frames queued for the writer before the task stops taking commands (backpressure to
/// the handles; reading goes on).
const OUTBOX_MAX: usize = 4096;
/// Capacity of the writer task's queue.
const WRITER_QUEUE: usize = 256;
/// Most frames handled per wake-up of the task (the rest of the loop runs between batches).
const READ_BATCH: usize = 64;
/// Drops are reported at most this often (they come in bursts).
const DROP_REPORT_EVERY: Duration = Duration::from_millis(200);

/// What the handles keep of the task.
pub(crate) struct TaskParts {
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) latency: watch::Receiver<Option<Duration>>,
    pub(crate) token: watch::Receiver<Option<String>>,
}

/// Start the task on `rt`.
pub(crate) fn spawn(
    rt: &tokio::runtime::Handle,
    options: ClientOptions,
    endpoint: Endpoint,
    apikey: String,
    rx: mpsc::Receiver<Command>,
    flow: Arc<Flow>,
) -> TaskParts {
    let initial = ConnectionState::Connecting { attempt: 0 };
    let (state_tx, state) = watch::channel(initial.clone());
    let (latency_tx, latency) = watch::channel(None);
    let (token_tx, token) = watch::channel(options.access_token.clone());
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let policy = ReconnectPolicy {
        auto_reconnect: options.auto_reconnect,
        max_retries: options.max_retries,
        initial_backoff: options.initial_backoff,
        max_backoff: options.max_backoff,
    };
    let mut task = Task {
        serializer: options.vsn.serializer(),
        token: options.access_token.clone(),
        options,
        policy,
        endpoint,
        apikey,
        runtime: rt.clone(),
        rx,
        internal_tx,
        internal_rx,
        state: initial,
        state_tx,
        latency_tx,
        token_tx,
        token_gen: 0,
        awaiting_token: None,
        io: Io::default(),
        outbox: VecDeque::new(),
        hb_pending: None,
        next_ref: 0,
        next_channel_id: 0,
        next_seq: 0,
        pending: HashMap::new(),
        timers: DelayQueue::new(),
        channels: HashMap::new(),
        topics: HashMap::new(),
        client_subs: Vec::new(),
        open_waiters: Vec::new(),
        last_connect_error: None,
        hb_interval: Duration::ZERO,
        flow,
        paused_since: None,
        paused_total: Duration::ZERO,
        drop_report_due: false,
        last_frame: (Instant::now(), Duration::ZERO),
        presence_dirty: Vec::new(),
    };
    task.hb_interval = task.wanted_hb_interval();
    rt.spawn(task.run());
    TaskParts {
        state,
        latency,
        token,
    }
}

enum Internal {
    Token {
        gen: u64,
        result: std::result::Result<String, String>,
    },
}

#[derive(Debug, Clone)]
enum Timer {
    Reply(String),
    Heartbeat(String),
    Rejoin { id: ChannelId, gen: u64 },
    Buffered { id: ChannelId, seq: u64 },
    TokenRefresh { gen: u64 },
    TokenWait { gen: u64 },
    DropReport,
}

enum PendingKind {
    Join { id: ChannelId, join_ref: String },
    Leave { id: ChannelId },
    Push(Waiter),
}

struct Pending {
    kind: PendingKind,
    timer: delay_queue::Key,
}

/// The socket's I/O, present only in the phases that use it.
#[derive(Default)]
struct Io {
    connecting: Option<ConnectFuture>,
    backoff: Option<Pin<Box<Sleep>>>,
    reader: Option<SplitStream<Ws>>,
    writer: Option<mpsc::Sender<WsMessage>>,
    writer_task: Option<JoinHandle<()>>,
    writer_failed: Option<oneshot::Receiver<String>>,
    heartbeat: Option<Interval>,
}

/// A channel's lifecycle. Variants hold the data of that phase only.
enum Phase {
    /// Not subscribed (never, or unsubscribed, or given up after a binding mismatch).
    Idle,
    /// `phx_join` sent under `join_ref`.
    Joining { join_ref: String },
    /// Joined under `join_ref`.
    Joined { join_ref: String },
    /// Wants to be joined: waiting for the socket, a token or the rejoin timer.
    Errored,
    /// `phx_leave` sent.
    Leaving {
        join_ref: String,
        waiters: Vec<Waiter>,
    },
}

impl Phase {
    fn join_ref(&self) -> Option<&str> {
        match self {
            Phase::Joining { join_ref }
            | Phase::Joined { join_ref }
            | Phase::Leaving { join_ref, .. } => Some(join_ref),
            Phase::Idle | Phase::Errored => None,
        }
    }
}

struct Buffered {
    seq: u64,
    kind: PushKind,
    waiter: Waiter,
    timer: delay_queue::Key,
}

struct ChannelEntry {
    id: ChannelId,
    topic: String,
    config: ChannelConfig,
    bindings: Vec<PostgresChangesFilter>,
    binding_ids: Vec<u64>,
    phase: Phase,
    status_tx: watch::Sender<ChannelStatus>,
    presence_tx: watch::Sender<Arc<PresenceState>>,
    subs: Vec<(EventFilter, Subscriber<ChannelEvent>)>,
    presence: PresenceSync,
    /// Presence events of the current read batch, not yet dispatched.
    presence_pending: Vec<supa_realtime_protocol::presence::PresenceEvent>,
    presence_listeners: bool,
    presence_active: bool,
    tracked: Option<Value>,
    buffer: VecDeque<Buffered>,
    subscribe_waiters: Vec<Waiter>,
    rejoin_attempt: u32,
    /// Failures in a row (join refused or timed out, `phx_error`, server close, connection
    /// lost), for the channel's [`RejoinPolicy`](crate::RejoinPolicy).
    failures: u32,
    rejoin_gen: u64,
    last_system_error: Option<String>,
    /// Events dropped for this channel's consumers (drop policies only).
    dropped: Arc<AtomicU64>,
}

impl ChannelEntry {
    fn parts(&self) -> ChannelParts {
        ChannelParts {
            id: self.id,
            topic: self.topic.clone(),
            config: self.config.clone(),
            status: self.status_tx.subscribe(),
            presence: self.presence_tx.subscribe(),
            dropped: self.dropped.clone(),
        }
    }

    fn set_status(&mut self, status: ChannelStatus) {
        if *self.status_tx.borrow() == status {
            return;
        }
        self.status_tx.send_replace(status.clone());
        self.dispatch(ChannelEvent::Status(status), &[]);
    }

    fn dispatch(&mut self, event: ChannelEvent, pg_matches: &[usize]) {
        self.subs.retain_mut(|(filter, sub)| {
            if filter.wants(&event, pg_matches) {
                sub.offer(event.clone())
            } else {
                true
            }
        });
    }

    fn wants_presence(&self) -> bool {
        self.config.presence_enabled
            || self.presence_listeners
            || self.tracked.is_some()
            || self
                .config
                .presence_key
                .as_deref()
                .is_some_and(|k| !k.is_empty())
    }

    /// Queue presence events until the end of the read batch; `true` if the channel just
    /// became dirty (the task then publishes it, see [`Task::publish_presence`]).
    fn apply_presence(
        &mut self,
        events: Vec<supa_realtime_protocol::presence::PresenceEvent>,
    ) -> bool {
        let was_clean = self.presence_pending.is_empty();
        self.presence_pending.extend(events);
        was_clean && !self.presence_pending.is_empty()
    }

    /// Build the user-facing presence state **once** for every diff of the batch, publish it
    /// and dispatch the batch's events with it. Building it per diff made a channel of n
    /// presences cost O(n) per diff and hold one O(n) snapshot per queued `Sync` event: n
    /// clients of one channel in one process grew with n³.
    fn publish_presence(&mut self) {
        if self.presence_pending.is_empty() {
            return;
        }
        let state = Arc::new(self.presence.user_state());
        self.presence_tx.send_replace(state.clone());
        for e in std::mem::take(&mut self.presence_pending) {
            self.dispatch(
                ChannelEvent::Presence(Arc::new(PresenceEvent::from_proto(e, &state))),
                &[],
            );
        }
    }

    fn reset_presence(&mut self) {
        self.presence_pending.clear();
        self.presence = PresenceSync::new();
        self.presence_tx
            .send_replace(Arc::new(PresenceState::new()));
    }

    fn answer_subscribers(&mut self, result: Result<()>) {
        for w in self.subscribe_waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}

struct Task {
    options: ClientOptions,
    policy: ReconnectPolicy,
    serializer: Serializer,
    endpoint: Endpoint,
    apikey: String,
    runtime: tokio::runtime::Handle,
    rx: mpsc::Receiver<Command>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    state: ConnectionState,
    state_tx: watch::Sender<ConnectionState>,
    latency_tx: watch::Sender<Option<Duration>>,
    token_tx: watch::Sender<Option<String>>,
    token: Option<String>,
    token_gen: u64,
    /// Set while the socket is open and the joins wait for the provider's token.
    awaiting_token: Option<u64>,
    io: Io,
    outbox: VecDeque<WsMessage>,
    hb_pending: Option<HbPending>,
    next_ref: u64,
    next_channel_id: ChannelId,
    next_seq: u64,
    pending: HashMap<String, Pending>,
    timers: DelayQueue<Timer>,
    channels: HashMap<ChannelId, ChannelEntry>,
    topics: HashMap<String, ChannelId>,
    client_subs: Vec<Subscriber<ClientEvent>>,
    open_waiters: Vec<Waiter>,
    /// The last handshake's error while the socket is not open (cleared when it opens).
    last_connect_error: Option<Error>,
    /// The heartbeat interval in force: the smallest of the client's and the channels'.
    hb_interval: Duration,
    /// Flow control shared with the consumers' queues.
    flow: Arc<Flow>,
    /// Since when reading is paused because the consumers' backlogs are full.
    paused_since: Option<Instant>,
    /// How long reading was paused, over the task's life (without the current pause).
    paused_total: Duration,
    /// A drop report is scheduled.
    drop_report_due: bool,
    /// When the last frame was read, and [`Task::paused_for`] then.
    last_frame: (Instant, Duration),
    /// Channels with presence events of the current read batch.
    presence_dirty: Vec<ChannelId>,
}

/// The heartbeat waiting for its reply.
struct HbPending {
    msg_ref: String,
    sent: Instant,
    timer: delay_queue::Key,
    /// [`Task::paused_for`] when it was sent.
    paused_at_send: Duration,
}

async fn next_frame(
    reader: &mut Option<SplitStream<Ws>>,
) -> Option<std::result::Result<WsMessage, tungstenite::Error>> {
    match reader {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn connecting(c: &mut Option<ConnectFuture>) -> Result<Ws> {
    match c {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn backoff(b: &mut Option<Pin<Box<Sleep>>>) {
    match b {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}

async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn writer_failed(w: &mut Option<oneshot::Receiver<String>>) -> String {
    match w {
        Some(rx) => rx.await.unwrap_or_else(|_| "writer stopped".to_owned()),
        None => std::future::pending().await,
    }
}

async fn reserve(w: Option<mpsc::Sender<WsMessage>>) -> Option<mpsc::OwnedPermit<WsMessage>> {
    match w {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn expired(t: &mut DelayQueue<Timer>) -> Option<Timer> {
    std::future::poll_fn(|cx| t.poll_expired(cx))
        .await
        .map(|e| e.into_inner())
}

/// Owns the sink: writes what the task hands it, in order, flushing per batch.
async fn writer(
    mut sink: SplitSink<Ws, WsMessage>,
    mut rx: mpsc::Receiver<WsMessage>,
    failed: oneshot::Sender<String>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if rx.recv_many(&mut batch, 64).await == 0 {
            let _ = sink.close().await;
            return;
        }
        for m in batch.drain(..) {
            if let Err(e) = sink.feed(m).await {
                let _ = failed.send(e.to_string());
                return;
            }
        }
        if let Err(e) = sink.flush().await {
            let _ = failed.send(e.to_string());
            return;
        }
    }
}

/// A heartbeat timer whose first tick is one interval from now.
fn heartbeat_interval(hb: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

fn connect_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().as_deref().unwrap_or_default();
            let reason = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            let kind = if status == 401 || status == 403 {
                ErrorKind::Authorization
            } else {
                ErrorKind::NotConnected
            };
            Error::new(kind, format!("handshake refused with HTTP {status}")).with_reason(reason)
        }
        other => Error::not_connected("could not connect").with_source(other),
    }
}

impl Task {
    async fn run(mut self) {
        self.start_connect();
        let mut commands = Vec::with_capacity(64);
        loop {
            if self.flow.has_pending() {
                // Armed before the last look for room: a consumer that makes room after it
                // wakes us (see `queue`).
                self.flow.arm();
                self.flush_backlogs();
            }
            let reading = self.track_pause();
            tokio::select! {
                biased;
                n = self.rx.recv_many(&mut commands, 64), if self.outbox.len() < OUTBOX_MAX => {
                    if n == 0 {
                        self.close_socket(Some("client dropped"));
                        self.fail_everything(Error::closed());
                        return;
                    }
                    for c in commands.drain(..) {
                        self.on_command(c);
                    }
                }
                Some(i) = self.internal_rx.recv() => self.on_internal(i),
                () = self.flow.room(), if self.flow.has_pending() => self.flush_backlogs(),
                frame = next_frame(&mut self.io.reader), if reading => self.on_frames(frame),
                why = writer_failed(&mut self.io.writer_failed) => self.on_dropped(None, format!("write failed: {why}")),
                res = connecting(&mut self.io.connecting) => {
                    self.io.connecting = None;
                    self.on_connect_result(res);
                }
                () = backoff(&mut self.io.backoff) => {
                    self.io.backoff = None;
                    self.transition(Input::BackoffElapsed);
                }
                () = tick(&mut self.io.heartbeat) => self.send_heartbeat(),
                Some(t) = expired(&mut self.timers) => self.on_timer(t),
                Some(permit) = reserve(self.io.writer.clone()), if !self.outbox.is_empty() => {
                    if let Some(m) = self.outbox.pop_front() {
                        permit.send(m);
                    }
                }
            }
            self.drain_outbox();
            if self.flow.take_unreported() && !self.drop_report_due {
                self.drop_report_due = true;
                self.timers.insert(Timer::DropReport, DROP_REPORT_EVERY);
            }
        }
    }

    // ----- flow control -------------------------------------------------------------------

    /// Move waiting events into the consumers' queues where there is room now.
    fn flush_backlogs(&mut self) {
        for ch in self.channels.values_mut() {
            ch.subs.retain_mut(|(_, s)| s.flush());
        }
        self.client_subs.retain_mut(Subscriber::flush);
    }

    /// Whether the socket may be read now; keeps the pause clock.
    fn track_pause(&mut self) -> bool {
        let full = self
            .flow
            .backlog_full(self.options.backlog_events, self.options.backlog_bytes);
        match (full, self.paused_since) {
            (true, None) => {
                tracing::debug!("consumers are behind: pausing the reading of the socket");
                self.paused_since = Some(Instant::now());
            }
            (false, Some(since)) => {
                self.paused_total += since.elapsed();
                self.paused_since = None;
            }
            _ => {}
        }
        !full
    }

    /// How long reading has been paused over the task's life.
    fn paused_for(&self) -> Duration {
        self.paused_total + self.paused_since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Report drops since the last report: a warning with the count per channel, and a
    /// [`ChannelEvent::Dropped`] to the channel's error listeners.
    fn report_drops(&mut self) {
        self.drop_report_due = false;
        for ch in self.channels.values_mut() {
            let count: u64 = ch.subs.iter_mut().map(|(_, s)| s.take_unreported()).sum();
            if count > 0 {
                let total = ch.dropped.load(Ordering::Relaxed);
                tracing::warn!(
                    topic = %ch.topic,
                    dropped = count,
                    total,
                    "slow consumer: {count} event(s) dropped on {} (overflow policy drops; {total} so far)",
                    ch.topic
                );
                ch.dispatch(ChannelEvent::Dropped { count, total }, &[]);
            }
        }
        let count: u64 = self
            .client_subs
            .iter_mut()
            .map(Subscriber::take_unreported)
            .sum();
        if count > 0 {
            tracing::warn!(
                dropped = count,
                "slow consumer: {count} socket event(s) dropped (overflow policy drops)"
            );
        }
    }

    // ----- socket lifecycle -------------------------------------------------------------

    fn transition(&mut self, input: Input) {
        let old = self.state.clone();
        let new = old.clone().next(input, &self.policy, rand::random::<f64>());
        if new == old {
            return;
        }
        tracing::debug!(?old, ?new, ?input, "connection state");
        self.state = new.clone();
        match &new {
            ConnectionState::Connecting { .. } => self.start_connect(),
            ConnectionState::Reconnecting { attempt, delay } => {
                self.io.backoff = Some(Box::pin(tokio::time::sleep(*delay)));
                self.emit(ClientEvent::Reconnecting {
                    attempt: *attempt,
                    delay: *delay,
                });
            }
            ConnectionState::Open => {}
            ConnectionState::Closed { reason } => {
                self.io.connecting = None;
                self.io.backoff = None;
                let err = match reason {
                    CloseReason::GaveUp => {
                        let e =
                            Error::not_connected("gave up reconnecting after max_retries attempts");
                        self.emit(ClientEvent::Error(e.clone()));
                        e
                    }
                    CloseReason::NoReconnect => {
                        Error::not_connected("connection lost and auto_reconnect is off")
                    }
                    CloseReason::User => Error::not_connected("disconnected"),
                };
                for w in self.open_waiters.drain(..) {
                    let _ = w.send(Err(err.clone()));
                }
                let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
                for id in ids {
                    self.fail_buffer(id, err.clone());
                    if let Some(ch) = self.channels.get_mut(&id) {
                        ch.answer_subscribers(Err(err.clone()));
                    }
                }
            }
        }
        self.state_tx.send_replace(new);
    }

    fn start_connect(&mut self) {
        let url = self.endpoint.websocket.to_string();
        let timeout = self.options.timeout;
        self.io.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(
                timeout,
                tokio_tungstenite::connect_async_with_config(url, None, true),
            )
            .await
            {
                Ok(Ok((ws, _))) => Ok(ws),
                Ok(Err(e)) => Err(connect_error(e)),
                Err(_) => Err(Error::timeout("connecting timed out")),
            }
        }));
    }

    fn on_connect_result(&mut self, res: Result<Ws>) {
        let ws = match res {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "connect failed");
                self.emit(ClientEvent::Error(e.clone()));
                for w in self.open_waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
                if e.kind() == ErrorKind::Authorization {
                    self.refuse_waiting_channels(&e);
                }
                self.last_connect_error = Some(e);
                self.transition(Input::ConnectFailed);
                return;
            }
        };
        self.last_connect_error = None;
        if !matches!(self.state, ConnectionState::Connecting { .. }) {
            return;
        }
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let (failed_tx, failed_rx) = oneshot::channel();
        self.io.writer_task = Some(self.runtime.spawn(writer(sink, rx, failed_tx)));
        self.io.writer = Some(tx);
        self.io.writer_failed = Some(failed_rx);
        self.io.reader = Some(stream);
        self.io.heartbeat = Some(heartbeat_interval(self.hb_interval));
        self.transition(Input::Opened);
        self.emit(ClientEvent::Open);
        for w in self.open_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        if self.options.token_provider.is_some() {
            let gen = self.request_token();
            self.awaiting_token = Some(gen);
            self.timers
                .insert(Timer::TokenWait { gen }, self.options.timeout);
        } else {
            self.rejoin_all();
        }
    }

    /// The handshake was refused for the key or token: every channel waiting for the socket
    /// goes to `CHANNEL_ERROR` with the server's reason and its `subscribe` calls fail now
    /// instead of at their timeout. The channels keep waiting for the socket.
    fn refuse_waiting_channels(&mut self, e: &Error) {
        let reason = e.reason().unwrap_or(e.message()).to_owned();
        for ch in self.channels.values_mut() {
            if matches!(ch.phase, Phase::Errored) {
                ch.set_status(ChannelStatus::ChannelError {
                    reason: reason.clone(),
                    kind: e.kind(),
                });
                ch.answer_subscribers(Err(e.clone()));
            }
        }
    }

    /// The heartbeat interval the client and its channels ask for: the smallest of
    /// [`ClientOptions::hb_interval`] and every channel's
    /// [`ChannelConfig::hb_interval`](crate::ChannelConfig::hb_interval), at least 10 ms.
    fn wanted_hb_interval(&self) -> Duration {
        self.channels
            .values()
            .filter_map(|c| c.config.hb_interval)
            .fold(self.options.hb_interval, Duration::min)
            .max(Duration::from_millis(10))
    }

    /// Apply a changed [`wanted_hb_interval`](Self::wanted_hb_interval) to the open socket
    /// at once (the next heartbeat is one new interval from now).
    fn refresh_hb_interval(&mut self) {
        let hb = self.wanted_hb_interval();
        if hb == self.hb_interval {
            return;
        }
        tracing::debug!(old = ?self.hb_interval, new = ?hb, "heartbeat interval");
        self.hb_interval = hb;
        if self.io.heartbeat.is_some() {
            self.io.heartbeat = Some(heartbeat_interval(hb));
        }
    }

    /// Drop the socket's I/O and everything that was in flight on it. `lost`: the socket
    /// failed (not closed on purpose), which counts as a failure of each joined channel.
    fn teardown(&mut self, lost: bool) {
        self.io.reader = None;
        self.io.writer = None;
        self.io.writer_failed = None;
        self.io.heartbeat = None;
        if let Some(h) = self.io.writer_task.take() {
            h.abort();
        }
        self.outbox.clear();
        self.awaiting_token = None;
        if let Some(hb) = self.hb_pending.take() {
            self.timers.try_remove(&hb.timer);
        }
        for (_, p) in self.pending.drain() {
            self.timers.try_remove(&p.timer);
            match p.kind {
                PendingKind::Push(w) => {
                    let _ = w.send(Err(Error::not_connected(
                        "connection lost before the server answered",
                    )));
                }
                PendingKind::Join { .. } | PendingKind::Leave { .. } => {}
            }
        }
        let mut gave_up = Vec::new();
        for ch in self.channels.values_mut() {
            match std::mem::replace(&mut ch.phase, Phase::Idle) {
                phase @ (Phase::Joining { .. } | Phase::Joined { .. } | Phase::Errored) => {
                    if lost && !matches!(phase, Phase::Errored) {
                        ch.failures = ch.failures.saturating_add(1);
                    }
                    ch.phase = Phase::Errored;
                    ch.set_status(ChannelStatus::ChannelError {
                        reason: "connection lost".to_owned(),
                        kind: ErrorKind::NotConnected,
                    });
                    if lost && ch.config.rejoin.gives_up(ch.failures) {
                        gave_up.push(ch.id);
                    }
                }
                Phase::Leaving { waiters, .. } => {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                    ch.reset_presence();
                    ch.set_status(ChannelStatus::Closed { reason: None });
                }
                Phase::Idle => {}
            }
        }
        for id in gave_up {
            self.give_up(id);
        }
    }

    fn on_dropped(&mut self, code: Option<u16>, reason: String) {
        if !self.state.is_open() {
            return;
        }
        tracing::info!(?code, %reason, "realtime socket closed");
        self.teardown(true);
        self.emit(ClientEvent::Close { code, reason });
        self.transition(Input::Dropped);
    }

    /// Close an open socket on purpose (disconnect / shutdown).
    fn close_socket(&mut self, reason: Option<&str>) {
        if let Some(w) = &self.io.writer {
            let _ = w.try_send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: reason.unwrap_or_default().into(),
            })));
        }
        // Let the writer flush the close frame on its own; do not abort it.
        self.io.writer_task = None;
        let was_open = self.state.is_open();
        self.teardown(false);
        if was_open {
            self.emit(ClientEvent::Close {
                code: Some(1000),
                reason: reason.unwrap_or("disconnected").to_owned(),
            });
        }
        self.transition(Input::Disconnect);
    }

    fn fail_everything(&mut self, err: Error) {
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            self.fail_buffer(id, err.clone());
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.answer_subscribers(Err(err.clone()));
            }
        }
        for w in self.open_waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
    }

    fn emit(&mut self, ev: ClientEvent) {
        self.client_subs.retain_mut(|s| s.offer(ev.clone()));
    }

    // ----- writing ------------------------------------------------------------------------

    fn next_ref(&mut self) -> String {
        self.next_ref = self.next_ref.wrapping_add(1);
        self.next_ref.to_string()
    }

    fn write(&mut self, frame: WsMessage) {
        if self.io.writer.is_some() {
            self.outbox.push_back(frame);
        }
    }

    fn write_message(&mut self, m: &Message) {
        let frame = match self.serializer.encode_client_message(m) {
            WireFrame::Text(t) => WsMessage::Text(t.into()),
            WireFrame::Binary(b) => WsMessage::Binary(b),
        };
        self.write(frame);
    }

    fn drain_outbox(&mut self) {
        let Some(w) = &self.io.writer else {
            return;
        };
        while let Some(m) = self.outbox.pop_front() {
            match w.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m))
                | Err(mpsc::error::TrySendError::Closed(m)) => {
                    self.outbox.push_front(m);
                    break;
                }
            }
        }
    }

    fn add_pending(&mut self, msg_ref: String, kind: PendingKind) {
        let timer = self
            .timers
            .insert(Timer::Reply(msg_ref.clone()), self.options.timeout);
        self.pending.insert(msg_ref, Pending { kind, timer });
    }

    fn send_heartbeat(&mut self) {
        if self.hb_pending.is_some() || !self.state.is_open() {
            return;
        }
        let r = self.next_ref();
        self.write_message(&Message::new(
            None,
            Some(r.clone()),
            PHOENIX_TOPIC,
            ev::HEARTBEAT,
            json!({}),
        ));
        let timer = self
            .timers
            .insert(Timer::Heartbeat(r.clone()), self.options.heartbeat_timeout);
        self.hb_pending = Some(HbPending {
            msg_ref: r,
            sent: Instant::now(),
            timer,
            paused_at_send: self.paused_for(),
        });
    }

    // ----- channels -----------------------------------------------------------------------

    fn join_payload(&self, ch: &ChannelEntry) -> Value {
        let mut config = ch.config.to_json();
        config["postgres_changes"] = Value::Array(
            ch.bindings
                .iter()
                .map(PostgresChangesFilter::to_json)
                .collect(),
        );
        config["presence"]["enabled"] = Value::Bool(ch.wants_presence());
        json!({
            "config": config,
            "access_token": self.token.clone().unwrap_or_else(|| self.apikey.clone()),
            "version": concat!("supa-realtime-rs/", env!("CARGO_PKG_VERSION")),
        })
    }

    /// Join now if the socket is ready, else wait (phase `Errored`) for the socket/token.
    fn join(&mut self, id: ChannelId) {
        let ready = self.state.is_open() && self.awaiting_token.is_none();
        if !ready {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.phase = Phase::Errored;
            }
            return;
        }
        let r = self.next_ref();
        let Some(ch) = self.channels.get(&id) else {
            return;
        };
        let payload = self.join_payload(ch);
        let topic = ch.topic.clone();
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.presence_active = ch.wants_presence();
            ch.presence.set_join_ref(Some(r.clone()));
            ch.phase = Phase::Joining {
                join_ref: r.clone(),
            };
            ch.rejoin_gen += 1;
            ch.set_status(ChannelStatus::Joining);
        }
        self.write_message(&Message::new(
            Some(r.clone()),
            Some(r.clone()),
            topic,
            ev::PHX_JOIN,
            payload,
        ));
        self.add_pending(r.clone(), PendingKind::Join { id, join_ref: r });
    }

    /// Leave the current join of a joined/joining channel and join again at once, e.g. to
    /// enable presence. Status goes `JOINING` → `SUBSCRIBED`; a pending `subscribe` is
    /// answered by the new join.
    fn rejoin_now(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let join_ref = match &ch.phase {
            Phase::Joined { join_ref } | Phase::Joining { join_ref } => join_ref.clone(),
            _ => return,
        };
        let topic = ch.topic.clone();
        ch.reset_presence();
        tracing::debug!(%topic, "rejoining with presence enabled");
        if let Some(p) = self.pending.remove(&join_ref) {
            self.timers.try_remove(&p.timer);
        }
        let r = self.next_ref();
        self.write_message(&Message::new(
            Some(join_ref),
            Some(r),
            topic,
            ev::PHX_LEAVE,
            json!({}),
        ));
        self.join(id);
    }

    fn rejoin_all(&mut self) {
        let mut ids: Vec<ChannelId> = self
            .channels
            .values()
            .filter(|c| matches!(c.phase, Phase::Errored))
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.join(id);
        }
    }

    /// The channel failed: rejoin after its delay, unless its rejoin policy gives up.
    fn schedule_rejoin(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.rejoin_gen += 1;
        ch.failures = ch.failures.saturating_add(1);
        if ch.config.rejoin.gives_up(ch.failures) {
            return self.give_up(id);
        }
        ch.phase = Phase::Errored;
        let delay = match ch.config.rejoin.initial_backoff {
            Some(first) => reconnect_delay(
                ch.rejoin_attempt,
                first,
                self.options.max_backoff.max(first),
                1.0,
            ),
            None => rejoin_delay(ch.rejoin_attempt, &self.options.rejoin_backoff),
        };
        ch.rejoin_attempt = ch.rejoin_attempt.saturating_add(1);
        let gen = ch.rejoin_gen;
        self.timers.insert(Timer::Rejoin { id, gen }, delay);
    }

    /// The channel's rejoin policy gave up: it stays in its error status, not joined, until
    /// `subscribe` is called again; waiting `subscribe` calls and buffered pushes fail.
    fn give_up(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.phase = Phase::Idle;
        ch.rejoin_gen += 1;
        ch.reset_presence();
        let status = ch.status_tx.borrow().clone();
        let kind = status.error_kind().unwrap_or(ErrorKind::ChannelError);
        let mut err = Error::new(
            kind,
            format!(
                "{} stopped rejoining after {} failure(s) in a row (its rejoin policy)",
                ch.topic, ch.failures
            ),
        );
        if let Some(r) = status.reason() {
            err = err.with_reason(r);
        }
        tracing::info!(topic = %ch.topic, failures = ch.failures, "channel gave up rejoining");
        ch.failures = 0;
        ch.rejoin_attempt = 0;
        ch.answer_subscribers(Err(err.clone()));
        self.fail_buffer(id, err);
    }

    fn on_join_reply(&mut self, id: ChannelId, join_ref: String, status: Status, response: &Value) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.phase.join_ref() != Some(join_ref.as_str())
            || !matches!(ch.phase, Phase::Joining { .. })
        {
            return;
        }
        match status {
            Status::Ok => match match_bindings(&ch.bindings, response) {
                Ok(ids) => {
                    ch.binding_ids = ids;
                    ch.phase = Phase::Joined {
                        join_ref: join_ref.clone(),
                    };
                    ch.rejoin_attempt = 0;
                    ch.failures = 0;
                    ch.last_system_error = None;
                    ch.set_status(ChannelStatus::Subscribed);
                    ch.answer_subscribers(Ok(()));
                    if let Some(p) = ch.tracked.clone() {
                        let (w, _) = oneshot::channel();
                        self.write_push(id, PushKind::Track(p), w);
                    }
                    self.flush_buffer(id);
                }
                Err(e) => {
                    let topic = ch.topic.clone();
                    ch.phase = Phase::Idle;
                    ch.set_status(ChannelStatus::ChannelError {
                        reason: e.message().to_owned(),
                        kind: e.kind(),
                    });
                    ch.answer_subscribers(Err(e.clone()));
                    let r = self.next_ref();
                    self.write_message(&Message::new(
                        Some(join_ref),
                        Some(r),
                        topic,
                        ev::PHX_LEAVE,
                        json!({}),
                    ));
                    self.fail_buffer(id, e);
                }
            },
            Status::Error => {
                let reason = match response.get("reason") {
                    Some(Value::String(s)) => s.clone(),
                    _ => match response {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                };
                let err = Error::from_server_reason(
                    format!("joining {} was refused", ch.topic),
                    reason.clone(),
                );
                ch.set_status(ChannelStatus::ChannelError {
                    reason: reason.clone(),
                    kind: err.kind(),
                });
                ch.answer_subscribers(Err(err));
                self.schedule_rejoin(id);
                if is_auth_reason(&reason) {
                    self.request_token();
                }
            }
        }
    }

    fn on_join_timeout(&mut self, id: ChannelId, join_ref: String) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.phase.join_ref() != Some(join_ref.as_str()) {
            return;
        }
        let topic = ch.topic.clone();
        ch.set_status(ChannelStatus::TimedOut);
        ch.answer_subscribers(Err(Error::timeout(format!("joining {topic} timed out"))));
        // As realtime-js: leave the half-joined instance so the rejoin is not a duplicate.
        let r = self.next_ref();
        self.write_message(&Message::new(
            Some(join_ref),
            Some(r),
            topic,
            ev::PHX_LEAVE,
            json!({}),
        ));
        self.schedule_rejoin(id);
    }

    fn on_leave_done(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Phase::Leaving { waiters, .. } = std::mem::replace(&mut ch.phase, Phase::Idle) {
            ch.reset_presence();
            ch.set_status(ChannelStatus::Closed { reason: None });
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
    }

    fn leave(&mut self, id: ChannelId, waiter: Option<Waiter>) {
        let open = self.state.is_open();
        let Some(ch) = self.channels.get_mut(&id) else {
            if let Some(w) = waiter {
                let _ = w.send(Ok(()));
            }
            return;
        };
        ch.rejoin_gen += 1;
        ch.answer_subscribers(Err(Error::new(ErrorKind::ChannelError, "unsubscribed")));
        match std::mem::replace(&mut ch.phase, Phase::Idle) {
            Phase::Joining { join_ref } | Phase::Joined { join_ref } if open => {
                let topic = ch.topic.clone();
                ch.phase = Phase::Leaving {
                    join_ref: join_ref.clone(),
                    waiters: waiter.into_iter().collect(),
                };
                ch.set_status(ChannelStatus::Leaving);
                let r = self.next_ref();
                self.write_message(&Message::new(
                    Some(join_ref),
                    Some(r.clone()),
                    topic,
                    ev::PHX_LEAVE,
                    json!({}),
                ));
                self.add_pending(r, PendingKind::Leave { id });
            }
            Phase::Leaving {
                join_ref,
                mut waiters,
            } => {
                waiters.extend(waiter);
                ch.phase = Phase::Leaving { join_ref, waiters };
            }
            Phase::Idle => {
                if let Some(w) = waiter {
                    let _ = w.send(Ok(()));
                }
            }
            Phase::Joining { .. } | Phase::Joined { .. } | Phase::Errored => {
                ch.reset_presence();
                ch.set_status(ChannelStatus::Closed { reason: None });
                if let Some(w) = waiter {
                    let _ = w.send(Ok(()));
                }
            }
        }
        self.fail_buffer(id, Error::not_connected("channel unsubscribed"));
    }

    fn remove(&mut self, id: ChannelId) {
        self.leave(id, None);
        if let Some(ch) = self.channels.remove(&id) {
            self.topics.remove(&ch.topic);
            for b in ch.buffer {
                self.timers.try_remove(&b.timer);
                let _ = b.waiter.send(Err(Error::not_connected("channel removed")));
            }
        }
    }

    // ----- pushes -------------------------------------------------------------------------

    /// Write a push on a joined channel; `waiter` gets the final result.
    fn write_push(&mut self, id: ChannelId, kind: PushKind, waiter: Waiter) {
        let Some(ch) = self.channels.get(&id) else {
            let _ = waiter.send(Err(Error::invalid("channel removed")));
            return;
        };
        let Some(join_ref) = ch.phase.join_ref().map(str::to_owned) else {
            let _ = waiter.send(Err(Error::not_connected("channel is not joined")));
            return;
        };
        let topic = ch.topic.clone();
        let ack = ch.config.broadcast_ack;
        let r = self.next_ref();
        let expects_reply = match kind {
            PushKind::Broadcast { event, payload } => {
                let frame = match (self.serializer, payload) {
                    (Serializer::V2, payload) => {
                        let payload = match payload {
                            BroadcastPayload::Json(v) => {
                                UserPayload::Json(serde_json::to_vec(&v).unwrap_or_default().into())
                            }
                            BroadcastPayload::Binary(b) => UserPayload::Binary(b),
                        };
                        let b = UserBroadcast {
                            join_ref: Some(join_ref),
                            msg_ref: Some(r.clone()),
                            topic,
                            event,
                            metadata: None,
                            payload,
                        };
                        match binary::encode_user_broadcast_push(&b) {
                            Ok(bytes) => WsMessage::Binary(bytes),
                            Err(e) => {
                                let _ = waiter.send(Err(Error::invalid(e.to_string())));
                                return;
                            }
                        }
                    }
                    (Serializer::V1, BroadcastPayload::Json(v)) => {
                        let m = Message::new(
                            Some(join_ref),
                            Some(r.clone()),
                            topic,
                            ev::BROADCAST,
                            json!({"type": "broadcast", "event": event, "payload": v}),
                        );
                        match self.serializer.encode_client_message(&m) {
                            WireFrame::Text(t) => WsMessage::Text(t.into()),
                            WireFrame::Binary(b) => WsMessage::Binary(b),
                        }
                    }
                    (Serializer::V1, BroadcastPayload::Binary(_)) => {
                        let _ =
                            waiter.send(Err(Error::invalid("binary broadcasts need vsn 2.0.0")));
                        return;
                    }
                };
                self.write(frame);
                ack
            }
            PushKind::Track(p) => {
                let m = Message::new(
                    Some(join_ref),
                    Some(r.clone()),
                    topic,
                    ev::PRESENCE,
                    json!({"type": "presence", "event": "track", "payload": p}),
                );
                self.write_message(&m);
                true
            }
            PushKind::Untrack => {
                let m = Message::new(
                    Some(join_ref),
                    Some(r.clone()),
                    topic,
                    ev::PRESENCE,
                    json!({"type": "presence", "event": "untrack"}),
                );
                self.write_message(&m);
                true
            }
        };
        if expects_reply {
            self.add_pending(r, PendingKind::Push(waiter));
        } else {
            let _ = waiter.send(Ok(()));
        }
    }

    fn on_push(&mut self, id: ChannelId, kind: PushKind) -> Result<PushOutcome> {
        let open = self.state.is_open();
        let policy = self.options.offline_policy;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or_else(|| Error::invalid("channel removed"))?;
        // Presence is remembered and (re)applied on every join.
        match &kind {
            PushKind::Track(p) => ch.tracked = Some(p.clone()),
            PushKind::Untrack => ch.tracked = None,
            PushKind::Broadcast { .. } => {}
        }
        let joined = matches!(ch.phase, Phase::Joined { .. }) && open;
        if joined {
            let (tx, rx) = oneshot::channel();
            self.write_push(id, kind, tx);
            return Ok(PushOutcome::Wait(rx));
        }
        match (&ch.phase, &kind) {
            (_, PushKind::Track(_) | PushKind::Untrack) => Ok(PushOutcome::Done),
            (Phase::Idle, PushKind::Broadcast { .. }) => {
                // Idle after a failure (rejoin policy gave up, bindings mismatched, closed by
                // the server): the user expects the channel, not REST.
                let status = ch.status_tx.borrow().clone();
                match status {
                    ChannelStatus::ChannelError { .. }
                    | ChannelStatus::TimedOut
                    | ChannelStatus::Closed { reason: Some(_) } => {
                        Err(Error::not_connected(format!(
                            "{} is not joined ({}): subscribe again",
                            ch.topic,
                            status.as_str()
                        )))
                    }
                    _ => Ok(PushOutcome::UseRest),
                }
            }
            (Phase::Leaving { .. }, PushKind::Broadcast { .. }) => {
                Err(Error::not_connected("channel is leaving"))
            }
            (_, PushKind::Broadcast { .. }) => match policy {
                OfflinePolicy::Fail => Err(Error::not_connected(format!(
                    "{} is not joined (offline policy: fail)",
                    ch.topic
                ))),
                OfflinePolicy::Buffer { capacity, timeout } => {
                    if ch.buffer.len() >= capacity {
                        return Err(Error::new(
                            ErrorKind::BufferFull,
                            format!("offline buffer of {} is full ({capacity} pushes)", ch.topic),
                        ));
                    }
                    self.next_seq += 1;
                    let seq = self.next_seq;
                    let timer = self.timers.insert(Timer::Buffered { id, seq }, timeout);
                    let (tx, rx) = oneshot::channel();
                    ch.buffer.push_back(Buffered {
                        seq,
                        kind,
                        waiter: tx,
                        timer,
                    });
                    Ok(PushOutcome::Wait(rx))
                }
            },
        }
    }

    fn flush_buffer(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let buffered: Vec<Buffered> = ch.buffer.drain(..).collect();
        for b in buffered {
            self.timers.try_remove(&b.timer);
            self.write_push(id, b.kind, b.waiter);
        }
    }

    fn fail_buffer(&mut self, id: ChannelId, err: Error) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        for b in ch.buffer.drain(..) {
            self.timers.try_remove(&b.timer);
            let _ = b.waiter.send(Err(err.clone()));
        }
    }

    // ----- tokens -------------------------------------------------------------------------

    /// Ask the provider for a token on its own task. Returns the request's generation.
    fn request_token(&mut self) -> u64 {
        self.token_gen += 1;
        let gen = self.token_gen;
        if let Some(p) = &self.options.token_provider {
            let fut = p.fetch();
            let tx = self.internal_tx.clone();
            self.runtime.spawn(async move {
                let result = fut.await;
                let _ = tx.send(Internal::Token { gen, result });
            });
        }
        gen
    }

    fn set_auth(&mut self, token: Option<String>) {
        if self.options.token_provider.is_some() {
            if let Some(delay) = token
                .as_deref()
                .and_then(|t| refresh_delay(t, SystemTime::now()))
            {
                self.token_gen += 1;
                let gen = self.token_gen;
                self.timers.insert(Timer::TokenRefresh { gen }, delay);
            }
        }
        if token == self.token {
            return;
        }
        self.token = token;
        self.token_tx.send_replace(self.token.clone());
        let access_token = self.token.clone().unwrap_or_else(|| self.apikey.clone());
        let joined: Vec<(String, String)> = self
            .channels
            .values()
            .filter_map(|c| match &c.phase {
                Phase::Joined { join_ref } => Some((c.topic.clone(), join_ref.clone())),
                _ => None,
            })
            .collect();
        for (topic, join_ref) in joined {
            let r = self.next_ref();
            self.write_message(&Message::new(
                Some(join_ref),
                Some(r),
                topic,
                ev::ACCESS_TOKEN,
                json!({"access_token": access_token}),
            ));
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::Token { gen, result } => {
                match result {
                    Ok(t) => self.set_auth(Some(t)),
                    Err(msg) => {
                        let e = Error::new(ErrorKind::Authorization, "the token provider failed")
                            .with_reason(msg);
                        self.emit(ClientEvent::Error(e));
                        // Try again soon rather than letting the token run out.
                        self.token_gen += 1;
                        let g = self.token_gen;
                        self.timers
                            .insert(Timer::TokenRefresh { gen: g }, Duration::from_secs(5));
                    }
                }
                if self.awaiting_token == Some(gen) {
                    self.awaiting_token = None;
                    self.rejoin_all();
                }
            }
        }
    }

    // ----- timers -------------------------------------------------------------------------

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Reply(r) => {
                let Some(p) = self.pending.remove(&r) else {
                    return;
                };
                match p.kind {
                    PendingKind::Join { id, join_ref } => self.on_join_timeout(id, join_ref),
                    PendingKind::Leave { id } => self.on_leave_done(id),
                    PendingKind::Push(w) => {
                        let _ = w.send(Err(Error::timeout("no reply from the server in time")));
                    }
                }
            }
            Timer::DropReport => self.report_drops(),
            Timer::Heartbeat(r) => {
                if self.hb_pending.as_ref().is_some_and(|hb| hb.msg_ref == r) {
                    // Dead only if silent (no reply, no frame) for the timeout, counting
                    // only reading time (see the module docs).
                    let paused_now = self.paused_for();
                    if let Some(hb) = self.hb_pending.as_mut() {
                        let (since, paused_then) = if self.last_frame.0 > hb.sent {
                            self.last_frame
                        } else {
                            (hb.sent, hb.paused_at_send)
                        };
                        let paused = paused_now.saturating_sub(paused_then);
                        let silent = since.elapsed().saturating_sub(paused);
                        let timeout = self.options.heartbeat_timeout;
                        if silent < timeout {
                            let left = (timeout - silent).max(Duration::from_millis(10));
                            hb.timer = self.timers.insert(Timer::Heartbeat(r), left);
                            return;
                        }
                    }
                    self.hb_pending = None;
                    let e = Error::timeout("heartbeat timeout: the server stopped answering");
                    tracing::warn!("{e}");
                    self.emit(ClientEvent::Error(e));
                    if let Some(w) = &self.io.writer {
                        let _ = w.try_send(WsMessage::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "heartbeat timeout".into(),
                        })));
                    }
                    self.on_dropped(Some(1000), "heartbeat timeout".to_owned());
                }
            }
            Timer::Rejoin { id, gen } => {
                let due = self
                    .channels
                    .get(&id)
                    .is_some_and(|c| c.rejoin_gen == gen && matches!(c.phase, Phase::Errored));
                if due {
                    self.join(id);
                }
            }
            Timer::Buffered { id, seq } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    return;
                };
                if let Some(pos) = ch.buffer.iter().position(|b| b.seq == seq) {
                    if let Some(b) = ch.buffer.remove(pos) {
                        let _ = b.waiter.send(Err(Error::timeout(
                            "the push waited too long in the offline buffer",
                        )));
                    }
                }
            }
            Timer::TokenRefresh { gen } => {
                if gen == self.token_gen {
                    self.request_token();
                }
            }
            Timer::TokenWait { gen } => {
                if self.awaiting_token == Some(gen) {
                    self.awaiting_token = None;
                    self.rejoin_all();
                }
            }
        }
    }

    // ----- reading ------------------------------------------------------------------------

    /// Handle `first` and whatever else is already readable, up to [`READ_BATCH`] frames or
    /// until the backlogs are full; then publish the batch's presence changes.
    fn on_frames(&mut self, first: Option<std::result::Result<WsMessage, tungstenite::Error>>) {
        self.on_frame(first);
        for _ in 1..READ_BATCH {
            if self
                .flow
                .backlog_full(self.options.backlog_events, self.options.backlog_bytes)
            {
                break;
            }
            let Some(reader) = self.io.reader.as_mut() else {
                break;
            };
            match reader.next().now_or_never() {
                Some(frame) => self.on_frame(frame),
                None => break,
            }
        }
        for id in std::mem::take(&mut self.presence_dirty) {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.publish_presence();
            }
        }
    }

    fn on_frame(&mut self, frame: Option<std::result::Result<WsMessage, tungstenite::Error>>) {
        let frame = match frame {
            None => return self.on_dropped(None, "connection closed".to_owned()),
            Some(Err(e)) => return self.on_dropped(None, e.to_string()),
            Some(Ok(f)) => f,
        };
        self.last_frame = (Instant::now(), self.paused_for());
        let wire = match frame {
            WsMessage::Text(t) => WireFrame::Text(t.as_str().to_owned()),
            WsMessage::Binary(b) => WireFrame::Binary(b),
            WsMessage::Close(c) => {
                let (code, reason) = match c {
                    Some(c) => (Some(u16::from(c.code)), c.reason.as_str().to_owned()),
                    None => (None, "closed by the server".to_owned()),
                };
                return self.on_dropped(code, reason);
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return,
        };
        match self.serializer.decode_server_frame(&wire) {
            Ok(ServerFrame::Message(m)) => self.on_message(m),
            Ok(ServerFrame::Binary(ServerBinary::UserBroadcast(b))) => {
                let Some(&id) = self.topics.get(&b.topic) else {
                    return;
                };
                let Some(msg) = BroadcastMessage::from_user_broadcast(b) else {
                    tracing::debug!(
                        "dropping a binary broadcast whose JSON payload does not parse"
                    );
                    return;
                };
                if let Some(ch) = self.channels.get_mut(&id) {
                    if matches!(ch.phase, Phase::Joined { .. }) {
                        ch.dispatch(ChannelEvent::Broadcast(Arc::new(msg)), &[]);
                    }
                }
            }
            Ok(ServerFrame::Binary(other)) => tracing::debug!(?other, "ignoring binary frame"),
            Err(e) => tracing::debug!(error = %e, "dropping malformed frame"),
        }
    }

    fn on_message(&mut self, m: Message) {
        if m.event == ev::PHX_REPLY {
            return self.on_reply(m);
        }
        let Some(&id) = self.topics.get(&m.topic) else {
            return;
        };
        let open_token_refresh;
        {
            let Some(ch) = self.channels.get_mut(&id) else {
                return;
            };
            let current = ch.phase.join_ref().map(str::to_owned);
            match m.event.as_str() {
                ev::PHX_CLOSE | ev::PHX_ERROR => {
                    let r = m.join_ref.as_deref().or(m.msg_ref.as_deref());
                    if r.is_none() || r != current.as_deref() {
                        return;
                    }
                }
                _ => {
                    if m.join_ref.is_some() && m.join_ref != current {
                        return;
                    }
                }
            }
            match m.event.as_str() {
                ev::BROADCAST => {
                    if let Some(b) = BroadcastMessage::from_text(&m.payload) {
                        ch.dispatch(ChannelEvent::Broadcast(Arc::new(b)), &[]);
                    }
                    return;
                }
                ev::PRESENCE_STATE => {
                    if ch.presence_active {
                        let events = ch.presence.apply_state(&state_from_wire(&m.payload));
                        if ch.apply_presence(events) {
                            self.presence_dirty.push(id);
                        }
                    }
                    return;
                }
                ev::PRESENCE_DIFF => {
                    if ch.presence_active {
                        let events = ch.presence.apply_diff(PresenceDiff::from_wire(&m.payload));
                        if ch.apply_presence(events) {
                            self.presence_dirty.push(id);
                        }
                    }
                    return;
                }
                ev::POSTGRES_CHANGES => {
                    match PostgresChange::from_payload(&m.payload) {
                        Ok(change) => {
                            let matches: Vec<usize> = ch
                                .bindings
                                .iter()
                                .zip(&ch.binding_ids)
                                .enumerate()
                                .filter(|(_, (b, bid))| {
                                    change.ids.contains(bid) && b.event.matches(change.event_type)
                                })
                                .map(|(i, _)| i)
                                .collect();
                            if !matches.is_empty() {
                                ch.dispatch(
                                    ChannelEvent::PostgresChanges(Arc::new(change)),
                                    &matches,
                                );
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "dropping postgres_changes"),
                    }
                    return;
                }
                ev::SYSTEM => {
                    let s = SystemMessage::from_payload(&m.payload);
                    if s.is_error() && s.extension == "system" {
                        ch.last_system_error = Some(s.message.clone());
                    }
                    ch.dispatch(ChannelEvent::System(Arc::new(s)), &[]);
                    return;
                }
                ev::PHX_ERROR => {
                    ch.set_status(ChannelStatus::ChannelError {
                        reason: "the channel crashed on the server".to_owned(),
                        kind: ErrorKind::ChannelError,
                    });
                    open_token_refresh = false;
                }
                ev::PHX_CLOSE => {
                    if matches!(ch.phase, Phase::Leaving { .. }) {
                        return self.on_leave_done(id);
                    }
                    let reason = ch.last_system_error.take();
                    let err = match &reason {
                        Some(r) => Error::from_server_reason(
                            format!("{} was closed by the server", ch.topic),
                            r.clone(),
                        ),
                        None => Error::new(
                            ErrorKind::ChannelError,
                            format!("{} was closed by the server", ch.topic),
                        ),
                    };
                    ch.answer_subscribers(Err(err.clone()));
                    ch.set_status(ChannelStatus::Closed {
                        reason: reason.clone(),
                    });
                    if !self.options.rejoin_on_server_close {
                        ch.phase = Phase::Idle;
                        ch.reset_presence();
                        self.fail_buffer(id, err);
                        return;
                    }
                    open_token_refresh = reason.as_deref().is_some_and(is_auth_reason);
                }
                other => {
                    // Legacy-mode changes (§4.6) or unknown events: expose legacy changes.
                    if matches!(other, "INSERT" | "UPDATE" | "DELETE") {
                        if let Ok(change) = PostgresChange::from_record(&m.payload) {
                            let matches: Vec<usize> = ch
                                .bindings
                                .iter()
                                .enumerate()
                                .filter(|(_, b)| b.event.matches(change.event_type))
                                .map(|(i, _)| i)
                                .collect();
                            ch.dispatch(ChannelEvent::PostgresChanges(Arc::new(change)), &matches);
                        }
                    }
                    return;
                }
            }
        }
        // phx_error, or phx_close we did not ask for: rejoin with backoff.
        if open_token_refresh {
            self.request_token();
        }
        self.schedule_rejoin(id);
    }

    fn on_reply(&mut self, m: Message) {
        let Some(r) = m.msg_ref.clone() else {
            return;
        };
        let Some((status, response)) = m.reply_parts() else {
            return;
        };
        if m.topic == PHOENIX_TOPIC {
            if self.hb_pending.as_ref().is_some_and(|hb| hb.msg_ref == r) {
                if let Some(hb) = self.hb_pending.take() {
                    self.timers.try_remove(&hb.timer);
                    let latency = hb.sent.elapsed();
                    self.latency_tx.send_replace(Some(latency));
                    self.emit(ClientEvent::Heartbeat { latency });
                }
            }
            return;
        }
        let Some(p) = self.pending.remove(&r) else {
            return;
        };
        self.timers.try_remove(&p.timer);
        match p.kind {
            PendingKind::Join { id, join_ref } => {
                let response = response.clone();
                self.on_join_reply(id, join_ref, status, &response);
            }
            PendingKind::Leave { id } => self.on_leave_done(id),
            PendingKind::Push(w) => {
                let result = match status {
                    Status::Ok => Ok(()),
                    Status::Error => {
                        let reason = match response {
                            Value::String(s) => s.clone(),
                            v => v
                                .get("reason")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string()),
                        };
                        Err(Error::from_server_reason(
                            "the server refused the push",
                            reason,
                        ))
                    }
                };
                let _ = w.send(result);
            }
        }
    }

    // ----- commands -----------------------------------------------------------------------

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Channel {
                topic,
                config,
                reply,
            } => {
                let topic = if topic.starts_with(supa_realtime_protocol::TOPIC_PREFIX) {
                    topic
                } else {
                    format!("{}{topic}", supa_realtime_protocol::TOPIC_PREFIX)
                };
                if let Some(ch) = self.topics.get(&topic).and_then(|id| self.channels.get(id)) {
                    let _ = reply.send(ch.parts());
                    return;
                }
                self.next_channel_id += 1;
                let id = self.next_channel_id;
                let (status_tx, _) = watch::channel(ChannelStatus::Idle);
                let (presence_tx, _) = watch::channel(Arc::new(PresenceState::new()));
                let ch = ChannelEntry {
                    id,
                    topic: topic.clone(),
                    config,
                    bindings: Vec::new(),
                    binding_ids: Vec::new(),
                    phase: Phase::Idle,
                    status_tx,
                    presence_tx,
                    subs: Vec::new(),
                    presence: PresenceSync::new(),
                    presence_pending: Vec::new(),
                    presence_listeners: false,
                    presence_active: false,
                    tracked: None,
                    buffer: VecDeque::new(),
                    subscribe_waiters: Vec::new(),
                    rejoin_attempt: 0,
                    failures: 0,
                    rejoin_gen: 0,
                    last_system_error: None,
                    dropped: Arc::new(AtomicU64::new(0)),
                };
                let _ = reply.send(ch.parts());
                self.topics.insert(topic, id);
                self.channels.insert(id, ch);
                self.refresh_hb_interval();
            }
            Command::Channels { reply } => {
                let mut parts: Vec<ChannelParts> =
                    self.channels.values().map(ChannelEntry::parts).collect();
                parts.sort_by_key(|p| p.id);
                let _ = reply.send(parts);
            }
            Command::Subscribe { id, reply } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    let _ = reply.send(Err(Error::invalid("channel removed")));
                    return;
                };
                let idle = matches!(ch.phase, Phase::Idle);
                if matches!(ch.phase, Phase::Idle | Phase::Errored) && !self.state.is_open() {
                    // The socket cannot open for now: say so at once (the channel still
                    // joins when it opens).
                    let refused = match (&self.state, &self.last_connect_error) {
                        (ConnectionState::Closed { .. }, _) => Some(Error::not_connected(
                            "the client is disconnected; reconnect to join",
                        )),
                        (_, Some(e)) if e.kind() == ErrorKind::Authorization => Some(e.clone()),
                        _ => None,
                    };
                    if let Some(e) = refused {
                        if idle {
                            ch.rejoin_attempt = 0;
                            ch.failures = 0;
                            ch.phase = Phase::Errored;
                        }
                        if e.kind() == ErrorKind::Authorization {
                            ch.set_status(ChannelStatus::ChannelError {
                                reason: e.reason().unwrap_or(e.message()).to_owned(),
                                kind: e.kind(),
                            });
                        }
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                match ch.phase {
                    Phase::Joined { .. } => {
                        let _ = reply.send(Ok(()));
                    }
                    Phase::Joining { .. } | Phase::Errored => ch.subscribe_waiters.push(reply),
                    Phase::Leaving { .. } => {
                        let _ = reply.send(Err(Error::invalid(
                            "the channel is leaving; subscribe after unsubscribe returns",
                        )));
                    }
                    Phase::Idle => {
                        ch.subscribe_waiters.push(reply);
                        ch.rejoin_attempt = 0;
                        ch.failures = 0;
                        self.join(id);
                    }
                }
            }
            Command::Unsubscribe { id, reply } => self.leave(id, Some(reply)),
            Command::Remove { id, reply } => {
                self.remove(id);
                self.refresh_hb_interval();
                let _ = reply.send(Ok(()));
            }
            Command::RemoveAll { reply } => {
                let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
                for id in ids {
                    self.remove(id);
                }
                self.refresh_hb_interval();
                let _ = reply.send(Ok(()));
            }
            Command::Listen {
                id,
                filter,
                sub,
                reply,
            } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    let _ = reply.send(Err(Error::invalid("channel removed")));
                    return;
                };
                let presence = matches!(filter, EventFilter::Presence | EventFilter::All);
                if presence {
                    ch.presence_listeners = true;
                }
                let mut sub = sub;
                sub.count_in(ch.dropped.clone());
                ch.subs.push((filter, sub));
                let _ = reply.send(Ok(()));
                // As realtime-js and the official Python client: presence enabled on a joined
                // (or joining) channel takes effect by joining again, so that the server
                // sends the presence state.
                let joined = matches!(ch.phase, Phase::Joined { .. } | Phase::Joining { .. });
                if presence && joined && !ch.presence_active {
                    self.rejoin_now(id);
                }
            }
            Command::AddBinding {
                id,
                filter,
                sub,
                reply,
            } => {
                let Some(ch) = self.channels.get_mut(&id) else {
                    let _ = reply.send(Err(Error::invalid("channel removed")));
                    return;
                };
                if !matches!(ch.phase, Phase::Idle) {
                    let _ = reply.send(Err(Error::invalid(
                        "postgres_changes bindings must be added before subscribe",
                    )));
                    return;
                }
                ch.bindings.push(filter);
                let idx = ch.bindings.len() - 1;
                let mut sub = sub;
                sub.count_in(ch.dropped.clone());
                ch.subs.push((EventFilter::Postgres(idx), sub));
                let _ = reply.send(Ok(()));
            }
            Command::Push { id, kind, reply } => {
                let outcome = self.on_push(id, kind);
                let _ = reply.send(outcome);
            }
            Command::SetAuth { token } => self.set_auth(token),
            Command::ClientListen { sub } => self.client_subs.push(sub),
            Command::WaitOpen { reply } => match &self.state {
                ConnectionState::Open => {
                    let _ = reply.send(Ok(()));
                }
                ConnectionState::Closed { .. } => {
                    let _ = reply.send(Err(Error::not_connected("the client is disconnected")));
                }
                _ => self.open_waiters.push(reply),
            },
            Command::Connect => self.transition(Input::Connect),
            Command::Disconnect { reply } => {
                self.close_socket(Some("disconnect"));
                let _ = reply.send(());
            }
        }
    }
}
