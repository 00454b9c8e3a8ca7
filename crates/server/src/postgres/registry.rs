//! The live subscriptions, indexed by (schema, table) so a change only looks at the channels
//! that bound that table.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use super::subscribe::CompiledBinding;
use super::{Binding, FeedEvent, Sink};

/// The JWT claims a channel uses for row-level security.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Claims {
    /// `role` claim (the PostgreSQL role); `anon` when absent.
    pub(crate) role: String,
    /// The full claims as JSON text (`request.jwt.claims`).
    pub(crate) json: String,
    /// `sub` claim, if a string.
    pub(crate) sub: Option<String>,
}

impl Claims {
    pub(crate) fn from_value(v: &Value) -> Claims {
        Claims {
            role: v
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or("anon")
                .to_string(),
            json: v.to_string(),
            sub: v.get("sub").and_then(Value::as_str).map(str::to_string),
        }
    }
}

/// Where a subscription stands.
#[derive(Debug, Clone)]
pub(crate) enum SubState {
    /// Waiting for the database (or for compilation).
    Pending,
    /// Receiving changes.
    Active(Arc<Vec<CompiledBinding>>),
    /// Rejected for good (bad parameters); never retried.
    Failed,
}

/// One channel's subscription.
pub(crate) struct SubEntry {
    pub(crate) id: u64,
    pub(crate) topic: String,
    pub(crate) bindings: Vec<Binding>,
    pub(crate) sink: Sink,
    pub(crate) claims: Mutex<Arc<Claims>>,
    pub(crate) state: Mutex<SubState>,
    /// Bumped by every claims change; a compilation for an older generation is dropped.
    pub(crate) generation: AtomicU64,
    pub(crate) alive: AtomicBool,
}

impl SubEntry {
    pub(crate) fn send(&self, ev: FeedEvent) {
        if self.alive.load(Ordering::Acquire) {
            (self.sink)(ev);
        }
    }
}

/// Subscriptions by id and by table.
#[derive(Default)]
pub(crate) struct Registry {
    subs: HashMap<u64, Arc<SubEntry>>,
    by_table: HashMap<(String, String), HashSet<u64>>,
}

impl Registry {
    pub(crate) fn insert(&mut self, e: Arc<SubEntry>) {
        self.subs.insert(e.id, e);
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<SubEntry>> {
        self.subs.get(&id).cloned()
    }

    fn unindex(&mut self, id: u64, state: &SubState) {
        if let SubState::Active(bs) = state {
            for b in bs.iter() {
                let key = (b.table.schema.clone(), b.table.table.clone());
                if let Some(set) = self.by_table.get_mut(&key) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_table.remove(&key);
                    }
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(e) = self.subs.remove(&id) {
            e.alive.store(false, Ordering::Release);
            let st = e.state.lock().clone();
            self.unindex(id, &st);
        }
    }

    /// Set a subscription's state (re-indexing it).
    pub(crate) fn set_state(&mut self, id: u64, new: SubState) {
        let Some(e) = self.subs.get(&id).cloned() else {
            return;
        };
        let old = std::mem::replace(&mut *e.state.lock(), new.clone());
        self.unindex(id, &old);
        if let SubState::Active(bs) = &new {
            for b in bs.iter() {
                self.by_table
                    .entry((b.table.schema.clone(), b.table.table.clone()))
                    .or_default()
                    .insert(id);
            }
        }
    }

    /// All subscriptions that are not failed.
    pub(crate) fn retryable(&self) -> Vec<Arc<SubEntry>> {
        self.subs
            .values()
            .filter(|e| !matches!(*e.state.lock(), SubState::Failed))
            .cloned()
            .collect()
    }

    /// The active subscriptions that bound (schema, table), with their bindings.
    pub(crate) fn candidates(
        &self,
        schema: &str,
        table: &str,
    ) -> Vec<(Arc<SubEntry>, Arc<Vec<CompiledBinding>>)> {
        let Some(ids) = self.by_table.get(&(schema.to_string(), table.to_string())) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                let e = self.subs.get(id)?;
                let st = e.state.lock();
                match &*st {
                    SubState::Active(bs) => Some((e.clone(), bs.clone())),
                    _ => None,
                }
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.subs.len()
    }

    pub(crate) fn active_count(&self) -> usize {
        self.subs
            .values()
            .filter(|e| matches!(*e.state.lock(), SubState::Active(_)))
            .count()
    }
}
