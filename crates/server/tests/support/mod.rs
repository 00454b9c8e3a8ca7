//! A real server on a free port and a raw WebSocket client that speaks frames, for tests that
//! check the protocol byte by byte.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)]

pub mod pg_server;
pub mod postgres;
pub mod redis;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use supa_realtime_protocol::{Message, Serializer, ServerFrame, WireFrame};
use supa_realtime_server::auth::sign_hs256;
use supa_realtime_server::config::DEFAULT_JWT_SECRET;
use supa_realtime_server::{Config, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `GET /api/health` of the server at `addr` (`Null` while it does not answer).
pub async fn health(addr: &str) -> Value {
    match reqwest::get(format!("http://{addr}/api/health")).await {
        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Exactly once: every one of `ids` is in `counts` (times seen, by id) and none more than once.
pub fn assert_each_once(
    node: usize,
    counts: &std::collections::HashMap<i64, u32>,
    ids: impl Iterator<Item = i64>,
) {
    let missing: Vec<i64> = ids.filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "node {node}: {} never delivered (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut twice: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| *i)
        .collect();
    twice.sort_unstable();
    assert!(twice.is_empty(), "node {node}: delivered twice: {twice:?}");
}

/// A token with `role` and `exp = now + secs`.
pub fn token(role: &str, secs: i64) -> String {
    sign_hs256(
        DEFAULT_JWT_SECRET,
        &json!({"role": role, "exp": now() + secs}),
    )
}

/// Test defaults: upstream limits but short error backoffs.
pub fn config() -> Config {
    let mut c = Config::new("127.0.0.1:0".parse().expect("addr"));
    c.channel_error_backoff_ms = 20;
    c.connect_error_backoff_ms = 20;
    c.max_events_per_second = 100_000;
    c.max_joins_per_second = 100_000;
    c
}

pub async fn server(config: Config) -> Server {
    Server::bind(config).await.expect("bind")
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub s: Serializer,
}

pub async fn connect(server: &Server, s: Serializer) -> Client {
    connect_with(server, s, ANON).await
}

pub async fn connect_with(server: &Server, s: Serializer, key: &str) -> Client {
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={key}&vsn={}",
        server.local_addr(),
        s.vsn()
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    Client { ws, s }
}

/// The HTTP status and body a refused handshake gets.
pub async fn handshake_error(server: &Server, query: &str) -> (u16, String) {
    let url = format!("ws://{}/realtime/v1/websocket?{query}", server.local_addr());
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Ok(_) => panic!("handshake unexpectedly accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

impl Client {
    pub async fn send(&mut self, m: Message) {
        let WireFrame::Text(t) = self.s.encode_client_message(&m) else {
            unreachable!()
        };
        self.ws.send(WsMessage::Text(t.into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: WsMessage) {
        self.ws.send(m).await.expect("send raw");
    }

    /// Next data frame as raw text (or `None` for binary), within 2 s.
    pub async fn recv_raw(&mut self) -> WsMessage {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(2), self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            match m {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => return other,
            }
        }
    }

    pub async fn recv(&mut self) -> ServerFrame {
        match self.recv_raw().await {
            WsMessage::Text(t) => self
                .s
                .decode_server_frame(&WireFrame::Text(t.to_string()))
                .expect("decode"),
            WsMessage::Binary(b) => self
                .s
                .decode_server_frame(&WireFrame::Binary(b))
                .expect("decode"),
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// The next JSON message.
    pub async fn recv_msg(&mut self) -> Message {
        match self.recv().await {
            ServerFrame::Message(m) => m,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// The next JSON message with this event, skipping others.
    pub async fn recv_event(&mut self, event: &str) -> Message {
        loop {
            if let ServerFrame::Message(m) = self.recv().await {
                if m.event == event {
                    return m;
                }
            }
        }
    }

    /// Nothing arrives within `ms`.
    pub async fn assert_silent(&mut self, ms: u64) {
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await
        {
            panic!("expected silence, got {m:?}");
        }
    }

    pub async fn heartbeat(&mut self, r: &str) {
        self.send(Message::new(
            None,
            Some(r.into()),
            "phoenix",
            "heartbeat",
            json!({}),
        ))
        .await;
        let m = self.recv_event("phx_reply").await;
        assert_eq!(m.msg_ref.as_deref(), Some(r));
        assert_eq!(m.payload, json!({"status": "ok", "response": {}}));
    }

    /// Join and return the reply.
    pub async fn join(&mut self, topic: &str, join_ref: &str, payload: Value) -> Message {
        self.send(Message::new(
            Some(join_ref.into()),
            Some(join_ref.into()),
            topic,
            "phx_join",
            payload,
        ))
        .await;
        loop {
            let m = self.recv_msg().await;
            if m.event == "phx_reply" && m.msg_ref.as_deref() == Some(join_ref) {
                return m;
            }
        }
    }

    pub async fn join_ok(&mut self, topic: &str, join_ref: &str, config: Value) {
        let r = self.join(topic, join_ref, json!({"config": config})).await;
        assert_eq!(r.payload["status"], "ok", "join refused: {r:?}");
    }
}
