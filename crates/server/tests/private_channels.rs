//! Private channels and database broadcast (issue 7) against a real PostgreSQL: RLS policies on
//! `realtime.messages` decide who may join, read and write; `realtime.send` and
//! `realtime.broadcast_changes` reach subscribers by logical replication; replay reads stored
//! messages. Each test uses its own topic prefix so they run in parallel.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use supa_realtime_protocol::binary::ServerBinary;
use supa_realtime_protocol::{Message, Serializer, ServerFrame, UserPayload};
use supa_realtime_server::auth::sign_hs256;
use supa_realtime_server::config::DEFAULT_JWT_SECRET;
use supa_realtime_server::Server;
use support::postgres::{db, require_db};
use support::*;

// Tests run in parallel: the policies are (re)made atomically, one test at a time.
const POLICIES: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(727274);
DROP POLICY IF EXISTS rs_test_select ON realtime.messages;
DROP POLICY IF EXISTS rs_test_insert ON realtime.messages;
CREATE POLICY rs_test_select ON realtime.messages FOR SELECT TO authenticated USING (
  realtime.topic() LIKE 'allowed-%' OR realtime.topic() LIKE 'readonly-%'
  OR (realtime.topic() LIKE 'presread-%' AND extension = 'presence')
  OR realtime.topic() = 'user-' || auth.uid()::text);
CREATE POLICY rs_test_insert ON realtime.messages FOR INSERT TO authenticated WITH CHECK (
  realtime.topic() LIKE 'allowed-%' OR realtime.topic() = 'user-' || auth.uid()::text);
COMMIT;
";

fn user(sub: &str) -> String {
    sign_hs256(
        DEFAULT_JWT_SECRET,
        &json!({"role": "authenticated", "sub": sub, "exp": now() + 600}),
    )
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ (std::process::id() << 8)
}

/// A server on the database, with the database side ready (migrated, broadcasts streaming).
async fn server_with_db(url: &str) -> Server {
    let mut cfg = config();
    cfg.database_url = Some(url.to_owned());
    // A slot of its own, so parallel tests do not share one; the change feed's slots are
    // permanent, so those left by earlier test processes are dropped here.
    let pid = std::process::id();
    cfg.slot_name = format!("rs_private_test_{pid}_{:08x}", rand_u32());
    let client = db(url).await;
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE NOT active AND slot_name LIKE 'rs_private_test_%' AND slot_name NOT LIKE $1",
            &[&format!("rs_private_test_{pid}_%")],
        )
        .await
        .ok();
    let srv = server(cfg).await;
    let health = format!("http://{}/api/health", srv.local_addr());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h: Value = reqwest::get(&health).await.unwrap().json().await.unwrap();
        if h["database"]["ready"] == true && h["database"]["broadcast_streaming"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "database side not ready: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.batch_execute(POLICIES).await.unwrap();
    srv
}

async fn join_private(
    c: &mut Client,
    topic: &str,
    jref: &str,
    token: &str,
    extra: Value,
) -> Message {
    let mut config = json!({"private": true});
    if let (Value::Object(c), Value::Object(e)) = (&mut config, extra) {
        c.extend(e);
    }
    c.join(
        &format!("realtime:{topic}"),
        jref,
        json!({"config": config, "access_token": token}),
    )
    .await
}

async fn join_private_ok(c: &mut Client, topic: &str, jref: &str, token: &str, extra: Value) {
    let r = join_private(c, topic, jref, token, extra).await;
    assert_eq!(r.payload["status"], "ok", "private join refused: {r:?}");
}

fn bcast(jref: &str, r: &str, topic: &str, event: &str, payload: Value) -> Message {
    Message::new(
        Some(jref.into()),
        Some(r.into()),
        format!("realtime:{topic}"),
        "broadcast",
        json!({"type": "broadcast", "event": event, "payload": payload}),
    )
}

#[tokio::test]
async fn authorized_users_join_and_broadcast_others_are_refused() {
    let Some(url) = require_db("authorized_users_join_and_broadcast_others_are_refused") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("allowed-");
    let (mut a, mut b) = (
        connect(&srv, Serializer::V2).await,
        connect(&srv, Serializer::V1).await,
    );
    join_private_ok(
        &mut a,
        &topic,
        "1",
        &user("11111111-1111-1111-1111-111111111111"),
        json!({"broadcast": {"ack": true}}),
    )
    .await;
    join_private_ok(
        &mut b,
        &topic,
        "1",
        &user("22222222-2222-2222-2222-222222222222"),
        json!({}),
    )
    .await;
    a.send(bcast("1", "2", &topic, "hi", json!({"n": 1}))).await;
    assert_eq!(a.recv_event("phx_reply").await.payload["status"], "ok");
    assert_eq!(
        b.recv_event("broadcast").await.payload["payload"],
        json!({"n": 1})
    );

    let mut anon = connect(&srv, Serializer::V2).await;
    let r = join_private(&mut anon, &topic, "1", ANON, json!({})).await;
    assert_eq!(
        r.payload["response"]["reason"],
        format!(
            "Unauthorized: You do not have permissions to read from this Channel topic: {topic}"
        )
    );
    // Public and private rooms of one name are different: a public join sees nothing private.
    anon.join_ok(&format!("realtime:{topic}"), "2", json!({}))
        .await;
    a.send(bcast("1", "3", &topic, "hi", json!({"n": 2}))).await;
    assert_eq!(
        b.recv_event("broadcast").await.payload["payload"],
        json!({"n": 2})
    );
    anon.assert_silent(200).await;
}

#[tokio::test]
async fn read_only_users_broadcasts_are_dropped_and_presence_is_split() {
    let Some(url) = require_db("read_only_users_broadcasts_are_dropped_and_presence_is_split")
    else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("readonly-");
    let (mut reader, mut other) = (
        connect(&srv, Serializer::V2).await,
        connect(&srv, Serializer::V2).await,
    );
    join_private_ok(
        &mut reader,
        &topic,
        "1",
        &user("33333333-3333-3333-3333-333333333333"),
        json!({"broadcast": {"ack": true}}),
    )
    .await;
    join_private_ok(
        &mut other,
        &topic,
        "1",
        &user("44444444-4444-4444-4444-444444444444"),
        json!({}),
    )
    .await;
    // No write permission: dropped, and no reply even with ack (upstream: the client times out).
    reader.send(bcast("1", "2", &topic, "hi", json!({}))).await;
    other.assert_silent(300).await;
    reader.assert_silent(100).await;
    // Presence write is denied too: the track is answered with an error.
    reader
        .send(Message::new(
            Some("1".into()),
            Some("3".into()),
            format!("realtime:{topic}"),
            "presence",
            json!({"event": "track", "payload": {"u": 1}}),
        ))
        .await;
    assert_eq!(
        reader.recv_event("phx_reply").await.payload,
        json!({"status": "error", "response": {}})
    );

    // presread-: presence may be read (state arrives) but not broadcasts, and tracking is denied.
    let ptopic = unique("presread-");
    let mut p = connect(&srv, Serializer::V2).await;
    join_private_ok(
        &mut p,
        &ptopic,
        "1",
        &user("55555555-5555-5555-5555-555555555555"),
        json!({"presence": {"enabled": true}}),
    )
    .await;
    assert_eq!(p.recv_event("presence_state").await.payload, json!({}));
    p.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        format!("realtime:{ptopic}"),
        "presence",
        json!({"event": "track", "payload": {}}),
    ))
    .await;
    assert_eq!(p.recv_event("phx_reply").await.payload["status"], "error");
}

#[tokio::test]
async fn realtime_send_and_broadcast_changes_reach_subscribers() {
    let Some(url) = require_db("realtime_send_and_broadcast_changes_reach_subscribers") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("allowed-");
    let (mut v2, mut v1) = (
        connect(&srv, Serializer::V2).await,
        connect(&srv, Serializer::V1).await,
    );
    join_private(
        &mut v2,
        &topic,
        "1",
        &user("66666666-6666-6666-6666-666666666666"),
        json!({}),
    )
    .await;
    join_private(
        &mut v1,
        &topic,
        "1",
        &user("77777777-7777-7777-7777-777777777777"),
        json!({}),
    )
    .await;
    let sql = db(&url).await;
    let t0 = Instant::now();
    sql.execute(
        "SELECT realtime.send($1::text::jsonb, 'from_sql', $2, true)",
        &[&json!({"x": 1}).to_string(), &topic],
    )
    .await
    .unwrap();
    let got = v2.recv().await;
    eprintln!("realtime.send commit -> client: {:?}", t0.elapsed());
    let ServerFrame::Binary(ServerBinary::UserBroadcast(u)) = got else {
        panic!("kind 4 expected: {got:?}")
    };
    assert_eq!(u.event, "from_sql");
    let meta: Value = serde_json::from_slice(u.metadata.as_ref().unwrap()).unwrap();
    let UserPayload::Json(raw) = &u.payload else {
        panic!()
    };
    let payload: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(payload["x"], 1);
    assert_eq!(
        payload["id"], meta["id"],
        "the payload carries the message id"
    );
    let text = v1.recv_event("broadcast").await;
    assert_eq!(text.payload["event"], "from_sql");
    assert_eq!(text.payload["meta"]["id"], meta["id"]);

    // A trigger calling realtime.broadcast_changes.
    let table = format!("rs_bc_{:08x}", rand_u32());
    sql.batch_execute(&format!(
        "CREATE TABLE public.{table} (id int primary key, title text);
         CREATE FUNCTION public.{table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM realtime.broadcast_changes('{topic}', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD); RETURN NULL; END $$;
         CREATE TRIGGER {table}_bc AFTER INSERT OR UPDATE OR DELETE ON public.{table} FOR EACH ROW EXECUTE FUNCTION public.{table}_notify();
         INSERT INTO public.{table} VALUES (1, 'hello');"
    )).await.unwrap();
    let m = v1.recv_event("broadcast").await;
    assert_eq!(m.payload["event"], "INSERT");
    assert_eq!(
        m.payload["payload"]["record"],
        json!({"id": 1, "title": "hello"})
    );
    assert_eq!(m.payload["payload"]["operation"], "INSERT");
    assert_eq!(m.payload["payload"]["table"], table);
    sql.batch_execute(&format!(
        "DROP TABLE public.{table}; DROP FUNCTION public.{table}_notify();"
    ))
    .await
    .unwrap();

    // A public topic gets public sends only.
    let public = unique("pub-");
    let mut p = connect(&srv, Serializer::V1).await;
    p.join_ok(&format!("realtime:{public}"), "1", json!({}))
        .await;
    sql.execute(
        "SELECT realtime.send('{\"y\":2}'::jsonb, 'e', $1, false)",
        &[&public],
    )
    .await
    .unwrap();
    assert_eq!(p.recv_event("broadcast").await.payload["payload"]["y"], 2);
}

#[tokio::test]
async fn replay_returns_stored_messages_oldest_first() {
    let Some(url) = require_db("replay_returns_stored_messages_oldest_first") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("allowed-");
    let sql = db(&url).await;
    let since = (now() - 60) * 1000;
    for i in 0..3 {
        sql.execute(
            "SELECT realtime.send(jsonb_build_object('i', $1::int), 'stored', $2, true)",
            &[&i, &topic],
        )
        .await
        .unwrap();
    }
    let mut c = connect(&srv, Serializer::V1).await;
    let r = join_private(
        &mut c,
        &topic,
        "1",
        &user("88888888-8888-8888-8888-888888888888"),
        json!({"broadcast": {"replay": {"since": since, "limit": 2}}}),
    )
    .await;
    assert_eq!(r.payload["status"], "ok");
    let first = c.recv_event("broadcast").await;
    let second = c.recv_event("broadcast").await;
    assert_eq!(
        (
            first.payload["payload"]["i"].clone(),
            second.payload["payload"]["i"].clone()
        ),
        (json!(1), json!(2))
    );
    assert_eq!(first.payload["meta"]["replayed"], true);

    let r = join_private(
        &mut c,
        &topic,
        "2",
        &user("88888888-8888-8888-8888-888888888888"),
        json!({"broadcast": {"replay": {"since": "yesterday"}}}),
    )
    .await;
    assert_eq!(
        r.payload["response"]["reason"],
        "UnableToReplayMessages: Replay params are not valid"
    );
}

#[tokio::test]
async fn a_token_refresh_that_loses_permission_closes_the_channel() {
    let Some(url) = require_db("a_token_refresh_that_loses_permission_closes_the_channel") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let me = "99999999-9999-9999-9999-999999999999";
    let topic = format!("user-{me}");
    let mut c = connect(&srv, Serializer::V2).await;
    join_private_ok(&mut c, &topic, "1", &user(me), json!({})).await;
    // Same user, fresh token: still allowed, nothing happens.
    let fresh = sign_hs256(
        DEFAULT_JWT_SECRET,
        &json!({"role": "authenticated", "sub": me, "exp": now() + 900}),
    );
    c.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        format!("realtime:{topic}"),
        "access_token",
        json!({"access_token": fresh}),
    ))
    .await;
    c.assert_silent(300).await;
    // Another user's token: no longer allowed.
    c.send(Message::new(
        Some("1".into()),
        Some("3".into()),
        format!("realtime:{topic}"),
        "access_token",
        json!({"access_token": user("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa")}),
    ))
    .await;
    let sys = c.recv_event("system").await;
    assert_eq!(
        sys.payload["message"],
        format!("You no longer have permission to read from this Channel topic: {topic}")
    );
    assert_eq!(
        c.recv_event("phx_close").await.msg_ref.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn rest_private_broadcast_is_authorized_by_the_callers_jwt() {
    let Some(url) = require_db("rest_private_broadcast_is_authorized_by_the_callers_jwt") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("allowed-");
    let mut c = connect(&srv, Serializer::V2).await;
    join_private(
        &mut c,
        &topic,
        "1",
        &user("bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"),
        json!({}),
    )
    .await;
    let http = reqwest::Client::new();
    let single = |t: &str| {
        format!(
            "http://{}/realtime/v1/api/broadcast/{t}/events/rest?private=true",
            srv.local_addr()
        )
    };
    let writer = user("cccccccc-cccc-cccc-cccc-cccccccccccc");
    let r = http
        .post(single(&topic))
        .header("apikey", ANON)
        .bearer_auth(&writer)
        .json(&json!({"ok": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    match c.recv().await {
        ServerFrame::Binary(ServerBinary::UserBroadcast(u)) => assert_eq!(
            u.payload,
            UserPayload::Json(Bytes::from_static(br#"{"ok":1}"#))
        ),
        other => panic!("{other:?}"),
    }
    let r = http
        .post(single(&unique("readonly-")))
        .bearer_auth(&writer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (403, r#"{"message":"Unauthorized"}"#.into())
    );
    // Batch: the unauthorized private message is skipped, the authorized one delivered.
    let r = http
        .post(format!(
            "http://{}/realtime/v1/api/broadcast",
            srv.local_addr()
        ))
        .bearer_auth(&writer)
        .json(&json!({"messages": [
            {"topic": unique("readonly-"), "event": "x", "payload": {}, "private": true},
            {"topic": topic, "event": "batch", "payload": {"b": 1}, "private": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        c.recv_event("broadcast").await.payload["payload"],
        json!({"b": 1})
    );
}

#[tokio::test]
async fn two_servers_on_one_database_migrate_once() {
    let Some(url) = require_db("two_servers_on_one_database_migrate_once") else {
        return;
    };
    let (a, b) = tokio::join!(server_with_db(&url), server_with_db(&url));
    let sql = db(&url).await;
    let rows = sql.query("SELECT version, count(*) FROM realtime.rs_schema_migrations GROUP BY version ORDER BY version", &[]).await.unwrap();
    let versions: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(versions, vec![(1, 1), (2, 1), (3, 1)]);
    // Both serve private channels.
    for srv in [&a, &b] {
        let mut c = connect(srv, Serializer::V2).await;
        join_private_ok(
            &mut c,
            &unique("allowed-"),
            "1",
            &user("dddddddd-dddd-dddd-dddd-dddddddddddd"),
            json!({}),
        )
        .await;
    }
}

/// `realtime.send_binary`: the bytes reach 2.0.0 subscribers as a binary user broadcast
/// (kind 4) with the message id, are replayed as binary, and a failed send is a WARNING named
/// as upstream names it, never an error.
#[tokio::test]
async fn send_binary_reaches_subscribers_is_replayed_and_warns_on_failure() {
    let Some(url) = require_db("send_binary_reaches_subscribers_is_replayed_and_warns_on_failure")
    else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("allowed-");
    let token = user("99999999-9999-9999-9999-999999999999");
    let mut v2 = connect(&srv, Serializer::V2).await;
    join_private_ok(&mut v2, &topic, "1", &token, json!({})).await;
    let since = (now() - 60) * 1000;
    let sql = db(&url).await;
    let bytes: Vec<u8> = vec![0, 1, 2, 254, 255];
    sql.execute(
        "SELECT realtime.send_binary($1, 'bin_event', $2, true)",
        &[&bytes, &topic],
    )
    .await
    .unwrap();
    let got = v2.recv().await;
    let ServerFrame::Binary(ServerBinary::UserBroadcast(u)) = got else {
        panic!("kind 4 expected: {got:?}")
    };
    assert_eq!(u.event, "bin_event");
    assert_eq!(u.payload, UserPayload::Binary(Bytes::from(bytes.clone())));
    let meta: Value = serde_json::from_slice(u.metadata.as_ref().unwrap()).unwrap();
    assert!(meta["id"].is_string(), "metadata carries the id: {meta}");

    // Replayed to a later joiner as binary, marked replayed.
    let mut late = connect(&srv, Serializer::V2).await;
    join_private_ok(
        &mut late,
        &topic,
        "1",
        &token,
        json!({"broadcast": {"replay": {"since": since}}}),
    )
    .await;
    let got = late.recv().await;
    let ServerFrame::Binary(ServerBinary::UserBroadcast(r)) = got else {
        panic!("replayed kind 4 expected: {got:?}")
    };
    assert_eq!(r.event, "bin_event");
    assert_eq!(r.payload, UserPayload::Binary(Bytes::from(bytes)));
    let meta: Value = serde_json::from_slice(r.metadata.as_ref().unwrap()).unwrap();
    assert_eq!(meta["replayed"], true);

    // A send the caller may not make (anon has no insert policy) warns and does not raise.
    let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notice(n)) = m {
                let _ = tx.send((n.severity().to_owned(), n.message().to_owned()));
            }
        }
    });
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE anon; SELECT realtime.send_binary('\\x01'::bytea, 'e', '{topic}', true); COMMIT;"
        ))
        .await
        .unwrap();
    let (severity, message) = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(severity, "WARNING");
    assert!(
        message.starts_with("WarnSendingBroadcastMessage: "),
        "{message}"
    );
    v2.assert_silent(300).await;
}

/// `broadcast.replication_ready`: once database broadcasts stream, the channel gets upstream's
/// `system` message, once, after its join reply.
#[tokio::test]
async fn replication_ready_is_announced_once_the_stream_is_up() {
    let Some(url) = require_db("replication_ready_is_announced_once_the_stream_is_up") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("pub-");
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok(
        &format!("realtime:{topic}"),
        "1",
        json!({"broadcast": {"replication_ready": true}}),
    )
    .await;
    let m = c.recv_event("system").await;
    assert_eq!(m.join_ref.as_deref(), Some("1"));
    assert_eq!(
        m.payload,
        json!({"extension": "system", "status": "ok", "message": "Replication connection established", "channel": topic})
    );
    c.assert_silent(1200).await;
}

/// Upstream's on-demand presence authorization: a private channel joined without presence has
/// its presence read evaluated when it first tracks. Before that it receives no presence; after
/// it, presence as its policies allow.
#[tokio::test]
async fn presence_read_is_authorized_on_demand_at_the_first_track() {
    let Some(url) = require_db("presence_read_is_authorized_on_demand_at_the_first_track") else {
        return;
    };
    let srv = server_with_db(&url).await;
    let topic = unique("allowed-");
    let wire = format!("realtime:{topic}");
    let (mut quiet, mut tracker) = (
        connect(&srv, Serializer::V1).await,
        connect(&srv, Serializer::V1).await,
    );
    let token = user("eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee");
    join_private_ok(&mut quiet, &topic, "1", &token, json!({})).await;
    join_private_ok(
        &mut tracker,
        &topic,
        "1",
        &token,
        json!({"presence": {"enabled": true, "key": "t"}}),
    )
    .await;
    let track = |r: &str, who: &str| {
        Message::new(
            Some("1".into()),
            Some(r.into()),
            wire.clone(),
            "presence",
            json!({"event": "track", "payload": {"who": who}}),
        )
    };
    tracker.send(track("2", "tracker")).await;
    // The fan-out queues the diff before the reply.
    tracker.recv_event("presence_diff").await;
    assert_eq!(
        tracker.recv_event("phx_reply").await.payload["status"],
        "ok"
    );
    // Presence was not authorized for `quiet`: nothing of it arrives.
    quiet.assert_silent(400).await;
    // Its first track authorizes presence read (and write): its own join arrives, and so do
    // later changes of others.
    quiet.send(track("3", "quiet")).await;
    let diff = quiet.recv_event("presence_diff").await;
    assert_eq!(
        diff.payload["joins"].as_object().unwrap().len(),
        1,
        "{diff:?}"
    );
    assert!(diff.payload["joins"].get("t").is_none(), "{diff:?}");
    assert_eq!(quiet.recv_event("phx_reply").await.payload["status"], "ok");
    tracker.send(track("4", "tracker-again")).await;
    let diff = quiet.recv_event("presence_diff").await;
    assert!(diff.payload["joins"].get("t").is_some(), "{diff:?}");
}
