//! The live subscriptions, indexed by (schema, table) so a change only looks at the channels
//! that bound that table. Plain data: only the feed's owner task (owner.rs) holds it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::event::{Binding, FeedEvent, Sink};
use super::subscribe::CompiledBinding;

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
    pub(crate) topic: String,
    pub(crate) bindings: Arc<Vec<Binding>>,
    pub(crate) sink: Sink,
    pub(crate) claims: Arc<Claims>,
    pub(crate) state: SubState,
    /// The ticket of the compilation (or retry timer) this entry waits for: a reply carrying
    /// another ticket answers a request made for claims or a session that are gone.
    pub(crate) awaiting: Option<u64>,
}

impl SubEntry {
    pub(crate) fn send(&self, ev: FeedEvent) {
        (self.sink)(ev);
    }
}

/// Subscriptions by id and by table.
#[derive(Default)]
pub(crate) struct Registry {
    subs: HashMap<u64, SubEntry>,
    by_table: HashMap<(String, String), HashSet<u64>>,
}

impl Registry {
    pub(crate) fn insert(&mut self, id: u64, e: SubEntry) {
        self.subs.insert(id, e);
    }

    pub(crate) fn get(&self, id: u64) -> Option<&SubEntry> {
        self.subs.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut SubEntry> {
        self.subs.get_mut(&id)
    }

    fn unindex(by_table: &mut HashMap<(String, String), HashSet<u64>>, id: u64, state: &SubState) {
        if let SubState::Active(bs) = state {
            for b in bs.iter() {
                let key = (b.table.schema.clone(), b.table.table.clone());
                if let Some(set) = by_table.get_mut(&key) {
                    set.remove(&id);
                    if set.is_empty() {
                        by_table.remove(&key);
                    }
                }
            }
        }
    }

    /// Forget a subscription; `false` if it was not there.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.subs.remove(&id) {
            Some(e) => {
                Self::unindex(&mut self.by_table, id, &e.state);
                true
            }
            None => false,
        }
    }

    /// Set a subscription's state (re-indexing it).
    pub(crate) fn set_state(&mut self, id: u64, new: SubState) {
        let Some(e) = self.subs.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut e.state, new);
        Self::unindex(&mut self.by_table, id, &old);
        if let SubState::Active(bs) = &e.state {
            for b in bs.iter() {
                self.by_table
                    .entry((b.table.schema.clone(), b.table.table.clone()))
                    .or_default()
                    .insert(id);
            }
        }
    }

    /// The ids of all subscriptions that are not failed.
    pub(crate) fn retryable(&self) -> Vec<u64> {
        self.subs
            .iter()
            .filter(|(_, e)| !matches!(e.state, SubState::Failed))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every subscription, for changes of state that touch them all.
    pub(crate) fn entries_mut(&mut self) -> impl Iterator<Item = &mut SubEntry> {
        self.subs.values_mut()
    }

    /// The active subscriptions that bound (schema, table), with their claims and bindings.
    pub(crate) fn candidates(
        &self,
        schema: &str,
        table: &str,
    ) -> Vec<(u64, Arc<Claims>, Arc<Vec<CompiledBinding>>)> {
        let Some(ids) = self.by_table.get(&(schema.to_string(), table.to_string())) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                let e = self.subs.get(id)?;
                match &e.state {
                    SubState::Active(bs) => Some((*id, e.claims.clone(), bs.clone())),
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
            .filter(|e| matches!(e.state, SubState::Active(_)))
            .count()
    }
}
