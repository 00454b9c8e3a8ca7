//! Server-side presence of one topic: one entry per channel instance that tracked.
//!
//! Upstream keys each entry by the channel's `presence.key` (or a generated id) and gives each
//! meta a unique `phx_ref`. A second track with the same payload is a no-op; with another
//! payload it is an update (the old meta leaves, the new one joins carrying `phx_ref_prev`).
//!
//! In cluster mode the tracker also holds the entries other nodes tracked, keyed by their
//! `phx_ref` (unique per meta, so an update is simply a leave of the old ref and a join of the
//! new one). They are part of the state a joiner gets, but not of [`PresenceTracker::is_empty`]:
//! a topic with no local channel is released even while other nodes have presences in it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use supa_realtime_protocol::presence::{Meta, PresenceDiff, PresenceState};

use crate::fanout::SubId;

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    payload: Map<String, Value>,
    meta: Meta,
}

/// The presences tracked on one topic, in the order they were tracked.
#[derive(Debug, Default)]
pub(crate) struct PresenceTracker {
    entries: BTreeMap<SubId, Entry>,
    /// Entries of other nodes by `phx_ref`: (presence key, meta).
    remote: BTreeMap<String, (String, Meta)>,
}

fn new_ref() -> String {
    // Opaque and unique, like Phoenix's refs; clients only compare them.
    use base64::Engine;
    let bytes: [u8; 12] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn single(key: &str, meta: Meta) -> PresenceState {
    let mut s = PresenceState::new();
    s.insert(key.to_owned(), vec![meta]);
    s
}

impl PresenceTracker {
    /// The full state, `{key: [metas]}`.
    pub(crate) fn state(&self) -> PresenceState {
        let mut state = PresenceState::new();
        for e in self.entries.values() {
            state.entry(e.key.clone()).or_default().push(e.meta.clone());
        }
        for (key, meta) in self.remote.values() {
            state.entry(key.clone()).or_default().push(meta.clone());
        }
        state
    }

    /// Apply what another node reported: `joins` (ref, key, meta) and `leaves` (refs). With
    /// `replace`, every remote entry not in `joins` leaves (a full state from the cluster).
    /// Entries already known with the same meta are no change; `None` when nothing changed.
    pub(crate) fn apply_remote(
        &mut self,
        joins: Vec<(String, String, Meta)>,
        leaves: &[String],
        replace: bool,
    ) -> Option<PresenceDiff> {
        let mut diff = PresenceDiff::default();
        if replace {
            let keep: std::collections::HashSet<&str> =
                joins.iter().map(|(r, _, _)| r.as_str()).collect();
            let gone: Vec<String> = self
                .remote
                .keys()
                .filter(|r| !keep.contains(r.as_str()))
                .cloned()
                .collect();
            for r in gone {
                if let Some((key, meta)) = self.remote.remove(&r) {
                    diff.leaves.entry(key).or_default().push(meta);
                }
            }
        }
        for r in leaves {
            if let Some((key, meta)) = self.remote.remove(r) {
                diff.leaves.entry(key).or_default().push(meta);
            }
        }
        for (r, key, meta) in joins {
            if self
                .remote
                .get(&r)
                .is_some_and(|(k, m)| *k == key && *m == meta)
            {
                continue;
            }
            if let Some((old_key, old)) = self.remote.insert(r, (key.clone(), meta.clone())) {
                diff.leaves.entry(old_key).or_default().push(old);
            }
            diff.joins.entry(key).or_default().push(meta);
        }
        (!diff.joins.is_empty() || !diff.leaves.is_empty()).then_some(diff)
    }

    /// Track `payload` for `sub` under `key`. `None` when nothing changed.
    pub(crate) fn track(
        &mut self,
        sub: SubId,
        key: &str,
        payload: Map<String, Value>,
    ) -> Option<PresenceDiff> {
        let mut meta = payload.clone();
        meta.insert("phx_ref".into(), Value::from(new_ref()));
        match self.entries.get_mut(&sub) {
            Some(e) if e.payload == payload && e.key == key => None,
            Some(e) => {
                let old = std::mem::replace(&mut e.meta, meta.clone());
                if let Some(prev) = old.get("phx_ref") {
                    e.meta.insert("phx_ref_prev".into(), prev.clone());
                    meta.insert("phx_ref_prev".into(), prev.clone());
                }
                let old_key = std::mem::replace(&mut e.key, key.to_owned());
                e.payload = payload;
                Some(PresenceDiff {
                    joins: single(key, meta),
                    leaves: single(&old_key, old),
                })
            }
            None => {
                self.entries.insert(
                    sub,
                    Entry {
                        key: key.to_owned(),
                        payload,
                        meta: meta.clone(),
                    },
                );
                Some(PresenceDiff {
                    joins: single(key, meta),
                    leaves: PresenceState::new(),
                })
            }
        }
    }

    /// Remove `sub`'s presence. `None` if it had none.
    pub(crate) fn untrack(&mut self, sub: SubId) -> Option<PresenceDiff> {
        let e = self.entries.remove(&sub)?;
        Some(PresenceDiff {
            joins: PresenceState::new(),
            leaves: single(&e.key, e.meta),
        })
    }

    /// No local entries (remote ones do not keep a topic alive on this node).
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn track_update_untrack() {
        let mut t = PresenceTracker::default();
        let d = t.track(1, "alice", map(json!({"s": "on"}))).unwrap();
        assert!(d.leaves.is_empty());
        assert!(t.track(1, "alice", map(json!({"s": "on"}))).is_none());
        let d = t.track(1, "alice", map(json!({"s": "away"}))).unwrap();
        let joined = &d.joins["alice"][0];
        let left = &d.leaves["alice"][0];
        assert_eq!(joined["phx_ref_prev"], left["phx_ref"]);
        assert_eq!(t.state()["alice"].len(), 1);
        t.track(2, "alice", map(json!({"s": "phone"})));
        assert_eq!(t.state()["alice"].len(), 2, "two connections, one key");
        assert!(t.untrack(1).is_some());
        assert!(t.untrack(1).is_none());
        assert_eq!(t.state()["alice"].len(), 1);
    }

    #[test]
    fn remote_entries_join_update_leave_and_replace() {
        let mut t = PresenceTracker::default();
        t.track(1, "local", map(json!({"n": 1})));
        let m1 = map(json!({"s": "on", "phx_ref": "r1"}));
        let d = t
            .apply_remote(vec![("r1".into(), "bob".into(), m1.clone())], &[], false)
            .unwrap();
        assert_eq!(d.joins["bob"], vec![m1.clone()]);
        assert!(
            t.apply_remote(vec![("r1".into(), "bob".into(), m1.clone())], &[], false)
                .is_none(),
            "the same entry again is no change"
        );
        assert_eq!(t.state().len(), 2);
        assert!(!t.is_empty());
        t.untrack(1);
        assert!(t.is_empty(), "remote entries do not keep the topic");
        let m2 = map(json!({"s": "x", "phx_ref": "r2"}));
        let d = t
            .apply_remote(vec![("r2".into(), "carol".into(), m2.clone())], &[], true)
            .unwrap();
        assert_eq!(d.leaves["bob"], vec![m1]);
        assert_eq!(d.joins["carol"], vec![m2]);
        let d = t.apply_remote(vec![], &["r2".into()], false).unwrap();
        assert!(d.leaves.contains_key("carol"));
        assert!(t.state().is_empty());
    }
}
