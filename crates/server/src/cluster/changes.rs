//! postgres_changes subscriptions shared by the cluster, and the deliveries that cross nodes.
//!
//! Every node writes its channels' subscriptions (topic, claims, items) to its hash
//! `<prefix>:pg:subs:<node>` (leased: rewritten every second, expiring after six) and bumps
//! `<prefix>:pg:subs:version`. Every node mirrors the other nodes' subscriptions into its own
//! change feed with sinks that forward to the subscription's node (`slot.rs`), so whichever
//! node holds the slot lease checks RLS for every subscriber of the cluster, and a node taking
//! over has them compiled already.
//!
//! A local channel's sink is wrapped ([`Cluster::share_postgres`](super::Cluster::share_postgres)): its `Subscribed` waits
//! until the slot reader says it has the subscription live (or this node is the reader), so
//! "Subscribed" keeps its meaning, and every change is passed on only if its position is past
//! the last one the channel got: what a new reader sends again after a takeover is dropped
//! here and counted (`duplicates_dropped`). Deliveries from a reader with an older fencing
//! token than one already seen are dropped too (`fenced_dropped`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::slot::SlotReader;
use crate::postgres::{
    Binding, ChangeFeed, ChangeFrame, ChangePosition, FeedEvent, Sink, SubscribeRequest,
    Subscription,
};

/// How long a local `Subscribed` waits for the slot reader's word before it is passed on.
const READY_WAIT: Duration = Duration::from_secs(5);
/// A node's shared subscriptions expire this long after its last rewrite (it died).
const SUBS_TTL_MS: u64 = 6_000;
/// After a reconnect to Redis, how long the mirrors of nodes whose lease ran out are kept:
/// one lease, time enough for every live node to renew its own.
const RENEW_GRACE: Duration = Duration::from_millis(SUBS_TTL_MS + 1_000);
/// A round of the mirror loop (every 100 ms) answered this late means Redis stalled.
const STALL: Duration = Duration::from_secs(1);

/// A change to this node's shared subscriptions.
#[derive(Debug)]
pub(crate) enum ShareReq {
    Add(u64, String),
    Remove(u64),
}

/// A local channel's subscription as the cluster sees it.
pub(crate) struct LocalSub {
    id: u64,
    /// (socket, wire topic): a socket has one channel per topic.
    channel: (u64, String),
    /// What is shared, without the claims.
    topic: String,
    bindings: Vec<Json>,
    inner: Sink,
    last: Mutex<ChangePosition>,
    /// (the reader has it live, a `Subscribed` is waiting for that)
    ready: Mutex<(bool, bool)>,
    /// The channel was told `Subscribed` and no error since: the local feed says it again
    /// when its session restarts after a lost slot lease, which is no news to the channel.
    live: Mutex<bool>,
    /// Sends the channel `phx_error` (its deliveries were lost: it rejoins).
    lost: Lost,
    changes: Arc<Changes>,
}

/// Tells a channel that deliveries for it were lost, so that it rejoins (`phx_error`).
pub(crate) type Lost = Arc<dyn Fn() + Send + Sync>;

impl LocalSub {
    fn deliver(&self, frame: ChangeFrame) {
        let at = frame.position();
        if at != (0, 0) {
            let mut last = self.last.lock();
            if at <= *last {
                let n = self
                    .changes
                    .slot
                    .stats
                    .duplicates_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(100) {
                    tracing::info!(
                        sub = self.id,
                        lsn = at.0,
                        ordinal = at.1,
                        dropped = n + 1,
                        "cluster: postgres_changes change received again (slot takeover or claims swap) dropped"
                    );
                }
                return;
            }
            *last = at;
        }
        (self.inner)(FeedEvent::Change(frame));
    }

    fn tell(&self, ev: FeedEvent) {
        {
            let mut live = self.live.lock();
            match ev {
                FeedEvent::Subscribed if *live => return,
                FeedEvent::Subscribed => *live = true,
                FeedEvent::Error(_) => *live = false,
                FeedEvent::Change(_) => {}
            }
        }
        (self.inner)(ev);
    }

    fn subscribed(self: &Arc<Self>) {
        let pass = {
            let mut r = self.ready.lock();
            if r.0 || self.changes.slot.is_owner() {
                true
            } else {
                r.1 = true;
                false
            }
        };
        if pass {
            self.tell(FeedEvent::Subscribed);
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(READY_WAIT).await;
            if let Some(me) = me.upgrade() {
                let waiting = std::mem::replace(&mut me.ready.lock().1, false);
                if waiting {
                    tracing::warn!(sub = me.id, "cluster: no word from the slot reader in time; reporting the subscription live");
                    me.tell(FeedEvent::Subscribed);
                }
            }
        });
    }

    fn reader_ready(&self) {
        let waiting = {
            let mut r = self.ready.lock();
            r.0 = true;
            std::mem::replace(&mut r.1, false)
        };
        if waiting {
            self.tell(FeedEvent::Subscribed);
        }
    }
}

impl Drop for LocalSub {
    fn drop(&mut self) {
        self.changes.locals.lock().remove(&self.id);
        let mut by_channel = self.changes.by_channel.lock();
        if by_channel
            .get(&self.channel)
            .is_some_and(|id| *id == self.id)
        {
            by_channel.remove(&self.channel);
        }
        let _ = self.changes.share_tx.send(ShareReq::Remove(self.id));
    }
}

/// The node's postgres_changes part of the cluster.
pub(crate) struct Changes {
    pub(crate) slot: Arc<SlotReader>,
    next: AtomicU64,
    locals: Mutex<HashMap<u64, Weak<LocalSub>>>,
    by_channel: Mutex<HashMap<(u64, String), u64>>,
    share_tx: mpsc::UnboundedSender<ShareReq>,
    pub(crate) mirrored: AtomicU64,
    pub(crate) shared_count: AtomicU64,
    max_token: AtomicU64,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish()
    }
}

impl Changes {
    /// Start sharing, mirroring and the inbox (only with a database: without one there is
    /// nothing to read).
    pub(crate) fn start(
        slot: Arc<SlotReader>,
        feed: Arc<ChangeFeed>,
        shutdown: CancellationToken,
    ) -> Arc<Changes> {
        let (share_tx, share_rx) = mpsc::unbounded_channel();
        let changes = Arc::new(Changes {
            slot: slot.clone(),
            next: AtomicU64::new(1),
            locals: Mutex::new(HashMap::new()),
            by_channel: Mutex::new(HashMap::new()),
            share_tx,
            mirrored: AtomicU64::new(0),
            shared_count: AtomicU64::new(0),
            max_token: AtomicU64::new(0),
        });
        tokio::spawn(slot.clone().write_loop());
        tokio::spawn(share_loop(changes.clone(), share_rx, shutdown.clone()));
        tokio::spawn(mirror_loop(changes.clone(), feed, shutdown.clone()));
        tokio::spawn(super::inbox::run(changes.clone(), shutdown));
        changes
    }

    /// Share a local channel's subscription with the cluster; returns the request to give
    /// the local feed (its sink wrapped, see the module docs).
    pub(crate) fn share(
        self: &Arc<Self>,
        req: SubscribeRequest,
        conn: u64,
        lost: Lost,
    ) -> SubscribeRequest {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let bindings: Vec<Json> = req
            .bindings
            .iter()
            .map(|b| json!({"id": b.id, "params": b.params}))
            .collect();
        let shared = json!({"topic": req.topic, "claims": req.claims, "bindings": bindings});
        let channel = (
            conn,
            format!("{}{}", supa_realtime_protocol::TOPIC_PREFIX, req.topic),
        );
        let local = Arc::new(LocalSub {
            id,
            channel: channel.clone(),
            topic: req.topic.clone(),
            bindings,
            inner: req.sink,
            last: Mutex::new((0, 0)),
            ready: Mutex::new((false, false)),
            live: Mutex::new(false),
            lost,
            changes: self.clone(),
        });
        self.locals.lock().insert(id, Arc::downgrade(&local));
        self.by_channel.lock().insert(channel, id);
        let _ = self.share_tx.send(ShareReq::Add(id, shared.to_string()));
        let sink: Sink = Arc::new(move |ev: FeedEvent| match ev {
            FeedEvent::Subscribed => local.subscribed(),
            FeedEvent::Change(frame) => local.deliver(frame),
            ev @ FeedEvent::Error(_) => local.tell(ev),
        });
        SubscribeRequest {
            topic: req.topic,
            claims: req.claims,
            bindings: req.bindings,
            sink,
        }
    }

    /// New claims for a channel's subscription: shared again, so the mirrors resubscribe.
    pub(crate) fn update_claims(&self, conn: u64, wire_topic: &str, claims: Json) {
        let id = self
            .by_channel
            .lock()
            .get(&(conn, wire_topic.to_owned()))
            .copied();
        let Some(local) = id.and_then(|id| self.local(id)) else {
            return;
        };
        // The feed says `Subscribed` again for the new claims (as upstream); it is passed on
        // once the reader has them live.
        *local.live.lock() = false;
        local.ready.lock().0 = false;
        let shared = json!({"topic": local.topic, "claims": claims, "bindings": local.bindings});
        let _ = self
            .share_tx
            .send(ShareReq::Add(local.id, shared.to_string()));
    }

    /// Deliveries for this node were lost and cannot be told apart: every local
    /// postgres_changes channel gets `phx_error` and rejoins.
    pub(super) fn report_lost(&self, why: &str) {
        let locals: Vec<Arc<LocalSub>> = self
            .locals
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for local in &locals {
            (local.lost)();
        }
        self.slot
            .stats
            .channels_errored
            .fetch_add(locals.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            channels = locals.len(),
            why,
            "cluster: postgres_changes deliveries lost for this node; phx_error sent so channels rejoin"
        );
    }

    fn local(&self, id: u64) -> Option<Arc<LocalSub>> {
        self.locals.lock().get(&id).and_then(Weak::upgrade)
    }
}

/// Keeps this node's subscriptions in Redis: at once on a change, in full every second.
async fn share_loop(
    changes: Arc<Changes>,
    mut rx: mpsc::UnboundedReceiver<ShareReq>,
    shutdown: CancellationToken,
) {
    let slot = &changes.slot;
    let key = slot.subs_key(&slot.node);
    let mut mine: HashMap<u64, String> = HashMap::new();
    let mut conn = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut changed = false;
        tokio::select! {
            r = rx.recv() => {
                let Some(r) = r else { return };
                let mut apply = |r| match r {
                    ShareReq::Add(id, v) => { mine.insert(id, v); }
                    ShareReq::Remove(id) => { mine.remove(&id); }
                };
                apply(r);
                while let Ok(r) = rx.try_recv() {
                    apply(r);
                }
                changed = true;
            }
            _ = tick.tick() => {}
            () = shutdown.cancelled() => {
                if let Some(c) = conn.as_mut() {
                    let _: redis::RedisResult<()> = redis::pipe()
                        .cmd("DEL").arg(&key).ignore()
                        .cmd("ZREM").arg(slot.sub_nodes_key()).arg(&slot.node).ignore()
                        .cmd("INCR").arg(slot.subs_version_key()).ignore()
                        .query_async(c).await;
                }
                return;
            }
        }
        changes
            .shared_count
            .store(mine.len() as u64, Ordering::Relaxed);
        if conn.is_none() {
            conn = slot.connect(Duration::from_secs(2)).await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let now = super::now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        if !mine.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for (id, v) in &mine {
                hset.arg(*id).arg(v);
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(SUBS_TTL_MS).ignore();
        }
        pipe.cmd("ZADD")
            .arg(slot.sub_nodes_key())
            .arg(now + SUBS_TTL_MS)
            .arg(&slot.node)
            .ignore();
        if changed {
            pipe.cmd("INCR").arg(slot.subs_version_key()).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(c).await {
            tracing::debug!(error = %e, "cluster: cannot share postgres_changes subscriptions");
            conn = None;
        }
    }
}

/// Mirrors the other nodes' subscriptions into this node's feed.
async fn mirror_loop(changes: Arc<Changes>, feed: Arc<ChangeFeed>, shutdown: CancellationToken) {
    let slot = changes.slot.clone();
    let mut conn = None;
    let mut seen_version: Option<i64> = None;
    let mut last_full = Instant::now();
    let mut mirrors: HashMap<(String, u64), (String, Subscription)> = HashMap::new();
    // When this loop last (re)connected. Right after an outage the other nodes' leases may
    // have run out while none of them could reach Redis to renew them; dropping their
    // mirrors then would let the changes streamed before they renew (within a second of
    // reconnecting) pass them by. So for one lease after a reconnect mirrors are only
    // added or replaced, never dropped: a node that is really gone is dropped after it.
    let mut connected_at = Instant::now();
    let mut last_answer = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => return,
        }
        if conn.is_none() {
            conn = slot.connect(Duration::from_secs(2)).await.ok();
            connected_at = Instant::now();
        }
        let Some(c) = conn.as_mut() else { continue };
        let version: redis::RedisResult<Option<i64>> = redis::cmd("GET")
            .arg(slot.subs_version_key())
            .query_async(c)
            .await;
        let version = match version {
            Ok(v) => v,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        // A Redis that stalled rather than dropped the connection is an outage too.
        if last_answer.elapsed() > STALL {
            connected_at = Instant::now();
        }
        last_answer = Instant::now();
        if version == seen_version && last_full.elapsed() < Duration::from_secs(2) {
            continue;
        }
        let now = super::now_ms();
        let nodes: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
            .arg(slot.sub_nodes_key())
            .arg(now)
            .arg("+inf")
            .query_async(c)
            .await;
        let Ok(nodes) = nodes else {
            conn = None;
            continue;
        };
        let mut want: HashMap<(String, u64), String> = HashMap::new();
        let mut failed = false;
        for node in nodes.into_iter().filter(|n| *n != slot.node) {
            let subs: redis::RedisResult<HashMap<u64, String>> = redis::cmd("HGETALL")
                .arg(slot.subs_key(&node))
                .query_async(c)
                .await;
            match subs {
                Ok(subs) => {
                    for (id, v) in subs {
                        want.insert((node.clone(), id), v);
                    }
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            conn = None;
            continue;
        }
        seen_version = version;
        last_full = Instant::now();
        if connected_at.elapsed() > RENEW_GRACE {
            mirrors.retain(|k, _| want.contains_key(k));
        }
        for (k, v) in want {
            if mirrors.get(&k).is_some_and(|(old, _)| *old == v) {
                continue;
            }
            let (live_tx, live_rx) = tokio::sync::oneshot::channel();
            let Some(req) = proxy_request(&slot, &k.0, k.1, &v, live_tx) else {
                continue;
            };
            // New claims: the old mirror keeps checking until the new one is live (the
            // receiver drops what both deliver), so no change falls between them.
            if let Some((_, old)) = mirrors.insert(k, (v, feed.subscribe(req))) {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READY_WAIT, live_rx).await;
                    drop(old);
                });
            }
        }
        changes
            .mirrored
            .store(mirrors.len() as u64, Ordering::Relaxed);
    }
}

/// A subscription of another node, whose deliveries go to that node's inbox.
fn proxy_request(
    slot: &Arc<SlotReader>,
    node: &str,
    id: u64,
    shared: &str,
    live: tokio::sync::oneshot::Sender<()>,
) -> Option<SubscribeRequest> {
    let live = Mutex::new(Some(live));
    let v: Json = serde_json::from_str(shared).ok()?;
    let bindings = v["bindings"]
        .as_array()?
        .iter()
        .filter_map(|b| {
            Some(Binding {
                id: u32::try_from(b["id"].as_u64()?).ok()?,
                params: b["params"].clone(),
            })
        })
        .collect();
    let slot = slot.clone();
    let node = node.to_owned();
    let sink: Sink = Arc::new(move |ev: FeedEvent| {
        if matches!(ev, FeedEvent::Subscribed) {
            if let Some(tx) = live.lock().take() {
                let _ = tx.send(());
            }
        }
        // Only the reader forwards; a standby's mirrors are kept compiled for a takeover.
        if !slot.is_owner() {
            return;
        }
        match ev {
            FeedEvent::Change(frame) => {
                if let Some((topic, payload)) = frame.raw() {
                    let body = json!([topic, payload]).to_string();
                    slot.send(&node, id, "c", frame.position(), &body);
                }
            }
            FeedEvent::Subscribed => slot.send(&node, id, "r", (0, 0), ""),
            FeedEvent::Error(_) => {}
        }
    });
    Some(SubscribeRequest {
        topic: v["topic"].as_str()?.to_owned(),
        claims: v["claims"].clone(),
        bindings,
        sink,
    })
}

/// One inbox entry for a local channel.
pub(super) fn handle(changes: &Changes, entry: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Json>(entry) else {
        tracing::warn!("cluster: undecodable postgres_changes delivery ignored");
        return;
    };
    let token = v["t"].as_u64().unwrap_or(0);
    let max = changes.max_token.fetch_max(token, Ordering::SeqCst);
    if token < max {
        changes
            .slot
            .stats
            .fenced_dropped
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(local) = v["s"].as_u64().and_then(|id| changes.local(id)) else {
        return;
    };
    match v["k"].as_str() {
        Some("r") => local.reader_ready(),
        Some("c") => {
            let Some(body) = v["p"]
                .as_str()
                .and_then(|p| serde_json::from_str::<Json>(p).ok())
            else {
                return;
            };
            let (Some(topic), Some(payload)) = (body[0].as_str(), body[1].as_str()) else {
                return;
            };
            let at = (
                v["l"].as_u64().unwrap_or(0),
                v["q"].as_u64().unwrap_or(0) as u32,
            );
            local.deliver(ChangeFrame::from_raw(
                topic.to_owned(),
                payload.to_owned(),
                at,
            ));
        }
        _ => {}
    }
}

/// XREAD's reply as (entry id, field `d`).
pub(super) fn stream_entries(reply: Value) -> Vec<(String, Vec<u8>)> {
    fn text(v: Value) -> Option<Vec<u8>> {
        match v {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.into_bytes()),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for s in streams {
        let Value::Array(mut parts) = s else { continue };
        if parts.len() < 2 {
            continue;
        }
        let Value::Array(entries) = parts.swap_remove(1) else {
            continue;
        };
        for e in entries {
            let Value::Array(mut e) = e else { continue };
            if e.len() < 2 {
                continue;
            }
            let fields = e.swap_remove(1);
            let Some(id) = text(e.swap_remove(0)).and_then(|b| String::from_utf8(b).ok()) else {
                continue;
            };
            let Value::Array(fields) = fields else {
                continue;
            };
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if text(k).as_deref() == Some(b"d".as_slice()) {
                    if let Some(v) = text(v) {
                        out.push((id.clone(), v));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_reply_entries_in_order_and_malformed_parts_skipped() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("inbox"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("d"), bulk("a")])]),
                Value::Int(3),
                Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("x"), bulk("b")])]),
                Value::Array(vec![bulk("3-0"), Value::Array(vec![bulk("d"), bulk("c")])]),
            ]),
        ])]);
        let got: Vec<(String, String)> = stream_entries(reply)
            .into_iter()
            .map(|(id, v)| (id, String::from_utf8(v).unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            vec![("1-0".into(), "a".into()), ("3-0".into(), "c".into())]
        );
        assert!(stream_entries(Value::Nil).is_empty());
        assert!(stream_entries(Value::Array(vec![Value::Int(1)])).is_empty());
    }
}
