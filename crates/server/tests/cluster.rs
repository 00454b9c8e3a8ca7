//! Cluster mode: three server nodes on loopback meet through a real redis-server (one per
//! test, so a test may stop it). Raw WebSocket clients check the frames; the official clients
//! are the peers in tests/interop/test_cluster.py.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use supa_realtime_protocol::{Message, Serializer, ServerFrame, WireFrame};
use supa_realtime_server::{Config, Server};
use support::redis::{require_redis, Redis};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn node_config(redis: &Redis) -> Config {
    let mut c = config();
    c.cluster.redis_url = Some(redis.url());
    c.cluster.cluster_presence_ttl_ms = 1500;
    c
}

async fn nodes(redis: &Redis, n: usize) -> Vec<Server> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(server(node_config(redis)).await);
    }
    out
}

async fn health(srv: &Server) -> Value {
    support::health(&srv.local_addr().to_string()).await
}

/// Wait until `srv`'s cluster status satisfies `f`.
async fn wait_health(srv: &Server, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(srv).await;
        if f(&h["cluster"]) {
            return h["cluster"].clone();
        }
        assert!(Instant::now() < deadline, "cluster never got {what}: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next JSON message with `event` (any event if empty), waiting up to `secs` in all.
async fn event_within(c: &mut Client, event: &str, secs: u64) -> Message {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, c.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {event} within {secs} s"))
            .expect("socket ended")
            .expect("socket error");
        let wire = match frame {
            WsMessage::Text(t) => WireFrame::Text(t.to_string()),
            WsMessage::Binary(b) => WireFrame::Binary(b),
            _ => continue,
        };
        if let Ok(ServerFrame::Message(m)) = c.s.decode_server_frame(&wire) {
            if event.is_empty() || m.event == event {
                return m;
            }
        }
    }
}

fn bcast(topic: &str, r: &str, payload: Value) -> Message {
    Message::new(
        Some("1".into()),
        Some(r.into()),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": payload}),
    )
}

#[tokio::test]
async fn broadcasts_cross_nodes_in_order_with_both_serializers_and_rest() {
    let Some(redis) = require_redis("cluster broadcast", false) else {
        return;
    };
    let n = nodes(&redis, 3).await;
    let mut a = connect(&n[0], Serializer::V1).await;
    let mut b = connect(&n[1], Serializer::V2).await;
    a.join_ok("realtime:room", "1", json!({"broadcast": {"self": false}}))
        .await;
    b.join_ok(
        "realtime:room",
        "1",
        json!({"broadcast": {"self": true, "ack": true}}),
    )
    .await;
    for i in 0..50 {
        a.send(bcast("realtime:room", &format!("a{i}"), json!({"i": i})))
            .await;
    }
    for i in 0..50 {
        let m = b.recv_event("broadcast").await;
        assert_eq!(m.payload["payload"]["i"], i, "per-topic order across nodes");
    }
    // self + ack on node 2: the ack and its own copy; node 1 gets it once.
    b.send(bcast("realtime:room", "b1", json!({"from": "b"})))
        .await;
    let mut got_ack = false;
    let mut got_own = false;
    while !(got_ack && got_own) {
        let m = b.recv_msg().await;
        match m.event.as_str() {
            "phx_reply" if m.msg_ref.as_deref() == Some("b1") => got_ack = true,
            "broadcast" => {
                assert_eq!(m.payload["payload"]["from"], "b");
                got_own = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        a.recv_event("broadcast").await.payload["payload"]["from"],
        "b"
    );
    a.assert_silent(300).await;

    // REST to node 3, which has no channel of the topic: both nodes' clients get it.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{}/api/broadcast", n[2].local_addr()))
        .header("apikey", ANON)
        .json(&json!({"messages": [{"topic": "room", "event": "rest", "payload": {"x": 1}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for c in [&mut a, &mut b] {
        let m = c.recv_event("broadcast").await;
        assert_eq!(m.payload["event"], "rest");
        assert_eq!(m.payload["payload"], json!({"x": 1}));
    }
    let r = http
        .post(format!(
            "http://{}/api/broadcast/room/events/bin",
            n[2].local_addr()
        ))
        .header("apikey", ANON)
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Binary payloads reach 2.0.0 sockets only, as on one node.
    match b.recv().await {
        ServerFrame::Binary(bin) => assert!(format!("{bin:?}").contains("bin"), "{bin:?}"),
        other => panic!("expected a user broadcast, got {other:?}"),
    }
    a.assert_silent(300).await;

    let status = wait_health(&n[0], "3 nodes", |c| c["nodes_seen"] == 3).await;
    assert_eq!(status["redis_connected"], true);
    assert_eq!(status["topics_subscribed"], 1);
    // Node 3 subscribed to nothing: it has no channel.
    assert_eq!(health(&n[2]).await["cluster"]["topics_subscribed"], 0);
    drop(b);
    wait_health(&n[1], "topic released", |c| c["topics_subscribed"] == 0).await;
}

#[tokio::test]
async fn presence_is_one_state_across_nodes() {
    let Some(redis) = require_redis("cluster presence", false) else {
        return;
    };
    let n = nodes(&redis, 2).await;
    let mut a = connect(&n[0], Serializer::V1).await;
    a.join_ok(
        "realtime:lobby",
        "1",
        json!({"presence": {"key": "alice", "enabled": true}}),
    )
    .await;
    assert_eq!(a.recv_event("presence_state").await.payload, json!({}));
    a.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        "realtime:lobby",
        "presence",
        json!({"event": "track", "payload": {"s": "on"}}),
    ))
    .await;
    a.recv_event("presence_diff").await;

    // A joiner on another node gets the cluster's state.
    let mut b = connect(&n[1], Serializer::V2).await;
    b.join_ok(
        "realtime:lobby",
        "1",
        json!({"presence": {"key": "bob", "enabled": true}}),
    )
    .await;
    let state = b.recv_event("presence_state").await;
    assert_eq!(state.payload["alice"]["metas"][0]["s"], "on", "{state:?}");
    b.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        "realtime:lobby",
        "presence",
        json!({"event": "track", "payload": {"s": "here"}}),
    ))
    .await;
    let diff = a.recv_event("presence_diff").await;
    assert_eq!(diff.payload["joins"]["bob"]["metas"][0]["s"], "here");
    assert_eq!(diff.payload["leaves"], json!({}));

    // Alice's socket goes: bob sees her leave.
    let own = event_within(&mut b, "presence_diff", 5).await;
    assert_eq!(own.payload["joins"]["bob"]["metas"][0]["s"], "here");
    drop(a);
    let diff = event_within(&mut b, "presence_diff", 10).await;
    assert_eq!(diff.payload["leaves"]["alice"]["metas"][0]["s"], "on");
    assert_eq!(diff.payload["joins"], json!({}));
}

#[tokio::test]
async fn redis_outage_keeps_local_delivery_and_recovers_what_crossed() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("supa_realtime_server=info")
        .with_test_writer()
        .try_init();
    let Some(mut redis) = require_redis("cluster outage", true) else {
        return;
    };
    let n = nodes(&redis, 2).await;
    let mut a = connect(&n[0], Serializer::V1).await;
    let mut c = connect(&n[0], Serializer::V2).await;
    let mut b = connect(&n[1], Serializer::V2).await;
    for x in [&mut a, &mut c, &mut b] {
        x.join_ok("realtime:o", "1", json!({})).await;
    }
    a.send(bcast("realtime:o", "0", json!({"i": 0}))).await;
    assert_eq!(b.recv_event("broadcast").await.payload["payload"]["i"], 0);
    assert_eq!(c.recv_event("broadcast").await.payload["payload"]["i"], 0);

    redis.stop();
    wait_health(&n[1], "Redis down", |c| c["redis_connected"] == false).await;
    for i in 1..=5 {
        a.send(bcast("realtime:o", &i.to_string(), json!({"i": i})))
            .await;
    }
    // Local delivery goes on.
    for i in 1..=5 {
        assert_eq!(c.recv_event("broadcast").await.payload["payload"]["i"], i);
    }
    // REST cannot cross: an error, not a 202.
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/broadcast", n[1].local_addr()))
        .header("apikey", ANON)
        .json(&json!({"messages": [{"topic": "o", "event": "e", "payload": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    redis.start();
    // What node 1 kept is published when Redis is back: node 2 gets it late, in order.
    for i in 1..=5 {
        let m = event_within(&mut b, "broadcast", 15).await;
        assert_eq!(m.payload["payload"]["i"], i);
    }
    wait_health(&n[0], "Redis back", |c| c["redis_connected"] == true).await;
    a.send(bcast("realtime:o", "6", json!({"i": 6}))).await;
    assert_eq!(b.recv_event("broadcast").await.payload["payload"]["i"], 6);
    // Node 1's channels got nothing twice.
    assert_eq!(c.recv_event("broadcast").await.payload["payload"]["i"], 6);
    c.assert_silent(300).await;
    let status = health(&n[0]).await["cluster"].clone();
    assert_eq!(status["published_late"], 5, "{status}");
    assert_eq!(status["channels_errored"], 0, "{status}");
}

#[tokio::test]
async fn an_outage_buffer_that_overflows_is_reported_with_phx_error() {
    let Some(mut redis) = require_redis("cluster outage buffer overflow", true) else {
        return;
    };
    let mut cfg = node_config(&redis);
    cfg.cluster.cluster_outage_buffer = 3;
    let n = [server(cfg).await, server(node_config(&redis)).await];
    let mut a = connect(&n[0], Serializer::V1).await;
    let mut c = connect(&n[0], Serializer::V2).await;
    // 2.0.0, whose frames carry the join_ref.
    let mut b = connect(&n[1], Serializer::V2).await;
    a.join_ok("realtime:ov", "1", json!({})).await;
    c.join_ok("realtime:ov", "1", json!({})).await;
    b.join_ok("realtime:ov", "4", json!({})).await;
    a.send(bcast("realtime:ov", "0", json!({"i": 0}))).await;
    assert_eq!(b.recv_event("broadcast").await.payload["payload"]["i"], 0);
    assert_eq!(c.recv_event("broadcast").await.payload["payload"]["i"], 0);

    redis.stop();
    wait_health(&n[0], "Redis down", |c| c["redis_connected"] == false).await;
    // 10 broadcasts where node 1 keeps 3 for the others
    for i in 1..=10 {
        a.send(bcast("realtime:ov", &i.to_string(), json!({"i": i})))
            .await;
    }
    for i in 1..=10 {
        assert_eq!(
            c.recv_event("broadcast").await.payload["payload"]["i"],
            i,
            "node 1's own channels get every one"
        );
    }
    redis.start();
    // node 2 cannot get 4..=10 any more: what was kept may come, then its channel rejoins
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut late = Vec::new();
    let err = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no phx_error; got {late:?}");
        let m = event_within(&mut b, "", 15).await;
        match m.event.as_str() {
            "broadcast" => late.push(m.payload["payload"]["i"].clone()),
            "phx_error" => break m,
            _ => {}
        }
    };
    assert_eq!(err.topic, "realtime:ov");
    assert_eq!(
        err.join_ref.as_deref(),
        Some("4"),
        "phx_error reaches the channel"
    );
    assert!(
        late.len() <= 3 && late.iter().zip(1..).all(|(v, i)| *v == i),
        "only what the buffer held, in order: {late:?}"
    );
    let status = wait_health(&n[0], "the gap reported", |c| c["gaps_reported"] == 1).await;
    assert_eq!(status["published_late"], 3, "{status}");
    // after the rejoin, traffic flows again
    b.join_ok("realtime:ov", "5", json!({})).await;
    a.send(bcast("realtime:ov", "11", json!({"i": 11}))).await;
    assert_eq!(
        event_within(&mut b, "broadcast", 5).await.payload["payload"]["i"],
        11
    );
}

#[tokio::test]
async fn a_batch_that_failed_half_way_is_sent_again_without_duplicates() {
    let Some(redis) = require_redis("cluster half-way batch", false) else {
        return;
    };
    let n = nodes(&redis, 2).await;
    let mut a = connect(&n[0], Serializer::V1).await;
    let mut b = connect(&n[1], Serializer::V2).await;
    for topic in ["realtime:hx", "realtime:hy"] {
        a.join_ok(topic, "1", json!({})).await;
        b.join_ok(topic, "2", json!({})).await;
    }
    a.send(bcast("realtime:hx", "0", json!({"i": 0}))).await;
    assert_eq!(b.recv_event("broadcast").await.payload["payload"]["i"], 0);
    // The publish of topic `hy` fails in Redis (its meta key holds the wrong type), so a batch
    // with `hx` broadcasts before it fails half-way: those were published already.
    let meta = format!("{}:mt:0:hy", node_config(&redis).cluster.redis_prefix);
    redis.cli(&["SET", &meta, "not a hash"]);
    const N: i64 = 50;
    for i in 1..=N {
        a.send(bcast("realtime:hx", &i.to_string(), json!({"i": i})))
            .await;
    }
    a.send(bcast("realtime:hy", "y", json!({"i": -1}))).await;
    wait_health(&n[0], "the failed batch kept", |c| {
        c["outage_buffered"].as_u64().unwrap_or(0) > 1
    })
    .await;
    redis.cli(&["DEL", &meta]);
    let status = wait_health(&n[0], "the batch sent again", |c| {
        c["redis_connected"] == true && c["outage_buffered"] == 0
    })
    .await;
    let resent = status["published_late"].as_u64().unwrap_or(0);
    assert!(
        resent > 1,
        "no broadcast of `hx` was in the failed batch: {status}"
    );
    // every `hx` broadcast once, in order
    let mut got = Vec::new();
    while got.len() < N as usize {
        let m = event_within(&mut b, "broadcast", 10).await;
        if m.topic == "realtime:hx" {
            got.push(m.payload["payload"]["i"].as_i64().unwrap_or(0));
        }
    }
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
    a.send(bcast("realtime:hx", "z", json!({"i": N + 1}))).await;
    loop {
        let m = event_within(&mut b, "broadcast", 5).await;
        if m.topic == "realtime:hx" {
            assert_eq!(
                m.payload["payload"]["i"],
                N + 1,
                "a broadcast delivered twice"
            );
            break;
        }
    }
    eprintln!(
        "sent again after the half-way failure: {resent} (of {} made)",
        N + 1
    );
}

#[tokio::test]
async fn lost_history_is_reported_with_phx_error() {
    let Some(mut redis) = require_redis("cluster lost history", false) else {
        return;
    };
    let n = nodes(&redis, 2).await;
    let mut a = connect(&n[0], Serializer::V1).await;
    // 2.0.0, whose frames carry the join_ref.
    let mut b = connect(&n[1], Serializer::V2).await;
    a.join_ok("realtime:h", "1", json!({})).await;
    b.join_ok("realtime:h", "7", json!({})).await;
    a.send(bcast("realtime:h", "0", json!({"i": 0}))).await;
    assert_eq!(b.recv_event("broadcast").await.payload["payload"]["i"], 0);
    // Redis restarts empty: node 2 cannot know what it missed, so its channel rejoins.
    redis.stop();
    redis.start();
    let e = event_within(&mut b, "phx_error", 15).await;
    assert_eq!(e.topic, "realtime:h");
    assert_eq!(
        e.join_ref.as_deref(),
        Some("7"),
        "phx_error reaches the channel"
    );
    // After rejoining, traffic flows again.
    b.join_ok("realtime:h", "8", json!({})).await;
    wait_health(&n[0], "Redis back", |c| c["redis_connected"] == true).await;
    a.send(bcast("realtime:h", "1", json!({"i": 1}))).await;
    assert_eq!(
        event_within(&mut b, "broadcast", 5).await.payload["payload"]["i"],
        1
    );
}

#[tokio::test]
async fn bad_redis_url_is_a_clear_error() {
    let mut c = config();
    c.cluster.redis_url = Some("not a url".into());
    match Server::bind(c).await {
        Err(e) => assert!(e.to_string().contains("Redis URL"), "{e}"),
        Ok(_) => panic!("a bad Redis URL must not start a server"),
    }
}

#[tokio::test]
async fn concurrent_users_are_limited_for_the_whole_cluster() {
    let Some(redis) = require_redis("cluster limits", false) else {
        return;
    };
    let mut n = Vec::new();
    for _ in 0..3 {
        let mut c = node_config(&redis);
        c.max_concurrent_users = 4;
        n.push(server(c).await);
    }
    for srv in &n {
        wait_health(srv, "3 nodes", |c| c["nodes_seen"] == 3).await;
    }
    // A flood spread over the three nodes: 4 get in, whichever node they are on.
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..7 {
        let mut c = connect(&n[i % 3], Serializer::V1).await;
        let r = c.join("realtime:flood", "1", json!({"config": {}})).await;
        if r.payload["status"] == "ok" {
            admitted.push(c);
        } else {
            assert_eq!(
                r.payload["response"]["reason"],
                "ConnectionRateLimitReached: Too many connected users"
            );
            refused += 1;
        }
    }
    assert_eq!((admitted.len(), refused), (4, 3));
    // One leaves: within a second (each node writes its exact count) there is room again.
    drop(admitted.remove(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect(&n[2], Serializer::V1).await;
        let r = c.join("realtime:flood", "1", json!({"config": {}})).await;
        if r.payload["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a user left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_node_shutting_down_says_goodbye() {
    let Some(redis) = require_redis("cluster shutdown", false) else {
        return;
    };
    // A lease far longer than the test: the leave must come from the shutdown itself.
    let mut c = node_config(&redis);
    c.cluster.cluster_presence_ttl_ms = 120_000;
    let leaving = server(c.clone()).await;
    let staying = server(c).await;
    wait_health(&staying, "2 nodes", |c| c["nodes_seen"] == 2).await;
    let mut a = connect(&leaving, Serializer::V1).await;
    a.join_ok(
        "realtime:bye",
        "1",
        json!({"presence": {"key": "alice", "enabled": true}}),
    )
    .await;
    a.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        "realtime:bye",
        "presence",
        json!({"event": "track", "payload": {"s": "on"}}),
    ))
    .await;
    a.recv_event("presence_diff").await;
    let mut b = connect(&staying, Serializer::V2).await;
    b.join_ok(
        "realtime:bye",
        "1",
        json!({"presence": {"key": "bob", "enabled": true}}),
    )
    .await;
    let state = b.recv_event("presence_state").await;
    assert_eq!(state.payload["alice"]["metas"][0]["s"], "on");
    let t0 = Instant::now();
    leaving.shutdown().await;
    let diff = event_within(&mut b, "presence_diff", 10).await;
    assert_eq!(diff.payload["leaves"]["alice"]["metas"][0]["s"], "on");
    assert!(t0.elapsed() < Duration::from_secs(10));
    wait_health(&staying, "1 node", |c| c["nodes_seen"] == 1).await;
}

#[tokio::test]
async fn a_reader_that_missed_messages_catches_up_or_rejoins() {
    let Some(redis) = require_redis("cluster catch-up", false) else {
        return;
    };
    let mut c = node_config(&redis);
    c.cluster.cluster_history_size = 5;
    let a_node = server(c.clone()).await;
    let b_node = server(c).await;
    let mut b = connect(&b_node, Serializer::V2).await;
    b.join_ok("realtime:cu", "3", json!({})).await;
    let http = reqwest::Client::new();
    let rest = |from: usize, to: usize| {
        let messages: Vec<Value> = (from..to)
            .map(|i| json!({"topic": "cu", "event": "e", "payload": {"i": i}}))
            .collect();
        http.post(format!("http://{}/api/broadcast", a_node.local_addr()))
            .header("apikey", ANON)
            .json(&json!({ "messages": messages }))
            .send()
    };
    assert_eq!(rest(0, 1).await.unwrap().status(), 202);
    assert_eq!(
        event_within(&mut b, "broadcast", 5).await.payload["payload"]["i"],
        0
    );

    // The readers lose pub/sub; what is published meanwhile is still in the history.
    redis.cli(&["client", "kill", "type", "pubsub"]);
    assert_eq!(rest(1, 4).await.unwrap().status(), 202);
    for i in 1..4 {
        assert_eq!(
            event_within(&mut b, "broadcast", 10).await.payload["payload"]["i"],
            i
        );
    }
    let s = wait_health(&b_node, "caught up", |c| {
        c["messages_caught_up"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(s["channels_errored"], 0, "{s}");

    // More than the history holds: the channel is told to rejoin, not left with a gap.
    redis.cli(&["client", "kill", "type", "pubsub"]);
    assert_eq!(rest(4, 24).await.unwrap().status(), 202);
    let e = event_within(&mut b, "phx_error", 10).await;
    assert_eq!(e.join_ref.as_deref(), Some("3"));
}
