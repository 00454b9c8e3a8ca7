use bytes::Bytes;
use serde_json::Value;

/// The payload of a user broadcast carried in a binary frame (kinds 3 and 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPayload {
    /// Encoding byte `1`: UTF-8 JSON text, kept as the bytes that arrived.
    Json(Bytes),
    /// Encoding byte `0`: opaque bytes. Never delivered to 1.0.0 sockets.
    Binary(Bytes),
}

impl UserPayload {
    /// The encoding byte of the binary layout.
    pub fn encoding_byte(&self) -> u8 {
        match self {
            UserPayload::Binary(_) => 0,
            UserPayload::Json(_) => 1,
        }
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            UserPayload::Json(b) | UserPayload::Binary(b) => b,
        }
    }
}

/// A user broadcast: what realtime-js sends as a kind-3 push and receives as a kind-4 frame.
///
/// On a 1.0.0 socket (or a 2.0.0 text frame) the same message is
/// `{"type":"broadcast","event":<event>,"payload":<payload>[,"meta":<metadata>]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBroadcast {
    /// Set on client pushes (kind 3); absent on deliveries (kind 4).
    pub join_ref: Option<String>,
    /// Set on client pushes (kind 3); absent on deliveries (kind 4).
    pub msg_ref: Option<String>,
    /// The channel topic, `realtime:<name>`.
    pub topic: String,
    /// The user's event name (not `broadcast`).
    pub event: String,
    /// A JSON object as raw text, or `None` when the frame had none.
    pub metadata: Option<Bytes>,
    /// The user's payload.
    pub payload: UserPayload,
}

impl UserBroadcast {
    /// The JSON form of this broadcast, as a `broadcast` event payload for text frames.
    ///
    /// `None` for binary payloads, which text frames cannot carry, or when the JSON text does
    /// not parse.
    pub fn to_json_payload(&self) -> Option<Value> {
        let UserPayload::Json(raw) = &self.payload else {
            return None;
        };
        let payload: Value = serde_json::from_slice(raw).ok()?;
        let mut map = serde_json::Map::new();
        map.insert("type".into(), Value::from("broadcast"));
        map.insert("event".into(), Value::from(self.event.clone()));
        map.insert("payload".into(), payload);
        if let Some(meta) = &self.metadata {
            if let Ok(meta @ Value::Object(_)) = serde_json::from_slice::<Value>(meta) {
                map.insert("meta".into(), meta);
            }
        }
        Some(Value::Object(map))
    }
}
