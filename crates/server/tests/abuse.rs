//! Faults and abuse that must cost nothing (issue 13): each case is what a misbehaving or
//! hostile client does over a real socket, and what the server must do about it.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use supa_realtime_protocol::Serializer;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection with 1007.
#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let srv = server(config()).await;
    let mut c = connect(&srv, Serializer::V1).await;
    c.heartbeat("1").await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(WsMessage::Frame(bad)).await.unwrap();
    match c.recv_raw().await {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1007, "{f:?}"),
        other => panic!("expected close 1007, got {other:?}"),
    }
    // Nobody else is affected.
    let mut other = connect(&srv, Serializer::V1).await;
    other.heartbeat("2").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Sockets that open TCP and never finish the HTTP upgrade (nothing sent, or half a request)
/// are closed after the handshake timeout; a real client connecting meanwhile is unaffected.
#[tokio::test]
async fn half_open_handshakes_are_closed_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config();
    cfg.handshake_timeout_ms = 400;
    let srv = server(cfg).await;
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(srv.local_addr())
            .await
            .unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /realtime/v1/websocket?vsn=1.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    let mut c = connect(&srv, Serializer::V1).await;
    for (i, s) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("half-open socket {i} still held after 5 s"));
        // Closed: EOF, a reset, or hyper's 408 before the close.
        if let Ok(n) = n {
            if n > 0 {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
        }
    }
    // The upgraded socket is past the handshake: the timeout no longer applies to it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.heartbeat("1").await;
}

/// A client that pipelines requests without reading the replies is pushed back (the server
/// stops reading its socket while the replies have no room), not closed as a slow consumer:
/// every reply arrives, in order, once it reads again.
#[tokio::test]
async fn pipelined_requests_are_backpressure_not_a_slow_consumer() {
    use futures_util::StreamExt;
    let mut cfg = config();
    cfg.outbox_capacity = 16;
    let srv = server(cfg).await;
    // A small receive buffer, so the replies back up into the server quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(srv.local_addr()).await.unwrap();
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={ANON}&vsn=1.0.0",
        srv.local_addr()
    );
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    const N: usize = 20_000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let frame =
                format!(r#"{{"topic":"phoenix","event":"heartbeat","payload":{{}},"ref":"{i}"}}"#);
            sink.feed(WsMessage::Text(frame.into())).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    // Not reading for a while: the server must wait, not give up on us.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut next = 0usize;
    while next < N {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("replies stopped")
            .expect("socket ended")
            .expect("socket error");
        match m {
            WsMessage::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["ref"], next.to_string(), "replies in order");
                next += 1;
            }
            WsMessage::Close(f) => panic!("closed after {next} replies: {f:?}"),
            _ => {}
        }
    }
    let _sink = writer.await.unwrap();
}

/// One socket flooding a topic nobody listens to spends its own budget only: it is shut down
/// with upstream's message, while a bystander pair on another topic keeps every message.
#[tokio::test]
async fn a_flooding_socket_cannot_starve_a_bystander() {
    use serde_json::json;
    use supa_realtime_protocol::Message;
    let mut cfg = config();
    cfg.max_events_per_second = 5; // 300 events per 60 s window
    let srv = server(cfg).await;
    let mut flooder = connect(&srv, Serializer::V1).await;
    flooder.join_ok("realtime:void", "1", json!({})).await;
    let mut sender = connect(&srv, Serializer::V1).await;
    let mut bystander = connect(&srv, Serializer::V1).await;
    sender.join_ok("realtime:calm", "1", json!({})).await;
    bystander.join_ok("realtime:calm", "1", json!({})).await;
    for i in 0..5_000 {
        flooder
            .send(Message::new(
                Some("1".into()),
                None,
                "realtime:void",
                "broadcast",
                json!({"type": "broadcast", "event": "spam", "payload": {"i": i}}),
            ))
            .await;
    }
    let sys = flooder.recv_event("system").await;
    assert_eq!(sys.payload["message"], "Too many messages per second");
    assert_eq!(sys.payload["channel"], "void");
    for i in 0..50 {
        sender
            .send(Message::new(
                Some("1".into()),
                None,
                "realtime:calm",
                "broadcast",
                json!({"type": "broadcast", "event": "talk", "payload": {"i": i}}),
            ))
            .await;
    }
    for i in 0..50 {
        let m = bystander.recv_msg().await;
        assert_eq!(m.event, "broadcast", "bystander got {m:?}");
        assert_eq!(m.payload["payload"]["i"], i);
    }
}

/// Refused joins are answered after the error backoff; a client pipelining them is pushed back
/// like any other (the pending answers count as queued replies), so it cannot pile up sleeping
/// answers: a heartbeat sent after 200 bad joins is read, and answered, only after most of them.
#[tokio::test]
async fn pipelined_refused_joins_are_backpressure_too() {
    use futures_util::StreamExt;
    let mut cfg = config();
    cfg.outbox_capacity = 16;
    cfg.channel_error_backoff_ms = 100;
    let srv = server(cfg).await;
    let c = connect(&srv, Serializer::V1).await;
    let (mut sink, mut stream) = c.ws.split();
    const N: usize = 200;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let frame = format!(
                r#"{{"topic":"realtime:r{i}","event":"phx_join","payload":{{"config":{{}},"access_token":"bad"}},"ref":"{i}","join_ref":"{i}"}}"#
            );
            sink.feed(WsMessage::Text(frame.into())).await.unwrap();
        }
        sink.feed(WsMessage::Text(
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}"#.into(),
        ))
        .await
        .unwrap();
        sink.flush().await.unwrap();
        sink
    });
    let mut refusals = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("replies stopped")
            .unwrap()
            .unwrap();
        let WsMessage::Text(t) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["ref"] == "hb" {
            break;
        }
        assert_eq!(v["payload"]["status"], "error", "{v}");
        refusals += 1;
    }
    assert!(
        refusals >= N - 2 * 16,
        "the heartbeat was read before the refusals had room: answered after {refusals} of {N}"
    );
    let _sink = writer.await.unwrap();
}
