//! The single reader of the replication slot (postgres_changes in cluster mode).
//!
//! **Lease.** One node at a time holds `<prefix>:pg:lease:<slot>` (`SET NX PX`, one Lua call
//! that also takes the next fencing token from `<prefix>:pg:fence:<slot>`), renewed every
//! third of its TTL. A holder that cannot renew for two thirds of the TTL stops streaming
//! before anyone else may take the lease. The slot's own rule (one walsender per slot) is the
//! second guard: a new holder's `START_REPLICATION` fails while a stale reader still streams,
//! and the feed then terminates that walsender.
//!
//! **Deliveries.** The holder's feed hands every change for a channel of another node to
//! [`SlotReader::send`], which queues it for that node's inbox stream
//! (`<prefix>:pg:inbox:<node>`), tagged with the fencing token and the change's position, under
//! the inbox's next number (`inbox.rs`, which tells lost entries).
//! Before the feed confirms a position, [`SlotGate::flushed`] waits until the queue is written
//! to Redis, so a reader killed at any moment has confirmed only what the other nodes have:
//! the next holder starts from the slot's confirmed position and nothing committed is
//! skipped. What the dead reader wrote but had not confirmed (at most the batch in flight)
//! comes again; receivers drop it by position and count it (`changes.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ClusterError;
use crate::postgres::{ChangePosition, SlotGate};

/// Deliveries written to Redis per round trip.
const WRITE_BATCH: usize = 2_000;

/// Takes the lease only if it is free; returns the new fencing token, or 0 and the holder.
/// The token is at least the caller's clock in ms, so it still grows after Redis lost its
/// data (receivers would otherwise drop a new reader's deliveries as fenced).
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
local token = redis.call('INCR', KEYS[2])
if token < tonumber(ARGV[3]) then
  token = tonumber(ARGV[3])
  redis.call('SET', KEYS[2], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return {token, ARGV[1] .. ':' .. token}
";
/// Extends the lease if it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
/// Gives the lease up if it is still ours (a clean shutdown: the next node need not wait).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// One change (or a ready notice) for a channel on another node.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) node: String,
    pub(crate) entry: String,
    seq: u64,
}

/// Counters shown in `/api/health`.
#[derive(Debug, Default)]
pub(crate) struct SlotStats {
    pub(crate) takeovers: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) duplicates_dropped: AtomicU64,
    pub(crate) fenced_dropped: AtomicU64,
    pub(crate) write_retries: AtomicU64,
    /// Deliveries for this node trimmed from its inbox before it read them.
    pub(crate) inbox_lost: AtomicU64,
    /// Times this node found its inbox lost by Redis (a new epoch).
    pub(crate) inbox_resets: AtomicU64,
    /// postgres_changes channels of this node sent `phx_error` for lost deliveries.
    pub(crate) channels_errored: AtomicU64,
}

/// The node's side of the slot lease and the outgoing deliveries.
pub(crate) struct SlotReader {
    pub(crate) node: String,
    pub(crate) client: redis::Client,
    prefix: String,
    lease_key: String,
    fence_key: String,
    ttl: Duration,
    /// An inbox keeps about this many deliveries (`--cluster-inbox-max`).
    inbox_max: usize,
    /// The token while this node holds the lease, 0 otherwise.
    token: AtomicU64,
    owner: AtomicBool,
    /// The holder last seen (`node:token`).
    pub(crate) holder: Mutex<Option<String>>,
    lost: Mutex<Option<CancellationToken>>,
    queued: AtomicU64,
    written: watch::Sender<u64>,
    tx: mpsc::UnboundedSender<Delivery>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Delivery>>>,
    pub(crate) stats: SlotStats,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SlotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotReader")
            .field("node", &self.node)
            .finish()
    }
}

impl SlotReader {
    pub(crate) fn new(
        config: &super::ClusterConfig,
        slot_name: &str,
        shutdown: CancellationToken,
    ) -> Result<Arc<SlotReader>, ClusterError> {
        let node = uuid::Uuid::new_v4().simple().to_string();
        Self::for_node(config, slot_name, node, shutdown)
    }

    /// The lease of another slot for the same node (the database-broadcast slot: its own
    /// lease, so either stream's failure hands over only that stream).
    pub(crate) fn sibling(
        &self,
        config: &super::ClusterConfig,
        slot_name: &str,
    ) -> Result<Arc<SlotReader>, ClusterError> {
        Self::for_node(config, slot_name, self.node.clone(), self.shutdown.clone())
    }

    fn for_node(
        config: &super::ClusterConfig,
        slot_name: &str,
        node: String,
        shutdown: CancellationToken,
    ) -> Result<Arc<SlotReader>, ClusterError> {
        let url = config.redis_url.clone().unwrap_or_default();
        let client = redis::Client::open(url.as_str()).map_err(ClusterError::Url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let prefix = config.redis_prefix.clone();
        Ok(Arc::new(SlotReader {
            node,
            client,
            lease_key: format!("{prefix}:pg:lease:{slot_name}"),
            fence_key: format!("{prefix}:pg:fence:{slot_name}"),
            prefix,
            ttl: Duration::from_millis(config.cluster_slot_lease_ms.max(300)),
            inbox_max: config.cluster_inbox_max.max(1),
            token: AtomicU64::new(0),
            owner: AtomicBool::new(false),
            holder: Mutex::new(None),
            lost: Mutex::new(None),
            queued: AtomicU64::new(0),
            written: watch::channel(0).0,
            tx,
            rx: Mutex::new(Some(rx)),
            stats: SlotStats::default(),
            shutdown,
        }))
    }

    pub(crate) fn inbox_key(&self, node: &str) -> String {
        format!("{}:pg:inbox:{node}", self.prefix)
    }

    pub(crate) fn subs_key(&self, node: &str) -> String {
        format!("{}:pg:subs:{node}", self.prefix)
    }

    pub(crate) fn sub_nodes_key(&self) -> String {
        format!("{}:pg:subnodes", self.prefix)
    }

    pub(crate) fn subs_version_key(&self) -> String {
        format!("{}:pg:subs:version", self.prefix)
    }

    /// Whether this node reads the slot now.
    pub(crate) fn is_owner(&self) -> bool {
        self.owner.load(Ordering::SeqCst)
    }

    pub(crate) fn token(&self) -> u64 {
        self.token.load(Ordering::SeqCst)
    }

    pub(crate) async fn connect(&self, response: Duration) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(response));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Queue a delivery for a channel of `node` (called from the feed's sinks: never waits;
    /// the queue is bounded by the feed, which waits in `flushed` at every commit).
    pub(crate) fn send(&self, node: &str, sub: u64, kind: &str, at: ChangePosition, body: &str) {
        let token = self.token();
        let entry = serde_json::json!({
            "s": sub, "t": token, "k": kind, "l": at.0, "q": at.1, "p": body,
        })
        .to_string();
        let seq = self.queued.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.tx.send(Delivery {
            node: node.to_owned(),
            entry,
            seq,
        });
    }

    /// Holds the lease while `lost` is not cancelled: renews it every third of the TTL.
    async fn hold(self: Arc<Self>, value: String, lost: CancellationToken) {
        let mut conn: Option<MultiplexedConnection> = None;
        let mut last_ok = Instant::now();
        let renew = redis::Script::new(RENEW);
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.ttl / 3) => {}
                // released: this node's feed cannot stream (its database is unreachable)
                () = lost.cancelled() => {
                    if conn.is_none() {
                        conn = self.connect(self.ttl / 3).await.ok();
                    }
                    if let Some(c) = conn.as_mut() {
                        let _: RedisResult<i64> = redis::Script::new(RELEASE).key(&self.lease_key).arg(&value).invoke_async(c).await;
                    }
                    tracing::info!("cluster: slot lease released (this node's feed cannot stream)");
                    break;
                }
                () = self.shutdown.cancelled() => {
                    if let Some(c) = conn.as_mut() {
                        let _: RedisResult<i64> = redis::Script::new(RELEASE).key(&self.lease_key).arg(&value).invoke_async(c).await;
                    }
                    break;
                }
            }
            if conn.is_none() {
                conn = self.connect(self.ttl / 3).await.ok();
            }
            let ok = match conn.as_mut() {
                Some(c) => {
                    let r: RedisResult<i64> = renew
                        .key(&self.lease_key)
                        .arg(&value)
                        .arg(self.ttl.as_millis() as u64)
                        .invoke_async(c)
                        .await;
                    match r {
                        Ok(1) => true,
                        Ok(_) => {
                            tracing::warn!(slot_lease = %value, "cluster: the slot lease was taken over; this node stops reading the slot");
                            break;
                        }
                        Err(_) => {
                            conn = None;
                            false
                        }
                    }
                }
                None => false,
            };
            if ok {
                last_ok = Instant::now();
            } else if last_ok.elapsed() >= self.ttl * 2 / 3 {
                // The lease may expire before Redis hears from us again: stop before another
                // node may start.
                tracing::warn!(
                    "cluster: cannot renew the slot lease; this node stops reading the slot"
                );
                break;
            }
        }
        self.owner.store(false, Ordering::SeqCst);
        self.token.store(0, Ordering::SeqCst);
        lost.cancel();
    }

    async fn try_acquire(self: &Arc<Self>) -> RedisResult<Option<CancellationToken>> {
        let mut conn = self.connect(Duration::from_secs(2)).await?;
        let (token, holder): (u64, String) = redis::Script::new(ACQUIRE)
            .key(&self.lease_key)
            .key(&self.fence_key)
            .arg(&self.node)
            .arg(self.ttl.as_millis() as u64)
            .arg(super::now_ms())
            .invoke_async(&mut conn)
            .await?;
        *self.holder.lock() = Some(holder.clone());
        if token == 0 {
            return Ok(None);
        }
        let lost = CancellationToken::new();
        self.token.store(token, Ordering::SeqCst);
        self.owner.store(true, Ordering::SeqCst);
        *self.lost.lock() = Some(lost.clone());
        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %self.node, token, "cluster: this node now reads the replication slot");
        tokio::spawn(self.clone().hold(holder, lost.clone()));
        Ok(Some(lost))
    }

    /// Writes queued deliveries to the nodes' inboxes, in order, retrying until Redis takes
    /// them (nothing queued is dropped; the feed waits meanwhile).
    pub(crate) async fn write_loop(self: Arc<Self>) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        let mut conn: Option<MultiplexedConnection> = None;
        let mut batch: Vec<Delivery> = Vec::new();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    d = rx.recv() => match d {
                        Some(d) => batch.push(d),
                        None => return,
                    },
                    () = self.shutdown.cancelled() => return,
                }
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(d) => batch.push(d),
                        Err(_) => break,
                    }
                }
            }
            if conn.is_none() {
                // A restarted Redis has no scripts: loaded on every connect.
                if let Ok(mut c) = self.connect(Duration::from_secs(3)).await {
                    let loaded = super::inbox::WRITE
                        .prepare_invoke()
                        .load_async(&mut c)
                        .await;
                    conn = loaded.is_ok().then_some(c);
                }
            }
            let Some(c) = conn.as_mut() else {
                self.stats.write_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            // One numbered append per run of deliveries for the same node, in order.
            let mut pipe = redis::pipe();
            let mut i = 0;
            while i < batch.len() {
                let node = &batch[i].node;
                let run = batch[i..].iter().take_while(|d| d.node == *node).count();
                let inbox = self.inbox_key(node);
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(super::inbox::WRITE.get_hash())
                    .arg(2)
                    .arg(&inbox)
                    .arg(super::inbox::meta_key(&inbox))
                    .arg(self.inbox_max)
                    .arg(super::inbox::INBOX_TTL_S)
                    // fresh each time: an inbox Redis lost must not get its old epoch back
                    .arg(super::inbox::new_epoch());
                for d in &batch[i..i + run] {
                    cmd.arg(&d.entry);
                }
                pipe.add_command(cmd).ignore();
                i += run;
            }
            match pipe.query_async::<()>(c).await {
                Ok(()) => {
                    let last = batch.last().map_or(0, |d| d.seq);
                    self.stats
                        .sent
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.written.send_replace(last);
                    batch.clear();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot write postgres_changes deliveries to Redis; retrying");
                    self.stats.write_retries.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl SlotGate for Arc<SlotReader> {
    fn acquire(&self) -> BoxFuture<'static, CancellationToken> {
        let me = self.clone();
        Box::pin(async move {
            if me.is_owner() {
                if let Some(lost) = me.lost.lock().clone() {
                    if !lost.is_cancelled() {
                        return lost;
                    }
                }
            }
            let mut waiting_logged = false;
            loop {
                match me.try_acquire().await {
                    Ok(Some(lost)) => return lost,
                    Ok(None) => {
                        if !waiting_logged {
                            tracing::info!(holder = ?me.holder.lock().clone(), "cluster: another node reads the replication slot; standing by");
                            waiting_logged = true;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: slot lease: Redis unreachable"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    }

    fn release(&self) {
        if let Some(lost) = self.lost.lock().take() {
            lost.cancel();
        }
    }

    fn flushed(&self) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            let target = me.queued.load(Ordering::SeqCst);
            let mut rx = me.written.subscribe();
            let _ = rx.wait_for(|w| *w >= target).await;
        })
    }
}
