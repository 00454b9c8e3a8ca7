//! Presence state and diffs (PROTOCOL.md §6), and the Phoenix client sync algorithm.
//!
//! On the wire a presence state is `{key: {"metas": [meta, ...]}}` and a diff is
//! `{"joins": <state>, "leaves": <state>}`. Each meta is the tracked payload plus a unique
//! `phx_ref` (and `phx_ref_prev` on updates).
//!
//! [`PresenceSync`] is the client half: it applies states and diffs exactly as Phoenix's
//! JavaScript `Presence` does, including diffs that arrive before the state of the current
//! join, which are held back and replayed once the state arrives. It keeps the state in the
//! form users see (`presence_ref`), as a persistent map of shared presences
//! ([`SharedState`]), so that a snapshot handed to users is O(1) and shares memory with the
//! live state instead of being a copy of it. The server keeps its own state
//! ([`PresenceState`], plain maps): it never hands out snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

/// One presence entry: the tracked payload plus `phx_ref` (and maybe `phx_ref_prev`).
pub type Meta = Map<String, Value>;

/// Presence keyed by presence key, each with its metas in order.
pub type PresenceState = BTreeMap<String, Vec<Meta>>;

/// The `phx_ref` of a meta.
pub fn meta_ref(meta: &Meta) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

/// Read a wire state `{key: {"metas": [...]}}`. Entries that are not of that shape are skipped.
pub fn state_from_wire(v: &Value) -> PresenceState {
    let mut out = PresenceState::new();
    if let Value::Object(map) = v {
        for (key, entry) in map {
            let metas: Vec<Meta> = entry
                .get("metas")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|m| m.as_object().cloned()).collect())
                .unwrap_or_default();
            out.insert(key.clone(), metas);
        }
    }
    out
}

/// [`state_from_wire`] taking the value: the metas are moved out of it, not copied (a
/// client applies every diff it receives; this is the one allocation per meta it keeps).
pub fn state_from_wire_owned(v: Value) -> PresenceState {
    let mut out = PresenceState::new();
    if let Value::Object(map) = v {
        for (key, entry) in map {
            let metas: Vec<Meta> = match entry {
                Value::Object(mut e) => match e.remove("metas") {
                    Some(Value::Array(a)) => a
                        .into_iter()
                        .filter_map(|m| match m {
                            Value::Object(m) => Some(m),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            out.insert(key, metas);
        }
    }
    out
}

/// Write a state in wire form.
pub fn state_to_wire(state: &PresenceState) -> Value {
    let mut map = Map::new();
    for (key, metas) in state {
        let mut entry = Map::new();
        entry.insert(
            "metas".into(),
            Value::Array(metas.iter().cloned().map(Value::Object).collect()),
        );
        map.insert(key.clone(), Value::Object(entry));
    }
    Value::Object(map)
}

/// A presence diff.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PresenceDiff {
    /// Metas that appeared, by key.
    pub joins: PresenceState,
    /// Metas that went away, by key.
    pub leaves: PresenceState,
}

impl PresenceDiff {
    /// Read a wire diff.
    pub fn from_wire(v: &Value) -> PresenceDiff {
        PresenceDiff {
            joins: v.get("joins").map(state_from_wire).unwrap_or_default(),
            leaves: v.get("leaves").map(state_from_wire).unwrap_or_default(),
        }
    }

    /// [`from_wire`](Self::from_wire) taking the value (metas moved, not copied).
    pub fn from_wire_owned(mut v: Value) -> PresenceDiff {
        let mut take = |k: &str| {
            v.as_object_mut()
                .and_then(|o| o.remove(k))
                .map(state_from_wire_owned)
                .unwrap_or_default()
        };
        PresenceDiff {
            joins: take("joins"),
            leaves: take("leaves"),
        }
    }

    /// Write it in wire form.
    pub fn to_wire(&self) -> Value {
        let mut map = Map::new();
        map.insert("joins".into(), state_to_wire(&self.joins));
        map.insert("leaves".into(), state_to_wire(&self.leaves));
        Value::Object(map)
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// One presence in the form users see: the tracked payload plus `presence_ref` (the
/// `phx_ref` renamed), without `phx_ref_prev` (see [`user_meta`]). Shared: the live state,
/// every snapshot of it and every event naming it point at one copy.
pub type UserMeta = Arc<Meta>;

/// The presences of one key, in order, shared the same way.
pub type MetaList = Arc<[UserMeta]>;

/// A client-side presence state: key → its presences, in the form users see.
///
/// A persistent B-tree (`imbl::OrdMap`): cloning it is O(1) and the clone shares every node
/// with the original; changing a key afterwards copies only the path to that key (a few
/// nodes of up to 64 entries), not the state. So a snapshot handed to a consumer costs a
/// reference count, and a consumer that holds on to an old snapshot keeps alive only what
/// changed since, not a copy of the whole state.
pub type SharedState = imbl::OrdMap<String, MetaList>;

/// What applying a state or diff did, in the order Phoenix reports it. Metas are in the form
/// users see and shared with the state.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// Metas joined under `key`. `current` is what the key had before (empty if new).
    Join {
        /// The presence key.
        key: String,
        /// Metas present under the key before this join.
        current: MetaList,
        /// The metas that joined.
        joined: MetaList,
    },
    /// Metas left `key`. `remaining` is what the key still has.
    Leave {
        /// The presence key.
        key: String,
        /// Metas still present under the key.
        remaining: MetaList,
        /// The metas that left.
        left: MetaList,
    },
    /// The state is consistent again; fired once per state and once per applied diff.
    Sync,
}

/// The `presence_ref` of a meta in the form users see.
fn user_ref(meta: &Meta) -> Option<&str> {
    meta.get("presence_ref").and_then(Value::as_str)
}

/// A diff in the form users see, ready to apply to a [`SharedState`].
#[derive(Default)]
struct UserDiff {
    joins: BTreeMap<String, MetaList>,
    leaves: BTreeMap<String, MetaList>,
}

impl UserDiff {
    /// Converts each meta once (moved, not copied); this is all a diff costs beyond the
    /// path copies of the keys it changes.
    fn from_wire_diff(diff: PresenceDiff) -> UserDiff {
        UserDiff {
            joins: user_lists(diff.joins),
            leaves: user_lists(diff.leaves),
        }
    }
}

fn user_lists(state: PresenceState) -> BTreeMap<String, MetaList> {
    state
        .into_iter()
        .map(|(k, metas)| {
            let list: MetaList = metas
                .into_iter()
                .map(|m| Arc::new(into_user_meta(m)))
                .collect();
            (k, list)
        })
        .collect()
}

/// The Phoenix `syncDiff`: apply `diff` to `state` and report joins then leaves.
fn sync_diff(state: &mut SharedState, diff: UserDiff, events: &mut Vec<PresenceEvent>) {
    for (key, joined) in diff.joins {
        let previous = state.get(&key).cloned();
        let metas: MetaList = match &previous {
            Some(prev) => {
                let joined_refs: Vec<Option<&str>> = joined.iter().map(|m| user_ref(m)).collect();
                prev.iter()
                    .filter(|m| !joined_refs.contains(&user_ref(m)))
                    .chain(joined.iter())
                    .cloned()
                    .collect()
            }
            // The common case shares the joined list itself with the state.
            None => joined.clone(),
        };
        state.insert(key.clone(), metas);
        events.push(PresenceEvent::Join {
            key,
            current: previous.unwrap_or_else(|| Arc::from([])),
            joined,
        });
    }
    for (key, left) in diff.leaves {
        let Some(current) = state.get(&key) else {
            continue;
        };
        let refs: Vec<Option<&str>> = left.iter().map(|m| user_ref(m)).collect();
        let remaining: MetaList = if current.iter().any(|m| refs.contains(&user_ref(m))) {
            current
                .iter()
                .filter(|m| !refs.contains(&user_ref(m)))
                .cloned()
                .collect()
        } else {
            current.clone()
        };
        if remaining.is_empty() {
            state.remove(&key);
        } else if remaining.len() != current.len() {
            state.insert(key.clone(), remaining.clone());
        }
        events.push(PresenceEvent::Leave {
            key,
            remaining,
            left,
        });
    }
}

/// The Phoenix `syncState`: replace `state` by `new`, reporting the difference as joins and
/// leaves.
fn sync_state(state: &mut SharedState, new: PresenceState, events: &mut Vec<PresenceEvent>) {
    let new = user_lists(new);
    let mut diff = UserDiff::default();
    for (key, metas) in state.iter() {
        if !new.contains_key(key) {
            diff.leaves.insert(key.clone(), metas.clone());
        }
    }
    for (key, new_metas) in new {
        match state.get(&key) {
            Some(cur) => {
                let new_refs: Vec<Option<&str>> = new_metas.iter().map(|m| user_ref(m)).collect();
                let cur_refs: Vec<Option<&str>> = cur.iter().map(|m| user_ref(m)).collect();
                let joined: MetaList = new_metas
                    .iter()
                    .filter(|m| !cur_refs.contains(&user_ref(m)))
                    .cloned()
                    .collect();
                let left: MetaList = cur
                    .iter()
                    .filter(|m| !new_refs.contains(&user_ref(m)))
                    .cloned()
                    .collect();
                if !joined.is_empty() {
                    diff.joins.insert(key.clone(), joined);
                }
                if !left.is_empty() {
                    diff.leaves.insert(key, left);
                }
            }
            None => {
                diff.joins.insert(key, new_metas);
            }
        }
    }
    sync_diff(state, diff, events);
}

/// Client-side presence for one channel, as Phoenix's JavaScript `Presence` keeps it.
///
/// The state is kept in the form users see ([`UserMeta`]) so that what is handed to users
/// *is* the state: [`state`](Self::state)`.clone()` is an O(1) snapshot sharing every meta
/// and every unchanged node with the live state (see [`SharedState`]).
#[derive(Debug, Clone, Default)]
pub struct PresenceSync {
    state: SharedState,
    pending: Vec<PresenceDiff>,
    /// The join ref whose `presence_state` was last applied.
    state_join_ref: Option<String>,
    /// The channel's current join ref.
    join_ref: Option<String>,
}

impl PresenceSync {
    /// An empty presence.
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel (re)joined under `join_ref`: diffs are held until its state arrives.
    pub fn set_join_ref(&mut self, join_ref: Option<String>) {
        self.join_ref = join_ref;
    }

    /// The current state, in the form users see (`presence_ref`); clone it for a snapshot.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Whether diffs are being held back because no state has arrived for the current join.
    pub fn in_pending_sync_state(&self) -> bool {
        self.join_ref.is_none() || self.state_join_ref != self.join_ref
    }

    /// Apply a `presence_state`. Held diffs are applied after it; then one `Sync`.
    pub fn apply_state(&mut self, new: PresenceState) -> Vec<PresenceEvent> {
        let mut events = Vec::new();
        self.state_join_ref = self.join_ref.clone();
        sync_state(&mut self.state, new, &mut events);
        for diff in std::mem::take(&mut self.pending) {
            sync_diff(&mut self.state, UserDiff::from_wire_diff(diff), &mut events);
        }
        events.push(PresenceEvent::Sync);
        events
    }

    /// Apply a `presence_diff`, or hold it until the state of the current join arrives.
    pub fn apply_diff(&mut self, diff: PresenceDiff) -> Vec<PresenceEvent> {
        if self.in_pending_sync_state() {
            self.pending.push(diff);
            return Vec::new();
        }
        let mut events = Vec::new();
        sync_diff(&mut self.state, UserDiff::from_wire_diff(diff), &mut events);
        events.push(PresenceEvent::Sync);
        events
    }
}

/// A meta as users see it: `presence_ref` instead of `phx_ref`, without `phx_ref_prev`.
pub fn user_meta(meta: &Meta) -> Meta {
    into_user_meta(meta.clone())
}

/// [`user_meta`] without the copy.
pub fn into_user_meta(mut meta: Meta) -> Meta {
    meta.remove("phx_ref_prev");
    if let Some(r) = meta.remove("phx_ref") {
        // A tracked payload's own `presence_ref` wins, as it always has.
        meta.entry("presence_ref").or_insert(r);
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(r: &str, extra: Value) -> Meta {
        let mut m = extra.as_object().cloned().unwrap_or_default();
        m.insert("phx_ref".into(), Value::from(r));
        m
    }

    fn joined(p: &mut PresenceSync, key: &str, m: Meta) -> Vec<PresenceEvent> {
        p.apply_diff(PresenceDiff {
            joins: [(key.into(), vec![m])].into(),
            leaves: Default::default(),
        })
    }

    fn synced() -> PresenceSync {
        let mut p = PresenceSync::new();
        p.set_join_ref(Some("1".into()));
        p.apply_state(PresenceState::new());
        p
    }

    #[test]
    fn update_under_same_key_replaces_meta() {
        let mut p = synced();
        joined(&mut p, "alice", meta("1", json!({"s": "on"})));
        p.apply_diff(PresenceDiff {
            joins: [(
                "alice".into(),
                vec![meta("2", json!({"s": "away", "phx_ref_prev": "1"}))],
            )]
            .into(),
            leaves: [("alice".into(), vec![meta("1", json!({"s": "on"}))])].into(),
        });
        let s = p.state();
        assert_eq!(s["alice"].len(), 1);
        assert_eq!(s["alice"][0]["s"], "away");
        assert_eq!(s["alice"][0]["presence_ref"], "2");
        assert!(s["alice"][0].get("phx_ref_prev").is_none());
    }

    #[test]
    fn diffs_before_state_are_held() {
        let mut p = PresenceSync::new();
        p.set_join_ref(Some("1".into()));
        let d = PresenceDiff {
            joins: [("bob".into(), vec![meta("b", json!({}))])].into(),
            leaves: Default::default(),
        };
        assert!(p.apply_diff(d).is_empty());
        let ev = p.apply_state([("alice".into(), vec![meta("a", json!({}))])].into());
        assert_eq!(p.state().len(), 2);
        assert_eq!(ev.last(), Some(&PresenceEvent::Sync));
        assert_eq!(ev.iter().filter(|e| **e == PresenceEvent::Sync).count(), 1);
        assert_eq!(p.state()["bob"][0].get("presence_ref"), Some(&json!("b")));
    }

    /// What a snapshot costs: the snapshot taken before a diff and the state after it share
    /// the storage of every key the diff did not touch, and the events share the metas of
    /// the state.
    #[test]
    fn snapshots_share_unchanged_entries() {
        let mut p = synced();
        for i in 0..200 {
            joined(
                &mut p,
                &format!("u{i:03}"),
                meta(&i.to_string(), json!({"i": i})),
            );
        }
        let before = p.state().clone();
        let ev = joined(&mut p, "u500", meta("500", json!({"i": 500})));
        let after = p.state();
        assert_eq!((before.len(), after.len()), (200, 201));
        for (k, list) in &before {
            assert!(Arc::ptr_eq(list, &after[k]), "{k} was copied");
        }
        let PresenceEvent::Join { joined, .. } = &ev[0] else {
            panic!("{ev:?}")
        };
        assert!(Arc::ptr_eq(joined, &after["u500"]));
    }

    #[test]
    fn own_presence_ref_in_payload_wins() {
        let m = into_user_meta(meta(
            "x",
            json!({"presence_ref": "mine", "phx_ref_prev": "w"}),
        ));
        assert_eq!(
            m,
            json!({"presence_ref": "mine"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
    }

    #[test]
    fn wire_round_trip() {
        let v = json!({"alice": {"metas": [{"phx_ref": "x", "n": 1}]}});
        assert_eq!(state_to_wire(&state_from_wire(&v)), v);
        assert_eq!(state_to_wire(&state_from_wire_owned(v.clone())), v);
        let d = json!({"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "y"}]}}});
        assert_eq!(PresenceDiff::from_wire(&d).to_wire(), d);
        assert_eq!(PresenceDiff::from_wire_owned(d.clone()).to_wire(), d);
        let odd = json!({"a": {"metas": [1, {"phx_ref": "z"}]}, "b": 2, "c": {"metas": "x"}});
        assert_eq!(state_from_wire_owned(odd.clone()), state_from_wire(&odd));
        assert_eq!(
            PresenceDiff::from_wire_owned(json!({"joins": odd.clone(), "leaves": 3})),
            PresenceDiff::from_wire(&json!({"joins": odd, "leaves": 3}))
        );
    }
}
