//! Encode once, deliver many times.
//!
//! A message fanned out to a topic is encoded at most once per serializer (one 1.0.0 text
//! frame, one 2.0.0 frame) and every subscriber gets a reference-counted clone of those bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use bytes::Bytes;
use supa_realtime_protocol::{binary, Message, Serializer, UserBroadcast, WireFrame};

/// Identifies one channel instance (one successful join) server-wide: a receiver of fan-outs.
pub(crate) type SubId = u64;

static NEXT_SUB: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_sub_id() -> SubId {
    NEXT_SUB.fetch_add(1, Ordering::Relaxed)
}

/// What is being fanned out.
#[derive(Debug)]
pub(crate) enum Body {
    /// A JSON message (`broadcast`, `presence_diff`, `postgres_changes`).
    Json(Message),
    /// A user broadcast: binary kind 4 on 2.0.0, a text `broadcast` on 1.0.0 if JSON.
    User(UserBroadcast),
    /// A server message whose payload is JSON text already (`postgres_changes`).
    Raw {
        topic: String,
        event: &'static str,
        payload: String,
    },
    /// A kind-0 binary push fanned out as kind 2 (2.0.0 only).
    Opaque {
        topic: String,
        event: String,
        data: Bytes,
    },
}

/// A message with its per-serializer encodings, made on first use.
#[derive(Debug)]
pub(crate) struct Encoded {
    body: Body,
    v1: OnceLock<Option<WsMessage>>,
    v2: OnceLock<Option<WsMessage>>,
}

pub(crate) fn to_ws(frame: WireFrame) -> WsMessage {
    match frame {
        WireFrame::Text(s) => WsMessage::Text(Utf8Bytes::from(s)),
        WireFrame::Binary(b) => WsMessage::Binary(b),
    }
}

impl Encoded {
    pub(crate) fn new(body: Body) -> Self {
        Encoded {
            body,
            v1: OnceLock::new(),
            v2: OnceLock::new(),
        }
    }

    /// What is fanned out.
    pub(crate) fn body(&self) -> &Body {
        &self.body
    }

    /// The frame for a subscriber using `serializer`, or `None` if it cannot receive this
    /// message (binary payloads on 1.0.0).
    pub(crate) fn frame(&self, serializer: Serializer) -> Option<WsMessage> {
        let cell = match serializer {
            Serializer::V1 => &self.v1,
            Serializer::V2 => &self.v2,
        };
        cell.get_or_init(|| self.encode(serializer)).clone()
    }

    fn encode(&self, serializer: Serializer) -> Option<WsMessage> {
        match &self.body {
            Body::Json(m) => Some(to_ws(serializer.encode_server_message(m))),
            Body::User(b) => serializer.encode_user_broadcast(b).map(to_ws),
            Body::Raw {
                topic,
                event,
                payload,
            } => Some(to_ws(
                serializer.encode_server_raw(None, None, topic, event, payload),
            )),
            Body::Opaque { topic, event, data } => match serializer {
                Serializer::V1 => None,
                Serializer::V2 => binary::encode_broadcast(topic, event, data)
                    .ok()
                    .map(WsMessage::Binary),
            },
        }
    }
}
