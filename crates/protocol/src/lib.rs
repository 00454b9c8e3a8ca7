//! The wire protocol of Supabase Realtime, with no I/O.
//!
//! Supabase Realtime speaks Phoenix channels over a WebSocket. Every logical message has five
//! fields (`join_ref`, `ref`, `topic`, `event`, `payload`); how they are laid out on the wire
//! depends on the serializer version the socket negotiated with the `vsn` query parameter:
//!
//! * **1.0.0** (the default, and what the Python clients use): one JSON object per text frame.
//! * **2.0.0** (what current realtime-js uses): one JSON array per text frame, plus binary frames
//!   for user broadcasts (kinds 3 and 4, see [`binary`]).
//!
//! This crate holds the frames ([`Message`], [`UserBroadcast`]), both serializers
//! ([`Serializer`]), the event names ([`event`]), the join configuration ([`join`]) and the
//! presence state/diff algebra ([`presence`]). The server and the client are built on it.
//!
//! ```
//! use supa_realtime_protocol::{Serializer, Message, WireFrame, ClientFrame};
//! use serde_json::json;
//!
//! let join = Message::new(Some("1".into()), Some("1".into()), "realtime:room1", "phx_join",
//!     json!({"config": {}}));
//! let frame = Serializer::V2.encode_client_message(&join);
//! assert_eq!(frame, WireFrame::Text(r#"["1","1","realtime:room1","phx_join",{"config":{}}]"#.into()));
//!
//! // The server decodes it back into the same message.
//! match Serializer::V2.decode_client_frame(&frame).unwrap() {
//!     ClientFrame::Message(m) => assert_eq!(m, join),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
#![warn(missing_docs)]

pub mod binary;
mod broadcast;
mod error;
pub mod event;
pub mod join;
mod message;
pub mod pg_types;
pub mod presence;
mod serializer;

pub use broadcast::{UserBroadcast, UserPayload};
pub use bytes;
pub use error::DecodeError;
pub use message::{Message, Status};
pub use serializer::{ClientFrame, Serializer, ServerFrame, WireFrame};

/// The topic prefix every Realtime channel carries (`realtime:<name>`).
pub const TOPIC_PREFIX: &str = "realtime:";

/// The reserved topic heartbeats are sent on.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// The sub-topic of a channel topic: `realtime:room1` gives `Some("room1")`.
pub fn sub_topic(topic: &str) -> Option<&str> {
    topic.strip_prefix(TOPIC_PREFIX)
}
