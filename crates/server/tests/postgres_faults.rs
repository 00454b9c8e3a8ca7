//! postgres_changes under faults: the database restarting while changes stream, and RLS
//! policies that raise for one subscriber. Real PostgreSQL, the real server binary as a
//! process, raw WebSocket clients.
//!
//! The restart test runs its own cluster (`scripts/postgres.sh` with `PG_FAULT_PORT`, default
//! 54340, under /tmp), so restarting it disturbs no other test.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use supa_realtime_server::auth::sign_hs256;
use supa_realtime_server::config::DEFAULT_JWT_SECRET;
use support::pg_server::*;
use support::postgres::{db, postgres_sh, require_db};
use support::ANON;

const DB_DOWN: &str = "Realtime was unable to connect to the project database";

/// Every `record.id` received until `until` is seen (or `timeout` passes), counted.
async fn collect_ids(ws: &mut Ws, counts: &mut HashMap<i64, u32>, until: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !counts.contains_key(&until) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("row {until} not delivered; got {} ids", counts.len()));
        let Some((_, data)) = ws.change(left).await else {
            panic!("row {until} not delivered; got {} ids", counts.len());
        };
        let id = data["record"]["id"].as_i64().unwrap();
        *counts.entry(id).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicates_across_a_database_restart() {
    if require_db("no_duplicates_across_a_database_restart").is_none() {
        return;
    }
    let port = std::env::var("PG_FAULT_PORT").unwrap_or_else(|_| "54340".into());
    let base = format!("/tmp/supa-realtime-pg-fault-test-{port}");
    let env = [("PG_PORT", port.as_str()), ("PG_BASE", base.as_str())];
    let url = postgres_sh(&["start"], &env).expect("start the test's own cluster");
    let c = db(&url).await;
    prepare(
        &c,
        "dup",
        "DROP TABLE IF EXISTS pc_dup; CREATE TABLE pc_dup (id int PRIMARY KEY); GRANT SELECT ON pc_dup TO PUBLIC;",
        &["pc_dup"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "dup", &[], 0, None).await;
    let mut ws = Ws::connect(&srv.addr).await;
    ws.join("dup", ANON, json!([{"event": "INSERT", "table": "pc_dup"}]))
        .await;
    ws.subscribed().await;

    // 300 transactions, all delivered and confirmed before the restart
    const N: i64 = 300;
    for i in 1..=N {
        c.execute("INSERT INTO pc_dup VALUES ($1)", &[&(i as i32)])
            .await
            .unwrap();
    }
    let mut counts: HashMap<i64, u32> = HashMap::new();
    collect_ids(&mut ws, &mut counts, N, Duration::from_secs(30)).await;
    let confirmed_before: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'slot_dup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(c);

    // The slot's confirmed position is written to disk only at some checkpoints: after the
    // restart PostgreSQL may resume it from an older position and send those rows again.
    postgres_sh(&["restart"], &env).expect("restart the database");
    let (status, msg) = ws
        .system(Duration::from_secs(20))
        .await
        .expect("told that the database went away");
    assert_eq!((status.as_str(), msg.as_str()), ("error", DB_DOWN));
    ws.subscribed().await;
    let c = db(&url).await;
    let confirmed_after: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'slot_dup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "slot confirmed_flush_lsn before the restart {confirmed_before}, after {confirmed_after}"
    );
    c.execute("INSERT INTO pc_dup VALUES (1000)", &[])
        .await
        .unwrap();
    collect_ids(&mut ws, &mut counts, 1000, Duration::from_secs(30)).await;
    // anything re-sent would arrive before the new row; wait a little more for stragglers
    while let Some((_, data)) = ws.change(Duration::from_millis(500)).await {
        *counts
            .entry(data["record"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = {
        let mut v: Vec<_> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    };
    assert!(
        twice.is_empty(),
        "{} of {} rows delivered more than once across the restart (first: {:?})",
        twice.len(),
        N + 1,
        &twice[..twice.len().min(10)]
    );
    let missing: Vec<i64> = (1..=N).filter(|i| !counts.contains_key(i)).collect();
    assert!(missing.is_empty(), "rows never delivered: {missing:?}");
    assert_eq!(counts.len() as i64, N + 1);
    drop(srv);
    drop_slot(&c, "slot_dup").await;
    drop(c);
    let _ = postgres_sh(&["stop"], &env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_error_for_one_user_among_six_costs_the_others_nothing() {
    let Some(url) = require_db("a_policy_error_for_one_user_among_six_costs_the_others_nothing")
    else {
        return;
    };
    let c = db(&url).await;
    prepare(
        &c,
        "iso",
        "DROP TABLE IF EXISTS pc_iso; CREATE TABLE pc_iso (id int PRIMARY KEY, body text);
         ALTER TABLE pc_iso ENABLE ROW LEVEL SECURITY;",
        &["pc_iso"],
    )
    .await;
    let srv = ServerProc::start(Some(&url), "iso", &[], 0, None).await;
    let token = |sub: usize, level: &str| {
        sign_hs256(
            DEFAULT_JWT_SECRET,
            &json!({"role": "authenticated", "sub": format!("00000000-0000-4000-8000-{sub:012}"),
                    "level": level, "exp": now_secs() + 3600}),
        )
    };
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "pc_iso"}]);
    // the bad user joins third: checks of the claims after it must still run
    let levels = ["1", "2", "oops", "3", "4", "5"];
    let mut subs = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        let mut ws = Ws::connect(&srv.addr).await;
        ws.join("iso", &token(i, level), binding.clone()).await;
        ws.subscribed().await;
        subs.push(ws);
    }
    // the server has created the roles and auth.* by now
    c.batch_execute(
        "GRANT SELECT ON pc_iso TO authenticated;
         CREATE POLICY by_level ON pc_iso FOR SELECT TO authenticated
           USING ((auth.jwt() ->> 'level')::int > 0);",
    )
    .await
    .unwrap();
    // 60 rows: single-row transactions and multi-row ones, so some checks are batched
    for i in 1..=20 {
        c.execute("INSERT INTO pc_iso VALUES ($1, 'x')", &[&i])
            .await
            .unwrap();
    }
    for t in 0..4 {
        let from = 21 + t * 10;
        c.execute(
            "INSERT INTO pc_iso SELECT g, 'y' FROM generate_series($1::int, $1::int + 9) g",
            &[&from],
        )
        .await
        .unwrap();
    }
    const ROWS: usize = 60;
    for (i, ws) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..ROWS {
            let (_, data) = ws.change(Duration::from_secs(20)).await.unwrap_or_else(|| {
                panic!(
                    "subscriber {i} (level {}) got only {} of {ROWS}",
                    levels[i],
                    got.len()
                )
            });
            got.push(data);
        }
        if levels[i] == "oops" {
            for d in &got {
                assert_eq!(
                    d["errors"],
                    json!(["Error 500: Internal Server Error, RLS policy evaluation failed"]),
                    "{d}"
                );
                assert_eq!(d["record"], json!({}));
            }
        } else {
            let ids: Vec<i64> = got
                .iter()
                .map(|d| d["record"]["id"].as_i64().unwrap())
                .collect();
            assert_eq!(
                ids,
                (1..=ROWS as i64).collect::<Vec<_>>(),
                "subscriber {i}: every row, in order"
            );
            assert!(got.iter().all(|d| d["errors"].is_null()));
        }
        assert!(
            ws.change(Duration::from_millis(200)).await.is_none(),
            "nothing more for {i}"
        );
    }

    // the RLS checks and the confirmed position show in /metrics
    let text = reqwest::get(format!("http://{}/metrics", srv.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(value("realtime_rls_checks_total") >= (ROWS * levels.len()) as f64);
    assert!(value("realtime_rls_check_duration_seconds_count") >= 1.0);
    assert!(value("realtime_replication_confirmed_lsn{stream=\"postgres_changes\"}") > 0.0);
    assert_eq!(
        value("realtime_messages_out_total{kind=\"postgres_changes\"}"),
        (ROWS * levels.len()) as f64
    );
    assert_eq!(
        value("realtime_postgres_changes_subscriptions"),
        levels.len() as f64
    );
    drop(srv);
    drop_slot(&c, "slot_iso").await;
}
