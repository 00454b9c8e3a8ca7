//! Database broadcasts (`realtime.send`) in cluster mode: three server processes, a real
//! redis-server, a real PostgreSQL. One node reads the cluster's permanent messages slot under
//! a lease and publishes through Redis; subscribers on every node get every message once.
//! Killing the reader (SIGKILL) during a stream hands the slot to another node, which re-reads
//! from the confirmed position: nothing is missing, and what it publishes again is dropped by
//! id on the receiving nodes (counted, within the stated bound). Redis stopped for a few
//! seconds pauses the stream; nothing is lost or doubled.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::pg_server::*;
use support::postgres::{db, require_db};
use support::redis::require_redis;
use support::{assert_each_once, ANON};

/// What a new reader may publish again after a takeover (cluster/messages.rs: 1,024 not yet
/// acknowledged + 256 acknowledged but not yet reported to PostgreSQL).
const DUPLICATE_BOUND: u64 = 1_280;

/// Join a public topic for broadcasts only.
async fn subscribe(addr: &str, topic: &str) -> Ws {
    let mut ws = Ws::connect(addr).await;
    ws.join(topic, ANON, json!([])).await;
    ws
}

/// Count each `i` of the broadcasts a socket gets until it has `n` distinct ones (or the
/// timeout), then a short quiet period for late duplicates.
async fn collect(ws: &mut Ws, counts: &mut HashMap<i64, u32>, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    fn record(counts: &mut HashMap<i64, u32>, m: Value) {
        if let Some(i) = m["payload"]["payload"]["i"].as_i64() {
            *counts.entry(i).or_default() += 1;
        }
    }
    while counts.len() < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match ws.next_event("broadcast", left).await {
            Some(m) => record(counts, m),
            None => break,
        }
    }
    while let Some(m) = ws.next_event("broadcast", Duration::from_millis(700)).await {
        record(counts, m);
    }
}

async fn send(c: &tokio_postgres::Client, topic: &str, i: i64) {
    c.execute(
        "SELECT realtime.send($1::text::jsonb, 'n', $2, false)",
        &[&json!({"i": i}).to_string(), &topic],
    )
    .await
    .unwrap();
}

/// `n` nodes sharing the slots of `name` (slot leases of 1.5 s), each with one subscriber of
/// a new topic `<prefix>-<secs>`.
async fn nodes_with_subscribers(
    url: &str,
    redis_url: &str,
    name: &str,
    n: usize,
    prefix: &str,
) -> (Vec<ServerProc>, String, Vec<Ws>) {
    let extra = ["--redis-url", redis_url, "--cluster-slot-lease-ms", "1500"];
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(ServerProc::start(Some(url), name, &extra, 0, None).await);
    }
    let topic = format!("{prefix}-{}", now_secs());
    let mut socks = Vec::new();
    for node in &nodes {
        socks.push(subscribe(&node.addr, &topic).await);
    }
    (nodes, topic, socks)
}

/// The index of the one node reading database broadcasts, once every live node (not in
/// `dead`) names it.
async fn reader_of(nodes: &[ServerProc], dead: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut readers = Vec::new();
        let mut seen = Vec::new();
        for (i, n) in nodes.iter().enumerate().filter(|(i, _)| Some(*i) != dead) {
            let h = support::health(&n.addr).await;
            let r = &h["cluster"]["db_broadcast_reader"];
            if r["this_node"] == true && h["database"]["broadcast_streaming"] == true {
                readers.push(i);
            }
            seen.push(r["node"].clone());
        }
        if readers.len() == 1 && seen.iter().all(|s| *s == seen[0]) {
            return readers[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single database-broadcast reader: {readers:?} {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (active walsenders of the cluster's messages slot, temporary messages slots).
async fn walsenders(c: &tokio_postgres::Client, slot: &str) -> (i64, i64) {
    let active: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    let temporary: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'supabase_realtime_messages_replication_slot_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (active, temporary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reader_every_send_once_on_every_node_and_takeover_on_sigkill() {
    let Some(url) = require_db("one_reader_every_send_once_on_every_node_and_takeover_on_sigkill")
    else {
        return;
    };
    let Some(redis) = require_redis("one_reader_every_send_once", false) else {
        return;
    };
    let c = db(&url).await;
    drop_slot(&c, "slot_cdb").await;
    let (mut nodes, topic, mut socks) =
        nodes_with_subscribers(&url, &redis.url(), "cdb", 3, "dbb").await;
    let owner = reader_of(&nodes, None).await;
    let (active, temporary) = walsenders(&c, "slot_cdb_messages").await;
    assert_eq!(active, 1, "one walsender for the cluster's messages slot");
    assert_eq!(temporary, 0, "no node streams from a temporary slot");

    // part 1: every subscriber, on every node, gets every message once
    const FIRST: i64 = 50;
    for i in 1..=FIRST {
        send(&c, &topic, i).await;
    }
    let mut counts: Vec<HashMap<i64, u32>> = vec![HashMap::new(); 3];
    for (i, ws) in socks.iter_mut().enumerate() {
        collect(ws, &mut counts[i], FIRST as usize, Duration::from_secs(30)).await;
        assert_each_once(i, &counts[i], 1..=FIRST);
    }

    // part 2: SIGKILL the reader during 2,000 sends (one transaction each)
    const N: i64 = 2000;
    let (writer_url, writer_topic) = (url.clone(), topic.clone());
    let writer = tokio::spawn(async move {
        let w = db(&writer_url).await;
        for i in FIRST + 1..=FIRST + N {
            send(&w, &writer_topic, i).await;
        }
    });
    let survivor = (owner + 1) % 3;
    {
        let ws = &mut socks[survivor];
        let deadline = Instant::now() + Duration::from_secs(30);
        while counts[survivor].len() < (FIRST + 300) as usize && Instant::now() < deadline {
            if let Some(m) = ws.next_event("broadcast", Duration::from_secs(5)).await {
                if let Some(i) = m["payload"]["payload"]["i"].as_i64() {
                    *counts[survivor].entry(i).or_default() += 1;
                }
            }
        }
    }
    nodes[owner].kill();
    let killed_at = Instant::now();
    writer.await.unwrap();

    let mut dropped = 0;
    for i in (0..3).filter(|i| *i != owner) {
        collect(
            &mut socks[i],
            &mut counts[i],
            (FIRST + N) as usize,
            Duration::from_secs(60),
        )
        .await;
        assert_each_once(i, &counts[i], 1..=FIRST + N);
        let r = support::health(&nodes[i].addr).await["cluster"]["db_broadcast_reader"].clone();
        let d = r["duplicates_dropped"].as_u64().unwrap() + r["fenced_dropped"].as_u64().unwrap();
        eprintln!(
            "node {i}: {} distinct messages, re-published ones dropped here: {d}; reader {r}",
            counts[i].len()
        );
        assert!(
            d <= DUPLICATE_BOUND,
            "node {i}: {d} duplicates, over the bound {DUPLICATE_BOUND}"
        );
        dropped += d;
    }
    let new_owner = reader_of(&nodes, Some(owner)).await;
    assert_ne!(new_owner, owner);
    let (active, _) = walsenders(&c, "slot_cdb_messages").await;
    assert_eq!(active, 1, "one walsender after the takeover");
    eprintln!(
        "reader killed after {} messages at the survivor; all {} delivered once to both survivors within {:?} of the kill; {dropped} re-published messages dropped by id",
        FIRST + 300,
        FIRST + N,
        killed_at.elapsed()
    );
    drop(nodes);
    drop_slot(&c, "slot_cdb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_pauses_database_broadcasts_and_loses_nothing() {
    let Some(url) = require_db("redis_down_pauses_database_broadcasts_and_loses_nothing") else {
        return;
    };
    let Some(mut redis) = require_redis("redis_down_pauses_database_broadcasts", true) else {
        return;
    };
    let c = db(&url).await;
    drop_slot(&c, "slot_cdr").await;
    let (nodes, topic, mut socks) =
        nodes_with_subscribers(&url, &redis.url(), "cdr", 2, "dbr").await;
    let owner = reader_of(&nodes, None).await;
    const N: i64 = 300;
    let mut counts: Vec<HashMap<i64, u32>> = vec![HashMap::new(); 2];
    for i in 1..=100 {
        send(&c, &topic, i).await;
    }
    for (i, ws) in socks.iter_mut().enumerate() {
        collect(ws, &mut counts[i], 100, Duration::from_secs(30)).await;
    }
    redis.stop();
    let stopped = Instant::now();
    for i in 101..=200 {
        send(&c, &topic, i).await;
    }
    // Redis down: the stream pauses (nothing read is confirmed), on the reader's node too
    collect(
        &mut socks[owner],
        &mut counts[owner],
        200,
        Duration::from_secs(1),
    )
    .await;
    let during = counts[owner].len() - 100;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;
    redis.start();
    let restarted = Instant::now();
    for i in 201..=N {
        send(&c, &topic, i).await;
    }
    let mut failures = 0;
    for (i, ws) in socks.iter_mut().enumerate() {
        collect(ws, &mut counts[i], N as usize, Duration::from_secs(60)).await;
        assert_each_once(i, &counts[i], 1..=N);
        let r = support::health(&nodes[i].addr).await["cluster"]["db_broadcast_reader"].clone();
        eprintln!("node {i}: all {N} messages once; reader {r}");
        failures += r["redis_failures"].as_u64().unwrap_or(0);
    }
    eprintln!(
        "Redis down 3 s: {during} of the 100 messages sent meanwhile delivered during the outage at the reader's node; all {N} once on both nodes {:?} after Redis restarted; reader sessions ended by a refused publish: {failures}",
        restarted.elapsed()
    );
    assert_eq!(
        during, 0,
        "nothing is delivered while it cannot be confirmed"
    );
    drop(nodes);
    drop_slot(&c, "slot_cdr").await;
}

/// Policies of this file's own topics (permissive policies add up: other tests' topics are
/// not affected): `cdbok-*` readable by any signed-in user, `cdbpres-*` presence only.
const POLICIES: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(727274);
DROP POLICY IF EXISTS rs_cdb_select ON realtime.messages;
CREATE POLICY rs_cdb_select ON realtime.messages FOR SELECT TO authenticated USING (
  realtime.topic() LIKE 'cdbok-%' OR (realtime.topic() LIKE 'cdbpres-%' AND extension = 'presence'));
COMMIT;
";

async fn join_room(addr: &str, topic: &str, private: bool) -> Ws {
    let mut ws = Ws::connect(addr).await;
    let r = ws
        .send(
            &format!("realtime:{topic}"),
            "phx_join",
            json!({"config": {"private": private, "presence": {"enabled": true}}, "access_token": user_token("88888888-8888-8888-8888-888888888888")}),
            None,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = ws
            .recv(deadline - Instant::now())
            .await
            .expect("join reply");
        if m["event"] == "phx_reply" && m["ref"] == r.as_str() {
            assert_eq!(m["payload"]["status"], "ok", "join refused: {m}");
            return ws;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_are_checked_per_subscriber_on_every_node() {
    let Some(url) = require_db("private_channels_are_checked_per_subscriber_on_every_node") else {
        return;
    };
    let Some(redis) = require_redis("cluster private database broadcasts", false) else {
        return;
    };
    let c = db(&url).await;
    drop_slot(&c, "slot_cdp").await;
    let redis_url = redis.url();
    let extra = ["--redis-url", redis_url.as_str()];
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(ServerProc::start(Some(&url), "cdp", &extra, 0, None).await);
    }
    reader_of(&nodes, None).await;
    // after a node migrated: on a fresh database `realtime.messages` exists only then
    c.batch_execute(POLICIES).await.unwrap();
    let suffix = now_secs();
    let (ok, pres) = (format!("cdbok-{suffix}"), format!("cdbpres-{suffix}"));
    // allowed on both nodes; presence-only (no broadcast read) on node 1; the public room of
    // the same name on node 0
    let mut allowed = [
        join_room(&nodes[0].addr, &ok, true).await,
        join_room(&nodes[1].addr, &ok, true).await,
    ];
    let mut presence_only = join_room(&nodes[1].addr, &pres, true).await;
    let mut public = join_room(&nodes[0].addr, &ok, false).await;
    for (i, topic, private) in [(1, &ok, true), (2, &pres, true), (3, &ok, false)] {
        c.execute(
            "SELECT realtime.send($1::text::jsonb, 'n', $2, $3)",
            &[&json!({"i": i}).to_string(), topic, &private],
        )
        .await
        .unwrap();
    }
    for (node, ws) in allowed.iter_mut().enumerate() {
        let mut counts = HashMap::new();
        collect(ws, &mut counts, 1, Duration::from_secs(20)).await;
        assert_eq!(
            counts,
            HashMap::from([(1, 1)]),
            "node {node}: the private message once"
        );
    }
    let mut counts = HashMap::new();
    collect(&mut public, &mut counts, 1, Duration::from_secs(20)).await;
    assert_eq!(
        counts,
        HashMap::from([(3, 1)]),
        "the public room: its own message only"
    );
    let mut counts = HashMap::new();
    collect(&mut presence_only, &mut counts, 1, Duration::from_secs(2)).await;
    assert!(
        counts.is_empty(),
        "no broadcast read access: nothing delivered ({counts:?})"
    );
    drop(nodes);
    drop_slot(&c, "slot_cdp").await;
}
