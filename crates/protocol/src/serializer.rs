//! The two serializers, selected by the socket's `vsn` query parameter.

use bytes::Bytes;
use serde_json::Value;

use crate::binary::{self, BinaryPush, ClientBinary, ServerBinary};
use crate::{DecodeError, Message, UserBroadcast};

/// One WebSocket data frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame (JSON).
    Text(String),
    /// A binary frame (serializer 2.0.0 only).
    Binary(Bytes),
}

/// A frame sent by a client, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// A JSON message.
    Message(Message),
    /// A kind-3 user broadcast push.
    UserBroadcast(UserBroadcast),
    /// A kind-0 push with an opaque payload.
    BinaryPush(BinaryPush),
}

/// A frame sent by a server, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// A JSON message.
    Message(Message),
    /// A binary frame (kinds 0, 1, 2, 4).
    Binary(ServerBinary),
}

/// The serializer a socket negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Serializer {
    /// vsn 1.0.0: JSON objects. The default when `vsn` is absent.
    #[default]
    V1,
    /// vsn 2.0.0: JSON arrays plus binary user broadcasts.
    V2,
}

impl Serializer {
    /// The serializer for a `vsn` query value, as Phoenix matches it (`~> 1.0.0`, `~> 2.0.0`):
    /// any `1.0.x` or `2.0.x`. `None` for anything else, which the server refuses with 403.
    pub fn from_vsn(vsn: Option<&str>) -> Option<Serializer> {
        let Some(vsn) = vsn else {
            return Some(Serializer::V1);
        };
        let mut parts = vsn.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || minor != "0" || patch.parse::<u32>().is_err() {
            return None;
        }
        match major {
            "1" => Some(Serializer::V1),
            "2" => Some(Serializer::V2),
            _ => None,
        }
    }

    /// The `vsn` string clients send.
    pub fn vsn(self) -> &'static str {
        match self {
            Serializer::V1 => "1.0.0",
            Serializer::V2 => "2.0.0",
        }
    }

    /// Encode a message the server sends. Serializer 1.0.0 never includes `join_ref`.
    pub fn encode_server_message(self, m: &Message) -> WireFrame {
        let mut payload = String::new();
        push_json(&mut payload, &m.payload);
        self.encode_server_raw(
            m.join_ref.as_deref(),
            m.msg_ref.as_deref(),
            &m.topic,
            &m.event,
            &payload,
        )
    }

    /// Encode a server message whose payload is already JSON text, so that a payload shared by
    /// many frames is serialized once. `payload_json` must be valid JSON.
    pub fn encode_server_raw(
        self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload_json: &str,
    ) -> WireFrame {
        let mut s = String::with_capacity(48 + topic.len() + event.len() + payload_json.len());
        match self {
            Serializer::V1 => {
                // Key order as the upstream server's JSON library writes small maps (sorted),
                // so captures from either server compare equal.
                s.push_str("{\"event\":");
                push_json_str(&mut s, event);
                s.push_str(",\"payload\":");
                s.push_str(payload_json);
                s.push_str(",\"ref\":");
                push_opt_str(&mut s, msg_ref);
                s.push_str(",\"topic\":");
                push_json_str(&mut s, topic);
                s.push('}');
            }
            Serializer::V2 => {
                s.push('[');
                push_opt_str(&mut s, join_ref);
                s.push(',');
                push_opt_str(&mut s, msg_ref);
                s.push(',');
                push_json_str(&mut s, topic);
                s.push(',');
                push_json_str(&mut s, event);
                s.push(',');
                s.push_str(payload_json);
                s.push(']');
            }
        }
        WireFrame::Text(s)
    }

    /// Encode a message a client sends.
    pub fn encode_client_message(self, m: &Message) -> WireFrame {
        WireFrame::Text(match self {
            Serializer::V1 => {
                let mut s = String::with_capacity(64 + m.topic.len());
                s.push_str("{\"topic\":");
                push_json_str(&mut s, &m.topic);
                s.push_str(",\"event\":");
                push_json_str(&mut s, &m.event);
                s.push_str(",\"payload\":");
                push_json(&mut s, &m.payload);
                s.push_str(",\"ref\":");
                push_opt_str(&mut s, m.msg_ref.as_deref());
                s.push_str(",\"join_ref\":");
                push_opt_str(&mut s, m.join_ref.as_deref());
                s.push('}');
                s
            }
            Serializer::V2 => encode_array(m),
        })
    }

    /// Encode a user broadcast for delivery to a subscriber.
    ///
    /// 2.0.0 gets a binary kind-4 frame; 1.0.0 gets a text `broadcast` event, or `None` when
    /// the payload is binary (1.0.0 sockets never see binary broadcasts) or a header field is
    /// over 255 bytes.
    pub fn encode_user_broadcast(self, b: &UserBroadcast) -> Option<WireFrame> {
        match self {
            Serializer::V2 => binary::encode_user_broadcast(b).ok().map(WireFrame::Binary),
            Serializer::V1 => {
                let payload = b.to_json_payload()?;
                Some(self.encode_server_message(&Message::fanout(
                    b.topic.clone(),
                    crate::event::BROADCAST,
                    payload,
                )))
            }
        }
    }

    /// Decode a frame a client sent.
    pub fn decode_client_frame(self, frame: &WireFrame) -> Result<ClientFrame, DecodeError> {
        match frame {
            WireFrame::Text(t) => self.decode_text(t.as_bytes()).map(ClientFrame::Message),
            WireFrame::Binary(b) => {
                if self == Serializer::V1 {
                    return Err(DecodeError::BinaryOnV1);
                }
                Ok(match binary::decode_client(b)? {
                    ClientBinary::UserBroadcast(u) => ClientFrame::UserBroadcast(u),
                    ClientBinary::Push(p) => ClientFrame::BinaryPush(p),
                })
            }
        }
    }

    /// Decode a text frame (either direction) given as bytes.
    pub fn decode_text(self, text: &[u8]) -> Result<Message, DecodeError> {
        let v: Value =
            serde_json::from_slice(text).map_err(|e| DecodeError::Json(e.to_string()))?;
        match self {
            Serializer::V1 => decode_object(v),
            Serializer::V2 => decode_array(v),
        }
    }

    /// Decode a frame a server sent.
    pub fn decode_server_frame(self, frame: &WireFrame) -> Result<ServerFrame, DecodeError> {
        match frame {
            WireFrame::Text(t) => self.decode_text(t.as_bytes()).map(ServerFrame::Message),
            WireFrame::Binary(b) => {
                if self == Serializer::V1 {
                    return Err(DecodeError::BinaryOnV1);
                }
                binary::decode_server(b).map(ServerFrame::Binary)
            }
        }
    }
}

fn encode_array(m: &Message) -> String {
    let mut s = String::with_capacity(48 + m.topic.len());
    s.push('[');
    push_opt_str(&mut s, m.join_ref.as_deref());
    s.push(',');
    push_opt_str(&mut s, m.msg_ref.as_deref());
    s.push(',');
    push_json_str(&mut s, &m.topic);
    s.push(',');
    push_json_str(&mut s, &m.event);
    s.push(',');
    push_json(&mut s, &m.payload);
    s.push(']');
    s
}

fn push_json(s: &mut String, v: &Value) {
    // Writing a Value into a String cannot fail: Value keys are strings and floats are finite.
    let text = serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned());
    s.push_str(&text);
}

fn push_json_str(s: &mut String, v: &str) {
    push_json(s, &Value::from(v));
}

fn push_opt_str(s: &mut String, v: Option<&str>) {
    match v {
        Some(v) => push_json_str(s, v),
        None => s.push_str("null"),
    }
}

/// A ref field: a string, `null`, or (leniently) a number some hand-written clients send.
fn ref_field(v: Option<Value>) -> Result<Option<String>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::Shape(
            "ref and join_ref must be strings or null",
        )),
    }
}

fn string_field(v: Option<Value>, what: &'static str) -> Result<String, DecodeError> {
    match v {
        Some(Value::String(s)) => Ok(s),
        _ => Err(DecodeError::Shape(what)),
    }
}

fn decode_object(v: Value) -> Result<Message, DecodeError> {
    let Value::Object(mut map) = v else {
        return Err(DecodeError::Shape("1.0.0 messages are JSON objects"));
    };
    // Phoenix requires all four keys to be present; `ref` may be null.
    if !map.contains_key("ref") {
        return Err(DecodeError::Shape("missing key `ref`"));
    }
    let payload = map
        .remove("payload")
        .ok_or(DecodeError::Shape("missing key `payload`"))?;
    Ok(Message {
        topic: string_field(map.remove("topic"), "`topic` must be a string")?,
        event: string_field(map.remove("event"), "`event` must be a string")?,
        msg_ref: ref_field(map.remove("ref"))?,
        join_ref: ref_field(map.remove("join_ref"))?,
        payload,
    })
}

fn decode_array(v: Value) -> Result<Message, DecodeError> {
    let Value::Array(items) = v else {
        return Err(DecodeError::Shape("2.0.0 messages are JSON arrays"));
    };
    if items.len() < 5 {
        return Err(DecodeError::Shape("2.0.0 messages have five elements"));
    }
    let mut it = items.into_iter();
    // The length check above makes these five `next()` calls infallible; extras are ignored
    // as upstream does.
    let mut next = || it.next().unwrap_or(Value::Null);
    let join_ref = ref_field(Some(next()))?;
    let msg_ref = ref_field(Some(next()))?;
    let topic = string_field(Some(next()), "topic must be a string")?;
    let event = string_field(Some(next()), "event must be a string")?;
    let payload = next();
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vsn_negotiation() {
        assert_eq!(Serializer::from_vsn(None), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("1.0.0")), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("2.0.0")), Some(Serializer::V2));
        assert_eq!(Serializer::from_vsn(Some("2.0.3")), Some(Serializer::V2));
        assert_eq!(Serializer::from_vsn(Some("3.0.0")), None);
        assert_eq!(Serializer::from_vsn(Some("2.1.0")), None);
        assert_eq!(Serializer::from_vsn(Some("banana")), None);
    }

    #[test]
    fn v1_server_output_has_no_join_ref_and_sorted_keys() {
        let m = Message::new(
            Some("1".into()),
            Some("1".into()),
            "realtime:room1",
            "phx_reply",
            json!({"status":"ok","response":{"postgres_changes":[]}}),
        );
        assert_eq!(
            Serializer::V1.encode_server_message(&m),
            WireFrame::Text(
                r#"{"event":"phx_reply","payload":{"response":{"postgres_changes":[]},"status":"ok"},"ref":"1","topic":"realtime:room1"}"#
                    .into()
            )
        );
    }

    #[test]
    fn v2_fanout_has_null_refs() {
        let m = Message::fanout(
            "realtime:room1",
            "broadcast",
            json!({"event":"e","payload":{},"type":"broadcast"}),
        );
        assert_eq!(
            Serializer::V2.encode_server_message(&m),
            WireFrame::Text(
                r#"[null,null,"realtime:room1","broadcast",{"event":"e","payload":{},"type":"broadcast"}]"#.into()
            )
        );
    }

    #[test]
    fn v1_requires_all_four_keys() {
        let s = Serializer::V1;
        assert!(s
            .decode_text(br#"{"topic":"t","event":"e","payload":{}}"#)
            .is_err());
        assert!(s
            .decode_text(br#"{"topic":"t","event":"e","ref":null}"#)
            .is_err());
        let m = s
            .decode_text(br#"{"topic":"t","event":"e","payload":{},"ref":null}"#)
            .unwrap();
        assert_eq!(m.msg_ref, None);
        assert_eq!(m.join_ref, None);
    }

    #[test]
    fn v2_accepts_extra_elements_and_refuses_short_arrays() {
        let s = Serializer::V2;
        assert!(s
            .decode_text(br#"[null,"1","phoenix","heartbeat",{},"extra"]"#)
            .is_ok());
        assert!(s
            .decode_text(br#"[null,"1","phoenix","heartbeat"]"#)
            .is_err());
        assert!(s.decode_text(br#"{"topic":"t"}"#).is_err());
        assert!(s.decode_text(b"not json").is_err());
        assert!(s.decode_text(br#"[1.5,"1","t","e",{}]"#).is_ok());
        assert!(s.decode_text(br#"[{},"1","t","e",{}]"#).is_err());
    }

    #[test]
    fn binary_on_v1_is_refused() {
        let f = WireFrame::Binary(Bytes::from_static(&[3, 0]));
        assert_eq!(
            Serializer::V1.decode_client_frame(&f).unwrap_err(),
            DecodeError::BinaryOnV1
        );
    }
}
