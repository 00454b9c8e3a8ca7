//! The task that owns the socket: read loop, writer hand-off, heartbeat, timers, the
//! reconnect state machine and every channel's state.
//!
//! Split by concern: [`lifecycle`] (socket, writing, heartbeats), [`channels`] (entries and
//! their transitions), [`pushes`] (and the offline buffer), [`inbound`] (routing of what is
//! read), [`auth`] (tokens), [`timers`], [`flow`] (backlogs, pause, drop reports),
//! [`commands`]. The backpressure design is in the [parent module](super)'s docs.

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
use supa_realtime_protocol::presence::{state_from_wire_owned, PresenceDiff, PresenceSync};
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

mod auth;
mod channels;
mod commands;
mod flow;
mod inbound;
mod lifecycle;
mod pushes;
mod timers;

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
    presence_tx: watch::Sender<PresenceState>,
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
    /// became dirty (the task then publishes it, see [`Self::publish_presence`]).
    fn apply_presence(
        &mut self,
        events: Vec<supa_realtime_protocol::presence::PresenceEvent>,
    ) -> bool {
        let was_clean = self.presence_pending.is_empty();
        self.presence_pending.extend(events);
        was_clean && !self.presence_pending.is_empty()
    }

    /// Publish the batch's presence: one O(1) snapshot of the state (it is kept in the
    /// form users see and structurally shared, see [`PresenceState`]) for the `watch` and
    /// every `Sync` of the batch. Building a full copy per diff made a channel of n presences
    /// cost O(n) per diff and hold one O(n) copy per queued `Sync` event: n clients of one
    /// channel in one process grew with n³; a copy per batch still made it O(n) per batch.
    fn publish_presence(&mut self) {
        if self.presence_pending.is_empty() {
            return;
        }
        let state = self.presence.state().clone();
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
        self.presence_tx.send_replace(PresenceState::new());
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
}
