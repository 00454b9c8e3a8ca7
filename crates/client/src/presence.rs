//! Presence as users see it (PROTOCOL.md §6.3): `presence_ref` instead of `phx_ref`.
//!
//! The state itself is kept by [`supa_realtime_protocol::presence::PresenceSync`], which
//! implements the Phoenix sync algorithm including diffs that arrive before the state, and
//! keeps it in this form, structurally shared: a [`PresenceState`] is a persistent map whose
//! clone is O(1), every presence is one `Arc` shared by the live state, every snapshot and
//! every event. So a `Sync` event, the `watch` behind
//! [`RealtimeChannel::presence_state`](crate::RealtimeChannel::presence_state) and a
//! consumer that holds an old snapshot all share memory with the live state; a diff costs
//! its own metas plus the copied path to the keys it changes (see `weight.rs` for how the
//! queues count that).

use std::sync::Arc;

use serde_json::{Map, Value};
use supa_realtime_protocol::presence as proto;

/// One presence of a key: the tracked payload plus `presence_ref`.
pub type Presence = Map<String, Value>;

/// The presences of one key (one per connection tracking under it), in order; shared.
pub type Presences = Arc<[Arc<Presence>]>;

/// Presence of a channel: key → presences, in key order. A persistent map
/// ([`imbl::OrdMap`]): `clone()` is O(1) and shares storage with the original; iterate it,
/// `get` or index it by key like a `BTreeMap`.
pub type PresenceState = proto::SharedState;

/// A presence change, in the order Phoenix reports them. The presences are shared with the
/// state (cloning an event is cheap).
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// The state is consistent: after the initial state (with held diffs) and after each diff.
    Sync {
        /// The whole presence state at this sync (the value
        /// [`RealtimeChannel::presence_state`](crate::RealtimeChannel::presence_state) had
        /// then): a snapshot sharing its storage with the live state and with every
        /// listener's copy.
        state: PresenceState,
    },
    /// Presences joined `key`.
    Join {
        /// The presence key.
        key: String,
        /// What the key had before.
        current: Presences,
        /// What joined.
        new: Presences,
    },
    /// Presences left `key`.
    Leave {
        /// The presence key.
        key: String,
        /// What the key still has.
        current: Presences,
        /// What left.
        left: Presences,
    },
}

impl PresenceEvent {
    /// `state` is the state after the batch `e` belongs to (carried by `Sync`).
    pub(crate) fn from_proto(e: proto::PresenceEvent, state: &PresenceState) -> PresenceEvent {
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
                current,
                new: joined,
            },
            proto::PresenceEvent::Leave {
                key,
                remaining,
                left,
            } => PresenceEvent::Leave {
                key,
                current: remaining,
                left,
            },
        }
    }
}
