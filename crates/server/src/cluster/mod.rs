//! Cluster mode: several server nodes act as one through Redis (`serve --redis-url`).
//!
//! Every node is equal and nodes know each other only through Redis. Per topic there is one
//! pub/sub channel, and a node is subscribed to it only while it has local channels of the
//! topic (the registry tells [`TopicHooks::opened`] / [`TopicHooks::closed`]).
//!
//! **Broadcast.** A broadcast made on any node is published once to Redis by a Lua call that
//! also appends it to the topic's stream under the next offset of the topic's epoch
//! (`scripts::PUBLISH`); every node with local channels, the sender's included, delivers it
//! when it comes back from pub/sub, encoded once per serializer per node. So all nodes see a
//! topic's messages in one order (the offsets'), `self: false` excludes the sender on its own
//! node, and `ack` is answered as on one node. A node that sees offset N+2 after N missed N+1
//! and reads it from the stream; if the stream no longer holds it, or the epoch changed (Redis
//! lost its data), the node's channels of the topic get `phx_error` and rejoin.
//!
//! **Presence** is leased state (`keys.rs`): each entry is a field of the topic's presence hash
//! plus a member of one sorted set of lease expiries, renewed every third of the lease. A
//! change is written and published as an event in the same Lua call; other nodes apply the
//! events to their view, and load the whole state when they open the topic or reconnect.
//! Every node sweeps expired leases each second (atomic, so sweeping twice is harmless): a
//! dead node's entries leave for everyone within the lease plus one second.
//!
//! **postgres_changes.** One node at a time reads the shared replication slot: it holds a
//! leased Redis key with a fencing token (`slot.rs`); the feed streams only while the lease is
//! held and confirms a position only after the deliveries before it are in Redis. Every node
//! shares its channels' subscriptions and mirrors the others' into its own feed, so the reader
//! checks RLS for the whole cluster; deliveries for other nodes go to their inbox streams, and
//! receivers drop what a new reader sends again after a takeover (`changes.rs`). Inbox entries
//! are numbered and the inbox has an epoch, so a node tells entries lost to trimming or to
//! Redis losing its data, and its postgres_changes channels get `phx_error` (`inbox.rs`).
//!
//! **Database broadcasts** (`realtime.send`, `broadcast_changes`) are read by one node too,
//! under its own lease on a permanent slot, published through Redis like any broadcast, and
//! confirmed to PostgreSQL only once Redis accepted them (`messages.rs`).
//!
//! **Redis faults.** The writer task ([`publisher`]) and the reader task ([`subscriber`]) each
//! own their connections and reconnect on their own. While the writer cannot reach Redis, a
//! WebSocket broadcast is delivered to local channels at once and kept (bounded) to publish
//! when Redis is back, marked as already delivered on its origin; a REST broadcast is refused
//! with 503. When the reader is back it resubscribes and catches up per topic from the stream;
//! the writer republishes this node's presences. What cannot be recovered is reported with
//! `phx_error`, never dropped silently.
//!
//! **Limits.** Concurrent users are counted for the cluster as a whole: a socket's first join
//! asks Redis (one atomic script: the live nodes' counts, then the increment), and each node
//! writes its exact count every second, so leaves and refused joins are reconciled within a
//! second and a dead node's users stop counting once its heartbeat is stale (5 s). A count is
//! worth one round trip per new user because it is exact; while Redis is unreachable a node
//! admits up to its share (limit / nodes last seen). The tenant's rate limits (events, joins,
//! presence per second, averaged over 60 s) count for the cluster too, but they are on the
//! hot path: each node counts locally and reports its counts to Redis every 10 ms, bringing
//! back the cluster's window totals (`rates.rs`, which states the accuracy bound); without
//! Redis a node enforces its share. A socket's own budgets (its events, its channel's presence
//! calls) stay where the socket is.

mod changes;
mod config;
mod envelope;
mod inbox;
mod keys;
mod messages;
mod publisher;
mod rates;
mod scripts;
mod slot;
mod subscriber;

pub(crate) use changes::Lost;
pub(crate) use messages::{DbBroadcast, MAX_IN_FLIGHT, STATUS_BATCH, STATUS_EVERY};
pub(crate) use slot::SlotReader;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use supa_realtime_protocol::presence::{meta_ref, PresenceDiff};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::ClusterConfig;

use crate::fanout::Body;
use crate::fanout::SubId;
use crate::limits::RateCounter;
use crate::metrics::Metrics;
use crate::registry::{Registry, Topic, TopicHooks, TopicKey};
use envelope::Kind;
use keys::Keys;

/// Why the cluster could not take a message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    #[error("the cluster (Redis) is unreachable")]
    Unavailable,
    #[error("Redis did not confirm the publish in time")]
    Timeout,
}

/// How long a join waits for its topic's subscription and presence state before going on
/// with what this node has (the rest then arrives as a `presence_diff`).
const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a REST broadcast waits for Redis to confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queue between the node's tasks and the writer. When it is full, a broadcast is delivered
/// locally and its topic reported lost to the other nodes.
const PUBLISH_QUEUE: usize = 65_536;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What `/api/health` shows, updated by the two tasks.
#[derive(Debug, Default)]
pub(crate) struct Status {
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    nodes_seen: AtomicUsize,
    topics: AtomicUsize,
    buffered: AtomicUsize,
    published_late: AtomicU64,
    gaps_reported: AtomicU64,
    caught_up: AtomicU64,
    channels_errored: AtomicU64,
    /// Whether the rate limits count for the cluster (Redis answers their reports).
    rates_up: AtomicBool,
    /// The rate limits' fallback was logged once already.
    rates_warned: AtomicBool,
    /// Reports of the rate counters Redis answered.
    rate_reports: AtomicU64,
    /// Database broadcasts this node received again (a new reader's re-publish): dropped.
    db_duplicates_dropped: AtomicU64,
    /// Database broadcasts of an older reader arriving after a newer one's: dropped.
    db_fenced_dropped: AtomicU64,
    /// Topics some of whose broadcasts could not be queued: the writer reports them.
    overflowed: Mutex<HashSet<TopicKey>>,
}

/// A request to the writer task.
#[derive(Debug)]
pub(crate) enum PubReq {
    Publish {
        key: TopicKey,
        envelope: Bytes,
        confirm: Option<oneshot::Sender<Result<(), ClusterError>>>,
    },
    Presence {
        key: TopicKey,
        ops: Vec<PresenceOp>,
    },
    /// Admit one more concurrent user if the cluster is under `limit`.
    Admit {
        limit: usize,
        tx: oneshot::Sender<bool>,
    },
    /// Answered once everything queued before it was written (shutdown).
    Flush(oneshot::Sender<()>),
}

/// One presence change of a local entry.
#[derive(Debug)]
pub(crate) struct PresenceOp {
    pub(crate) join: bool,
    pub(crate) r: String,
    pub(crate) envelope: Bytes,
}

/// A request to the reader task.
#[derive(Debug)]
pub(crate) enum SubReq {
    Opened(Arc<Topic>),
    Closed(TopicKey),
    Ready(TopicKey, oneshot::Sender<()>),
}

/// What every node task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node: String,
    pub(crate) config: ClusterConfig,
    pub(crate) keys: Keys,
    pub(crate) client: redis::Client,
    pub(crate) status: Status,
    pub(crate) events: Arc<RateCounter>,
    pub(crate) presence_events: Arc<RateCounter>,
    /// This node's concurrent users (sockets with a channel).
    pub(crate) users: Arc<AtomicUsize>,
}

impl Shared {
    /// Without Redis: admit while this node is under its share of the cluster's limit.
    pub(crate) fn admit_locally(&self, limit: usize) -> bool {
        let nodes = self.status.nodes_seen.load(Ordering::SeqCst).max(1);
        self.users.load(Ordering::SeqCst) < limit.div_ceil(nodes)
    }
}

/// The registry's side of the cluster: cheap, never waits.
#[derive(Debug)]
struct Hooks {
    shared: Arc<Shared>,
    pub_tx: mpsc::Sender<PubReq>,
    sub_tx: mpsc::UnboundedSender<SubReq>,
}

impl TopicHooks for Hooks {
    fn opened(&self, topic: &Arc<Topic>) {
        let _ = self.sub_tx.send(SubReq::Opened(topic.clone()));
    }

    fn closed(&self, key: &TopicKey) {
        let _ = self.sub_tx.send(SubReq::Closed(key.clone()));
    }

    fn publish(&self, topic: &Topic, body: Body, exclude: Option<SubId>, tenant: bool) {
        let shared = &self.shared;
        let up = shared.status.publisher_up.load(Ordering::SeqCst);
        // Redis down: local channels get it now; the writer keeps it for the other nodes.
        let envelope = envelope::encode_body(&shared.node, &body, exclude, !up, tenant);
        let events = tenant.then_some(&*shared.events);
        let mut body = Some(body);
        if !up {
            if let Some(body) = body.take() {
                topic.broadcast_local(body, exclude, events);
            }
        }
        let req = PubReq::Publish {
            key: topic.key.clone(),
            envelope,
            confirm: None,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.pub_tx.try_send(req) {
            if let Some(body) = body.take() {
                topic.broadcast_local(body, exclude, events);
            }
            tracing::warn!(topic = %topic.key.name, "cluster publish queue full: delivered on this node only, other nodes are told they missed messages");
            shared.status.overflowed.lock().insert(topic.key.clone());
        }
    }

    fn presence(&self, topic: &Topic, diff: &PresenceDiff) {
        let node = &self.shared.node;
        let mut ops = Vec::new();
        for (join, state) in [(false, &diff.leaves), (true, &diff.joins)] {
            for (key, metas) in state {
                for meta in metas {
                    let Some(r) = meta_ref(meta) else { continue };
                    let kind = if join { Kind::Join } else { Kind::Leave };
                    ops.push(PresenceOp {
                        join,
                        r: r.to_owned(),
                        envelope: envelope::encode_presence(node, kind, r, key, meta),
                    });
                }
            }
        }
        let req = PubReq::Presence {
            key: topic.key.clone(),
            ops,
        };
        if self.pub_tx.try_send(req).is_err() {
            // The writer republishes every local presence when it recovers from this.
            tracing::warn!(topic = %topic.key.name, "cluster publish queue full: presence change queued for resync");
            self.shared
                .status
                .overflowed
                .lock()
                .insert(topic.key.clone());
        }
    }
}

/// The tenant's counters, which count for the cluster as a whole.
#[derive(Debug)]
pub(crate) struct TenantCounters {
    pub(crate) events: Arc<RateCounter>,
    pub(crate) joins: Arc<RateCounter>,
    pub(crate) presence_events: Arc<RateCounter>,
    /// postgres_changes deliveries, when limited.
    pub(crate) db_events: Option<Arc<RateCounter>>,
    /// This node's concurrent users.
    pub(crate) users: Arc<AtomicUsize>,
}

/// The handle the rest of the server uses in cluster mode.
#[derive(Debug)]
pub(crate) struct Cluster {
    shared: Arc<Shared>,
    pub_tx: mpsc::Sender<PubReq>,
    sub_tx: mpsc::UnboundedSender<SubReq>,
    slot: Arc<SlotReader>,
    changes: std::sync::OnceLock<Arc<changes::Changes>>,
    db_broadcast: std::sync::OnceLock<Arc<DbBroadcast>>,
}

impl Cluster {
    /// Share postgres_changes subscriptions through the cluster and read the slot when this
    /// node holds its lease (with a database only).
    pub(crate) fn start_changes(
        &self,
        feed: Arc<crate::postgres::ChangeFeed>,
        shutdown: CancellationToken,
    ) {
        let _ = self
            .changes
            .set(changes::Changes::start(self.slot.clone(), feed, shutdown));
    }

    /// A local channel's postgres_changes request, shared with the cluster (unchanged when
    /// the node has no database).
    /// `lost` sends the channel `phx_error` when deliveries for it were lost (its inbox was
    /// trimmed, or Redis lost it), so that it rejoins.
    pub(crate) fn share_postgres(
        &self,
        req: crate::postgres::SubscribeRequest,
        conn: u64,
        lost: Lost,
    ) -> crate::postgres::SubscribeRequest {
        match self.changes.get() {
            Some(c) => c.share(req, conn, lost),
            None => req,
        }
    }

    /// The channel `wire_topic` of socket `conn` swapped its token: the reader checks RLS
    /// with these claims from now on.
    pub(crate) fn postgres_claims(&self, conn: u64, wire_topic: &str, claims: Value) {
        if let Some(c) = self.changes.get() {
            c.update_claims(conn, wire_topic, claims);
        }
    }

    /// Start the cluster tasks. Returns the handle and the registry whose topics report to
    /// the cluster (it replaces the single-node registry).
    pub(crate) fn start(
        config: &ClusterConfig,
        tenant: TenantCounters,
        metrics: Arc<Metrics>,
        slot: Arc<SlotReader>,
        shutdown: CancellationToken,
    ) -> Result<(Cluster, Arc<Registry>), ClusterError> {
        let TenantCounters {
            events,
            joins,
            presence_events,
            db_events,
            users,
        } = tenant;
        let url = config.redis_url.clone().unwrap_or_default();
        let client = redis::Client::open(url.as_str()).map_err(ClusterError::Url)?;
        let shared = Arc::new(Shared {
            node: slot.node.clone(),
            config: config.clone(),
            keys: Keys::new(&config.redis_prefix),
            client,
            status: Status::default(),
            events: events.clone(),
            presence_events: presence_events.clone(),
            users,
        });
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut pooled = vec![
            rates::Pooled::new("events", events, &wake),
            rates::Pooled::new("joins", joins, &wake),
            rates::Pooled::new("presence", presence_events, &wake),
        ];
        pooled.extend(db_events.map(|c| rates::Pooled::new("db_events", c, &wake)));
        tokio::spawn(rates::run(shared.clone(), pooled, wake, shutdown.clone()));
        let (pub_tx, pub_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let hooks = Arc::new(Hooks {
            shared: shared.clone(),
            pub_tx: pub_tx.clone(),
            sub_tx: sub_tx.clone(),
        });
        let registry = Arc::new(Registry::with_hooks(hooks, metrics));
        tokio::spawn(publisher::run(
            shared.clone(),
            registry.clone(),
            pub_rx,
            shutdown.clone(),
        ));
        tokio::spawn(subscriber::run(shared.clone(), sub_rx, shutdown));
        tracing::info!(node = %shared.node, prefix = %config.redis_prefix, "cluster mode: nodes meet through Redis");
        Ok((
            Cluster {
                shared,
                pub_tx,
                sub_tx,
                slot,
                changes: std::sync::OnceLock::new(),
                db_broadcast: std::sync::OnceLock::new(),
            },
            registry,
        ))
    }

    /// Open `key` on this node and wait (bounded) until the node receives it and has its
    /// cluster-wide presence, so a joiner's first broadcast and `presence_state` are complete.
    pub(crate) async fn prepare_topic(&self, registry: &Registry, key: &TopicKey) {
        registry.with_topic(key, |_| ());
        let (tx, rx) = oneshot::channel();
        if self.sub_tx.send(SubReq::Ready(key.clone(), tx)).is_ok()
            && tokio::time::timeout(READY_TIMEOUT, rx).await.is_err()
        {
            tracing::warn!(topic = %key.name, "cluster: topic not ready in time, joining with local state");
        }
    }

    /// Publish a broadcast to every node (this one included) and wait for Redis to take it:
    /// the REST path, which must answer an error rather than accept what cannot cross.
    pub(crate) async fn publish_confirmed(
        &self,
        key: &TopicKey,
        body: &Body,
    ) -> Result<(), ClusterError> {
        if !self.shared.status.publisher_up.load(Ordering::SeqCst) {
            return Err(ClusterError::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        let req = PubReq::Publish {
            key: key.clone(),
            envelope: envelope::encode_body(&self.shared.node, body, None, false, true),
            confirm: Some(tx),
        };
        self.pub_tx
            .send(req)
            .await
            .map_err(|_| ClusterError::Unavailable)?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClusterError::Unavailable),
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    /// Whether one more concurrent user fits in the cluster's `limit` (counted if so).
    pub(crate) async fn admit_user(&self, limit: usize) -> bool {
        let (tx, rx) = oneshot::channel();
        if !self.shared.status.publisher_up.load(Ordering::SeqCst)
            || self.pub_tx.send(PubReq::Admit { limit, tx }).await.is_err()
        {
            return self.shared.admit_locally(limit);
        }
        match tokio::time::timeout(READY_TIMEOUT, rx).await {
            Ok(Ok(admitted)) => admitted,
            _ => self.shared.admit_locally(limit),
        }
    }

    /// Wait (bounded) until what this node queued for Redis is written: on shutdown, after the
    /// sockets closed, so their presences leave at once rather than when their leases expire.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.pub_tx.send(PubReq::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(CONFIRM_TIMEOUT, rx).await;
        }
    }

    /// The cluster part of `/api/health`.
    pub(crate) fn status(&self) -> Value {
        let s = &self.shared.status;
        json!({
            "node": self.shared.node,
            "redis_connected": s.publisher_up.load(Ordering::SeqCst) && s.subscriber_up.load(Ordering::SeqCst),
            "redis_publisher_connected": s.publisher_up.load(Ordering::SeqCst),
            "redis_subscriber_connected": s.subscriber_up.load(Ordering::SeqCst),
            "nodes_seen": s.nodes_seen.load(Ordering::SeqCst),
            "topics_subscribed": s.topics.load(Ordering::SeqCst),
            "outage_buffered": s.buffered.load(Ordering::SeqCst),
            "published_late": s.published_late.load(Ordering::SeqCst),
            "messages_caught_up": s.caught_up.load(Ordering::SeqCst),
            "gaps_reported": s.gaps_reported.load(Ordering::SeqCst),
            "channels_errored": s.channels_errored.load(Ordering::SeqCst),
            "rate_limits_cluster_wide": s.rates_up.load(Ordering::SeqCst),
            "rate_limit_reports": s.rate_reports.load(Ordering::Relaxed),
            "presence_lease_ms": self.shared.config.presence_ttl().as_millis() as u64,
            "slot_owner": self.slot_status(),
            "db_broadcast_reader": self.db_broadcast_status(),
        })
    }

    fn slot_status(&self) -> Value {
        let Some(c) = self.changes.get() else {
            return Value::Null;
        };
        let slot = &self.slot;
        let st = &slot.stats;
        let holder = slot.holder.lock().clone();
        json!({
            "node": holder.as_deref().and_then(|h| h.split(':').next()),
            "token": holder.as_deref().and_then(|h| h.split(':').nth(1)).and_then(|t| t.parse::<u64>().ok()),
            "this_node": slot.is_owner(),
            "takeovers_here": st.takeovers.load(Ordering::Relaxed),
            "subscriptions_shared": c.shared_count.load(Ordering::Relaxed),
            "subscriptions_mirrored": c.mirrored.load(Ordering::Relaxed),
            "deliveries_sent": st.sent.load(Ordering::Relaxed),
            "deliveries_received": st.received.load(Ordering::Relaxed),
            "duplicates_dropped": st.duplicates_dropped.load(Ordering::Relaxed),
            "fenced_dropped": st.fenced_dropped.load(Ordering::Relaxed),
            "write_retries": st.write_retries.load(Ordering::Relaxed),
            "inbox_lost": st.inbox_lost.load(Ordering::Relaxed),
            "inbox_resets": st.inbox_resets.load(Ordering::Relaxed),
            "channels_errored": st.channels_errored.load(Ordering::Relaxed),
        })
    }
}
