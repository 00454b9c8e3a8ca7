//! Server-side presence of one topic: one entry per channel instance that tracked.
//!
//! Upstream keys each entry by the channel's `presence.key` (or a generated id) and gives each
//! meta a unique `phx_ref`. A second track with the same payload is a no-op; with another
//! payload it is an update (the old meta leaves, the new one joins carrying `phx_ref_prev`).

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
        state
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
}
