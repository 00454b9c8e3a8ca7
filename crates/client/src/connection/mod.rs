//! The connection task: the one owner of the socket, the channels and the timers.
//!
//! Handles talk to it with [`Command`]s over a bounded `mpsc`; commands that need an
//! answer carry a `oneshot`. State leaves it through `watch`es and event queues.

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
    pub(crate) presence: watch::Receiver<Arc<PresenceState>>,
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
