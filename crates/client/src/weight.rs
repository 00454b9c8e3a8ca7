//! What each event weighs in the queues' byte bounds, and which events are control events
//! that drop policies never drop (see [`queue`](crate::queue)).

use serde_json::Value;

use crate::broadcast::BroadcastPayload;
use crate::events::{ChannelEvent, ClientEvent};
use crate::presence::{PresenceEvent, Presences};
use crate::queue::Weigh;

/// What a queued event weighs beyond its payload (the event itself, its `Arc`, routing).
const EVENT_OVERHEAD: usize = 64;

impl Weigh for ChannelEvent {
    fn weight(&self) -> usize {
        EVENT_OVERHEAD
            + match self {
                ChannelEvent::Broadcast(m) => {
                    m.event.len()
                        + match &m.payload {
                            BroadcastPayload::Json(v) => json_weight(v),
                            BroadcastPayload::Binary(b) => b.len(),
                        }
                        + m.meta.as_ref().map_or(0, json_weight)
                }
                ChannelEvent::PostgresChanges(c) => {
                    c.new
                        .values()
                        .chain(c.old.values())
                        .map(json_weight)
                        .sum::<usize>()
                        + c.columns
                            .iter()
                            .map(|(n, t)| n.len() + t.len())
                            .sum::<usize>()
                }
                ChannelEvent::Presence(p) => presence_weight(p),
                ChannelEvent::System(_)
                | ChannelEvent::Status(_)
                | ChannelEvent::Dropped { .. } => 0,
            }
    }

    fn is_control(&self) -> bool {
        matches!(self, ChannelEvent::Status(_) | ChannelEvent::Dropped { .. })
    }
}

/// What a B-tree node of a [`PresenceState`](crate::PresenceState) that a change copied
/// takes: up to 64 entries of a key (`String`) and a shared list (`Arc<[_]>`), the entries'
/// key strings, and the node's child pointers.
const PRESENCE_NODE: usize = 64 * (24 + 16 + 16) + 65 * 8;

/// Presence events weigh what is new, never the state they share.
///
/// A `Sync` carries a snapshot of the whole state, but the snapshot is the live state's own
/// storage (a persistent map): what a queued `Sync` alone keeps alive is the tree nodes that
/// changed after it: for a batch changing k keys, at most k leaves plus the inner nodes
/// above them. Each `Join`/`Leave` names one changed key, so it weighs its metas (new,
/// converted from the wire) plus one leaf; the batch's `Sync` weighs a whole root-to-leaf
/// path (which covers the inner nodes the batch copied). The previous and remaining
/// lists of a key share the state's metas and weigh their pointers only. Counting a `Sync`
/// as a full copy of the state would fill the byte bound with memory that is not there;
/// counting it as nothing (as when each held a private copy, which it no longer does)
/// would leave real memory unbounded.
fn presence_weight(p: &PresenceEvent) -> usize {
    let path = |len: usize| {
        // Depth of a B-tree of 64-entry nodes holding `len` keys.
        let mut depth = 1;
        let mut cap = 64;
        while cap < len {
            depth += 1;
            cap = cap.saturating_mul(65);
        }
        depth * PRESENCE_NODE
    };
    let metas = |l: &Presences| l.iter().map(|m| 16 + json_weight_map(m)).sum::<usize>();
    match p {
        PresenceEvent::Sync { state } => path(state.len()),
        PresenceEvent::Join { key, current, new } => {
            key.len() + 8 * current.len() + metas(new) + PRESENCE_NODE
        }
        PresenceEvent::Leave { key, current, left } => {
            key.len() + 8 * current.len() + metas(left) + PRESENCE_NODE
        }
    }
}

fn json_weight_map(m: &serde_json::Map<String, Value>) -> usize {
    8 + m
        .iter()
        .map(|(k, v)| 8 + k.len() + json_weight(v))
        .sum::<usize>()
}

/// About what a JSON value takes in memory: its text plus a word per node.
fn json_weight(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => 8 + s.len(),
        Value::Array(a) => 8 + a.iter().map(json_weight).sum::<usize>(),
        Value::Object(o) => json_weight_map(o),
    }
}

impl Weigh for ClientEvent {
    fn weight(&self) -> usize {
        EVENT_OVERHEAD
    }

    fn is_control(&self) -> bool {
        !matches!(self, ClientEvent::Heartbeat { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::presence::{Presence, PresenceState};

    fn presence(i: usize) -> Arc<Presence> {
        let v =
            json!({"i": i, "online_at": "2026-01-01T00:00:00Z", "presence_ref": format!("r{i}")});
        Arc::new(v.as_object().cloned().unwrap_or_default())
    }

    fn state(n: usize) -> PresenceState {
        (0..n)
            .map(|i| (format!("u{i}"), Presences::from(vec![presence(i)])))
            .collect()
    }

    fn weight(p: PresenceEvent) -> usize {
        ChannelEvent::Presence(Arc::new(p)).weight()
    }

    /// A `Sync` shares the state: it weighs a tree path, which grows with the depth of the
    /// tree, not with the number of presences. (Weighing it as nothing, or as a full copy,
    /// fails here.)
    #[test]
    fn sync_weighs_a_path_not_the_state() {
        let small = weight(PresenceEvent::Sync { state: state(10) });
        let large = weight(PresenceEvent::Sync { state: state(2000) });
        assert!(small >= PRESENCE_NODE, "{small}");
        assert!(large <= 3 * PRESENCE_NODE + EVENT_OVERHEAD, "{large}");
        let full_copy: usize = state(2000).values().map(|l| json_weight_map(&l[0])).sum();
        assert!(large * 20 < full_copy, "{large} vs {full_copy}");
    }

    /// A `Join` weighs the presences that are new (not the key's previous ones, which the
    /// state already holds).
    #[test]
    fn join_weighs_what_is_new() {
        let big = Arc::new(
            json!({"blob": "x".repeat(10_000)})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let join = |current: Vec<Arc<Presence>>, new: Vec<Arc<Presence>>| {
            weight(PresenceEvent::Join {
                key: "k".into(),
                current: current.into(),
                new: new.into(),
            })
        };
        let new_big = join(vec![presence(1)], vec![big.clone()]);
        let old_big = join(vec![big], vec![presence(1)]);
        assert!(new_big > 10_000, "{new_big}");
        assert!(old_big < 10_000, "{old_big}");
    }
}
