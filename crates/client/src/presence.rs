//! Presence as users see it (PROTOCOL.md §6.3): `presence_ref` instead of `phx_ref`.
//!
//! The state itself is kept by [`supabase_realtime_protocol::presence::PresenceSync`], which
//! implements the Phoenix sync algorithm including diffs that arrive before the state.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use supabase_realtime_protocol::presence::{self as proto, user_meta};

/// One presence of a key: the tracked payload plus `presence_ref`.
pub type Presence = Map<String, Value>;

/// Presence of a channel: key → presences (one per connection tracking under that key).
pub type PresenceState = BTreeMap<String, Vec<Presence>>;

/// A presence change, in the order Phoenix reports them.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// The state is consistent: after the initial state (with held diffs) and after each diff.
    Sync,
    /// Presences joined `key`.
    Join {
        /// The presence key.
        key: String,
        /// What the key had before.
        current: Vec<Presence>,
        /// What joined.
        new: Vec<Presence>,
    },
    /// Presences left `key`.
    Leave {
        /// The presence key.
        key: String,
        /// What the key still has.
        current: Vec<Presence>,
        /// What left.
        left: Vec<Presence>,
    },
}

impl PresenceEvent {
    pub(crate) fn from_proto(e: proto::PresenceEvent) -> PresenceEvent {
        let conv = |v: Vec<proto::Meta>| v.iter().map(user_meta).collect::<Vec<_>>();
        match e {
            proto::PresenceEvent::Sync => PresenceEvent::Sync,
            proto::PresenceEvent::Join {
                key,
                current,
                joined,
            } => PresenceEvent::Join {
                key,
                current: conv(current),
                new: conv(joined),
            },
            proto::PresenceEvent::Leave {
                key,
                remaining,
                left,
            } => PresenceEvent::Leave {
                key,
                current: conv(remaining),
                left: conv(left),
            },
        }
    }
}
