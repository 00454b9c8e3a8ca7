//! One WebSocket connection: a read loop that owns the socket's channels, and a writer task.
//!
//! The read loop is the only owner of the connection's channel map, so channel state needs no
//! lock. Other tasks reach it through [`Control`] messages (a fan-out that must close a
//! channel, a token expiry timer). Everything the loop does per frame is synchronous: replies
//! and pushes go into the bounded [`Outbox`]; nothing awaits another socket.

mod channel;
mod join;
mod push;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::StreamExt;
use serde_json::{json, Value};
use supa_realtime_protocol::{
    event, ClientFrame, Message, Serializer, Status, WireFrame, PHOENIX_TOPIC,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Claims;
use crate::fanout::{to_ws, SubId};
use crate::outbox;
use crate::state::AppState;

pub(crate) use crate::outbox::{close_code, Control, Outbox};
pub(crate) use channel::Channel;
pub(crate) use join::may_use_private_channel;

/// How the socket authenticated.
pub(crate) struct ConnectInfo {
    pub(crate) serializer: Serializer,
    pub(crate) token: String,
    pub(crate) claims: Claims,
}

/// The read loop's state.
pub(crate) struct Connection {
    id: u64,
    state: Arc<AppState>,
    serializer: Serializer,
    outbox: Outbox,
    control: mpsc::Sender<Control>,
    /// The socket's own token: channels without an `access_token` use it.
    token: String,
    claims: Claims,
    /// Joined channels by wire topic.
    channels: HashMap<String, Channel>,
}

/// Serve one upgraded socket until it closes.
pub(crate) async fn run(socket: WebSocket, state: Arc<AppState>, info: ConnectInfo) {
    let id = state.next_conn_id();
    state.connections.fetch_add(1, Ordering::SeqCst);
    let (sink, mut stream) = socket.split();
    let closer = CancellationToken::new();
    let (outbox, writer) = outbox::spawn_writer(
        sink,
        state.config.outbox_capacity,
        state.config.slow_consumer_policy,
        id,
        closer.clone(),
        state.shutdown.clone(),
        state.metrics.clone(),
    );
    let (control, mut control_rx) = mpsc::channel(1024);
    let idle = Duration::from_millis(state.config.idle_timeout_ms);
    let mut conn = Connection {
        id,
        state: state.clone(),
        serializer: info.serializer,
        outbox,
        control,
        token: info.token,
        claims: info.claims,
        channels: HashMap::new(),
    };
    tracing::debug!(conn = id, vsn = info.serializer.vsn(), role = %conn.claims.role, "socket connected");
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let reason = loop {
        tokio::select! {
            biased;
            _ = closer.cancelled() => break "closed by server",
            _ = state.shutdown.cancelled() => break "server shutting down",
            Some(c) = control_rx.recv() => conn.on_control(c).await,
            _ = &mut deadline => {
                conn.outbox.close(1000, "idle timeout");
                break "idle timeout";
            }
            frame = stream.next() => match frame {
                Some(Ok(frame)) => {
                    deadline.as_mut().reset(Instant::now() + idle);
                    if !conn.on_frame(frame).await {
                        break "client closed";
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(conn = id, error = %e, "socket read failed");
                    break "read error";
                }
                None => break "client closed",
            },
        }
    };
    tracing::debug!(conn = id, reason, "socket closing");
    conn.leave_all();
    drop(conn);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
    state.connections.fetch_sub(1, Ordering::SeqCst);
}

impl Connection {
    /// Handle one frame; `false` when the client closed.
    async fn on_frame(&mut self, frame: WsMessage) -> bool {
        let decoded = match frame {
            WsMessage::Text(t) => {
                let len = t.len();
                self.serializer
                    .decode_text(t.as_bytes())
                    .map(|m| (ClientFrame::Message(m), len))
            }
            WsMessage::Binary(b) => {
                let len = b.len();
                self.serializer
                    .decode_client_frame(&WireFrame::Binary(b))
                    .map(|f| (f, len))
            }
            WsMessage::Close(_) => return false,
            WsMessage::Ping(_) | WsMessage::Pong(_) => return true,
        };
        match decoded {
            Ok((ClientFrame::Message(m), len)) => self.on_message(m, len).await,
            Ok((ClientFrame::UserBroadcast(b), len)) => {
                self.state.metrics.message_in("broadcast");
                self.on_user_broadcast(b, len).await
            }
            Ok((ClientFrame::BinaryPush(p), len)) => self.on_binary_push(p, len),
            Err(e) => {
                // Upstream logs and drops malformed frames; the socket stays open.
                tracing::warn!(conn = self.id, error = %e, "MalformedWebSocketMessage: frame dropped");
            }
        }
        true
    }

    async fn on_message(&mut self, m: Message, frame_len: usize) {
        self.state.metrics.message_in(&m.event);
        if m.topic == PHOENIX_TOPIC {
            if m.event == event::HEARTBEAT {
                self.reply(&m, Status::Ok, json!({}));
            } else {
                self.unmatched_topic(&m);
            }
            return;
        }
        if m.event == event::PHX_JOIN {
            self.join(m).await;
            return;
        }
        let Some(channel) = self.channels.get(&m.topic) else {
            if m.event == event::PHX_LEAVE {
                self.reply(&m, Status::Ok, json!({}));
            } else {
                self.unmatched_topic(&m);
            }
            return;
        };
        // A message for an older instance of this channel is stale: drop it, as Phoenix does.
        if let (Some(sent), Some(current)) = (&m.join_ref, &channel.join_ref) {
            if sent != current {
                tracing::debug!(conn = self.id, topic = %m.topic, "stale join_ref: dropped");
                return;
            }
        }
        if m.event == event::BROADCAST {
            // The hot path: the message moves into the fan-out.
            self.broadcast(m, frame_len).await;
            return;
        }
        match m.event.as_str() {
            event::PHX_LEAVE => self.leave(&m),
            event::ACCESS_TOKEN => self.access_token(&m).await,
            event::PRESENCE => self.presence(&m, frame_len).await,
            other => {
                // Upstream logs unknown events and counts them against the events limit.
                tracing::info!(conn = self.id, topic = %m.topic, event = other, "unknown event ignored");
                self.state.events.add(1);
            }
        }
    }

    async fn on_control(&mut self, c: Control) {
        match c {
            Control::CloseChannel { sub, message } => {
                if let Some(topic) = self.topic_of(sub) {
                    self.close_channel(&topic, &message);
                }
            }
            Control::TokenCheck { sub, generation } => self.token_check(sub, generation),
        }
    }

    fn topic_of(&self, sub: SubId) -> Option<String> {
        self.channels
            .iter()
            .find(|(_, c)| c.sub == sub)
            .map(|(t, _)| t.clone())
    }

    /// Queue a message for this socket.
    fn push(&self, m: &Message) {
        self.outbox
            .send(to_ws(self.serializer.encode_server_message(m)));
    }

    fn reply(&self, to: &Message, status: Status, response: Value) {
        self.push(&Message::reply_to(to, status, response));
    }

    fn unmatched_topic(&self, m: &Message) {
        let mut reply = Message::reply_to(m, Status::Error, json!({"reason": "unmatched topic"}));
        reply.join_ref = None;
        self.push(&reply);
    }

    /// Remove a channel from its topic (its presence leaves) and from this connection.
    fn remove_channel(&mut self, topic: &str) -> Option<Channel> {
        let channel = self.channels.remove(topic)?;
        self.state.metrics.channel_closed(channel.topic.key.private);
        channel
            .topic
            .remove(channel.sub, &self.state.presence_events);
        self.state.registry.release(&channel.topic.key);
        if self.channels.is_empty() {
            self.state.users.fetch_sub(1, Ordering::SeqCst);
        }
        Some(channel)
    }

    fn phx_close(&self, topic: &str, join_ref: &Option<String>) {
        self.push(&Message::new(
            join_ref.clone(),
            join_ref.clone(),
            topic,
            event::PHX_CLOSE,
            json!({}),
        ));
    }

    /// Shut a channel down as upstream does: a `system` error saying why, then `phx_close`.
    fn close_channel(&mut self, topic: &str, message: &str) {
        let Some(channel) = self.remove_channel(topic) else {
            return;
        };
        tracing::info!(conn = self.id, topic, message, "channel closed by server");
        self.push(&Message::channel_push(
            channel.join_ref.clone(),
            topic,
            event::SYSTEM,
            json!({"extension": "system", "status": "error", "message": message, "channel": channel.name()}),
        ));
        self.phx_close(topic, &channel.join_ref);
    }

    fn leave(&mut self, m: &Message) {
        self.reply(m, Status::Ok, json!({}));
        if let Some(channel) = self.remove_channel(&m.topic) {
            self.phx_close(&m.topic, &channel.join_ref);
        }
    }

    fn leave_all(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for t in topics {
            self.remove_channel(&t);
        }
    }
}
