//! A Supabase Realtime client that does not lose you.
//!
//! Channels with broadcast, presence and `postgres_changes` over the Phoenix-channels
//! protocol (vsn 1.0.0 and 2.0.0, including binary broadcasts), with heartbeats whose
//! replies are tracked, reconnect forever with capped, jittered exponential backoff, and
//! automatic rejoin of every channel (bindings and presence included) after a reconnect.
//!
//! ```no_run
//! use supa_realtime::{ChannelConfig, ClientOptions, PostgresChangesFilter, PostgresEvent, RealtimeClient};
//! use serde_json::json;
//!
//! # async fn demo() -> supa_realtime::Result<()> {
//! let client = RealtimeClient::connect("https://abc.supabase.co", "ANON_KEY", ClientOptions::default()).await?;
//!
//! let room = client.channel("room1", ChannelConfig::default().presence_key("alice")).await?;
//! let mut chat = room.broadcasts("message").await?;
//! let mut todos = room
//!     .postgres_changes(PostgresChangesFilter::new(PostgresEvent::All).table("todos"))
//!     .await?;
//! room.on_presence(|event| println!("presence: {event:?}")).await?;
//! room.subscribe().await?; // resolves on SUBSCRIBED
//!
//! room.track(json!({"online_at": "now"})).await?;
//! room.send_broadcast("message", json!({"text": "hi"})).await?;
//!
//! loop {
//!     tokio::select! {
//!         Some(msg) = chat.recv() => println!("chat: {:?}", msg.payload),
//!         Some(change) = todos.recv() => println!("{:?} {:?}", change.event_type, change.new),
//!         else => break,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Implementation
//!
//! One task owns the socket ([`connection`]): it reads frames, hands frames to a writer task
//! through a bounded queue (so a stalled peer never blocks reading or timers), sends
//! heartbeats and tracks their replies, runs the reconnect state machine
//! ([`ConnectionState`], an enum with exhaustive transitions) and keeps every channel's
//! state. [`RealtimeClient`] and [`RealtimeChannel`] are cheap clones holding a bounded
//! `mpsc` sender of commands; commands that need an answer carry a `oneshot`. State is
//! published through `tokio::sync::watch` (connection state, heartbeat latency, channel
//! status, presence state).
//!
//! * **Liveness**: a heartbeat is sent every [`ClientOptions::hb_interval`]; if its reply
//!   does not arrive within [`ClientOptions::heartbeat_timeout`] the socket is closed
//!   (1000, `heartbeat timeout`) and reconnected. A server that stops answering is thus
//!   noticed within `hb_interval + heartbeat_timeout`. Channels may ask for a shorter
//!   interval ([`ChannelConfig::hb_interval`]); the socket beats at the smallest asked, and
//!   the interval is re-evaluated at runtime as channels are added and removed.
//! * **Reconnect**: forever by default ([`ClientOptions::max_retries`]), delays doubling
//!   from [`ClientOptions::initial_backoff`] up to [`ClientOptions::max_backoff`], with
//!   jitter. On every (re)open, each channel that was subscribed rejoins with a new
//!   `join_ref`, its `postgres_changes` bindings and its tracked presence; a token provider,
//!   if any, is asked for a fresh token first.
//! * **Channel rejoin**: join errors, join timeouts, `phx_error` and (by default) server
//!   closes are retried after [`ClientOptions::rejoin_backoff`], forever unless the
//!   channel's [`RejoinPolicy`] (`auto_rejoin`, `max_retries`, `initial_backoff`) gives up.
//! * **Refused handshakes**: when the server refuses the socket's handshake for the key or
//!   token (401/403), waiting [`RealtimeChannel::subscribe`] calls fail at once with
//!   [`ErrorKind::Authorization`] and the server's reason, and the channels report
//!   `CHANNEL_ERROR` with that kind ([`ChannelStatus::ChannelError`]).
//! * **Offline pushes**: broadcasts on a channel that is rejoining are buffered per
//!   [`OfflinePolicy`] and sent in order once joined, or fail at once with
//!   [`ErrorKind::NotConnected`]. On a channel that was never subscribed,
//!   [`RealtimeChannel::send_broadcast`] uses the REST endpoint.
//! * **Events**: every stream and callback has its own bounded queue. Nothing is lost: a
//!   consumer that falls behind slows the reading of the socket, so TCP pushes back on the
//!   server; memory stays bounded. Dropping is an explicit [`Overflow`] option whose every drop
//!   is counted and reported ([`queue`]).
//! * **Errors** are [`Error`]s with a [`kind`](Error::kind) and the server's reason.
//!
//! A [`blocking`] facade runs the same client on its own runtime thread.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod auth;
pub mod blocking;
mod broadcast;
mod channel;
mod client;
mod config;
pub mod connection;
mod endpoint;
mod error;
pub mod events;
mod options;
mod postgres;
mod presence;
pub mod queue;
pub mod rest;
mod shared;
mod weight;

pub use auth::{jwt_exp, TokenFuture, TokenProvider};
pub use broadcast::{BroadcastMessage, BroadcastPayload};
pub use channel::RealtimeChannel;
pub use client::RealtimeClient;
pub use config::{ChannelConfig, ChannelStatus, RejoinPolicy};
pub use connection::{CloseReason, ConnectionState};
pub use endpoint::Endpoint;
pub use error::{Error, ErrorKind, Result};
pub use events::{ChannelEvent, ClientEvent, SystemMessage};
pub use options::{ClientOptions, OfflinePolicy, Vsn};
pub use postgres::{
    convert_cell, convert_change_data, match_bindings, PostgresChange, PostgresChangesFilter,
    PostgresEvent,
};
pub use presence::{Presence, PresenceEvent, PresenceState, Presences};
pub use queue::{EventStream, Overflow};

/// The protocol crate this client is built on.
pub use supa_realtime_protocol as protocol;
