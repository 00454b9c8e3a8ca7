//! Presence as users see it (PROTOCOL.md §6.3): `presence_ref` instead of `phx_ref`.
//!
//! The state itself is kept by [`supa_realtime_protocol::presence::PresenceSync`], which
//! implements the Phoenix sync algorithm including diffs that arrive before the state.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use supa_realtime_protocol::presence::{self as proto, user_meta};

/// One presence of a key: the tracked payload plus `presence_ref`.
pub type Presence = Map<String, Value>;

/// Presence of a channel: key → presences (one per connection tracking under that key).
pub type PresenceState = BTreeMap<String, Vec<Presence>>;

/// A presence change, in the order Phoenix reports them.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// The state is consistent: after the initial state (with held diffs) and after each diff.
    Sync {
        /// The whole presence state at this sync (the value
        /// [`RealtimeChannel::presence_state`](crate::RealtimeChannel::presence_state) had
        /// then), shared by every listener.
        state: Arc<PresenceState>,
    },
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
    /// `state` is the state after the batch `e` belongs to (carried by `Sync`).
    pub(crate) fn from_proto(e: proto::PresenceEvent, state: &Arc<PresenceState>) -> PresenceEvent {
        let conv = |v: Vec<proto::Meta>| v.iter().map(user_meta).collect::<Vec<_>>();
        match e {
            proto::PresenceEvent::Sync => PresenceEvent::Sync {
                state: state.clone(),
            },
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
