//! The database-events limiter: postgres_changes deliveries per second, on by default at the
//! events limit (upstream's accounting: one per binding id delivered, server-wide, apart from
//! broadcasts). Over it changes are not delivered and the channel is told, once, with a
//! `system` error, never silently; every drop is counted in `/metrics`.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use supa_realtime_protocol::{Message, Serializer};
use support::postgres::{db, require_db};
use support::*;

/// A table of its own in a publication of its own, and a server config on its own slot
/// (`<prefix><pid>` names them).
async fn setup(
    url: &str,
    prefix: &str,
    table_prefix: &str,
) -> (
    tokio_postgres::Client,
    String,
    String,
    supa_realtime_server::Config,
) {
    let name = format!("{prefix}{}", std::process::id());
    let table = format!("{table_prefix}_{name}");
    let sql = db(url).await;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS pub_{name};
         DROP TABLE IF EXISTS public.{table};
         CREATE TABLE public.{table} (id int PRIMARY KEY);
         GRANT SELECT ON public.{table} TO PUBLIC;
         CREATE PUBLICATION pub_{name} FOR TABLE public.{table};"
    ))
    .await
    .unwrap();
    let mut cfg = config();
    cfg.database_url = Some(url.to_owned());
    cfg.slot_name = format!("slot_{name}");
    cfg.publication = format!("pub_{name}");
    cfg.pg_resume_grace_ms = 0;
    (sql, name, table, cfg)
}

#[tokio::test]
async fn over_the_db_events_limit_changes_stop_and_the_channel_is_told() {
    let Some(url) = require_db("over_the_db_events_limit_changes_stop_and_the_channel_is_told")
    else {
        return;
    };
    let (sql, name, table, mut cfg) = setup(&url, "dbl", "dblimit").await;
    cfg.max_db_events_per_second = Some(1); // 60 deliveries per 60 s window
    let srv = server(cfg).await;
    let mut c = connect(&srv, Serializer::V1).await;
    c.join_ok(
        "realtime:limited",
        "1",
        json!({"postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}]}),
    )
    .await;
    let sys = tokio::time::timeout(Duration::from_secs(20), c.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(sys.payload["message"], "Subscribed to PostgreSQL");
    sql.batch_execute(&format!(
        "INSERT INTO public.{table} SELECT generate_series(1, 100)"
    ))
    .await
    .unwrap();
    let mut changes = 0;
    let told = loop {
        let m = c.recv_msg().await;
        match m.event.as_str() {
            "postgres_changes" => {
                changes += 1;
                assert_eq!(m.payload["data"]["record"]["id"], changes);
            }
            "system" => break m,
            other => panic!("unexpected {other}: {m:?}"),
        }
    };
    assert_eq!(changes, 61, "the window's budget, then nothing");
    assert_eq!(
        told.payload,
        json!({"extension": "postgres_changes", "status": "error", "message": "Too many postgres changes messages per second", "channel": "limited"})
    );
    c.assert_silent(800).await;

    drop(c);
    srv.shutdown().await;
    // The change feed's slot is permanent: drop it, or it keeps WAL.
    support::pg_server::drop_slot(&sql, &format!("slot_{name}")).await;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS pub_{name}; DROP TABLE IF EXISTS public.{table};"
    ))
    .await
    .ok();
}

/// `name{labels}` -> value, for every sample line of `/metrics`.
async fn metrics(srv: &supa_realtime_server::Server) -> HashMap<String, f64> {
    let text = reqwest::get(format!("http://{}/metrics", srv.local_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

const DROPPED: &str = "realtime_postgres_changes_rate_limited_total";

/// Broadcast `event` on `topic` (joined with `self: true`) and wait for it to come back.
async fn broadcast_round_trip(c: &mut Client, topic: &str, join_ref: &str, event: &str) {
    c.send(Message::new(
        Some(join_ref.into()),
        Some("b1".into()),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": event, "payload": {"n": 1}}),
    ))
    .await;
    let m = tokio::time::timeout(Duration::from_secs(10), c.recv_event("broadcast"))
        .await
        .unwrap();
    assert_eq!(m.payload["event"], event);
}

#[tokio::test]
async fn by_default_changes_count_against_the_events_limit_per_id_and_drops_are_told_and_counted() {
    let Some(url) = require_db("by_default_changes_count_against_the_events_limit") else {
        return;
    };
    let (sql, name, table, mut cfg) = setup(&url, "dbd", "dbdefault").await;
    // No database-events limit of its own: it is the events limit, 2/s = 120 per 60 s.
    cfg.max_events_per_second = 2;
    cfg.max_db_events_per_second = None;
    let srv = server(cfg).await;

    // Two bindings that both match every insert: each change is one message with two ids,
    // and counts 2, as upstream counts subscription ids.
    let mut a = connect(&srv, Serializer::V1).await;
    a.join_ok(
        "realtime:limited",
        "1",
        json!({"broadcast": {"self": true}, "postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": table},
            {"event": "*", "schema": "public", "table": table}
        ]}),
    )
    .await;
    let sys = tokio::time::timeout(Duration::from_secs(20), a.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(sys.payload["message"], "Subscribed to PostgreSQL");
    // Another socket on another channel, broadcast only.
    let mut b = connect(&srv, Serializer::V2).await;
    b.join_ok("realtime:other", "1", json!({"broadcast": {"self": true}}))
        .await;

    sql.batch_execute(&format!(
        "INSERT INTO public.{table} SELECT generate_series(1, 100)"
    ))
    .await
    .unwrap();
    let mut changes = 0;
    let told = loop {
        let m = tokio::time::timeout(Duration::from_secs(20), a.recv_msg())
            .await
            .unwrap();
        match m.event.as_str() {
            "postgres_changes" => {
                changes += 1;
                assert_eq!(m.payload["data"]["record"]["id"], changes);
                assert_eq!(m.payload["ids"].as_array().map(Vec::len), Some(2));
            }
            "system" => break m,
            other => panic!("unexpected {other}: {m:?}"),
        }
    };
    // 61 admitted while the window's count (2 per change) was at most 120
    assert_eq!(
        changes, 61,
        "the window's budget counted per id, then nothing"
    );
    assert_eq!(
        told.payload,
        json!({"extension": "postgres_changes", "status": "error", "message": "Too many postgres changes messages per second", "channel": "limited"})
    );
    // every change not delivered is counted
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metrics(&srv).await.get(DROPPED).copied() != Some(39.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            metrics(&srv).await.get(DROPPED)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.assert_silent(500).await;
    assert_eq!(metrics(&srv).await.get(DROPPED).copied(), Some(39.0));

    // Broadcasts are another budget: they still flow, on this channel and on others.
    broadcast_round_trip(&mut a, "realtime:limited", "1", "same_channel").await;
    broadcast_round_trip(&mut b, "realtime:other", "1", "other_channel").await;

    // The budget is the server's (upstream: the tenant's): a channel that subscribes now is
    // told too, at its first change, and that change is counted.
    b.join_ok(
        "realtime:late",
        "2",
        json!({"postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}]}),
    )
    .await;
    let sys = tokio::time::timeout(Duration::from_secs(20), b.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(sys.payload["message"], "Subscribed to PostgreSQL");
    sql.batch_execute(&format!("INSERT INTO public.{table} VALUES (1000)"))
        .await
        .unwrap();
    let told = tokio::time::timeout(Duration::from_secs(20), b.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(
        told.payload["message"],
        "Too many postgres changes messages per second"
    );
    assert_eq!(told.topic, "realtime:late");
    // the first channel was told already in this episode: not again, and nothing delivered
    a.assert_silent(500).await;
    assert_eq!(metrics(&srv).await.get(DROPPED).copied(), Some(41.0));

    drop((a, b));
    srv.shutdown().await;
    // The change feed's slot is permanent: drop it, or it keeps WAL.
    support::pg_server::drop_slot(&sql, &format!("slot_{name}")).await;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS pub_{name}; DROP TABLE IF EXISTS public.{table};"
    ))
    .await
    .ok();
}
