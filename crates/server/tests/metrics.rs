//! `GET /metrics`: scraped, parsed as Prometheus text, and its counters checked against the
//! traffic this test generated on a server of its own (in memory, real sockets).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use serde_json::json;
use supa_realtime_protocol::{Message, Serializer};
use support::{config, connect, server};

/// `name{labels}` -> value, for every sample line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .expect("sample line: <series> <value>");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(key.to_string(), v);
    }
    out
}

async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ctype, resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_the_traffic_generated() {
    let srv = server(config()).await;
    let addr = srv.local_addr();

    // three sockets on one topic, one refused join, heartbeats, broadcasts
    let mut a = connect(&srv, Serializer::V1).await;
    let mut b = connect(&srv, Serializer::V1).await;
    let mut c = connect(&srv, Serializer::V2).await;
    let cfg = json!({"broadcast": {"self": false}, "presence": {"enabled": false}});
    a.join_ok("realtime:m", "1", cfg.clone()).await;
    b.join_ok("realtime:m", "1", cfg.clone()).await;
    c.join_ok("realtime:m", "1", cfg.clone()).await;
    let refused = a.join("realtime:", "2", json!({"config": cfg})).await;
    assert_eq!(refused.payload["status"], "error");
    for i in 0..4 {
        a.heartbeat(&format!("h{i}")).await;
    }
    const N: usize = 10;
    for i in 0..N {
        a.send(Message::new(
            Some("1".into()),
            Some(format!("b{i}")),
            "realtime:m",
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {"i": i}}),
        ))
        .await;
    }
    for _ in 0..N {
        b.recv_event("broadcast").await;
    }
    for _ in 0..N {
        let _ = c.recv().await;
    }

    let (ctype, text) = scrape(addr).await;
    assert!(
        ctype.contains("openmetrics-text") || ctype.contains("text/plain"),
        "{ctype}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for name in [
        "realtime_connections",
        "realtime_channels",
        "realtime_joins",
        "realtime_join_refusals",
        "realtime_messages_in",
        "realtime_messages_out",
        "realtime_slow_consumer_drops",
        "realtime_slow_consumer_disconnects",
        "realtime_rls_check_duration_seconds",
        "realtime_database_broadcast_lag_seconds",
    ] {
        // (the per-stream replication series appear once a database streams: see
        // postgres_faults.rs)
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let m = parse(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    assert_eq!(get("realtime_connections"), 3.0);
    assert_eq!(get("realtime_channels{kind=\"public\"}"), 3.0);
    assert_eq!(get("realtime_joins_total"), 3.0);
    assert_eq!(
        get("realtime_join_refusals_total{reason=\"TopicNameRequired\"}"),
        1.0
    );
    assert_eq!(get("realtime_messages_in_total{kind=\"heartbeat\"}"), 4.0);
    assert_eq!(get("realtime_messages_in_total{kind=\"phx_join\"}"), 4.0);
    assert_eq!(
        get("realtime_messages_in_total{kind=\"broadcast\"}"),
        N as f64
    );
    // self: false, so each broadcast goes to the two other sockets
    assert_eq!(
        get("realtime_messages_out_total{kind=\"broadcast\"}"),
        2.0 * N as f64
    );
    assert_eq!(get("realtime_slow_consumer_disconnects_total"), 0.0);

    // leaving is counted too
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, text) = scrape(addr).await;
        let m = parse(&text);
        if m.get("realtime_connections") == Some(&2.0)
            && m.get("realtime_channels{kind=\"public\"}") == Some(&2.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gauges did not go down:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    srv.shutdown().await;
}
