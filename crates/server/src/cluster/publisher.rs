//! The writer task: the only one that writes to Redis, so this node's messages reach Redis in
//! the order they were made. It pipelines what is queued, renews this node's presence leases,
//! sweeps expired ones, and beats the node's heartbeat.
//!
//! While Redis cannot be reached it keeps broadcasts (bounded by `--cluster-outage-buffer`)
//! and presence leaves, and on reconnect publishes them first, then gap notices for topics it
//! could not keep, then every local presence again (a restarted Redis may have lost them).
//! A batch that failed half-way is treated as not published and sent again; its broadcasts
//! are not delivered twice, because each carries this node's sequence number and the publish
//! script skips one whose number it has already taken for the topic (`scripts::PUBLISH`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, Kind};
use super::keys::Keys;
use super::{now_ms, scripts, ClusterError, PubReq, Shared};
use crate::registry::{Registry, TopicKey};

const BATCH: usize = 256;
/// How often the task looks at its timers (and retries Redis while it is down).
const TICK: Duration = Duration::from_millis(250);
/// Heartbeat, sweep and gap reports run this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is not counted in `nodes_seen`.
const NODE_STALE_MS: u64 = 5_000;
/// Topic meta (epoch, top offset) outlives the history so that offsets never restart while
/// nodes may still hold positions.
const META_TTL_S: u64 = 86_400;
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a shutting-down node waits for its server's flush.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct Writer {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    conn: Option<MultiplexedConnection>,
    /// Broadcasts made while Redis was unreachable, already delivered on this node, with
    /// their sequence numbers.
    outage: VecDeque<(TopicKey, Bytes, u64)>,
    /// The last sequence number given to a broadcast of this node: a re-sent one keeps its
    /// number, so Redis takes each once.
    seq: u64,
    /// This node's presence entries: topic -> ref -> join envelope.
    local: HashMap<TopicKey, HashMap<String, Bytes>>,
    /// Leaves that could not be written.
    pending_leaves: Vec<(TopicKey, String, Bytes)>,
    next_attempt: Instant,
    backoff: Duration,
    last_housekeeping: Instant,
    last_renew: Instant,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    mut rx: mpsc::Receiver<PubReq>,
    shutdown: CancellationToken,
) {
    let now = Instant::now();
    let mut w = Writer {
        shared,
        registry,
        conn: None,
        outage: VecDeque::new(),
        seq: 0,
        local: HashMap::new(),
        pending_leaves: Vec::new(),
        next_attempt: now,
        backoff: TICK,
        last_housekeeping: now,
        last_renew: now,
    };
    w.tick().await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    // On shutdown the closing sockets' leaves are still to be written: the task goes on until
    // the server's flush (or a deadline), then says goodbye.
    let mut draining: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if draining.is_none() => {
                draining = Some(Instant::now() + DRAIN_TIMEOUT);
            }
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                let reqs = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if w.handle(reqs).await && draining.is_some() {
                    break;
                }
            }
            _ = tick.tick() => {
                if draining.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                w.tick().await;
            }
        }
    }
    w.goodbye().await;
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl Writer {
    fn field(&self, r: &str) -> String {
        format!("{}:{r}", self.shared.node)
    }

    /// The publish call for a presence change of this node's entry `r`.
    fn publish_cmd(
        &self,
        key: &TopicKey,
        envelope: &[u8],
        op: &str,
        r: &str,
        at_ms: u64,
    ) -> redis::Cmd {
        publish_cmd_for(&self.shared, key, envelope, op, &self.field(r), at_ms, 0)
    }

    fn lease_end(&self) -> u64 {
        now_ms() + self.shared.config.presence_ttl().as_millis() as u64
    }

    fn set_up(&self, up: bool) {
        let was = self.shared.status.publisher_up.swap(up, Ordering::SeqCst);
        if was != up {
            if up {
                tracing::info!(node = %self.shared.node, "cluster: Redis reachable (writer)");
            } else {
                tracing::warn!(node = %self.shared.node, "cluster: Redis unreachable (writer): serving local channels, keeping broadcasts for later");
            }
        }
    }

    fn lost_connection(&mut self, e: &redis::RedisError) {
        tracing::warn!(error = %e, "cluster: Redis write failed");
        self.conn = None;
        self.set_up(false);
        self.next_attempt = Instant::now() + TICK;
    }

    /// Leave the cluster: this node stops counting (heartbeat and users removed).
    async fn goodbye(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let keys = &self.shared.keys;
            let _: RedisResult<((), ())> = redis::pipe()
                .zrem(keys.nodes(), &self.shared.node)
                .hdel(keys.users(), &self.shared.node)
                .query_async(&mut conn)
                .await;
        }
        self.shared
            .status
            .publisher_up
            .store(false, Ordering::SeqCst);
    }

    /// Handle a batch; `true` if it held a flush (everything before it is now written).
    async fn handle(&mut self, reqs: Vec<PubReq>) -> bool {
        let (flushes, reqs): (Vec<PubReq>, Vec<PubReq>) = reqs
            .into_iter()
            .partition(|r| matches!(r, PubReq::Flush(_)));
        self.write(reqs).await;
        let flushed = !flushes.is_empty();
        for f in flushes {
            if let PubReq::Flush(tx) = f {
                let _ = tx.send(());
            }
        }
        flushed
    }

    async fn write(&mut self, reqs: Vec<PubReq>) {
        let expire_at = self.lease_end();
        for req in &reqs {
            if let PubReq::Presence { key, ops } = req {
                let entries = self.local.entry(key.clone()).or_default();
                for op in ops {
                    if op.join {
                        entries.insert(op.r.clone(), op.envelope.clone());
                    } else {
                        entries.remove(&op.r);
                    }
                }
                if entries.is_empty() {
                    self.local.remove(key);
                }
            }
        }
        let (admits, reqs): (Vec<PubReq>, Vec<PubReq>) = reqs
            .into_iter()
            .partition(|r| matches!(r, PubReq::Admit { .. }));
        for admit in admits {
            if let PubReq::Admit { limit, tx } = admit {
                let admitted = self.admit(limit).await;
                let _ = tx.send(admitted);
            }
        }
        if reqs.is_empty() {
            return;
        }
        let seqs: Vec<u64> = reqs
            .iter()
            .map(|r| match r {
                PubReq::Publish { .. } => self.next_seq(),
                _ => 0,
            })
            .collect();
        let Some(mut conn) = self.conn.clone() else {
            self.offline(reqs, seqs);
            return;
        };
        let mut pipe = redis::pipe();
        for (req, seq) in reqs.iter().zip(&seqs) {
            match req {
                PubReq::Publish { key, envelope, .. } => {
                    pipe.add_command(self_publish(&self.shared, key, envelope, *seq));
                }
                PubReq::Admit { .. } | PubReq::Flush(_) => {}
                PubReq::Presence { key, ops } => {
                    for op in ops {
                        let kind = if op.join { "join" } else { "leave" };
                        pipe.add_command(self.publish_cmd(
                            key,
                            &op.envelope,
                            kind,
                            &op.r,
                            expire_at,
                        ));
                    }
                }
            }
        }
        // An empty pipeline is an error in Redis's eyes, not a no-op.
        let result: RedisResult<Vec<Value>> = if pipe.is_empty() {
            Ok(Vec::new())
        } else {
            pipe.query_async(&mut conn).await
        };
        match result {
            Ok(_) => {
                for req in reqs {
                    if let PubReq::Publish {
                        confirm: Some(tx), ..
                    } = req
                    {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                self.lost_connection(&e);
                self.offline(reqs, seqs);
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Redis is unreachable: deliver locally what was not, keep it for later (`seqs`: the
    /// sequence number of each request, 0 for those that are not broadcasts).
    fn offline(&mut self, reqs: Vec<PubReq>, seqs: Vec<u64>) {
        let cap = self.shared.config.cluster_outage_buffer;
        for (req, seq) in reqs.into_iter().zip(seqs) {
            match req {
                PubReq::Publish {
                    confirm: Some(tx), ..
                } => {
                    let _ = tx.send(Err(ClusterError::Unavailable));
                }
                PubReq::Publish { key, envelope, .. } => {
                    let envelope = match self.deliver_here(&key, envelope) {
                        Some(e) => e,
                        None => continue,
                    };
                    if self.outage.len() >= cap {
                        self.shared.status.overflowed.lock().insert(key);
                    } else {
                        self.outage.push_back((key, envelope, seq));
                    }
                }
                PubReq::Admit { limit, tx } => {
                    let _ = tx.send(self.shared.admit_locally(limit));
                }
                PubReq::Flush(tx) => {
                    let _ = tx.send(());
                }
                PubReq::Presence { key, ops } => {
                    for op in ops.into_iter().filter(|op| !op.join) {
                        self.pending_leaves.push((key.clone(), op.r, op.envelope));
                    }
                }
            }
        }
        self.shared
            .status
            .buffered
            .store(self.outage.len(), Ordering::SeqCst);
    }

    /// The cluster-wide concurrent-user check (this node's share while Redis is unreachable).
    async fn admit(&mut self, limit: usize) -> bool {
        let Some(mut conn) = self.conn.clone() else {
            return self.shared.admit_locally(limit);
        };
        let keys = &self.shared.keys;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(scripts::USERS_ADMIT.get_hash())
            .arg(2)
            .arg(keys.users())
            .arg(keys.nodes())
            .arg(&self.shared.node)
            .arg(limit)
            .arg(now_ms().saturating_sub(NODE_STALE_MS));
        match cmd.query_async::<i64>(&mut conn).await {
            Ok(admitted) => admitted == 1,
            Err(e) => {
                self.lost_connection(&e);
                self.shared.admit_locally(limit)
            }
        }
    }

    /// Make sure this node's channels got a broadcast that did not reach Redis; returns it
    /// marked as delivered here.
    fn deliver_here(&self, key: &TopicKey, envelope: Bytes) -> Option<Bytes> {
        let decoded = match envelope::decode(envelope.clone()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cluster: unreadable envelope of our own");
                return None;
            }
        };
        if decoded.header.d {
            return Some(envelope);
        }
        if let Some(topic) = self.registry.get(key) {
            if let Ok(body) = decoded.body(&topic.wire_topic()) {
                let events = decoded.tenant_counter(&self.shared.events);
                topic.broadcast_local(body, decoded.header.x, events);
            }
        }
        envelope::mark_delivered(&envelope).ok()
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        if self.conn.is_none() {
            if now < self.next_attempt {
                return;
            }
            match self.connect_and_recover().await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.backoff = TICK;
                    self.set_up(true);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: Redis still unreachable (writer)");
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.next_attempt = Instant::now() + self.backoff;
                    self.set_up(false);
                    return;
                }
            }
        }
        if now.duration_since(self.last_housekeeping) >= HOUSEKEEPING {
            self.last_housekeeping = now;
            if let Err(e) = self.housekeeping().await {
                self.lost_connection(&e);
                return;
            }
        }
        if now.duration_since(self.last_renew) >= self.shared.config.presence_ttl() / 3 {
            self.last_renew = now;
            if let Err(e) = self.renew().await {
                self.lost_connection(&e);
            }
        }
    }

    async fn connect_and_recover(&mut self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let mut conn = self
            .shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        for script in scripts::all() {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        // What was made during the outage goes first, in order.
        while !self.outage.is_empty() {
            let n = self.outage.len().min(BATCH);
            let mut pipe = redis::pipe();
            for (key, envelope, seq) in self.outage.iter().take(n) {
                pipe.add_command(self_publish(&self.shared, key, envelope, *seq));
            }
            let _: Vec<Value> = pipe.query_async(&mut conn).await?;
            self.outage.drain(..n);
            let s = &self.shared.status;
            s.published_late.fetch_add(n as u64, Ordering::SeqCst);
            s.buffered.store(self.outage.len(), Ordering::SeqCst);
        }
        self.report_gaps(&mut conn).await?;
        if !self.pending_leaves.is_empty() {
            let mut pipe = redis::pipe();
            for (key, r, envelope) in &self.pending_leaves {
                pipe.add_command(self.publish_cmd(key, envelope, "leave", r, 0));
            }
            let _: Vec<Value> = pipe.query_async(&mut conn).await?;
            self.pending_leaves.clear();
        }
        self.republish_presence(&mut conn).await?;
        Ok(conn)
    }

    /// Write every local presence again (a no-op for nodes that already have it).
    async fn republish_presence(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let expire_at = self.lease_end();
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (key, entries) in &self.local {
            for (r, envelope) in entries {
                pipe.add_command(self.publish_cmd(key, envelope, "join", r, expire_at));
                n += 1;
            }
        }
        if n > 0 {
            let _: Vec<Value> = pipe.query_async(conn).await?;
            tracing::info!(entries = n, "cluster: presences republished");
        }
        Ok(())
    }

    async fn report_gaps(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let topics: Vec<TopicKey> = self.shared.status.overflowed.lock().drain().collect();
        if topics.is_empty() {
            return Ok(());
        }
        let gap = envelope::encode_gap(&self.shared.node);
        let mut pipe = redis::pipe();
        for key in &topics {
            pipe.add_command(self_publish(&self.shared, key, &gap, 0));
        }
        if let Err(e) = pipe.query_async::<Vec<Value>>(conn).await {
            self.shared.status.overflowed.lock().extend(topics);
            return Err(e);
        }
        tracing::warn!(
            topics = topics.len(),
            "cluster: told the other nodes which topics lost messages"
        );
        self.shared
            .status
            .gaps_reported
            .fetch_add(topics.len() as u64, Ordering::SeqCst);
        // Presence changes may be among what was lost: write them all again.
        self.republish_presence(conn).await
    }

    async fn housekeeping(&mut self) -> RedisResult<()> {
        let Some(mut conn) = self.conn.clone() else {
            return Ok(());
        };
        let keys: &Keys = &self.shared.keys;
        let now = now_ms();
        let users = self.shared.users.load(Ordering::SeqCst);
        let (_, _, _, seen, expired): ((), (), (), usize, Vec<Vec<u8>>) = redis::pipe()
            .hset(keys.users(), &self.shared.node, users)
            .zadd(keys.nodes(), &self.shared.node, now)
            .zrembyscore(keys.nodes(), "-inf", now.saturating_sub(NODE_STALE_MS))
            .zcard(keys.nodes())
            .zrangebyscore_limit(keys.presence_expiry(), "-inf", now, 0, BATCH as isize)
            .query_async(&mut conn)
            .await?;
        let before = self.shared.status.nodes_seen.swap(seen, Ordering::SeqCst);
        if before != seen {
            tracing::info!(nodes = seen, "cluster: {seen} node(s) seen");
        }
        self.report_gaps(&mut conn).await?;
        if !expired.is_empty() {
            self.sweep(&mut conn, expired, now).await?;
        }
        Ok(())
    }

    /// Remove expired leases (of any node) and publish their leaves.
    async fn sweep(
        &self,
        conn: &mut MultiplexedConnection,
        members: Vec<Vec<u8>>,
        now: u64,
    ) -> RedisResult<()> {
        let keys = &self.shared.keys;
        let mut found = Vec::new();
        let mut pipe = redis::pipe();
        for m in &members {
            let m = String::from_utf8_lossy(m);
            let Some((field, topic_id)) = m.split_once('\n') else {
                continue;
            };
            let Some(key) = Keys::parse_topic_id(topic_id) else {
                continue;
            };
            pipe.hget(keys.topic_by_id(topic_id).presence, field);
            found.push((key, field.to_owned(), m.to_string()));
        }
        if found.is_empty() {
            return Ok(());
        }
        let values: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        let mut pipe = redis::pipe();
        let mut swept = 0;
        for ((key, field, member), value) in found.into_iter().zip(values) {
            let leave = value
                .and_then(|v| envelope::decode(Bytes::from(v)).ok())
                .and_then(|e| e.presence().ok())
                .map(|(r, pkey, meta)| {
                    envelope::encode_presence(&self.shared.node, Kind::Leave, &r, &pkey, &meta)
                });
            match leave {
                Some(leave) => {
                    pipe.add_command(publish_cmd_for(
                        &self.shared,
                        &key,
                        &leave,
                        "expire",
                        &field,
                        now,
                        0,
                    ));
                    swept += 1;
                }
                None => {
                    pipe.zrem(keys.presence_expiry(), member);
                }
            }
        }
        if !pipe.is_empty() {
            let _: Vec<Value> = pipe.query_async(conn).await?;
        }
        if swept > 0 {
            tracing::info!(swept, "cluster: expired presences removed");
        }
        Ok(())
    }

    /// Renew this node's leases; entries swept meanwhile (this node was cut off for longer
    /// than the lease) are published again.
    async fn renew(&mut self) -> RedisResult<()> {
        let Some(mut conn) = self.conn.clone() else {
            return Ok(());
        };
        if self.local.is_empty() {
            return Ok(());
        }
        let expire_at = self.lease_end();
        let mut members: HashMap<String, (TopicKey, String)> = HashMap::new();
        for (key, entries) in &self.local {
            let id = Keys::topic_id(key);
            for r in entries.keys() {
                members.insert(format!("{}\n{id}", self.field(r)), (key.clone(), r.clone()));
            }
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(scripts::RENEW.get_hash())
            .arg(1)
            .arg(self.shared.keys.presence_expiry())
            .arg(expire_at);
        for m in members.keys() {
            cmd.arg(m);
        }
        let lost: Vec<String> = cmd.query_async(&mut conn).await?;
        if lost.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            entries = lost.len(),
            "cluster: presences had expired (node cut off longer than the lease): publishing them again"
        );
        let mut pipe = redis::pipe();
        for m in lost {
            let Some((key, r)) = members.get(&m) else {
                continue;
            };
            if let Some(envelope) = self.local.get(key).and_then(|e| e.get(r)) {
                pipe.add_command(self.publish_cmd(key, envelope, "join", r, expire_at));
            }
        }
        if !pipe.is_empty() {
            let _: Vec<Value> = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }
}

/// A broadcast (or gap notice) of this node; `seq` 0 is published however often it is sent.
fn self_publish(shared: &Shared, key: &TopicKey, envelope: &[u8], seq: u64) -> redis::Cmd {
    publish_cmd_for(shared, key, envelope, "-", "", 0, seq)
}

/// The publish script call for one envelope; `op` is the presence change it carries, `seq`
/// this node's number for a broadcast (0: none).
#[allow(clippy::too_many_arguments)]
fn publish_cmd_for(
    shared: &Shared,
    key: &TopicKey,
    envelope: &[u8],
    op: &str,
    field: &str,
    at_ms: u64,
    seq: u64,
) -> redis::Cmd {
    let keys = &shared.keys;
    let t = keys.topic(key);
    let c = &shared.config;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(scripts::PUBLISH.get_hash())
        .arg(4)
        .arg(&t.stream)
        .arg(&t.meta)
        .arg(&t.presence)
        .arg(keys.presence_expiry())
        .arg(&t.channel)
        .arg(envelope)
        .arg(c.cluster_history_size.max(1))
        .arg(c.cluster_history_ttl_s.max(1))
        .arg(META_TTL_S)
        .arg(new_epoch())
        .arg(op)
        .arg(field)
        .arg(format!("{field}\n{}", t.id))
        .arg(at_ms)
        .arg(&shared.node)
        .arg(seq);
    cmd
}
