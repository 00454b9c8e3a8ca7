//! The client presence algorithm against a model: whatever order of tracks, updates and
//! untracks happens on the server, and however the diffs interleave with the state snapshot,
//! the client's state equals the server's.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Map, Value};
use supa_realtime_protocol::presence::{
    meta_ref, Meta, PresenceDiff, PresenceEvent, PresenceState, PresenceSync, SharedState,
};

#[derive(Debug, Clone)]
enum Op {
    /// Connection `conn` tracks under key `key` with payload `v`.
    Track {
        conn: u8,
        key: u8,
        v: u8,
    },
    Untrack {
        conn: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..3, 0u8..3).prop_map(|(conn, key, v)| Op::Track { conn, key, v }),
        (0u8..6).prop_map(|conn| Op::Untrack { conn }),
    ]
}

/// A minimal server: one meta per connection, as the real one keeps it.
#[derive(Default)]
struct Server {
    entries: BTreeMap<u8, (String, Meta)>,
    next_ref: u64,
}

fn single(key: &str, meta: Meta) -> PresenceState {
    [(key.to_owned(), vec![meta])].into()
}

impl Server {
    fn apply(&mut self, op: &Op) -> Option<PresenceDiff> {
        match *op {
            Op::Track { conn, key, v } => {
                let key = format!("k{key}");
                self.next_ref += 1;
                let mut meta = Map::new();
                meta.insert("v".into(), Value::from(v));
                meta.insert("phx_ref".into(), Value::from(self.next_ref.to_string()));
                match self.entries.insert(conn, (key.clone(), meta.clone())) {
                    Some((old_key, old)) => Some(PresenceDiff {
                        joins: single(&key, meta),
                        leaves: single(&old_key, old),
                    }),
                    None => Some(PresenceDiff {
                        joins: single(&key, meta),
                        leaves: PresenceState::new(),
                    }),
                }
            }
            Op::Untrack { conn } => {
                let (key, meta) = self.entries.remove(&conn)?;
                Some(PresenceDiff {
                    joins: PresenceState::new(),
                    leaves: single(&key, meta),
                })
            }
        }
    }

    fn state(&self) -> PresenceState {
        let mut s = PresenceState::new();
        for (key, meta) in self.entries.values() {
            s.entry(key.clone()).or_default().push(meta.clone());
        }
        s
    }
}

fn refs(state: &PresenceState) -> BTreeMap<String, Vec<String>> {
    state
        .iter()
        .map(|(k, metas)| {
            let mut r: Vec<String> = metas
                .iter()
                .filter_map(meta_ref)
                .map(str::to_owned)
                .collect();
            r.sort();
            (k.clone(), r)
        })
        .collect()
}

/// The client keeps the state in the form users see: `phx_ref` is `presence_ref` there.
fn user_refs(state: &SharedState) -> BTreeMap<String, Vec<String>> {
    state
        .iter()
        .map(|(k, metas)| {
            let mut r: Vec<String> = metas
                .iter()
                .filter_map(|m| m.get("presence_ref").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            r.sort();
            (k.clone(), r)
        })
        .collect()
}

proptest! {
    /// Diffs made before the client joined are in the snapshot; diffs made after it are
    /// delivered, some of them before the snapshot arrives (held back by the client).
    #[test]
    fn client_state_matches_server(
        before in prop::collection::vec(op(), 0..20),
        after in prop::collection::vec(op(), 0..20),
        early in 0usize..20,
    ) {
        let mut server = Server::default();
        for o in &before {
            server.apply(o);
        }
        let diffs: Vec<PresenceDiff> = after.iter().filter_map(|o| server.apply(o)).collect();
        let early = early.min(diffs.len());

        let mut client = PresenceSync::new();
        client.set_join_ref(Some("1".into()));
        let mut syncs = 0;
        for d in &diffs[..early] {
            let ev = client.apply_diff(d.clone());
            prop_assert!(ev.is_empty(), "diffs before the state are held");
        }
        // The snapshot a real server sends reflects the diffs already made; the early diffs
        // replayed on top of it must not change it.
        let mut replay_server = Server::default();
        for o in &before { replay_server.apply(o); }
        let mut applied = 0;
        for o in &after {
            if applied == early { break; }
            if replay_server.apply(o).is_some() { applied += 1; }
        }
        syncs += client.apply_state(replay_server.state()).iter().filter(|e| **e == PresenceEvent::Sync).count();
        for d in &diffs[early..] {
            syncs += client.apply_diff(d.clone()).iter().filter(|e| **e == PresenceEvent::Sync).count();
        }
        prop_assert_eq!(user_refs(client.state()), refs(&server.state()));
        prop_assert_eq!(syncs, 1 + diffs.len() - early);
    }
}
