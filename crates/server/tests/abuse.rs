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
