//! The server's wire behaviour, byte by byte where PROTOCOL.md gives bytes, over real sockets.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use supa_realtime_protocol::binary::{self, ServerBinary};
use supa_realtime_protocol::{Message, Serializer, ServerFrame, UserBroadcast, UserPayload};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn heartbeat_replies_exactly_in_both_serializers() {
    let srv = server(config()).await;
    let mut v1 = connect(&srv, Serializer::V1).await;
    v1.send_raw(WsMessage::Text(
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#.into(),
    ))
    .await;
    assert_eq!(
        v1.recv_raw().await.into_text().unwrap().as_str(),
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"7","topic":"phoenix"}"#
    );
    let mut v2 = connect(&srv, Serializer::V2).await;
    v2.send_raw(WsMessage::Text(
        r#"[null,"7","phoenix","heartbeat",{}]"#.into(),
    ))
    .await;
    assert_eq!(
        v2.recv_raw().await.into_text().unwrap().as_str(),
        r#"[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn join_reply_echoes_postgres_changes_with_ids_and_leave_closes() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    let items = json!([{"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1"}, {"event": "INSERT", "schema": "public"}]);
    let r = c
        .join(
            "realtime:room1",
            "1",
            json!({"config": {"postgres_changes": items}}),
        )
        .await;
    assert_eq!(r.join_ref.as_deref(), Some("1"));
    assert_eq!(r.payload["status"], "ok");
    let echoed = r.payload["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(echoed.len(), 2);
    for (sent, got) in items.as_array().unwrap().iter().zip(&echoed) {
        let mut without_id = got.clone();
        let id = without_id.as_object_mut().unwrap().remove("id").unwrap();
        assert!(id.as_u64().unwrap() < (1 << 27));
        assert_eq!(&without_id, sent, "items are echoed verbatim");
    }
    assert_ne!(echoed[0]["id"], echoed[1]["id"]);

    // Leave: ok reply with the leave's ref, then phx_close with ref = join_ref.
    c.send_raw(WsMessage::Text(
        r#"["1","8","realtime:room1","phx_leave",{}]"#.into(),
    ))
    .await;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        if let WsMessage::Text(t) = c.recv_raw().await {
            if !t.contains("\"system\"") {
                frames.push(t.to_string());
            }
        }
    }
    assert_eq!(
        frames[0],
        r#"["1","8","realtime:room1","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_eq!(frames[1], r#"["1","1","realtime:room1","phx_close",{}]"#);
    // Leaving a topic that is not joined is answered ok, with no close.
    c.send_raw(WsMessage::Text(
        r#"["1","9","realtime:room1","phx_leave",{}]"#.into(),
    ))
    .await;
    assert_eq!(
        c.recv_raw().await.into_text().unwrap().as_str(),
        r#"["1","9","realtime:room1","phx_reply",{"response":{},"status":"ok"}]"#
    );
    c.assert_silent(100).await;
}

#[tokio::test]
async fn unmatched_topics_and_empty_names() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.send_raw(WsMessage::Text(
        r#"["1","1","nope:room","phx_join",{"config":{}}]"#.into(),
    ))
    .await;
    assert_eq!(
        c.recv_raw().await.into_text().unwrap().as_str(),
        r#"[null,"1","nope:room","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    let r = c.join("realtime:", "2", json!({"config": {}})).await;
    assert_eq!(
        r.payload["response"]["reason"],
        "TopicNameRequired: You must provide a topic name"
    );
    // A broadcast to a topic that was never joined.
    c.send_raw(WsMessage::Text(
        r#"["1","3","realtime:x","broadcast",{"type":"broadcast","event":"e","payload":{}}]"#
            .into(),
    ))
    .await;
    let m = c.recv_msg().await;
    assert_eq!(m.payload["response"]["reason"], "unmatched topic");
}

#[tokio::test]
async fn malformed_frames_are_dropped_and_the_socket_stays_up() {
    let srv = server(config()).await;
    for s in [Serializer::V1, Serializer::V2] {
        let mut c = connect(&srv, s).await;
        c.join_ok("realtime:m", "1", json!({})).await;
        let garbage: Vec<WsMessage> = vec![
            WsMessage::Text("not json".into()),
            WsMessage::Text("{}".into()),
            WsMessage::Text("[]".into()),
            WsMessage::Text(r#"[1,2,3]"#.into()),
            WsMessage::Text(r#"{"topic":1,"event":"x","payload":{},"ref":null}"#.into()),
            WsMessage::Text(r#"["1","2","realtime:m","no_such_event",{}]"#.into()),
            WsMessage::Text(
                r#"{"topic":"realtime:m","event":"no_such_event","payload":{},"ref":"2"}"#.into(),
            ),
            WsMessage::Binary(Bytes::from_static(&[9, 9, 9])),
            WsMessage::Binary(Bytes::from_static(&[3, 200, 0, 0, 0, 0, 1])),
            WsMessage::Binary(Bytes::new()),
        ];
        for g in garbage {
            c.send_raw(g).await;
        }
        // Wrong types in a join payload do not reject the join.
        let r = c.join("realtime:typed", "5", json!({"config": {"broadcast": {"self": 3}, "presence": "x", "private": "no"}, "access_token": 5})).await;
        assert_eq!(r.payload["status"], "ok", "{r:?}");
        c.heartbeat("99").await;
    }
    // And another client is unaffected.
    let mut other = connect(&srv, Serializer::V1).await;
    other.heartbeat("1").await;
}

#[tokio::test]
async fn broadcast_self_ack_and_cross_serializer_delivery() {
    let srv = server(config()).await;
    let mut a = connect(&srv, Serializer::V1).await;
    let mut b = connect(&srv, Serializer::V2).await;
    a.join_ok(
        "realtime:chat",
        "1",
        json!({"broadcast": {"self": false, "ack": true}}),
    )
    .await;
    b.join_ok("realtime:chat", "1", json!({"broadcast": {"self": true}}))
        .await;

    // V1 text broadcast with ack: acked, not echoed to A (self false), delivered to B as text.
    a.send(Message::new(
        None,
        Some("2".into()),
        "realtime:chat",
        "broadcast",
        json!({"type": "broadcast", "event": "msg", "payload": {"n": 1}, "extra": true}),
    ))
    .await;
    let ack = a.recv_msg().await;
    assert_eq!(ack.payload, json!({"status": "ok", "response": {}}));
    assert_eq!(ack.msg_ref.as_deref(), Some("2"));
    let got = b.recv_msg().await;
    assert_eq!((got.join_ref, got.msg_ref), (None, None));
    assert_eq!(
        got.payload,
        json!({"type": "broadcast", "event": "msg", "payload": {"n": 1}, "extra": true})
    );
    a.assert_silent(100).await;

    // V2 kind-3 binary push (what realtime-js sends): B gets kind 4 (self true), A gets text.
    let push = UserBroadcast {
        join_ref: Some("1".into()),
        msg_ref: Some("3".into()),
        topic: "realtime:chat".into(),
        event: "cursor".into(),
        metadata: None,
        payload: UserPayload::Json(Bytes::from_static(br#"{"x":1}"#)),
    };
    b.send_raw(WsMessage::Binary(
        binary::encode_user_broadcast_push(&push).unwrap(),
    ))
    .await;
    match b.recv().await {
        ServerFrame::Binary(ServerBinary::UserBroadcast(u)) => {
            assert_eq!(
                (u.topic.as_str(), u.event.as_str()),
                ("realtime:chat", "cursor")
            );
            assert_eq!(
                u.payload,
                UserPayload::Json(Bytes::from_static(br#"{"x":1}"#))
            );
        }
        other => panic!("{other:?}"),
    }
    let got = a.recv_msg().await;
    assert_eq!(
        got.payload,
        json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}})
    );

    // Binary payloads reach 2.0.0 sockets only.
    let bin = UserBroadcast {
        payload: UserPayload::Binary(Bytes::from_static(&[0xca, 0xfe])),
        msg_ref: Some("4".into()),
        ..push
    };
    b.send_raw(WsMessage::Binary(
        binary::encode_user_broadcast_push(&bin).unwrap(),
    ))
    .await;
    match b.recv().await {
        ServerFrame::Binary(ServerBinary::UserBroadcast(u)) => assert_eq!(
            u.payload,
            UserPayload::Binary(Bytes::from_static(&[0xca, 0xfe]))
        ),
        other => panic!("{other:?}"),
    }
    a.assert_silent(150).await;
}

#[tokio::test]
async fn oversized_broadcast_gets_string_ack_error_or_is_dropped() {
    let mut cfg = config();
    cfg.max_payload_size_kb = 1;
    let srv = server(cfg).await;
    let mut a = connect(&srv, Serializer::V2).await;
    let mut b = connect(&srv, Serializer::V2).await;
    a.join_ok("realtime:big", "1", json!({"broadcast": {"ack": true}}))
        .await;
    b.join_ok("realtime:big", "1", json!({})).await;
    let big = "x".repeat(3000);
    a.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        "realtime:big",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {"big": big}}),
    ))
    .await;
    let r = a.recv_msg().await;
    assert_eq!(
        r.payload,
        json!({"status": "error", "response": "payload_size_exceeded"})
    );
    b.assert_silent(150).await;
    a.heartbeat("3").await;
}

#[tokio::test]
async fn handshake_refusals_have_upstream_status_and_body() {
    let srv = server(config()).await;
    assert_eq!(
        handshake_error(&srv, "").await,
        (401, r#"{"error":"API key is missing"}"#.into())
    );
    assert_eq!(
        handshake_error(&srv, "apikey=garbage").await,
        (
            401,
            r#"{"error":"The token provided is not a valid JWT"}"#.into()
        )
    );
    let expired = token("anon", -10);
    assert_eq!(
        handshake_error(&srv, &format!("apikey={expired}")).await,
        (401, r#"{"error":"Token has expired"}"#.into())
    );
    let forged = supa_realtime_server::auth::sign_hs256(
        "another-secret-another-secret-another",
        &serde_json::json!({"role": "anon", "exp": now() + 60}),
    );
    assert_eq!(
        handshake_error(&srv, &format!("apikey={forged}")).await,
        (
            401,
            r#"{"error":"Failed to validate JWT signature"}"#.into()
        )
    );
    let no_role = supa_realtime_server::auth::sign_hs256(
        supa_realtime_server::config::DEFAULT_JWT_SECRET,
        &serde_json::json!({"exp": now() + 60}),
    );
    assert_eq!(
        handshake_error(&srv, &format!("apikey={no_role}")).await,
        (
            401,
            r#"{"error":"Fields `role` and `exp` are required in JWT"}"#.into()
        )
    );
    assert_eq!(
        handshake_error(&srv, &format!("apikey={ANON}&vsn=3.0.0"))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn join_with_bad_tokens_is_refused_with_reasons() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    let r = c
        .join(
            "realtime:t",
            "1",
            json!({"config": {}, "access_token": token("anon", -5)}),
        )
        .await;
    let reason = r.payload["response"]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired ")
            && reason.ends_with(" seconds ago"),
        "{reason}"
    );
    let r = c
        .join(
            "realtime:t",
            "2",
            json!({"config": {}, "access_token": "nonsense"}),
        )
        .await;
    assert_eq!(
        r.payload["response"]["reason"],
        "MalformedJWT: The token provided is not a valid JWT"
    );
    // sb_ keys are not JWTs: the socket's token is used instead.
    let r = c
        .join(
            "realtime:t",
            "3",
            json!({"config": {}, "access_token": "sb_publishable_abc"}),
        )
        .await;
    assert_eq!(r.payload["status"], "ok");
}

#[tokio::test]
async fn token_expiry_while_joined_sends_system_error_then_close() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok("realtime:exp", "1", json!({})).await;
    c.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        "realtime:exp",
        "access_token",
        json!({"access_token": token("authenticated", 1)}),
    ))
    .await;
    let sys = tokio::time::timeout(Duration::from_secs(5), c.recv_event("system"))
        .await
        .expect("system message");
    assert_eq!(sys.payload["extension"], "system");
    assert_eq!(sys.payload["status"], "error");
    assert_eq!(sys.payload["channel"], "exp");
    let msg = sys.payload["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Token has expired ") && msg.ends_with(" seconds ago"),
        "{msg}"
    );
    let close = c.recv_msg().await;
    assert_eq!(
        (
            close.event.as_str(),
            close.join_ref.as_deref(),
            close.msg_ref.as_deref()
        ),
        ("phx_close", Some("1"), Some("1"))
    );
}

#[tokio::test]
async fn access_token_refresh_keeps_the_channel() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok("realtime:refresh", "1", json!({})).await;
    c.send(Message::new(
        Some("1".into()),
        Some("2".into()),
        "realtime:refresh",
        "access_token",
        json!({"access_token": token("authenticated", 1)}),
    ))
    .await;
    c.send(Message::new(
        Some("1".into()),
        Some("3".into()),
        "realtime:refresh",
        "access_token",
        json!({"access_token": token("authenticated", 600)}),
    ))
    .await;
    // No reply to access_token, and no close after the first token's expiry.
    c.assert_silent(2500).await;
    c.heartbeat("4").await;
    // A garbage token closes the channel with the reason.
    c.send(Message::new(
        Some("1".into()),
        Some("5".into()),
        "realtime:refresh",
        "access_token",
        json!({"access_token": "garbage"}),
    ))
    .await;
    let sys = c.recv_event("system").await;
    assert_eq!(
        sys.payload["message"],
        "The token provided is not a valid JWT"
    );
    assert_eq!(c.recv_msg().await.event, "phx_close");
}

#[tokio::test]
async fn channel_limit_per_connection() {
    let mut cfg = config();
    cfg.max_channels_per_client = 3;
    let srv = server(cfg).await;
    let mut c = connect(&srv, Serializer::V1).await;
    for i in 0..3 {
        c.join_ok(&format!("realtime:c{i}"), &format!("{}", i + 1), json!({}))
            .await;
    }
    let r = c.join("realtime:c3", "9", json!({"config": {}})).await;
    assert_eq!(
        r.payload,
        json!({"status": "error", "response": {"reason": "ChannelRateLimitReached: Too many channels"}})
    );
    c.heartbeat("10").await;
}

#[tokio::test]
async fn duplicate_join_closes_the_old_instance_first() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok("realtime:dup", "1", json!({})).await;
    c.send(Message::new(
        Some("4".into()),
        Some("4".into()),
        "realtime:dup",
        "phx_join",
        json!({"config": {}}),
    ))
    .await;
    let close = c.recv_msg().await;
    assert_eq!(
        (close.event.as_str(), close.msg_ref.as_deref()),
        ("phx_close", Some("1"))
    );
    let reply = c.recv_msg().await;
    assert_eq!(
        (reply.event.as_str(), reply.msg_ref.as_deref()),
        ("phx_reply", Some("4"))
    );
    // Messages carrying the old join_ref are stale and dropped.
    c.send(Message::new(
        Some("1".into()),
        Some("5".into()),
        "realtime:dup",
        "presence",
        json!({"event": "track", "payload": {}}),
    ))
    .await;
    c.assert_silent(150).await;
}

#[tokio::test]
async fn presence_state_diff_update_and_cleanup_on_disconnect() {
    let srv = server(config()).await;
    let mut a = connect(&srv, Serializer::V1).await;
    let mut b = connect(&srv, Serializer::V2).await;
    a.join_ok(
        "realtime:lobby",
        "1",
        json!({"presence": {"key": "alice", "enabled": true}}),
    )
    .await;
    assert_eq!(a.recv_event("presence_state").await.payload, json!({}));
    a.send(Message::new(
        None,
        Some("2".into()),
        "realtime:lobby",
        "presence",
        json!({"event": "track", "payload": {"s": "on"}}),
    ))
    .await;
    let diff = a.recv_event("presence_diff").await;
    let first_ref = diff.payload["joins"]["alice"]["metas"][0]["phx_ref"].clone();
    assert!(first_ref.is_string());
    assert_eq!(a.recv_event("phx_reply").await.payload["status"], "ok");

    b.join_ok(
        "realtime:lobby",
        "1",
        json!({"presence": {"key": "bob", "enabled": true}}),
    )
    .await;
    let state = b.recv_event("presence_state").await;
    assert_eq!(
        state.join_ref.as_deref(),
        Some("1"),
        "presence_state is a channel push"
    );
    assert_eq!(state.payload["alice"]["metas"][0]["s"], "on");

    // Same payload again: nothing; another payload: an update with phx_ref_prev.
    a.send(Message::new(
        None,
        Some("3".into()),
        "realtime:lobby",
        "presence",
        json!({"event": "track", "payload": {"s": "on"}}),
    ))
    .await;
    assert_eq!(a.recv_event("phx_reply").await.payload["status"], "ok");
    a.send(Message::new(
        None,
        Some("4".into()),
        "realtime:lobby",
        "presence",
        json!({"event": "track", "payload": {"s": "away"}}),
    ))
    .await;
    let diff = b.recv_event("presence_diff").await;
    assert_eq!(
        diff.payload["leaves"]["alice"]["metas"][0]["phx_ref"],
        first_ref
    );
    assert_eq!(
        diff.payload["joins"]["alice"]["metas"][0]["phx_ref_prev"],
        first_ref
    );
    assert_eq!(diff.payload["joins"]["alice"]["metas"][0]["s"], "away");
    assert_eq!((diff.join_ref, diff.msg_ref), (None, None));

    // A track payload that is not a map.
    b.send(Message::new(
        Some("1".into()),
        Some("5".into()),
        "realtime:lobby",
        "presence",
        json!({"event": "track", "payload": 3}),
    ))
    .await;
    assert_eq!(
        b.recv_event("phx_reply").await.payload["response"]["reason"],
        "Presence track payload must be a map"
    );

    // A's socket dies: B sees alice leave.
    drop(a);
    let diff = b.recv_event("presence_diff").await;
    assert!(diff.payload["leaves"]["alice"].is_object(), "{diff:?}");
}

#[tokio::test]
async fn presence_rate_limit_closes_the_channel() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok("realtime:p", "1", json!({})).await;
    for i in 0..5 {
        c.send(Message::new(
            Some("1".into()),
            Some(format!("{}", i + 2)),
            "realtime:p",
            "presence",
            json!({"event": "track", "payload": {"i": i}}),
        ))
        .await;
        assert_eq!(c.recv_event("phx_reply").await.payload["status"], "ok");
    }
    c.send(Message::new(
        Some("1".into()),
        Some("9".into()),
        "realtime:p",
        "presence",
        json!({"event": "track", "payload": {"i": 9}}),
    ))
    .await;
    let sys = c.recv_event("system").await;
    assert_eq!(
        sys.payload["message"],
        "Client presence rate limit exceeded"
    );
    assert_eq!(
        c.recv_event("phx_close").await.msg_ref.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn events_limit_shuts_down_the_channel_that_exceeds_it() {
    let mut cfg = config();
    cfg.max_events_per_second = 1; // 60 events per 60 s window, per socket
    let srv = server(cfg).await;
    let mut a = connect(&srv, Serializer::V2).await;
    let mut b = connect(&srv, Serializer::V2).await;
    a.join_ok("realtime:flood", "1", json!({})).await;
    b.join_ok("realtime:flood", "1", json!({})).await;
    for i in 0..100 {
        a.send(Message::new(
            Some("1".into()),
            None,
            "realtime:flood",
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {"i": i}}),
        ))
        .await;
    }
    // The sender is told, with upstream's shutdown, and its channel closes.
    let sys = a.recv_event("system").await;
    assert_eq!(
        sys.payload,
        json!({"extension": "system", "status": "error", "message": "Too many messages per second", "channel": "flood"})
    );
    assert_eq!(a.recv_event("phx_close").await.event, "phx_close");
    // The receiver got what was sent within the sender's budget, and stays joined.
    for i in 0..60 {
        let m = b.recv_event("broadcast").await;
        assert_eq!(m.payload["payload"]["i"], i);
    }
    b.assert_silent(300).await;
}

#[tokio::test]
async fn join_rate_limit_refuses_and_closes_the_socket() {
    let mut cfg = config();
    cfg.max_joins_per_second = 0;
    let srv = server(cfg).await;
    let mut c = connect(&srv, Serializer::V2).await;
    let r = c.join("realtime:j", "1", json!({"config": {}})).await;
    assert_eq!(
        r.payload["response"]["reason"],
        "ClientJoinRateLimitReached: Too many joins per second"
    );
    match c.recv_raw().await {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[tokio::test]
async fn idle_sockets_are_closed() {
    let mut cfg = config();
    cfg.idle_timeout_ms = 300;
    let srv = server(cfg).await;
    let mut c = connect(&srv, Serializer::V2).await;
    assert!(matches!(c.recv_raw().await, WsMessage::Close(_)));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_service_restart() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok("realtime:bye", "1", json!({})).await;
    let stop = tokio::spawn(srv.shutdown());
    match c.recv_raw().await {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
        other => panic!("expected close 1012, got {other:?}"),
    }
    drop(c);
    stop.await.unwrap();
}

#[tokio::test]
async fn private_channels_without_a_database_admit_only_service_role() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    let r = c
        .join("realtime:secret", "1", json!({"config": {"private": true}}))
        .await;
    assert_eq!(
        r.payload["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: secret"
    );
    let r = c
        .join(
            "realtime:secret",
            "2",
            json!({"config": {"private": true}, "access_token": token("service_role", 60)}),
        )
        .await;
    assert_eq!(r.payload["status"], "ok");
    let r = c
        .join(
            "realtime:pub",
            "3",
            json!({"config": {"broadcast": {"replay": {"since": 0}}}}),
        )
        .await;
    assert_eq!(
        r.payload["response"]["reason"],
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );
}

#[tokio::test]
async fn rest_broadcast_endpoints() {
    let srv = server(config()).await;
    let mut v1 = connect(&srv, Serializer::V1).await;
    let mut v2 = connect(&srv, Serializer::V2).await;
    v1.join_ok("realtime:news", "1", json!({})).await;
    v2.join_ok("realtime:news", "1", json!({})).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/realtime/v1/api", srv.local_addr());

    let r = http.post(format!("{base}/broadcast")).header("apikey", ANON)
        .json(&json!({"messages": [{"topic": "news", "event": "headline", "payload": {"t": 1}, "id": "m1"}]}))
        .send().await.unwrap();
    assert_eq!(r.status(), 202);
    for c in [&mut v1, &mut v2] {
        let m = c.recv_msg().await;
        assert_eq!(
            m.payload,
            json!({"type": "broadcast", "event": "headline", "payload": {"t": 1}, "meta": {"id": "m1"}})
        );
    }

    let r = http
        .post(format!("{base}/broadcast/news/events/flash"))
        .header("apikey", ANON)
        .header("content-type", "application/json")
        .body(r#"{"t":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        v1.recv_msg().await.payload,
        json!({"type": "broadcast", "event": "flash", "payload": {"t": 2}})
    );
    match v2.recv().await {
        ServerFrame::Binary(ServerBinary::UserBroadcast(u)) => assert_eq!(u.event, "flash"),
        other => panic!("expected kind 4, got {other:?}"),
    }

    let r = http
        .post(format!("{base}/broadcast/news/events/flash"))
        .header("apikey", ANON)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":"Unsupported Media Type. Use application/json or application/octet-stream"}"#
    );
    let r = http
        .post(format!("{base}/broadcast"))
        .header("apikey", "bad")
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (401, r#"{"message":"Unauthorized"}"#.into())
    );
    let r = http
        .post(format!("{base}/broadcast"))
        .header("authorization", format!("Bearer {ANON}"))
        .json(&json!({"messages": [{"topic": "news", "payload": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"errors": {"messages": [{"event": ["can't be blank"]}]}})
    );
    // Same paths without the gateway prefix.
    let r = http
        .post(format!("http://{}/api/broadcast", srv.local_addr()))
        .header("apikey", ANON)
        .json(&json!({"messages": [{"topic": "news", "event": "e", "payload": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_keep_flowing() {
    let mut cfg = config();
    cfg.outbox_capacity = 8;
    let srv = server(cfg).await;
    let mut slow = connect(&srv, Serializer::V2).await;
    let mut fast = connect(&srv, Serializer::V2).await;
    let mut sender = connect(&srv, Serializer::V2).await;
    for c in [&mut slow, &mut fast, &mut sender] {
        c.join_ok("realtime:firehose", "1", json!({})).await;
    }
    const N: usize = 200;
    // 40 MB in all: far more than the slow client's socket buffers and its 8-frame queue.
    // The sender is paced by the fast client, which is never more than one message behind.
    let big = "x".repeat(200_000);
    for i in 0..N {
        sender
            .send(Message::new(
                Some("1".into()),
                None,
                "realtime:firehose",
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {"i": i, "big": big}}),
            ))
            .await;
        let m = fast.recv_event("broadcast").await;
        assert_eq!(m.payload["payload"]["i"], i);
    }
    // The slow client now reads: what was in flight, then the end of the socket — far fewer
    // than N messages, because the server dropped it instead of buffering without bound.
    let mut seen = 0;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut slow.ws),
        )
        .await
        {
            Ok(Some(Ok(WsMessage::Text(_)))) => seen += 1,
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the slow client was neither served nor disconnected"),
        }
    }
    assert!(
        seen < N,
        "slow client got all {seen} messages: nothing was cut off"
    );
    // The server is fine: the sender's socket still answers.
    sender.heartbeat("77").await;
}

#[tokio::test]
async fn private_only_refuses_public_joins_with_upstreams_reason() {
    let mut cfg = config();
    cfg.private_only = true;
    let srv = server(cfg).await;
    let mut c = connect(&srv, Serializer::V1).await;
    for payload in [json!({"config": {}}), json!({})] {
        let r = c.join("realtime:open", "1", payload).await;
        assert_eq!(r.payload["status"], "error");
        assert_eq!(
            r.payload["response"]["reason"],
            "PrivateOnly: This project only allows private channels"
        );
    }
    let r = c
        .join(
            "realtime:closed",
            "2",
            json!({"config": {"private": true}, "access_token": token("service_role", 60)}),
        )
        .await;
    assert_eq!(r.payload["status"], "ok", "{r:?}");
}

#[tokio::test]
async fn replication_ready_without_a_database_shuts_the_channel_down() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok(
        "realtime:ready",
        "1",
        json!({"broadcast": {"replication_ready": true}}),
    )
    .await;
    let m = c.recv_event("system").await;
    assert_eq!(
        m.payload,
        json!({"extension": "system", "status": "error", "message": "Replication connection was not established in time", "channel": "ready"})
    );
    assert_eq!(
        c.recv_event("phx_close").await.join_ref.as_deref(),
        Some("1")
    );
    // Without the flag nothing is said.
    c.join_ok("realtime:quiet", "2", json!({})).await;
    c.assert_silent(700).await;
}

#[tokio::test]
async fn replication_ready_times_out_while_the_database_is_unreachable() {
    let mut cfg = config();
    // Nothing listens there: the database broadcast stream never comes up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.database_url = Some(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    cfg.replication_ready_timeout_ms = 1_200;
    let srv = server(cfg).await;
    let mut c = connect(&srv, Serializer::V2).await;
    c.join_ok(
        "realtime:waiting",
        "1",
        json!({"broadcast": {"replication_ready": true}}),
    )
    .await;
    // Checked every 500 ms: nothing is said until the timeout.
    c.assert_silent(800).await;
    let m = c.recv_event("system").await;
    assert_eq!(
        m.payload,
        json!({"extension": "system", "status": "error", "message": "Replication connection was not established in time", "channel": "waiting"})
    );
    assert_eq!(
        c.recv_event("phx_close").await.join_ref.as_deref(),
        Some("1")
    );
}
