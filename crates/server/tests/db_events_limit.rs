//! The database-events limiter (opt-in): over `MAX_DB_EVENTS_PER_SECOND` postgres_changes are
//! dropped, and the channel is told, once, with a `system` error, never silently.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use supa_realtime_protocol::Serializer;
use support::postgres::{db, require_db};
use support::*;

#[tokio::test]
async fn over_the_db_events_limit_changes_stop_and_the_channel_is_told() {
    let Some(url) = require_db("over_the_db_events_limit_changes_stop_and_the_channel_is_told")
    else {
        return;
    };
    let name = format!("dbl{}", std::process::id());
    let table = format!("dblimit_{name}");
    let sql = db(&url).await;
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
    cfg.database_url = Some(url.clone());
    cfg.slot_name = format!("slot_{name}");
    cfg.publication = format!("pub_{name}");
    cfg.pg_resume_grace_ms = 0;
    cfg.max_db_events_per_second = 1; // 60 deliveries per 60 s window
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
    sql.batch_execute(&format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'slot_{name}' AND active_pid IS NOT NULL;"
    ))
    .await
    .ok();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sql.batch_execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'slot_{name}';
         DROP PUBLICATION IF EXISTS pub_{name}; DROP TABLE IF EXISTS public.{table};"
    ))
    .await
    .ok();
}
