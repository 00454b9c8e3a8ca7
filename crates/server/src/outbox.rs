//! The two queues of a socket that other tasks write into: the bounded queue of frames its one
//! writer task sends ([`Outbox`]), and the control messages its read loop handles
//! ([`Control`]). They sit below the registry and the connection, which both use them.
//!
//! One queue keeps every frame of a socket in order, but two kinds of frames are judged apart:
//!
//! * **Deliveries** (fan-out of what others sent: broadcasts, presence diffs, changes) never
//!   wait on a socket: they `try_send`. A full queue means the client is not taking what it is
//!   sent, and the [`SlowConsumerPolicy`] decides: close the socket with a logged reason
//!   (default; the client reconnects and rejoins, so nothing is lost silently), or drop that
//!   one message and log it.
//! * **Replies** to the socket's own requests (heartbeats, joins, acks) are backpressure: the
//!   read loop stops reading the socket while `capacity` of them are queued
//!   ([`Outbox::reply_room`]), so a client that pipelines requests is slowed down by TCP and
//!   never judged by the slow-consumer policy for what it asked for.
//!
//! The queue holds `2 × capacity` frames plus the replies of one request, so it is full only
//! when at least `capacity` deliveries wait: exactly the slow-consumer condition, with no
//! per-delivery bookkeeping beyond the channel's own (only replies are counted).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::SlowConsumerPolicy;
use crate::fanout::SubId;
use crate::metrics::Metrics;

/// Messages from other tasks to a connection's read loop.
#[derive(Debug)]
pub(crate) enum Control {
    /// Close channel `sub` with a `system` error `message`, then `phx_close`.
    CloseChannel { sub: SubId, message: String },
    /// Re-check channel `sub`'s token (armed at `min(5 min, exp)`).
    TokenCheck { sub: SubId, generation: u64 },
    /// The database broadcast stream is up: tell channel `sub` (`broadcast.replication_ready`).
    ReplicationReady { sub: SubId },
}

/// A frame for the writer.
#[derive(Debug)]
pub(crate) enum OutFrame {
    /// A data frame, already encoded (cheap to clone: it shares its bytes); `reply` when it
    /// answers the socket's own request.
    Data { frame: WsMessage, reply: bool },
    /// Send a close frame with this code and reason, then stop.
    Close(u16, &'static str),
}

/// How long the writer tries to say goodbye to a peer before dropping the socket.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// WebSocket close codes used by the server.
pub(crate) mod close_code {
    /// The server asked the client to go away (upstream: join rate limit, tenant gone).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The server is shutting down; clients should reconnect.
    pub(crate) const SERVICE_RESTART: u16 = 1012;
    /// The client did not keep up with its messages.
    pub(crate) const POLICY_VIOLATION: u16 = 1008;
    /// A text frame was not UTF-8 (RFC 6455 §8.1).
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
}

/// Replies one request may queue beyond `capacity` (a join: its reply, up to 25 replayed
/// messages, presence state).
const REPLY_BURST: usize = 64;

/// The sending side of a socket's queue.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<OutFrame>,
    replies: Arc<Replies>,
    capacity: usize,
    closer: CancellationToken,
    policy: SlowConsumerPolicy,
    conn_id: u64,
    metrics: Arc<Metrics>,
}

/// Room held for one reply ([`Outbox::reserve_reply`]); given back if never sent.
#[derive(Debug)]
pub(crate) struct ReservedReply {
    outbox: Option<Outbox>,
}

impl ReservedReply {
    /// Queue the reply in the room held for it.
    pub(crate) fn send(mut self, frame: WsMessage) {
        if let Some(outbox) = self.outbox.take() {
            outbox.queue_counted_reply(frame);
        }
    }
}

impl Drop for ReservedReply {
    fn drop(&mut self) {
        if let Some(outbox) = self.outbox.take() {
            outbox.replies.done(1);
        }
    }
}

/// Replies queued (or reserved) and not yet written; the writer counts them down.
#[derive(Debug, Default)]
struct Replies {
    queued: AtomicUsize,
    /// Signalled when replies were written (room for the read loop to go on).
    written: Notify,
    dropped: AtomicU64,
}

impl Replies {
    fn done(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
        self.written.notify_one();
    }
}

impl Outbox {
    /// Queue a delivery without waiting. `false` if it was not queued: the socket is closing,
    /// or it is not taking its deliveries (then the slow-consumer policy applies).
    pub(crate) fn send(&self, frame: WsMessage) -> bool {
        match self.tx.try_send(OutFrame::Data {
            frame,
            reply: false,
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow_consumer();
                false
            }
        }
    }

    /// Queue a reply to the socket's own request. It finds room: the read loop waits for
    /// [`Outbox::reply_room`] before reading the next request, and the queue is full only when
    /// `capacity` deliveries wait (then the slow-consumer policy applies, as for a delivery).
    pub(crate) fn reply(&self, frame: WsMessage) {
        self.replies.queued.fetch_add(1, Ordering::AcqRel);
        self.queue_counted_reply(frame);
    }

    /// Hold room for a reply that will be sent later (a refused join answers after the error
    /// backoff): until then it counts as queued, so delayed replies are backpressure too.
    pub(crate) fn reserve_reply(&self) -> ReservedReply {
        self.replies.queued.fetch_add(1, Ordering::AcqRel);
        ReservedReply {
            outbox: Some(self.clone()),
        }
    }

    /// Queue a reply already counted in `replies.queued`.
    fn queue_counted_reply(&self, frame: WsMessage) {
        match self.tx.try_send(OutFrame::Data { frame, reply: true }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.replies.done(1),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.replies.done(1);
                self.slow_consumer();
            }
        }
    }

    /// Whether replies have room, i.e. the next request may be read.
    pub(crate) fn has_reply_room(&self) -> bool {
        self.replies.queued.load(Ordering::Acquire) < self.capacity
    }

    /// Wait until replies have room.
    pub(crate) async fn reply_room(&self) {
        loop {
            let written = self.replies.written.notified();
            if self.has_reply_room() {
                return;
            }
            written.await;
        }
    }

    fn slow_consumer(&self) {
        match self.policy {
            SlowConsumerPolicy::Disconnect => {
                if !self.closer.is_cancelled() {
                    self.metrics.slow_consumer_disconnect();
                    tracing::warn!(
                        conn = self.conn_id,
                        "slow consumer: outgoing queue full, closing the socket"
                    );
                    self.closer.cancel();
                }
            }
            SlowConsumerPolicy::Drop => {
                self.metrics.slow_consumer_drop();
                let n = self.replies.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        conn = self.conn_id,
                        dropped = n,
                        "slow consumer: outgoing queue full, dropping messages"
                    );
                }
            }
        }
    }

    /// Ask the writer to close the socket with `code` after what is queued.
    pub(crate) fn close(&self, code: u16, reason: &'static str) {
        if self.tx.try_send(OutFrame::Close(code, reason)).is_err() {
            self.closer.cancel();
        }
    }
}

/// Make a socket's queue and its writer task.
pub(crate) fn spawn_writer(
    sink: SplitSink<WebSocket, WsMessage>,
    capacity: usize,
    policy: SlowConsumerPolicy,
    conn_id: u64,
    closer: CancellationToken,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> (Outbox, tokio::task::JoinHandle<()>) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(2 * capacity + REPLY_BURST);
    let replies = Arc::new(Replies::default());
    let outbox = Outbox {
        tx,
        replies: replies.clone(),
        capacity,
        closer: closer.clone(),
        policy,
        conn_id,
        metrics,
    };
    let handle = tokio::spawn(writer(sink, rx, replies, closer, shutdown));
    (outbox, handle)
}

async fn writer(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<OutFrame>,
    replies: Arc<Replies>,
    closer: CancellationToken,
    shutdown: CancellationToken,
) {
    // Grown on first use: an idle socket should cost as little memory as possible.
    let mut batch = Vec::new();
    let close = loop {
        let n = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Some((close_code::SERVICE_RESTART, "server shutting down")),
            _ = closer.cancelled() => break Some((close_code::POLICY_VIOLATION, "closed by server")),
            n = rx.recv_many(&mut batch, 64) => n,
        };
        if n == 0 {
            break None;
        }
        // Writing waits on the peer; a peer that stopped reading is cut off by the closer
        // (slow-consumer policy) or by shutdown, even in the middle of a batch.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Some((close_code::SERVICE_RESTART, "server shutting down")),
            _ = closer.cancelled() => break Some((close_code::POLICY_VIOLATION, "closed by server")),
            written = write_batch(&mut sink, &mut batch, &replies) => match written {
                Err(()) => {
                    closer.cancel();
                    return;
                }
                Ok(Some(stop)) => break Some(stop),
                Ok(None) => {}
            },
        }
    };
    // A peer that stopped reading must not hold this task forever: the close frame gets a
    // bounded time, after which the socket is simply dropped.
    let goodbye = async {
        if let Some((code, reason)) = close {
            let _ = sink
                .send(WsMessage::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    closer.cancel();
}

/// Write a batch and flush once, then count its replies as gone. `Ok(Some(..))` when the batch
/// asked to close the socket.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    batch: &mut Vec<OutFrame>,
    replies: &Replies,
) -> Result<Option<(u16, &'static str)>, ()> {
    let mut written_replies = 0;
    let mut stop = None;
    for frame in batch.drain(..) {
        match frame {
            OutFrame::Data { frame, reply } => {
                written_replies += usize::from(reply);
                sink.feed(frame).await.map_err(|_| ())?;
            }
            OutFrame::Close(code, reason) => {
                stop = Some((code, reason));
                break;
            }
        }
    }
    sink.flush().await.map_err(|_| ())?;
    if written_replies > 0 {
        replies.done(written_replies);
    }
    Ok(stop)
}
