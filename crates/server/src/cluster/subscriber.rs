//! The reader task: owns the pub/sub connection and this node's view of the cluster.
//!
//! It is subscribed to exactly the topics that have local channels. For each it keeps the
//! position (epoch, offset) of the last message delivered, so that it can tell a duplicate
//! (offset not above the position: skipped), the next message (delivered), and a gap (read
//! from the topic's stream, or reported with `phx_error` when the stream no longer holds it).
//!
//! Opening a topic subscribes first and reads the position after, so every message published
//! after the position arrives by pub/sub; then it loads the topic's presence. A join waits for
//! that (bounded), so a joiner's first broadcast comes back to it and its `presence_state`
//! is the cluster's. After a reconnect every topic is subscribed again, caught up from its
//! position and its presence reloaded; a topic opened while Redis was unreachable has no
//! position to catch up from, so its channels get `phx_error` and rejoin.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, Envelope, Kind};
use super::keys::TopicKeys;
use super::messages::RecentIds;
use super::{now_ms, scripts, Shared, SubReq};
use crate::registry::Topic;

const TICK: Duration = Duration::from_millis(250);
/// A pub/sub connection that does not answer a ping within this is given up.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const PAGE: usize = 500;

/// Where a topic's delivery stands.
#[derive(Debug, Clone, PartialEq)]
struct Position {
    /// `None`: the topic had no history when it was opened.
    epoch: Option<String>,
    offset: u64,
}

struct TopicState {
    topic: Arc<Topic>,
    keys: TopicKeys,
    /// `None` while unknown (opened while Redis was unreachable).
    pos: Option<Position>,
    ready: bool,
    waiters: Vec<oneshot::Sender<()>>,
    /// The highest fencing token of a database broadcast delivered on this topic.
    fence: u64,
}

struct Link {
    sink: PubSubSink,
    stream: PubSubStream,
    conn: MultiplexedConnection,
}

struct Reader {
    shared: Arc<Shared>,
    /// By pub/sub channel name.
    topics: HashMap<String, TopicState>,
    link: Option<Link>,
    next_attempt: Instant,
    backoff: Duration,
    last_ping: Instant,
    /// Database broadcasts delivered lately, by `realtime.messages.id`.
    recent: RecentIds,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<SubReq>,
    shutdown: CancellationToken,
) {
    let now = Instant::now();
    let mut r = Reader {
        shared,
        topics: HashMap::new(),
        link: None,
        next_attempt: now,
        backoff: TICK,
        last_ping: now,
        recent: RecentIds::default(),
    };
    r.tick().await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = async {
            match r.link.as_mut() {
                Some(link) => link.stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            req = rx.recv() => match req {
                Some(req) => r.request(req).await,
                None => break,
            },
            msg = next => match msg {
                Some(msg) => {
                    let channel = msg.get_channel_name().to_owned();
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    r.message(&channel, payload).await;
                }
                None => r.lost("pub/sub connection closed"),
            },
            _ = tick.tick() => r.tick().await,
        }
    }
    r.shared.status.subscriber_up.store(false, Ordering::SeqCst);
}

impl Reader {
    fn connected(&self) -> bool {
        self.link.is_some()
    }

    fn lost(&mut self, why: &str) {
        if self.link.take().is_some() {
            tracing::warn!(node = %self.shared.node, why, "cluster: Redis unreachable (reader): local delivery goes on, will catch up");
        }
        self.shared
            .status
            .subscriber_up
            .store(false, Ordering::SeqCst);
        self.next_attempt = Instant::now() + TICK;
    }

    fn update_count(&self) {
        self.shared
            .status
            .topics
            .store(self.topics.len(), Ordering::SeqCst);
    }

    async fn request(&mut self, req: SubReq) {
        match req {
            SubReq::Opened(topic) => {
                let keys = self.shared.keys.topic(&topic.key);
                let channel = keys.channel.clone();
                let waiters = self
                    .topics
                    .remove(&channel)
                    .map(|t| t.waiters)
                    .unwrap_or_default();
                self.topics.insert(
                    channel.clone(),
                    TopicState {
                        topic,
                        keys,
                        pos: None,
                        ready: false,
                        waiters,
                        fence: 0,
                    },
                );
                self.update_count();
                if self.connected() {
                    if let Err(e) = self.open(&channel).await {
                        self.lost(&e.to_string());
                    }
                }
                // Without Redis a join goes on with what this node has.
                if let Some(t) = self.topics.get_mut(&channel) {
                    t.ready = true;
                    for w in t.waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
            }
            SubReq::Closed(key) => {
                let channel = self.shared.keys.topic(&key).channel;
                if self.topics.remove(&channel).is_some() {
                    self.update_count();
                    if let Some(link) = self.link.as_mut() {
                        if let Err(e) = link.sink.unsubscribe(&channel).await {
                            self.lost(&e.to_string());
                        }
                    }
                }
            }
            SubReq::Ready(key, tx) => {
                let channel = self.shared.keys.topic(&key).channel;
                match self.topics.get_mut(&channel) {
                    Some(t) if !t.ready => t.waiters.push(tx),
                    _ => {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }

    /// Subscribe a topic, then read its position, then its presence.
    async fn open(&mut self, channel: &str) -> RedisResult<()> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        link.sink.subscribe(channel).await?;
        let Some(t) = self.topics.get(channel) else {
            return Ok(());
        };
        let (epoch, top): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&t.keys.meta)
            .arg("e")
            .arg("s")
            .query_async(&mut link.conn)
            .await?;
        let pos = Position {
            epoch,
            offset: top.unwrap_or(0),
        };
        if let Some(t) = self.topics.get_mut(channel) {
            t.pos = Some(pos);
        }
        self.load_presence(channel).await
    }

    /// Replace the topic's remote presence with the cluster's.
    async fn load_presence(&mut self, channel: &str) -> RedisResult<()> {
        let (Some(link), Some(t)) = (self.link.as_mut(), self.topics.get(channel)) else {
            return Ok(());
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(scripts::PRESENCE_GET.get_hash())
            .arg(2)
            .arg(&t.keys.presence)
            .arg(self.shared.keys.presence_expiry())
            .arg(now_ms())
            .arg(&t.keys.id);
        let entries: Vec<Vec<u8>> = cmd.query_async(&mut link.conn).await?;
        let joins = entries
            .into_iter()
            .filter_map(|e| envelope::decode(Bytes::from(e)).ok())
            .filter(|e| e.header.n != self.shared.node)
            .filter_map(|e| e.presence().ok())
            .collect();
        t.topic
            .apply_remote_presence(&self.shared.presence_events, joins, &[], true);
        Ok(())
    }

    async fn message(&mut self, channel: &str, payload: Bytes) {
        let (offset, epoch, env) = match envelope::split_position(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(channel, error = %e, "cluster: foreign message on our channel ignored");
                return;
            }
        };
        let Some(t) = self.topics.get_mut(channel) else {
            return;
        };
        let here = Position {
            epoch: Some(epoch.clone()),
            offset,
        };
        if let Some(p) = t.pos.clone() {
            let same = p.epoch.as_deref() == Some(epoch.as_str());
            if same || p.epoch.is_none() {
                // With no history when opened, the topic's offsets start at 1.
                let base = if same { p.offset } else { 0 };
                if offset <= base {
                    return; // already delivered (caught up from the stream)
                }
                if offset > base + 1 {
                    if let Err(e) = self.catch_up(channel, Some(&epoch), base + 1).await {
                        self.lost(&e.to_string());
                    }
                    let done = self.topics.get(channel).and_then(|t| t.pos.clone());
                    if done.is_some_and(|d| d.epoch == here.epoch && d.offset >= offset) {
                        return;
                    }
                }
            } else {
                // A new epoch: Redis lost the topic's history, so what came between is unknown.
                tracing::warn!(channel, "cluster: topic history was reset");
                self.report_gap(channel);
            }
        }
        let Some(t) = self.topics.get_mut(channel) else {
            return;
        };
        t.pos = Some(here);
        match envelope::decode(env) {
            Ok(e) => self.deliver(channel, e),
            Err(e) => tracing::warn!(channel, error = %e, "cluster: unreadable message ignored"),
        }
    }

    /// Deliver one envelope to this node's channels of the topic.
    fn deliver(&mut self, channel: &str, e: Envelope) {
        if let Some(id) = &e.header.s {
            if !self.fresh_stored(channel, id, e.header.f.unwrap_or(0)) {
                return;
            }
        }
        let Some(t) = self.topics.get(channel) else {
            return;
        };
        let s = &self.shared;
        let mine = e.header.n == s.node;
        match e.header.k {
            Kind::Join => {
                if mine {
                    return;
                }
                if let Ok(join) = e.presence() {
                    t.topic
                        .apply_remote_presence(&s.presence_events, vec![join], &[], false);
                }
            }
            Kind::Leave => {
                if let Some(r) = &e.header.r {
                    t.topic.apply_remote_presence(
                        &s.presence_events,
                        Vec::new(),
                        std::slice::from_ref(r),
                        false,
                    );
                }
            }
            Kind::Gap => {
                if !mine {
                    self.report_gap(channel);
                }
            }
            _ => {
                if mine && e.header.d {
                    return;
                }
                let exclude = if mine { e.header.x } else { None };
                match e.body(&t.topic.wire_topic()) {
                    // a database broadcast: not to subscribers that got it by replay
                    Ok(body) if e.header.s.is_some() => {
                        let id = e.header.s.as_deref().unwrap_or_default();
                        t.topic.broadcast_stored(body, id, &s.events);
                    }
                    Ok(body) => {
                        t.topic
                            .broadcast_local(body, exclude, e.tenant_counter(&s.events));
                    }
                    Err(err) => {
                        tracing::warn!(channel, error = %err, "cluster: unreadable broadcast ignored")
                    }
                }
            }
        }
    }

    /// Whether a database broadcast is new here: not one a new reader published again (same
    /// id), nor a stale reader's late publish (an older token after a newer one on the topic,
    /// which the newer reader published again from its confirmed position).
    fn fresh_stored(&mut self, channel: &str, id: &str, token: u64) -> bool {
        let Some(t) = self.topics.get_mut(channel) else {
            return false;
        };
        let status = &self.shared.status;
        if token < t.fence {
            status.db_fenced_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                id,
                token,
                fence = t.fence,
                "cluster: database broadcast of a replaced reader dropped"
            );
            return false;
        }
        t.fence = token;
        if !self.recent.insert(id) {
            status.db_duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// This node's channels of the topic missed messages for good: they rejoin.
    fn report_gap(&self, channel: &str) {
        if let Some(t) = self.topics.get(channel) {
            let n = t.topic.error_all();
            self.shared
                .status
                .channels_errored
                .fetch_add(n as u64, Ordering::SeqCst);
            tracing::warn!(topic = %t.topic.key.name, channels = n, "cluster: messages lost for this node; phx_error sent so channels rejoin");
        }
    }

    /// Deliver what the topic's stream holds from `from` on. `epoch`: the epoch the caller
    /// saw (a live message), or `None` to take the stream's.
    async fn catch_up(&mut self, channel: &str, epoch: Option<&str>, from: u64) -> RedisResult<()> {
        let mut from = from;
        loop {
            let (Some(link), Some(t)) = (self.link.as_mut(), self.topics.get(channel)) else {
                return Ok(());
            };
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(scripts::HISTORY.get_hash())
                .arg(2)
                .arg(&t.keys.stream)
                .arg(&t.keys.meta)
                .arg(from)
                .arg(PAGE);
            let (cur_epoch, top, entries): (Option<String>, Option<u64>, Vec<Value>) =
                cmd.query_async(&mut link.conn).await?;
            let known = t.pos.as_ref().and_then(|p| p.epoch.clone());
            let same_epoch = match (&cur_epoch, known.as_deref().or(epoch)) {
                (Some(cur), Some(seen)) => cur == seen,
                // No history when opened: whatever epoch there is now started after.
                (Some(_), None) => true,
                // Still no history, or Redis lost it since.
                (None, seen) => seen.is_none(),
            };
            let top = top.unwrap_or(0);
            if !same_epoch {
                self.report_gap(channel);
                if let Some(t) = self.topics.get_mut(channel) {
                    t.pos = Some(Position {
                        epoch: cur_epoch,
                        offset: top,
                    });
                }
                return Ok(());
            }
            let entries = parse_entries(entries);
            if top < from {
                return Ok(());
            }
            if entries.first().map(|(o, _)| *o) != Some(from) {
                // Trimmed or expired: the stream no longer holds the gap.
                self.report_gap(channel);
                if let Some(t) = self.topics.get_mut(channel) {
                    t.pos = Some(Position {
                        epoch: cur_epoch,
                        offset: top,
                    });
                }
                return Ok(());
            }
            let n = entries.len() as u64;
            let mut last = from;
            for (offset, env) in entries {
                last = offset;
                if let Ok(e) = envelope::decode(env) {
                    self.deliver(channel, e);
                }
            }
            self.shared.status.caught_up.fetch_add(n, Ordering::SeqCst);
            if let Some(t) = self.topics.get_mut(channel) {
                t.pos = Some(Position {
                    epoch: cur_epoch.clone(),
                    offset: last,
                });
            }
            if last >= top {
                return Ok(());
            }
            from = last + 1;
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        if let Some(link) = self.link.as_mut() {
            if now.duration_since(self.last_ping) >= PING_EVERY {
                self.last_ping = now;
                let ping = tokio::time::timeout(PING_TIMEOUT, link.sink.ping::<Value>()).await;
                match ping {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => self.lost(&e.to_string()),
                    Err(_) => self.lost("ping timed out"),
                }
            }
            return;
        }
        if now < self.next_attempt {
            return;
        }
        match self.connect().await {
            Ok(link) => {
                self.link = Some(link);
                self.backoff = TICK;
                if let Err(e) = self.recover().await {
                    self.lost(&e.to_string());
                    return;
                }
                self.shared
                    .status
                    .subscriber_up
                    .store(true, Ordering::SeqCst);
                tracing::info!(node = %self.shared.node, topics = self.topics.len(), "cluster: Redis reachable (reader)");
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster: Redis still unreachable (reader)");
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.next_attempt = Instant::now() + self.backoff;
            }
        }
    }

    async fn connect(&self) -> RedisResult<Link> {
        let client = &self.shared.client;
        let timeout = Duration::from_secs(2);
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        let (sink, stream) = pubsub.split();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        for script in scripts::all() {
            script.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(Link { sink, stream, conn })
    }

    /// After (re)connecting: subscribe every topic, catch each up, reload its presence.
    async fn recover(&mut self) -> RedisResult<()> {
        let channels: Vec<String> = self.topics.keys().cloned().collect();
        if channels.is_empty() {
            return Ok(());
        }
        if let Some(link) = self.link.as_mut() {
            link.sink.subscribe(&channels).await?;
        }
        for channel in &channels {
            let pos = self.topics.get(channel).and_then(|t| t.pos.clone());
            match pos {
                Some(p) => {
                    let from = if p.epoch.is_none() { 1 } else { p.offset + 1 };
                    self.catch_up(channel, p.epoch.as_deref(), from).await?;
                }
                None => {
                    // Opened while Redis was unreachable: what it missed cannot be told.
                    self.report_gap(channel);
                    let Some(link) = self.link.as_mut() else {
                        return Ok(());
                    };
                    let Some(t) = self.topics.get(channel) else {
                        continue;
                    };
                    let (epoch, top): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                        .arg(&t.keys.meta)
                        .arg("e")
                        .arg("s")
                        .query_async(&mut link.conn)
                        .await?;
                    if let Some(t) = self.topics.get_mut(channel) {
                        t.pos = Some(Position {
                            epoch,
                            offset: top.unwrap_or(0),
                        });
                    }
                }
            }
            self.load_presence(channel).await?;
        }
        Ok(())
    }
}

/// XRANGE entries as (offset, envelope).
fn parse_entries(entries: Vec<Value>) -> Vec<(u64, Bytes)> {
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = match parts.next()? {
                Value::BulkString(b) => String::from_utf8(b).ok()?,
                Value::SimpleString(s) => s,
                _ => return None,
            };
            let offset: u64 = id.split('-').next()?.parse().ok()?;
            let Value::Array(fields) = parts.next()? else {
                return None;
            };
            let mut fields = fields.into_iter();
            let _name = fields.next()?;
            match fields.next()? {
                Value::BulkString(b) => Some((offset, Bytes::from(b))),
                _ => None,
            }
        })
        .collect()
}
