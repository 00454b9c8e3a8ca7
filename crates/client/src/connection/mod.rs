//! The connection task: the one owner of the socket, the channels and the timers.
//!
//! Handles talk to it with `Command`s (below) over a bounded `mpsc`; commands that need an
//! answer carry a `oneshot`. State leaves it through `watch`es and event queues.
//!
//! # Reading under backpressure
//!
//! Every frame read is routed at once: replies resolve their pushes, heartbeat replies are
//! timed, `phx_close`/`phx_error`/`system`/`access_token` change the channel, and the events
//! that result are offered to the consumers' queues ([`crate::queue`]). An event that does
//! not fit a backpressure consumer's queue waits in that consumer's backlog on this task, in
//! order. So control frames never wait behind broadcasts while the backlogs have room: the
//! task keeps reading and handling them. Frames are handled in read batches (what is
//! readable, up to 64); the presence events of a batch are dispatched at its end with one
//! snapshot of the state. The state is structurally shared (see [`crate::PresenceState`]),
//! so the snapshot is O(1) and shares memory with the live state; a full copy per diff
//! (later per batch) cost O(n) each for n presences and held one copy per queued `Sync`.
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
//! The trade-off: a server that keeps sending while its heartbeat handling is broken is not
//! declared dead; its socket is evidently alive.
//!
//! [`ClientOptions::backlog_events`]: crate::ClientOptions::backlog_events
//! [`ClientOptions::backlog_bytes`]: crate::ClientOptions::backlog_bytes

pub mod backoff;
pub(crate) mod state;
mod task;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use crate::broadcast::BroadcastPayload;
use crate::config::{ChannelConfig, ChannelStatus};
use crate::error::Result;
use crate::events::{ChannelEvent, ClientEvent, EventFilter};
use crate::postgres::PostgresChangesFilter;
use crate::presence::PresenceState;
use crate::queue::Subscriber;

pub use state::{CloseReason, ConnectionState};
pub(crate) use task::spawn;

/// Identifies a channel for the life of the client (topics can be reused after removal).
pub(crate) type ChannelId = u64;

/// What the handle gets back for a channel.
pub(crate) struct ChannelParts {
    pub(crate) id: ChannelId,
    pub(crate) topic: String,
    pub(crate) config: ChannelConfig,
    pub(crate) status: watch::Receiver<ChannelStatus>,
    pub(crate) presence: watch::Receiver<PresenceState>,
    pub(crate) dropped: Arc<AtomicU64>,
}

/// A push to a channel.
#[derive(Debug, Clone)]
pub(crate) enum PushKind {
    Broadcast {
        event: String,
        payload: BroadcastPayload,
    },
    Track(serde_json::Value),
    Untrack,
}

/// How a push went, as far as the task can say at once.
#[derive(Debug)]
pub(crate) enum PushOutcome {
    /// Written (no reply expected) or remembered (presence while not joined).
    Done,
    /// Sent or buffered; the final result comes later.
    Wait(oneshot::Receiver<Result<()>>),
    /// The channel is not subscribed: send it through REST instead.
    UseRest,
}

pub(crate) enum Command {
    Channel {
        topic: String,
        config: ChannelConfig,
        reply: oneshot::Sender<ChannelParts>,
    },
    Channels {
        reply: oneshot::Sender<Vec<ChannelParts>>,
    },
    Subscribe {
        id: ChannelId,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        id: ChannelId,
        reply: oneshot::Sender<Result<()>>,
    },
    Remove {
        id: ChannelId,
        reply: oneshot::Sender<Result<()>>,
    },
    RemoveAll {
        reply: oneshot::Sender<Result<()>>,
    },
    Listen {
        id: ChannelId,
        filter: EventFilter,
        sub: Subscriber<ChannelEvent>,
        reply: oneshot::Sender<Result<()>>,
    },
    AddBinding {
        id: ChannelId,
        filter: PostgresChangesFilter,
        sub: Subscriber<ChannelEvent>,
        reply: oneshot::Sender<Result<()>>,
    },
    Push {
        id: ChannelId,
        kind: PushKind,
        reply: oneshot::Sender<Result<PushOutcome>>,
    },
    SetAuth {
        token: Option<String>,
    },
    ClientListen {
        sub: Subscriber<ClientEvent>,
    },
    /// Answered when the socket is open, or with the error of the next failed attempt.
    WaitOpen {
        reply: oneshot::Sender<Result<()>>,
    },
    Connect,
    Disconnect {
        reply: oneshot::Sender<()>,
    },
}
