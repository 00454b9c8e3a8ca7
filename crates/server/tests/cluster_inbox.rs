//! postgres_changes in cluster mode: deliveries lost on the way to a node are told, never
//! silent. Two server processes, a real PostgreSQL and a real redis-server: node A reads the
//! slot, node B's channel gets its changes through B's inbox. B is paused (SIGSTOP) while
//! its inbox fills, then (a) the inbox is trimmed past its cap, or (b) Redis restarts without
//! its data; either way B's channel gets `phx_error` (so its client rejoins).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::pg_server::*;
use support::postgres::{db, require_db};
use support::redis::{require_redis, Redis};
use support::ANON;

async fn wait_for(addr: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health_cluster(addr).await;
        if f(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "{addr} never got {what}: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(node: &ServerProc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &node.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Node A (the slot reader) and node B, whose socket is subscribed and got a first change.
struct Setup {
    a: ServerProc,
    b: ServerProc,
    ws: Ws,
    pg: tokio_postgres::Client,
}

async fn setup(url: &str, redis: &Redis, name: &str) -> Setup {
    let pg = db(url).await;
    let table = format!("pc_{name}");
    prepare(
        &pg,
        name,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY); GRANT SELECT ON {table} TO PUBLIC;"),
        &[table.as_str()],
    )
    .await;
    let redis_url = redis.url();
    let extra = [
        "--redis-url",
        redis_url.as_str(),
        "--cluster-inbox-max",
        "50",
    ];
    let a = ServerProc::start(Some(url), name, &extra, 0, None).await;
    wait_for(&a.addr, "the slot lease", |h| {
        h["slot_owner"]["this_node"] == true
    })
    .await;
    let b = ServerProc::start(Some(url), name, &extra, 0, None).await;
    let mut ws = Ws::connect(&b.addr).await;
    ws.join(name, ANON, json!([{"event": "INSERT", "table": table}]))
        .await;
    ws.subscribed().await;
    pg.execute(&format!("INSERT INTO {table} VALUES (0)"), &[])
        .await
        .unwrap();
    assert!(
        ws.change(WAIT).await.is_some(),
        "first change through B's inbox"
    );
    Setup { a, b, ws, pg }
}

/// Insert `n` rows in one statement and wait until A wrote them to Redis.
async fn insert_and_wait_written(s: &Setup, name: &str, from: i32, n: i32) {
    let before = health_cluster(&s.a.addr).await["slot_owner"]["deliveries_sent"]
        .as_u64()
        .unwrap();
    s.pg.execute(
        &format!(
            "INSERT INTO pc_{name} SELECT generate_series({from}, {})",
            from + n - 1
        ),
        &[],
    )
    .await
    .unwrap();
    wait_for(&s.a.addr, "the deliveries written", |h| {
        h["slot_owner"]["deliveries_sent"].as_u64().unwrap_or(0) >= before + n as u64
    })
    .await;
}

/// Changes B's socket gets until `phx_error` (which must come).
async fn changes_until_phx_error(ws: &mut Ws) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut changes = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = ws
            .recv(left)
            .await
            .unwrap_or_else(|| panic!("no phx_error after {changes} changes"));
        match m["event"].as_str() {
            Some("phx_error") => return changes,
            Some("postgres_changes") => changes += 1,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_whose_inbox_was_trimmed_gets_phx_error() {
    let Some(url) = require_db("a_stalled_node_whose_inbox_was_trimmed_gets_phx_error") else {
        return;
    };
    let Some(redis) = require_redis("inbox trimmed", false) else {
        return;
    };
    let mut s = setup(&url, &redis, "cit").await;
    signal(&s.b, "-STOP");
    // 600 deliveries into an inbox capped at about 50 while B does not read.
    insert_and_wait_written(&s, "cit", 1, 600).await;
    signal(&s.b, "-CONT");
    let got = changes_until_phx_error(&mut s.ws).await;
    let h = wait_for(&s.b.addr, "the loss counted", |h| {
        h["slot_owner"]["inbox_lost"].as_u64().unwrap_or(0) > 0
    })
    .await;
    eprintln!(
        "inbox trimmed: {} deliveries lost, {got} changes before phx_error, health {}",
        h["slot_owner"]["inbox_lost"], h["slot_owner"]
    );
    assert!(got < 600, "{got} changes: nothing was trimmed?");
    assert_eq!(h["slot_owner"]["channels_errored"], 1);
    drop_slot(&s.pg, "slot_cit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_with_unread_deliveries_gives_phx_error() {
    let Some(url) = require_db("redis_restarted_empty_with_unread_deliveries_gives_phx_error")
    else {
        return;
    };
    let Some(mut redis) = require_redis("inbox lost by Redis", false) else {
        return;
    };
    let mut s = setup(&url, &redis, "cie").await;
    signal(&s.b, "-STOP");
    insert_and_wait_written(&s, "cie", 1, 20).await;
    // Without persistence: the 20 deliveries in B's inbox are gone with Redis's data.
    redis.stop();
    redis.start();
    signal(&s.b, "-CONT");
    let got = changes_until_phx_error(&mut s.ws).await;
    let h = wait_for(&s.b.addr, "the reset counted", |h| {
        h["slot_owner"]["inbox_resets"].as_u64().unwrap_or(0) > 0
    })
    .await;
    eprintln!(
        "Redis restarted empty: {got} changes before phx_error, health {}",
        h["slot_owner"]
    );
    // (Changes before the phx_error: what Redis had sent B's paused reader before it
    // restarted, read from B's socket buffer once B resumed.)
    // After the rejoin the channel works again: a new change arrives.
    s.ws.join("cie", ANON, json!([{"event": "INSERT", "table": "pc_cie"}]))
        .await;
    s.ws.subscribed().await;
    s.pg.execute("INSERT INTO pc_cie VALUES (1000)", &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, data) = s.ws.change(left).await.expect("a change after the rejoin");
        if data["record"]["id"] == 1000 {
            break;
        }
    }
    drop_slot(&s.pg, "slot_cie").await;
}

async fn health_cluster(addr: &str) -> Value {
    support::health(addr).await["cluster"].clone()
}
