//! Database broadcasts in cluster mode: one reader for the cluster, publishing through Redis.
//!
//! On one node, inserts into `realtime.messages` stream from a temporary slot and are fanned
//! out locally (`database::broadcast_stream`). In a cluster that would make every node run a
//! walsender and lose what was committed while a node was down, so here:
//!
//! * **One reader.** The node holding the lease of the database-broadcast slot reads it. The
//!   lease is the one of `slot.rs` (a leased Redis key with a fencing token, renewed every
//!   third of its TTL, given up before it can expire), but its own key: the postgres_changes
//!   feed releases its lease when its own session fails, and one stream's trouble should hand
//!   over that stream only. Both leases are held by the same node id, so `/api/health` names
//!   the same node in either place when one node reads both.
//! * **A permanent slot** (`<slot-name>_messages`, [`slot_name`]), created by the first reader
//!   if missing, so a new reader starts where the dead one last confirmed. Drop it with
//!   `SELECT pg_drop_replication_slot('<slot-name>_messages')` when the cluster is retired
//!   (an abandoned slot keeps WAL).
//! * **Confirmed after Redis.** The reader publishes each message once to the topic through
//!   the writer task (the broadcast path of every other broadcast), and a transaction's end is
//!   confirmed to PostgreSQL only after Redis accepted every publish up to it. So a reader
//!   killed at any moment has confirmed only what is in Redis; what it had published but not
//!   confirmed is published again by the next reader: at most [`MAX_IN_FLIGHT`] messages not
//!   yet acknowledged plus [`STATUS_BATCH`] acknowledged but not yet reported (1,280), or a
//!   whole transaction when one transaction sends more (its end is confirmed at its commit).
//! * **Duplicates dropped by id.** Every node keeps the last [`RECENT_IDS`] message ids it
//!   delivered and drops a message it sees again (counted in `/api/health`), and a message of
//!   an older fencing token arriving after a newer one on the same topic (a stale reader's
//!   late publish) is dropped too. Private channels are checked per subscriber on each node as
//!   on one node (the read access their join got from RLS).
//! * **Redis unreachable.** A publish Redis does not accept ends the reader's session without
//!   confirming; the lease cannot be renewed either, so nobody reads until Redis is back, and
//!   the next reader re-reads from the confirmed position: database broadcasts are delayed
//!   for the outage (PostgreSQL keeps the WAL), not lost and not delivered locally meanwhile.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::slot::SlotReader;
use super::{envelope, Cluster, ClusterError, PubReq};
use crate::fanout::Body;
use crate::registry::TopicKey;

/// Publishes not yet acknowledged by Redis the reader allows before it stops reading.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;
/// How often the reader tells PostgreSQL what Redis has accepted.
pub(crate) const STATUS_EVERY: Duration = Duration::from_millis(100);
/// ... and sooner, once this many publishes were acknowledged since it last did.
pub(crate) const STATUS_BATCH: usize = 256;
/// Message ids each node remembers to drop what a new reader publishes again.
pub(crate) const RECENT_IDS: usize = 65_536;
/// PostgreSQL's limit on a slot name.
const MAX_SLOT_NAME: usize = 63;

/// The cluster's database-broadcast slot for the postgres_changes slot `changes_slot`.
pub(crate) fn slot_name(changes_slot: &str) -> String {
    const SUFFIX: &str = "_messages";
    let mut base = changes_slot.to_owned();
    while base.len() + SUFFIX.len() > MAX_SLOT_NAME {
        base.pop();
    }
    format!("{base}{SUFFIX}")
}

/// Counters of the reader side, shown in `/api/health`.
#[derive(Debug, Default)]
pub(crate) struct ReaderStats {
    /// Messages this node published while reading.
    pub(crate) published: AtomicU64,
    /// Sessions that ended because Redis did not accept a publish.
    pub(crate) redis_failures: AtomicU64,
    /// The position last confirmed to PostgreSQL by this node.
    pub(crate) confirmed_lsn: AtomicU64,
}

/// The database-broadcast stream's lease and counters.
#[derive(Debug)]
pub(crate) struct DbBroadcast {
    pub(crate) slot: String,
    pub(crate) lease: Arc<SlotReader>,
    pub(crate) stats: ReaderStats,
}

/// Ids of the database broadcasts this node delivered lately (the receiving side).
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    set: HashSet<Box<str>>,
    order: VecDeque<Box<str>>,
}

impl RecentIds {
    /// Remember `id`; `false` if it was delivered already.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        let id: Box<str> = id.into();
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }
}

impl Cluster {
    /// The database-broadcast lease (made once): the stream calls this in cluster mode.
    pub(crate) fn db_broadcast(
        &self,
        changes_slot: &str,
    ) -> Result<Arc<DbBroadcast>, ClusterError> {
        if let Some(d) = self.db_broadcast.get() {
            return Ok(d.clone());
        }
        let slot = slot_name(changes_slot);
        let lease = self.slot.sibling(&self.shared.config, &slot)?;
        let d = Arc::new(DbBroadcast {
            slot,
            lease,
            stats: ReaderStats::default(),
        });
        Ok(self.db_broadcast.get_or_init(|| d).clone())
    }

    /// Queue a stored message for every node (this one included); the receiver answers once
    /// Redis accepted it, or with the error that kept it out. Waits while the writer's queue
    /// is full.
    pub(crate) async fn publish_stored(
        &self,
        key: TopicKey,
        body: &Body,
        id: &str,
        token: u64,
    ) -> Result<oneshot::Receiver<Result<(), ClusterError>>, ClusterError> {
        if !self.shared.status.publisher_up.load(Ordering::SeqCst) {
            return Err(ClusterError::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        let req = PubReq::Publish {
            key,
            envelope: envelope::encode_stored(&self.shared.node, body, id, token),
            confirm: Some(tx),
        };
        self.pub_tx
            .send(req)
            .await
            .map_err(|_| ClusterError::Unavailable)?;
        Ok(rx)
    }

    /// The database-broadcast part of `/api/health`.
    pub(crate) fn db_broadcast_status(&self) -> Value {
        let Some(d) = self.db_broadcast.get() else {
            return Value::Null;
        };
        let holder = d.lease.holder.lock().clone();
        let s = &self.shared.status;
        json!({
            "slot": d.slot,
            "node": holder.as_deref().and_then(|h| h.split(':').next()),
            "token": holder.as_deref().and_then(|h| h.split(':').nth(1)).and_then(|t| t.parse::<u64>().ok()),
            "this_node": d.lease.is_owner(),
            "takeovers_here": d.lease.stats.takeovers.load(Ordering::Relaxed),
            "published": d.stats.published.load(Ordering::Relaxed),
            "redis_failures": d.stats.redis_failures.load(Ordering::Relaxed),
            "confirmed_lsn": d.stats.confirmed_lsn.load(Ordering::Relaxed),
            "duplicates_dropped": s.db_duplicates_dropped.load(Ordering::Relaxed),
            "fenced_dropped": s.db_fenced_dropped.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_fit_postgres() {
        assert_eq!(slot_name("slot_a"), "slot_a_messages");
        let long = "x".repeat(80);
        assert_eq!(slot_name(&long).len(), 63);
        assert!(slot_name(&long).ends_with("_messages"));
    }

    #[test]
    fn recent_ids_drop_repeats_within_the_window() {
        let mut r = RecentIds::default();
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        for i in 0..RECENT_IDS {
            assert!(r.insert(&i.to_string()));
        }
        // "a" left the window: seen as new again
        assert!(r.insert("a"));
    }
}
