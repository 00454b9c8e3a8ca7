//! The two queues of a socket that other tasks write into: the bounded queue of frames its one
//! writer task sends ([`Outbox`]), and the control messages its read loop handles
//! ([`Control`]). They sit below the registry and the connection, which both use them.
//!
//! Fan-out never waits on a socket: it `try_send`s into the queue. A full queue means the
//! client is not reading fast enough, and the [`SlowConsumerPolicy`] decides: close the
//! socket with a logged reason (default; the client reconnects and rejoins, so nothing is lost
//! silently), or drop that one message and log it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::mpsc;
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
}

/// A frame for the writer.
#[derive(Debug)]
pub(crate) enum OutFrame {
    /// A data frame, already encoded (cheap to clone: it shares its bytes).
    Data(WsMessage),
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
}

/// The sending side of a socket's queue.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<OutFrame>,
    closer: CancellationToken,
    policy: SlowConsumerPolicy,
    conn_id: u64,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// Queue a frame without waiting. `false` if it was not queued.
    pub(crate) fn send(&self, frame: WsMessage) -> bool {
        match self.tx.try_send(OutFrame::Data(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
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
                        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(
                                conn = self.conn_id,
                                dropped = n,
                                "slow consumer: outgoing queue full, dropping messages"
                            );
                        }
                    }
                }
                false
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
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let outbox = Outbox {
        tx,
        closer: closer.clone(),
        policy,
        conn_id,
        dropped: Arc::new(AtomicU64::new(0)),
        metrics,
    };
    let handle = tokio::spawn(writer(sink, rx, closer, shutdown));
    (outbox, handle)
}

async fn writer(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<OutFrame>,
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
            written = write_batch(&mut sink, &mut batch) => match written {
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

/// Write a batch and flush once. `Ok(Some(..))` when the batch asked to close the socket.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    batch: &mut Vec<OutFrame>,
) -> Result<Option<(u16, &'static str)>, ()> {
    let mut stop = None;
    for frame in batch.drain(..) {
        match frame {
            OutFrame::Data(m) => sink.feed(m).await.map_err(|_| ())?,
            OutFrame::Close(code, reason) => {
                stop = Some((code, reason));
                break;
            }
        }
    }
    sink.flush().await.map_err(|_| ())?;
    Ok(stop)
}
