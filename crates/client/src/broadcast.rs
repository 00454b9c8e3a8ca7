//! Broadcast messages, both directions (PROTOCOL.md §7).

use bytes::Bytes;
use serde_json::{Map, Value};
use supa_realtime_protocol::{UserBroadcast, UserPayload};

/// The user payload of a broadcast.
#[derive(Debug, Clone, PartialEq)]
pub enum BroadcastPayload {
    /// JSON (every text broadcast, and binary frames with encoding 1).
    Json(Value),
    /// Raw bytes (vsn 2.0.0 only: kind-3 pushes / kind-4 deliveries with encoding 0).
    Binary(Bytes),
}

impl From<Value> for BroadcastPayload {
    fn from(v: Value) -> Self {
        BroadcastPayload::Json(v)
    }
}

impl From<Bytes> for BroadcastPayload {
    fn from(b: Bytes) -> Self {
        BroadcastPayload::Binary(b)
    }
}

impl From<Vec<u8>> for BroadcastPayload {
    fn from(b: Vec<u8>) -> Self {
        BroadcastPayload::Binary(Bytes::from(b))
    }
}

impl BroadcastPayload {
    /// The JSON value, if this is JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            BroadcastPayload::Json(v) => Some(v),
            BroadcastPayload::Binary(_) => None,
        }
    }

    /// The bytes, if this is binary.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            BroadcastPayload::Binary(b) => Some(b),
            BroadcastPayload::Json(_) => None,
        }
    }
}

/// A broadcast received on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastMessage {
    /// The user's event name.
    pub event: String,
    /// The payload.
    pub payload: BroadcastPayload,
    /// `meta` (`{"id": ..}` for database messages, `{"replayed": true, ..}` for replays).
    pub meta: Option<Value>,
}

impl BroadcastMessage {
    /// From the payload of a text `broadcast` event:
    /// `{"type":"broadcast","event":..,"payload":..,["meta":..]}`.
    pub fn from_text(payload: &Value) -> Option<BroadcastMessage> {
        let event = payload.get("event")?.as_str()?.to_owned();
        Some(BroadcastMessage {
            event,
            payload: BroadcastPayload::Json(payload.get("payload").cloned().unwrap_or(Value::Null)),
            meta: payload.get("meta").cloned(),
        })
    }

    /// From a binary kind-4 frame. `None` when its JSON payload does not parse.
    pub fn from_user_broadcast(b: UserBroadcast) -> Option<BroadcastMessage> {
        let meta = b
            .metadata
            .as_deref()
            .and_then(|m| serde_json::from_slice::<Value>(m).ok())
            .filter(Value::is_object);
        let payload = match b.payload {
            UserPayload::Json(raw) => BroadcastPayload::Json(serde_json::from_slice(&raw).ok()?),
            UserPayload::Binary(raw) => BroadcastPayload::Binary(raw),
        };
        Some(BroadcastMessage {
            event: b.event,
            payload,
            meta,
        })
    }

    /// The realtime-js shape `{"type":"broadcast","event":..,"payload":..,["meta":..]}`
    /// (binary payloads become an array of byte values).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::from("broadcast"));
        m.insert("event".into(), Value::from(self.event.clone()));
        let payload = match &self.payload {
            BroadcastPayload::Json(v) => v.clone(),
            BroadcastPayload::Binary(b) => {
                Value::Array(b.iter().map(|x| Value::from(*x)).collect())
            }
        };
        m.insert("payload".into(), payload);
        if let Some(meta) = &self.meta {
            m.insert("meta".into(), meta.clone());
        }
        Value::Object(m)
    }

    /// Whether a listener for `event` (`*` = all, case-insensitive as realtime-js) wants it.
    pub fn matches(&self, event: &str) -> bool {
        event == "*" || event.eq_ignore_ascii_case(&self.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_binary_forms() {
        let m = BroadcastMessage::from_text(
            &json!({"type":"broadcast","event":"cursor","payload":{"x":1},"meta":{"id":"a"}}),
        )
        .unwrap();
        assert_eq!(m.payload, BroadcastPayload::Json(json!({"x":1})));
        assert_eq!(m.meta, Some(json!({"id":"a"})));
        assert!(m.matches("*") && m.matches("CURSOR") && !m.matches("other"));
        assert_eq!(m.to_json()["payload"]["x"], 1);
        assert!(BroadcastMessage::from_text(&json!({"payload":{}})).is_none());

        let b = UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: "realtime:r".into(),
            event: "bin".into(),
            metadata: None,
            payload: UserPayload::Binary(Bytes::from_static(&[0xca, 0xfe])),
        };
        let m = BroadcastMessage::from_user_broadcast(b).unwrap();
        assert_eq!(
            m.payload.as_bytes().map(|b| b.to_vec()),
            Some(vec![0xca, 0xfe])
        );
        assert_eq!(m.to_json()["payload"], json!([202, 254]));
    }
}
