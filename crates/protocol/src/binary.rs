//! Binary frames of serializer 2.0.0 (PROTOCOL.md §2.3).
//!
//! Every length field is one unsigned byte, so each string is at most 255 bytes; the payload
//! runs to the end of the frame.
//!
//! | kind | direction | header |
//! |---|---|---|
//! | 0 push | client→server | `[0][join_ref_len][ref_len][topic_len][event_len]` |
//! | 0 push | server→client | `[0][join_ref_len][topic_len][event_len]` |
//! | 1 reply | server→client | `[1][join_ref_len][ref_len][topic_len][status_len]` |
//! | 2 broadcast | server→client | `[2][topic_len][event_len]` |
//! | 3 user broadcast push | client→server | `[3][join_ref_len][ref_len][topic_len][event_len][metadata_len][encoding]` |
//! | 4 user broadcast | server→client | `[4][topic_len][event_len][metadata_len][encoding]` |

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, UserBroadcast, UserPayload};

/// Kind byte: a push with an opaque payload.
pub const KIND_PUSH: u8 = 0;
/// Kind byte: a reply with an opaque payload.
pub const KIND_REPLY: u8 = 1;
/// Kind byte: a broadcast with an opaque payload.
pub const KIND_BROADCAST: u8 = 2;
/// Kind byte: a user broadcast pushed by a client.
pub const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Kind byte: a user broadcast delivered by the server.
pub const KIND_USER_BROADCAST: u8 = 4;

/// Why a binary frame could not be encoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{field} is {len} bytes; binary frames allow at most 255")]
pub struct FieldTooLong {
    /// Which header field.
    pub field: &'static str,
    /// Its length.
    pub len: usize,
}

fn len_u8(field: &'static str, s: &[u8]) -> Result<u8, FieldTooLong> {
    u8::try_from(s.len()).map_err(|_| FieldTooLong {
        field,
        len: s.len(),
    })
}

/// A cursor over a binary frame that never panics on short input.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, len: u8) -> Result<Bytes, DecodeError> {
        let end = self.pos + usize::from(len);
        if end > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self, len: u8) -> Result<String, DecodeError> {
        let b = self.bytes(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8)
    }

    fn rest(&self) -> Bytes {
        self.buf.slice(self.pos..)
    }
}

fn opt(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// A decoded kind-0 push from a client: an opaque payload on an ordinary event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPush {
    /// The channel's join ref.
    pub join_ref: Option<String>,
    /// The push's ref (absent on server→client pushes).
    pub msg_ref: Option<String>,
    /// The topic.
    pub topic: String,
    /// The event.
    pub event: String,
    /// The opaque payload.
    pub data: Bytes,
}

/// Decode a binary frame sent by a client: kind 3 (user broadcast) or kind 0 (push).
pub fn decode_client(buf: &Bytes) -> Result<ClientBinary, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    match r.u8()? {
        KIND_USER_BROADCAST_PUSH => {
            let (jl, rl, tl, el, ml, enc) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?, r.u8()?, r.u8()?);
            let join_ref = opt(r.string(jl)?);
            let msg_ref = opt(r.string(rl)?);
            let topic = r.string(tl)?;
            let event = r.string(el)?;
            let meta = r.bytes(ml)?;
            let rest = r.rest();
            let payload = if enc == 0 {
                UserPayload::Binary(rest)
            } else {
                UserPayload::Json(rest)
            };
            Ok(ClientBinary::UserBroadcast(UserBroadcast {
                join_ref,
                msg_ref,
                topic,
                event,
                metadata: (!meta.is_empty()).then_some(meta),
                payload,
            }))
        }
        KIND_PUSH => {
            let (jl, rl, tl, el) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
            Ok(ClientBinary::Push(BinaryPush {
                join_ref: opt(r.string(jl)?),
                msg_ref: opt(r.string(rl)?),
                topic: r.string(tl)?,
                event: r.string(el)?,
                data: r.rest(),
            }))
        }
        kind => Err(DecodeError::UnknownKind(kind)),
    }
}

/// A binary frame a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinary {
    /// Kind 3.
    UserBroadcast(UserBroadcast),
    /// Kind 0.
    Push(BinaryPush),
}

/// A binary frame a server may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerBinary {
    /// Kind 4.
    UserBroadcast(UserBroadcast),
    /// Kind 0 (no ref).
    Push(BinaryPush),
    /// Kind 1.
    Reply {
        /// The channel's join ref.
        join_ref: Option<String>,
        /// The ref being answered.
        msg_ref: Option<String>,
        /// The topic.
        topic: String,
        /// `ok` or `error`.
        status: String,
        /// The opaque response.
        data: Bytes,
    },
    /// Kind 2.
    Broadcast {
        /// The topic.
        topic: String,
        /// The event.
        event: String,
        /// The opaque payload.
        data: Bytes,
    },
}

/// Decode a binary frame sent by a server: kinds 0, 1, 2 and 4.
pub fn decode_server(buf: &Bytes) -> Result<ServerBinary, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    match r.u8()? {
        KIND_USER_BROADCAST => {
            let (tl, el, ml, enc) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
            let topic = r.string(tl)?;
            let event = r.string(el)?;
            let meta = r.bytes(ml)?;
            let rest = r.rest();
            Ok(ServerBinary::UserBroadcast(UserBroadcast {
                join_ref: None,
                msg_ref: None,
                topic,
                event,
                metadata: (!meta.is_empty()).then_some(meta),
                payload: if enc == 0 {
                    UserPayload::Binary(rest)
                } else {
                    UserPayload::Json(rest)
                },
            }))
        }
        KIND_PUSH => {
            let (jl, tl, el) = (r.u8()?, r.u8()?, r.u8()?);
            Ok(ServerBinary::Push(BinaryPush {
                join_ref: opt(r.string(jl)?),
                msg_ref: None,
                topic: r.string(tl)?,
                event: r.string(el)?,
                data: r.rest(),
            }))
        }
        KIND_REPLY => {
            let (jl, rl, tl, sl) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
            Ok(ServerBinary::Reply {
                join_ref: opt(r.string(jl)?),
                msg_ref: opt(r.string(rl)?),
                topic: r.string(tl)?,
                status: r.string(sl)?,
                data: r.rest(),
            })
        }
        KIND_BROADCAST => {
            let (tl, el) = (r.u8()?, r.u8()?);
            Ok(ServerBinary::Broadcast {
                topic: r.string(tl)?,
                event: r.string(el)?,
                data: r.rest(),
            })
        }
        kind => Err(DecodeError::UnknownKind(kind)),
    }
}

/// Encode a kind-4 user broadcast (server→client).
pub fn encode_user_broadcast(b: &UserBroadcast) -> Result<Bytes, FieldTooLong> {
    let meta: &[u8] = b.metadata.as_deref().unwrap_or(&[]);
    let payload = b.payload.bytes();
    let mut out =
        BytesMut::with_capacity(5 + b.topic.len() + b.event.len() + meta.len() + payload.len());
    out.put_u8(KIND_USER_BROADCAST);
    out.put_u8(len_u8("topic", b.topic.as_bytes())?);
    out.put_u8(len_u8("event", b.event.as_bytes())?);
    out.put_u8(len_u8("metadata", meta)?);
    out.put_u8(b.payload.encoding_byte());
    out.put_slice(b.topic.as_bytes());
    out.put_slice(b.event.as_bytes());
    out.put_slice(meta);
    out.put_slice(payload);
    Ok(out.freeze())
}

/// Encode a kind-3 user broadcast push (client→server).
pub fn encode_user_broadcast_push(b: &UserBroadcast) -> Result<Bytes, FieldTooLong> {
    let join_ref = b.join_ref.as_deref().unwrap_or("").as_bytes();
    let msg_ref = b.msg_ref.as_deref().unwrap_or("").as_bytes();
    let meta: &[u8] = b.metadata.as_deref().unwrap_or(&[]);
    let payload = b.payload.bytes();
    let mut out = BytesMut::with_capacity(
        7 + join_ref.len()
            + msg_ref.len()
            + b.topic.len()
            + b.event.len()
            + meta.len()
            + payload.len(),
    );
    out.put_u8(KIND_USER_BROADCAST_PUSH);
    out.put_u8(len_u8("join_ref", join_ref)?);
    out.put_u8(len_u8("ref", msg_ref)?);
    out.put_u8(len_u8("topic", b.topic.as_bytes())?);
    out.put_u8(len_u8("event", b.event.as_bytes())?);
    out.put_u8(len_u8("metadata", meta)?);
    out.put_u8(b.payload.encoding_byte());
    out.put_slice(join_ref);
    out.put_slice(msg_ref);
    out.put_slice(b.topic.as_bytes());
    out.put_slice(b.event.as_bytes());
    out.put_slice(meta);
    out.put_slice(payload);
    Ok(out.freeze())
}

/// Encode a kind-2 broadcast (server→client) of an opaque payload.
pub fn encode_broadcast(topic: &str, event: &str, data: &[u8]) -> Result<Bytes, FieldTooLong> {
    let mut out = BytesMut::with_capacity(3 + topic.len() + event.len() + data.len());
    out.put_u8(KIND_BROADCAST);
    out.put_u8(len_u8("topic", topic.as_bytes())?);
    out.put_u8(len_u8("event", event.as_bytes())?);
    out.put_slice(topic.as_bytes());
    out.put_slice(event.as_bytes());
    out.put_slice(data);
    Ok(out.freeze())
}

/// Encode a kind-0 push (client→server) of an opaque payload.
pub fn encode_push(p: &BinaryPush) -> Result<Bytes, FieldTooLong> {
    let join_ref = p.join_ref.as_deref().unwrap_or("").as_bytes();
    let msg_ref = p.msg_ref.as_deref().unwrap_or("").as_bytes();
    let mut out = BytesMut::new();
    out.put_u8(KIND_PUSH);
    out.put_u8(len_u8("join_ref", join_ref)?);
    out.put_u8(len_u8("ref", msg_ref)?);
    out.put_u8(len_u8("topic", p.topic.as_bytes())?);
    out.put_u8(len_u8("event", p.event.as_bytes())?);
    out.put_slice(join_ref);
    out.put_slice(msg_ref);
    out.put_slice(p.topic.as_bytes());
    out.put_slice(p.event.as_bytes());
    out.put_slice(&p.data);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn kind3_worked_example_from_protocol_doc() {
        let b = UserBroadcast {
            join_ref: Some("1".into()),
            msg_ref: Some("2".into()),
            topic: "realtime:room1".into(),
            event: "msg".into(),
            metadata: None,
            payload: UserPayload::Json(Bytes::from_static(br#"{"a":1}"#)),
        };
        let bytes = encode_user_broadcast_push(&b).unwrap();
        assert_eq!(
            hex(&bytes),
            "0301010e03000131327265616c74696d653a726f6f6d316d73677b2261223a317d"
        );
        assert_eq!(
            decode_client(&bytes).unwrap(),
            ClientBinary::UserBroadcast(b)
        );
    }

    #[test]
    fn kind4_worked_examples_from_protocol_doc() {
        let b = UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: "realtime:room1".into(),
            event: "msg".into(),
            metadata: None,
            payload: UserPayload::Binary(Bytes::from_static(&[0xca, 0xfe])),
        };
        let bytes = encode_user_broadcast(&b).unwrap();
        assert_eq!(&bytes[..5], &[4, 0x0e, 3, 0, 0]);
        assert_eq!(&bytes[bytes.len() - 2..], &[0xca, 0xfe]);
        assert_eq!(
            decode_server(&bytes).unwrap(),
            ServerBinary::UserBroadcast(b)
        );

        let with_meta = UserBroadcast {
            metadata: Some(Bytes::from_static(br#"{"id":"6f2a"}"#)),
            payload: UserPayload::Json(Bytes::from_static(br#"{"a":1}"#)),
            ..decode_user(&bytes)
        };
        let bytes = encode_user_broadcast(&with_meta).unwrap();
        assert_eq!(&bytes[..5], &[4, 0x0e, 3, 0x0d, 1]);
    }

    fn decode_user(b: &Bytes) -> UserBroadcast {
        match decode_server(b).unwrap() {
            ServerBinary::UserBroadcast(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let full = encode_user_broadcast_push(&UserBroadcast {
            join_ref: Some("1".into()),
            msg_ref: Some("2".into()),
            topic: "realtime:room1".into(),
            event: "msg".into(),
            metadata: Some(Bytes::from_static(b"{}")),
            payload: UserPayload::Json(Bytes::from_static(b"{}")),
        })
        .unwrap();
        // Every prefix shorter than the header and strings must fail cleanly.
        for n in 0..(full.len() - 2) {
            assert!(decode_client(&full.slice(..n)).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn long_fields_are_refused() {
        let b = UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: "t".repeat(256),
            event: "e".into(),
            metadata: None,
            payload: UserPayload::Json(Bytes::from_static(b"1")),
        };
        assert_eq!(
            encode_user_broadcast(&b).unwrap_err(),
            FieldTooLong {
                field: "topic",
                len: 256
            }
        );
    }
}
