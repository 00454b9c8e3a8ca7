//! postgres_changes in cluster mode: three server processes share one replication slot
//! through a real redis-server; a real PostgreSQL. One node holds the slot lease and reads the
//! slot for the subscribers of every node; killing it (SIGKILL) hands the slot to another node,
//! which resumes from the slot's confirmed position.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::pg_server::*;
use support::postgres::{db, require_db};
use support::redis::require_redis;
use support::{assert_each_once, ANON};

/// Every `record.id` a socket gets within `timeout` until it has `n` distinct ids, counted.
async fn collect(ws: &mut Ws, counts: &mut HashMap<i64, u32>, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while counts.len() < n {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let Some((_, data)) = ws.change(left).await else {
            break;
        };
        *counts
            .entry(data["record"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
    // what a new reader would send again arrives right after; give it a moment
    while let Some((_, data)) = ws.change(Duration::from_millis(700)).await {
        *counts
            .entry(data["record"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_reader_for_three_nodes_and_takeover_on_sigkill() {
    let Some(url) = require_db("one_slot_reader_for_three_nodes_and_takeover_on_sigkill") else {
        return;
    };
    let Some(redis) = require_redis("one_slot_reader_for_three_nodes", false) else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "clu",
        "DROP TABLE IF EXISTS pc_clu; CREATE TABLE pc_clu (id int PRIMARY KEY); GRANT SELECT ON pc_clu TO PUBLIC;",
        &["pc_clu"],
    )
    .await;
    let redis_url = redis.url();
    let extra = [
        "--redis-url",
        redis_url.as_str(),
        "--cluster-slot-lease-ms",
        "1500",
    ];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(ServerProc::start(Some(&url), "clu", &extra, 0, None).await);
    }
    let mut socks = Vec::new();
    for n in &nodes {
        let mut ws = Ws::connect(&n.addr).await;
        ws.join("clu", ANON, json!([{"event": "INSERT", "table": "pc_clu"}]))
            .await;
        ws.subscribed().await;
        socks.push(ws);
    }

    // one reader for the whole cluster, seen by every node
    let deadline = Instant::now() + Duration::from_secs(20);
    let owner = loop {
        let mut readers = Vec::new();
        let mut seen = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let h = health_cluster(&n.addr).await;
            if h["slot_owner"]["this_node"] == true {
                readers.push(i);
            }
            seen.push(h["slot_owner"]["node"].clone());
        }
        if readers.len() == 1 && seen.iter().all(|s| *s == seen[0]) {
            break readers[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single slot reader: {readers:?} {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // part 1: every subscriber, on every node, gets every change once
    const FIRST: i64 = 50;
    for i in 1..=FIRST {
        c.execute("INSERT INTO pc_clu VALUES ($1)", &[&(i as i32)])
            .await
            .unwrap();
    }
    let mut counts: Vec<HashMap<i64, u32>> = vec![HashMap::new(); 3];
    for (i, ws) in socks.iter_mut().enumerate() {
        collect(ws, &mut counts[i], FIRST as usize, Duration::from_secs(30)).await;
        assert_each_once(i, &counts[i], 1..=FIRST);
    }

    // part 2: SIGKILL the reader during 2,000 inserts (one transaction each)
    const N: i64 = 2000;
    let writer_url = url.clone();
    let writer = tokio::spawn(async move {
        let w = db(&writer_url).await;
        for i in FIRST + 1..=FIRST + N {
            w.execute("INSERT INTO pc_clu VALUES ($1)", &[&(i as i32)])
                .await
                .unwrap();
        }
    });
    // kill once a few hundred rows have reached a survivor
    let survivor = (owner + 1) % 3;
    {
        let ws = &mut socks[survivor];
        let deadline = Instant::now() + Duration::from_secs(30);
        while counts[survivor].len() < (FIRST + 300) as usize && Instant::now() < deadline {
            if let Some((_, data)) = ws.change(Duration::from_secs(5)).await {
                *counts[survivor]
                    .entry(data["record"]["id"].as_i64().unwrap())
                    .or_default() += 1;
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
        let h = health_cluster(&nodes[i].addr).await;
        let d = h["slot_owner"]["duplicates_dropped"].as_u64().unwrap();
        eprintln!(
            "node {i}: {} distinct rows, duplicates dropped by this node: {d}, slot {}",
            counts[i].len(),
            h["slot_owner"]
        );
        dropped += d;
    }
    let h = health_cluster(&nodes[survivor].addr).await;
    assert_ne!(h["slot_owner"]["token"], Value::Null);
    eprintln!(
        "reader killed after {} rows at the survivor; all {} rows delivered to both survivors within {:?} of the kill; {dropped} re-sent changes dropped",
        FIRST + 300,
        FIRST + N,
        killed_at.elapsed()
    );
    drop(nodes);
    drop_slot(&c, "slot_clu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_5s_pauses_postgres_changes_and_loses_nothing() {
    redis_down_pauses_postgres_changes(Duration::from_secs(5), "clr").await;
}

/// Longer than a node's subscription lease (6 s): when Redis is back every lease has run
/// out, and the reader must not stream past the other node's subscribers before it renews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_past_the_subscription_lease_loses_nothing() {
    redis_down_pauses_postgres_changes(Duration::from_secs(8), "cll").await;
}

async fn redis_down_pauses_postgres_changes(outage: Duration, tenant: &str) {
    let name = format!("redis_down_{}s_pauses_postgres_changes", outage.as_secs());
    let Some(url) = require_db(&name) else {
        return;
    };
    let Some(mut redis) = require_redis(&name, true) else {
        return;
    };
    let table = format!("pc_{tenant}");
    let c = db(&url).await;
    prepare(
        &c,
        tenant,
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY); GRANT SELECT ON {table} TO PUBLIC;"
        ),
        &[table.as_str()],
    )
    .await;
    let redis_url = redis.url();
    let extra = [
        "--redis-url",
        redis_url.as_str(),
        "--cluster-slot-lease-ms",
        "1500",
    ];
    let nodes = vec![
        ServerProc::start(Some(&url), tenant, &extra, 0, None).await,
        ServerProc::start(Some(&url), tenant, &extra, 0, None).await,
    ];
    let mut socks = Vec::new();
    for n in &nodes {
        let mut ws = Ws::connect(&n.addr).await;
        ws.join(tenant, ANON, json!([{"event": "INSERT", "table": table}]))
            .await;
        ws.subscribed().await;
        socks.push(ws);
    }
    const N: i64 = 300;
    for i in 1..=100 {
        c.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&i])
            .await
            .unwrap();
    }
    redis.stop();
    let stopped = Instant::now();
    for i in 101..=200 {
        c.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&i])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    redis.start();
    let restarted = Instant::now();
    for i in 201..=N {
        c.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&(i as i32)])
            .await
            .unwrap();
    }
    for (i, ws) in socks.iter_mut().enumerate() {
        let mut counts = HashMap::new();
        collect(ws, &mut counts, N as usize, Duration::from_secs(60)).await;
        assert_each_once(i, &counts, 1..=N);
        // no "database unavailable" for a Redis fault: the channel stays subscribed
        assert!(
            ws.system(Duration::from_millis(100)).await.is_none(),
            "node {i}: unexpected system message"
        );
    }
    let mut owner = Value::Null;
    for n in &nodes {
        let h = health_cluster(&n.addr).await;
        if h["slot_owner"]["this_node"] == true {
            owner = h["slot_owner"].clone();
        }
    }
    eprintln!(
        "Redis down {outage:?}: all {N} rows on both nodes {:?} after Redis came back; reader now {owner}",
        restarted.elapsed()
    );
    drop(nodes);
    drop_slot(&c, &format!("slot_{tenant}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_on_a_standby_node_reaches_the_reader() {
    let Some(url) = require_db("access_token_on_a_standby_node_reaches_the_reader") else {
        return;
    };
    let Some(redis) = require_redis("access_token_on_a_standby_node", false) else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "clt",
        "DROP TABLE IF EXISTS pc_clt; CREATE TABLE pc_clt (id int PRIMARY KEY, owner uuid);
         ALTER TABLE pc_clt ENABLE ROW LEVEL SECURITY;
         GRANT SELECT ON pc_clt TO anon, authenticated;
         CREATE POLICY mine ON pc_clt FOR SELECT TO authenticated USING (owner = auth.uid());",
        &["pc_clt"],
    )
    .await;
    let redis_url = redis.url();
    let extra = ["--redis-url", redis_url.as_str()];
    let nodes = vec![
        ServerProc::start(Some(&url), "clt", &extra, 0, None).await,
        ServerProc::start(Some(&url), "clt", &extra, 0, None).await,
    ];
    // subscribe on the node that does not read the slot
    let deadline = Instant::now() + Duration::from_secs(20);
    let standby = loop {
        let mut owners = Vec::new();
        for n in &nodes {
            owners.push(health_cluster(&n.addr).await["slot_owner"]["this_node"] == true);
        }
        if owners.iter().filter(|o| **o).count() == 1 {
            break owners.iter().position(|o| !*o).unwrap();
        }
        assert!(Instant::now() < deadline, "no slot reader: {owners:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let u1 = "44444444-4444-4444-4444-444444444444";
    let mut ws = Ws::connect(&nodes[standby].addr).await;
    ws.join("clt", ANON, json!([{"event": "INSERT", "table": "pc_clt"}]))
        .await;
    ws.subscribed().await;
    c.execute("INSERT INTO pc_clt VALUES (1, $1::text::uuid)", &[&u1])
        .await
        .unwrap();
    assert!(
        ws.change(QUIET).await.is_none(),
        "anon must not see the row"
    );
    ws.send(
        "realtime:clt",
        "access_token",
        json!({"access_token": user_token(u1)}),
        Some("1"),
    )
    .await;
    ws.subscribed().await; // re-subscribed with the new claims, as upstream
    c.execute("INSERT INTO pc_clt VALUES (2, $1::text::uuid)", &[&u1])
        .await
        .unwrap();
    let (_, data) = ws
        .change(WAIT)
        .await
        .expect("the owner's row after the token refresh, checked by the reader");
    assert_eq!(data["record"]["id"], 2);
    assert!(ws.change(QUIET).await.is_none(), "row 2 once");
    drop(nodes);
    drop_slot(&c, "slot_clt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_losing_its_database_session_hands_over_nothing_lost() {
    let Some(url) = require_db("reader_losing_its_database_session_hands_over_nothing_lost") else {
        return;
    };
    let Some(redis) = require_redis("reader_losing_its_database_session", false) else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "cls",
        "DROP TABLE IF EXISTS pc_cls; CREATE TABLE pc_cls (id int PRIMARY KEY); GRANT SELECT ON pc_cls TO PUBLIC;",
        &["pc_cls"],
    )
    .await;
    let redis_url = redis.url();
    let extra = [
        "--redis-url",
        redis_url.as_str(),
        "--cluster-slot-lease-ms",
        "1500",
    ];
    let nodes = vec![
        ServerProc::start(Some(&url), "cls", &extra, 0, None).await,
        ServerProc::start(Some(&url), "cls", &extra, 0, None).await,
    ];
    let mut socks = Vec::new();
    for n in &nodes {
        let mut ws = Ws::connect(&n.addr).await;
        ws.join("cls", ANON, json!([{"event": "INSERT", "table": "pc_cls"}]))
            .await;
        ws.subscribed().await;
        socks.push(ws);
    }
    const N: i32 = 600;
    let writer_url = url.clone();
    let writer = tokio::spawn(async move {
        let w = db(&writer_url).await;
        for i in 1..=N {
            w.execute("INSERT INTO pc_cls VALUES ($1)", &[&i])
                .await
                .unwrap();
        }
    });
    // cut the reader's replication session twice while rows stream
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'slot_cls' AND active_pid IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    }
    writer.await.unwrap();
    for (i, ws) in socks.iter_mut().enumerate() {
        let mut counts = HashMap::new();
        collect(ws, &mut counts, N as usize, Duration::from_secs(60)).await;
        assert_each_once(i, &counts, 1..=i64::from(N));
    }
    drop(nodes);
    drop_slot(&c, "slot_cls").await;
}

/// A join without `config` (older clients) on a node that does not read the slot: shared
/// with the reader like any postgres_changes channel, so its changes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_join_on_a_standby_node_gets_its_changes() {
    let Some(url) = require_db("legacy_join_on_a_standby_node_gets_its_changes") else {
        return;
    };
    let Some(redis) = require_redis("legacy_join_on_a_standby_node", false) else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "cll",
        "DROP TABLE IF EXISTS pc_cll; CREATE TABLE pc_cll (id int PRIMARY KEY); GRANT SELECT ON pc_cll TO PUBLIC;",
        &["pc_cll"],
    )
    .await;
    let redis_url = redis.url();
    let extra = ["--redis-url", redis_url.as_str()];
    let reader = ServerProc::start(Some(&url), "cll", &extra, 0, None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while health_cluster(&reader.addr).await["slot_owner"]["this_node"] != true {
        assert!(
            Instant::now() < deadline,
            "the first node never read the slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby = ServerProc::start(Some(&url), "cll", &extra, 0, None).await;
    let mut ws = Ws::connect(&standby.addr).await;
    let topic = "realtime:public:pc_cll:id=eq.1";
    let r = ws.send(topic, "phx_join", json!({}), None).await;
    let reply = ws.next_event("phx_reply", WAIT).await.expect("join reply");
    assert_eq!(reply["ref"], r.as_str());
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    ws.subscribed().await;
    c.batch_execute("INSERT INTO pc_cll VALUES (2); INSERT INTO pc_cll VALUES (1);")
        .await
        .unwrap();
    let m = ws.next_event("INSERT", Duration::from_secs(20)).await;
    let m = m.expect("the legacy channel's change never arrived on the standby node");
    assert_eq!(m["topic"], topic);
    assert_eq!(m["payload"]["record"], json!({"id": 1}), "{m}");
    assert!(
        ws.next_event("INSERT", QUIET).await.is_none(),
        "only the filtered row"
    );
    drop((reader, standby));
    drop_slot(&c, "slot_cll").await;
}

async fn health_cluster(addr: &str) -> Value {
    support::health(addr).await["cluster"].clone()
}
