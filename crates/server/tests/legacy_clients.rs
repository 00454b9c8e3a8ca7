//! Joins without `config`, as older clients send them (PROTOCOL.md §4.6), against a real
//! PostgreSQL: the sub-topic names the subscription, and changes arrive with their type as the
//! event and the bare record as the payload.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use supa_realtime_protocol::Serializer;
use support::postgres::{db, require_db};
use support::*;

#[tokio::test]
async fn a_join_without_config_subscribes_to_the_topics_table() {
    let Some(url) = require_db("a_join_without_config_subscribes_to_the_topics_table") else {
        return;
    };
    let name = format!("lg{}", std::process::id());
    let table = format!("legacy_{name}");
    let sql = db(&url).await;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS pub_{name};
         DROP TABLE IF EXISTS public.{table};
         CREATE TABLE public.{table} (id int PRIMARY KEY, title text);
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
    let srv = server(cfg).await;

    let mut c = connect(&srv, Serializer::V1).await;
    let topic = format!("realtime:public:{table}:id=eq.1");
    let r = c.join(&topic, "1", json!({})).await;
    assert_eq!(r.payload, json!({"status": "ok", "response": {}}));
    let sys = tokio::time::timeout(Duration::from_secs(20), c.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(
        sys.payload["message"], "Subscribed to PostgreSQL",
        "{sys:?}"
    );

    sql.batch_execute(&format!(
        "INSERT INTO public.{table} VALUES (2, 'other'); INSERT INTO public.{table} VALUES (1, 'mine');"
    ))
    .await
    .unwrap();
    let m = c.recv_msg().await;
    assert_eq!(m.event, "INSERT", "{m:?}");
    assert_eq!(m.topic, topic);
    assert_eq!(m.payload["record"], json!({"id": 1, "title": "mine"}));
    assert_eq!(m.payload["table"], table.as_str());
    assert!(m.payload.get("ids").is_none(), "no ids wrapper: {m:?}");
    sql.batch_execute(&format!(
        "UPDATE public.{table} SET title = 'new' WHERE id = 1"
    ))
    .await
    .unwrap();
    let m = c.recv_msg().await;
    assert_eq!(m.event, "UPDATE");
    assert_eq!(m.payload["record"]["title"], "new");

    // Broadcast still works on a legacy channel, and a topic naming no table is told so.
    let mut other = connect(&srv, Serializer::V1).await;
    let r = other.join("realtime:room1", "1", json!({})).await;
    assert_eq!(r.payload["status"], "ok");
    let sys = tokio::time::timeout(Duration::from_secs(20), other.recv_event("system"))
        .await
        .unwrap();
    assert_eq!(sys.payload["status"], "error", "{sys:?}");
    eprintln!("legacy join of realtime:room1: {}", sys.payload["message"]);
    drop(c);
    drop(other);
    srv.shutdown().await;
    // The change feed's slot is permanent: drop it, or it keeps WAL.
    support::pg_server::drop_slot(&sql, &format!("slot_{name}")).await;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS pub_{name}; DROP TABLE IF EXISTS public.{table};"
    ))
    .await
    .ok();
}
