//! Presence state and diffs (PROTOCOL.md §6), and the Phoenix client sync algorithm.
//!
//! On the wire a presence state is `{key: {"metas": [meta, ...]}}` and a diff is
//! `{"joins": <state>, "leaves": <state>}`. Each meta is the tracked payload plus a unique
//! `phx_ref` (and `phx_ref_prev` on updates).
//!
//! [`PresenceSync`] is the client half: it applies states and diffs exactly as Phoenix's
//! JavaScript `Presence` does, including diffs that arrive before the state of the current
//! join, which are held back and replayed once the state arrives.

use std::collections::BTreeMap;

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

/// What applying a state or diff did, in the order Phoenix reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// Metas joined under `key`. `current` is what the key had before (empty if new).
    Join {
        /// The presence key.
        key: String,
        /// Metas present under the key before this join.
        current: Vec<Meta>,
        /// The metas that joined.
        joined: Vec<Meta>,
    },
    /// Metas left `key`. `remaining` is what the key still has.
    Leave {
        /// The presence key.
        key: String,
        /// Metas still present under the key.
        remaining: Vec<Meta>,
        /// The metas that left.
        left: Vec<Meta>,
    },
    /// The state is consistent again; fired once per state and once per applied diff.
    Sync,
}

/// The Phoenix `syncDiff`: apply `diff` to `state` and report joins then leaves.
pub fn sync_diff(state: &mut PresenceState, diff: &PresenceDiff, events: &mut Vec<PresenceEvent>) {
    for (key, joined) in &diff.joins {
        let previous = state.get(key).cloned();
        let mut metas = joined.clone();
        if let Some(prev) = &previous {
            let joined_refs: Vec<Option<&str>> = joined.iter().map(meta_ref).collect();
            let kept: Vec<Meta> = prev
                .iter()
                .filter(|m| !joined_refs.contains(&meta_ref(m)))
                .cloned()
                .collect();
            metas.splice(0..0, kept);
        }
        state.insert(key.clone(), metas);
        events.push(PresenceEvent::Join {
            key: key.clone(),
            current: previous.unwrap_or_default(),
            joined: joined.clone(),
        });
    }
    for (key, left) in &diff.leaves {
        let Some(current) = state.get_mut(key) else {
            continue;
        };
        let refs: Vec<Option<&str>> = left.iter().map(meta_ref).collect();
        current.retain(|m| !refs.contains(&meta_ref(m)));
        let remaining = current.clone();
        if remaining.is_empty() {
            state.remove(key);
        }
        events.push(PresenceEvent::Leave {
            key: key.clone(),
            remaining,
            left: left.clone(),
        });
    }
}

/// The Phoenix `syncState`: replace `state` by `new`, reporting the difference as joins and
/// leaves.
pub fn sync_state(state: &mut PresenceState, new: &PresenceState, events: &mut Vec<PresenceEvent>) {
    let mut diff = PresenceDiff::default();
    for (key, metas) in state.iter() {
        if !new.contains_key(key) {
            diff.leaves.insert(key.clone(), metas.clone());
        }
    }
    for (key, new_metas) in new {
        match state.get(key) {
            Some(cur) => {
                let new_refs: Vec<Option<&str>> = new_metas.iter().map(meta_ref).collect();
                let cur_refs: Vec<Option<&str>> = cur.iter().map(meta_ref).collect();
                let joined: Vec<Meta> = new_metas
                    .iter()
                    .filter(|m| !cur_refs.contains(&meta_ref(m)))
                    .cloned()
                    .collect();
                let left: Vec<Meta> = cur
                    .iter()
                    .filter(|m| !new_refs.contains(&meta_ref(m)))
                    .cloned()
                    .collect();
                if !joined.is_empty() {
                    diff.joins.insert(key.clone(), joined);
                }
                if !left.is_empty() {
                    diff.leaves.insert(key.clone(), left);
                }
            }
            None => {
                diff.joins.insert(key.clone(), new_metas.clone());
            }
        }
    }
    sync_diff(state, &diff, events);
}

/// Client-side presence for one channel, as Phoenix's JavaScript `Presence` keeps it.
#[derive(Debug, Clone, Default)]
pub struct PresenceSync {
    state: PresenceState,
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

    /// The current state.
    pub fn state(&self) -> &PresenceState {
        &self.state
    }

    /// Whether diffs are being held back because no state has arrived for the current join.
    pub fn in_pending_sync_state(&self) -> bool {
        self.join_ref.is_none() || self.state_join_ref != self.join_ref
    }

    /// Apply a `presence_state`. Held diffs are applied after it; then one `Sync`.
    pub fn apply_state(&mut self, new: &PresenceState) -> Vec<PresenceEvent> {
        let mut events = Vec::new();
        self.state_join_ref = self.join_ref.clone();
        sync_state(&mut self.state, new, &mut events);
        for diff in std::mem::take(&mut self.pending) {
            sync_diff(&mut self.state, &diff, &mut events);
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
        sync_diff(&mut self.state, &diff, &mut events);
        events.push(PresenceEvent::Sync);
        events
    }

    /// The state in the shape users see: `phx_ref` renamed `presence_ref`, `phx_ref_prev` gone.
    pub fn user_state(&self) -> BTreeMap<String, Vec<Meta>> {
        self.state
            .iter()
            .map(|(k, metas)| (k.clone(), metas.iter().map(user_meta).collect()))
            .collect()
    }
}

/// A meta as users see it: `presence_ref` instead of `phx_ref`, without `phx_ref_prev`.
pub fn user_meta(meta: &Meta) -> Meta {
    let mut out = Map::new();
    for (k, v) in meta {
        match k.as_str() {
            "phx_ref" => {
                out.insert("presence_ref".into(), v.clone());
            }
            "phx_ref_prev" => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
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

    #[test]
    fn update_under_same_key_replaces_meta() {
        let mut s = PresenceState::new();
        let mut ev = Vec::new();
        sync_diff(
            &mut s,
            &PresenceDiff {
                joins: [("alice".into(), vec![meta("1", json!({"s": "on"}))])].into(),
                leaves: Default::default(),
            },
            &mut ev,
        );
        sync_diff(
            &mut s,
            &PresenceDiff {
                joins: [(
                    "alice".into(),
                    vec![meta("2", json!({"s": "away", "phx_ref_prev": "1"}))],
                )]
                .into(),
                leaves: [("alice".into(), vec![meta("1", json!({"s": "on"}))])].into(),
            },
            &mut ev,
        );
        assert_eq!(s["alice"].len(), 1);
        assert_eq!(s["alice"][0]["s"], "away");
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
        let ev = p.apply_state(&[("alice".into(), vec![meta("a", json!({}))])].into());
        assert_eq!(p.state().len(), 2);
        assert_eq!(ev.last(), Some(&PresenceEvent::Sync));
        assert_eq!(ev.iter().filter(|e| **e == PresenceEvent::Sync).count(), 1);
        assert_eq!(
            user_meta(&p.state()["bob"][0]).get("presence_ref"),
            Some(&json!("b"))
        );
    }

    #[test]
    fn wire_round_trip() {
        let v = json!({"alice": {"metas": [{"phx_ref": "x", "n": 1}]}});
        assert_eq!(state_to_wire(&state_from_wire(&v)), v);
        let d = json!({"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "y"}]}}});
        assert_eq!(PresenceDiff::from_wire(&d).to_wire(), d);
    }
}
