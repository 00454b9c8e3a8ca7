//! What crosses nodes: one envelope per broadcast or presence change.
//!
//! An envelope is a one-line JSON header, `\n`, then the body bytes as they are (a JSON
//! payload's text, a binary payload's bytes), so binary broadcasts cross without base64 and a
//! JSON payload is parsed once per receiving node. The same bytes are stored in the topic's
//! stream, so catching up replays exactly what was published. On pub/sub Redis prefixes them
//! with `<offset>:<epoch>:` (written by the publish script, see `scripts.rs`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use supa_realtime_protocol::presence::Meta;
use supa_realtime_protocol::{Message, UserBroadcast, UserPayload};

use crate::fanout::Body;
use crate::fanout::SubId;
use crate::limits::RateCounter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A JSON message (`Body::Json`): header `e` is its event, the body its payload.
    #[serde(rename = "j")]
    Json,
    /// A user broadcast with a JSON payload.
    #[serde(rename = "u")]
    UserJson,
    /// A user broadcast with a binary payload.
    #[serde(rename = "b")]
    UserBinary,
    /// A kind-0 binary push fanned out as kind 2.
    #[serde(rename = "o")]
    Opaque,
    /// A presence entry joined: header `r` its ref, `p` its key, the body its meta.
    #[serde(rename = "pj")]
    Join,
    /// A presence entry left.
    #[serde(rename = "pl")]
    Leave,
    /// The origin node could not publish some messages of this topic: every node's channels
    /// of it get `phx_error`.
    #[serde(rename = "g")]
    Gap,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Origin node.
    pub(crate) n: String,
    pub(crate) k: Kind,
    /// Event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) e: Option<String>,
    /// The sending channel when it asked not to get its own broadcasts (origin node only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) x: Option<SubId>,
    /// Already delivered on the origin node (published late, after a Redis outage).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) d: bool,
    /// A REST or database broadcast: its deliveries count against the tenant's events
    /// counter on every node, as on one node. A client's push does not (each receiver's own
    /// budget pays for its delivery).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) t: bool,
    /// Presence ref (unique per meta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) r: Option<String>,
    /// Presence key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) p: Option<String>,
    /// User broadcast metadata (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) m: Option<String>,
    /// A database broadcast's `realtime.messages.id`: receivers drop a message they already
    /// delivered (a new reader publishes again what its predecessor had not confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) s: Option<String>,
    /// The fencing token of the database-broadcast reader that published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) f: Option<u64>,
}

/// Why an envelope could not be read (a foreign or corrupt message on our channel).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("envelope has no header line")]
    NoHeader,
    #[error("envelope header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("envelope of kind {0:?} lacks a field it needs")]
    Incomplete(Kind),
    #[error("pub/sub message lacks its offset and epoch")]
    NoPosition,
}

/// A decoded envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) header: Header,
    pub(crate) body: Bytes,
}

fn header(node: &str, k: Kind) -> Header {
    Header {
        n: node.to_owned(),
        k,
        e: None,
        x: None,
        d: false,
        t: false,
        r: None,
        p: None,
        m: None,
        s: None,
        f: None,
    }
}

fn join(header: &Header, body: &[u8]) -> Bytes {
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Encode a broadcast made on `node`; `tenant`: its deliveries count against the tenant's
/// events counter (REST and database broadcasts).
pub(crate) fn encode_body(
    node: &str,
    body: &Body,
    exclude: Option<SubId>,
    delivered: bool,
    tenant: bool,
) -> Bytes {
    encode(node, body, exclude, delivered, tenant, None)
}

fn encode(
    node: &str,
    body: &Body,
    exclude: Option<SubId>,
    delivered: bool,
    tenant: bool,
    stored: Option<(&str, u64)>,
) -> Bytes {
    let (kind, event, meta, bytes): (Kind, &str, Option<String>, Vec<u8>) = match body {
        Body::Json(m) => (
            Kind::Json,
            m.event.as_str(),
            None,
            serde_json::to_vec(&m.payload).unwrap_or_default(),
        ),
        Body::User(b) => {
            let meta = b
                .metadata
                .as_ref()
                .map(|m| String::from_utf8_lossy(m).into_owned());
            match &b.payload {
                UserPayload::Json(p) => (Kind::UserJson, b.event.as_str(), meta, p.to_vec()),
                UserPayload::Binary(p) => (Kind::UserBinary, b.event.as_str(), meta, p.to_vec()),
            }
        }
        // JSON text already: carried as a JSON message (the receiving node parses it once).
        Body::Raw { event, payload, .. } => (Kind::Json, *event, None, payload.as_bytes().to_vec()),
        Body::Opaque { event, data, .. } => (Kind::Opaque, event.as_str(), None, data.to_vec()),
    };
    let mut h = header(node, kind);
    h.e = Some(event.to_owned());
    h.x = exclude;
    h.d = delivered;
    h.t = tenant;
    h.m = meta;
    if let Some((id, token)) = stored {
        h.s = Some(id.to_owned());
        h.f = Some(token);
    }
    join(&h, &bytes)
}

/// Encode a database broadcast (the stored message `id`) published by the reader holding
/// fencing token `token`; its deliveries count against the tenant's events counter.
pub(crate) fn encode_stored(node: &str, body: &Body, id: &str, token: u64) -> Bytes {
    encode(node, body, None, false, true, Some((id, token)))
}

/// Encode a presence join or leave of the entry `r` (its meta's `phx_ref`).
pub(crate) fn encode_presence(node: &str, kind: Kind, r: &str, key: &str, meta: &Meta) -> Bytes {
    let mut h = header(node, kind);
    h.r = Some(r.to_owned());
    h.p = Some(key.to_owned());
    join(&h, &serde_json::to_vec(meta).unwrap_or_default())
}

/// Encode a gap notice.
pub(crate) fn encode_gap(node: &str) -> Bytes {
    join(&header(node, Kind::Gap), b"")
}

/// Mark an encoded broadcast as already delivered on its origin node.
pub(crate) fn mark_delivered(envelope: &Bytes) -> Result<Bytes, EnvelopeError> {
    let mut e = decode(envelope.clone())?;
    e.header.d = true;
    Ok(join(&e.header, &e.body))
}

pub(crate) fn decode(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(EnvelopeError::NoHeader)?;
    let header: Header = serde_json::from_slice(&bytes[..nl])?;
    Ok(Envelope {
        header,
        body: bytes.slice(nl + 1..),
    })
}

/// Split a pub/sub message into (offset, epoch, envelope).
pub(crate) fn split_position(bytes: Bytes) -> Result<(u64, String, Bytes), EnvelopeError> {
    let first = bytes
        .iter()
        .position(|b| *b == b':')
        .ok_or(EnvelopeError::NoPosition)?;
    let offset: u64 = std::str::from_utf8(&bytes[..first])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(EnvelopeError::NoPosition)?;
    let rest = bytes.slice(first + 1..);
    let second = rest
        .iter()
        .position(|b| *b == b':')
        .ok_or(EnvelopeError::NoPosition)?;
    let epoch = String::from_utf8_lossy(&rest[..second]).into_owned();
    Ok((offset, epoch, rest.slice(second + 1..)))
}

impl Envelope {
    /// The counter this broadcast's deliveries count against besides each receiver's budget:
    /// the tenant's `events` for a REST or database broadcast, none for a client's push.
    pub(crate) fn tenant_counter<'a>(&self, events: &'a RateCounter) -> Option<&'a RateCounter> {
        self.header.t.then_some(events)
    }

    /// The broadcast body for delivery on a topic whose wire name is `wire_topic`.
    pub(crate) fn body(&self, wire_topic: &str) -> Result<Body, EnvelopeError> {
        let h = &self.header;
        let event = || h.e.clone().ok_or(EnvelopeError::Incomplete(h.k));
        let user = |payload| {
            Ok(Body::User(UserBroadcast {
                join_ref: None,
                msg_ref: None,
                topic: wire_topic.to_owned(),
                event: event()?,
                metadata: h.m.clone().map(Bytes::from),
                payload,
            }))
        };
        match h.k {
            Kind::Json => {
                let payload: Value = serde_json::from_slice(&self.body)?;
                Ok(Body::Json(Message::fanout(wire_topic, event()?, payload)))
            }
            Kind::UserJson => user(UserPayload::Json(self.body.clone())),
            Kind::UserBinary => user(UserPayload::Binary(self.body.clone())),
            Kind::Opaque => Ok(Body::Opaque {
                topic: wire_topic.to_owned(),
                event: event()?,
                data: self.body.clone(),
            }),
            k => Err(EnvelopeError::Incomplete(k)),
        }
    }

    /// A presence envelope's (ref, key, meta).
    pub(crate) fn presence(&self) -> Result<(String, String, Meta), EnvelopeError> {
        let h = &self.header;
        match (&h.r, &h.p) {
            (Some(r), Some(p)) => Ok((r.clone(), p.clone(), serde_json::from_slice(&self.body)?)),
            _ => Err(EnvelopeError::Incomplete(h.k)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn broadcasts_round_trip() {
        let m = Body::Json(Message::fanout(
            "realtime:t",
            "broadcast",
            json!({"a": [1, "x\n"]}),
        ));
        let e = decode(encode_body("n1", &m, Some(7), false, true)).unwrap();
        assert_eq!(e.header.x, Some(7));
        assert!(!e.header.d);
        let events = RateCounter::new(1);
        assert!(
            e.tenant_counter(&events).is_some(),
            "a REST broadcast counts"
        );
        match e.body("realtime:t").unwrap() {
            Body::Json(m) => assert_eq!(m.payload, json!({"a": [1, "x\n"]})),
            other => panic!("{other:?}"),
        }
        let b = Body::User(UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: "realtime:t".into(),
            event: "ev".into(),
            metadata: None,
            payload: UserPayload::Binary(Bytes::from_static(b"\x00\n\xff")),
        });
        let enc = encode_body("n1", &b, None, false, false);
        let marked = decode(mark_delivered(&enc).unwrap()).unwrap();
        assert!(marked.header.d);
        assert!(
            marked.tenant_counter(&events).is_none(),
            "a client's push does not"
        );
        match marked.body("realtime:t").unwrap() {
            Body::User(u) => {
                assert_eq!(u.event, "ev");
                assert!(matches!(u.payload, UserPayload::Binary(ref p) if &p[..] == b"\x00\n\xff"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn database_broadcasts_carry_their_id_and_token() {
        let b = Body::User(UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: "realtime:t".into(),
            event: "ev".into(),
            metadata: Some(Bytes::from_static(br#"{"id":"m1"}"#)),
            payload: UserPayload::Json(Bytes::from_static(br#"{"i":1}"#)),
        });
        let e = decode(encode_stored("n1", &b, "m1", 42)).unwrap();
        assert_eq!(e.header.s.as_deref(), Some("m1"));
        assert_eq!(e.header.f, Some(42));
        assert!(e.header.t, "its deliveries count for the tenant");
        let plain = decode(encode_body("n1", &b, None, false, true)).unwrap();
        assert!(plain.header.s.is_none() && plain.header.f.is_none());
        match e.body("realtime:t").unwrap() {
            Body::User(u) => assert_eq!(u.metadata.as_deref(), Some(&br#"{"id":"m1"}"#[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn positions_and_bad_input() {
        let enc = encode_gap("n");
        let mut msg = b"12:ep:".to_vec();
        msg.extend_from_slice(&enc);
        let (o, ep, rest) = split_position(Bytes::from(msg)).unwrap();
        assert_eq!((o, ep.as_str()), (12, "ep"));
        assert_eq!(decode(rest).unwrap().header.k, Kind::Gap);
        assert!(split_position(Bytes::from_static(b"x:y:z")).is_err());
        assert!(decode(Bytes::from_static(b"no header")).is_err());
        assert!(decode(Bytes::from_static(b"{\"n\":1}\n")).is_err());
        let e = decode(encode_gap("n")).unwrap();
        assert!(e.body("realtime:t").is_err());
        assert!(e.presence().is_err());
    }
}
