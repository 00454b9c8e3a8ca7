//! The server binary as a process against a real PostgreSQL, and a raw WebSocket client that
//! speaks vsn 1.0.0 frames with postgres_changes helpers: what the postgres_changes tests share.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use supa_realtime_server::auth::sign_hs256;
use supa_realtime_server::config::DEFAULT_JWT_SECRET;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::ANON;

/// Drop a slot left by an earlier run of the same test, and the database-broadcast slot a
/// cluster of that slot name makes (`<slot>_messages`).
pub async fn drop_slot(c: &tokio_postgres::Client, slot: &str) {
    drop_one_slot(c, slot).await;
    drop_one_slot(c, &format!("{slot}_messages")).await;
}

async fn drop_one_slot(c: &tokio_postgres::Client, slot: &str) {
    let _ = c
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = c
        .execute(
            "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server binary as a child process; killed on drop.
pub struct ServerProc {
    pub child: Child,
    pub addr: String,
}

impl ServerProc {
    pub async fn start(
        db: Option<&str>,
        name: &str,
        extra: &[&str],
        grace_ms: u64,
        port: Option<u16>,
    ) -> ServerProc {
        let addr = format!("127.0.0.1:{}", port.unwrap_or_else(free_port));
        // TEST_SERVER_BIN runs the same tests against another build (e.g. to show that a test
        // fails without a fix)
        let bin = std::env::var("TEST_SERVER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_supa-realtime-server").to_string());
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--addr",
            &addr,
            "--channel-error-backoff-ms",
            "50",
            "--connect-error-backoff-ms",
            "50",
        ])
        .args([
            "--max-events-per-second",
            "100000",
            "--max-joins-per-second",
            "100000",
        ])
        .env("REALTIME_PG_RESUME_GRACE_MS", grace_ms.to_string())
        .env_remove("DATABASE_URL")
        // cluster mode only where a test asks for it (`--redis-url`), not from the caller's shell
        .env_remove("REDIS_URL")
        .env(
            "LOG_LEVEL",
            std::env::var("PG_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(if std::env::var("PG_TEST_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        if let Some(url) = db {
            cmd.args([
                "--database-url",
                url,
                "--slot-name",
                &format!("slot_{name}"),
                "--publication",
                &format!("pub_{name}"),
            ]);
        }
        cmd.args(extra);
        let child = cmd.spawn().expect("spawn server");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(&addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"GET /api/ping HTTP/1.0\r\n\r\n").await;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200")
                    || String::from_utf8_lossy(&buf).starts_with("HTTP/1.0 200")
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server did not become ready on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ServerProc { child, addr }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn user_token(sub: &str) -> String {
    sign_hs256(
        DEFAULT_JWT_SECRET,
        &json!({"role": "authenticated", "sub": sub, "exp": now_secs() + 3600}),
    )
}

pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    refs: u64,
}

impl Ws {
    pub async fn connect(addr: &str) -> Ws {
        let url = format!("ws://{addr}/realtime/v1/websocket?apikey={ANON}&vsn=1.0.0");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Ws { ws, refs: 0 }
    }

    pub async fn send(
        &mut self,
        topic: &str,
        event: &str,
        payload: Value,
        join_ref: Option<&str>,
    ) -> String {
        self.refs += 1;
        let r = self.refs.to_string();
        let m = json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": join_ref.unwrap_or(&r)});
        self.ws
            .send(WsMessage::Text(m.to_string().into()))
            .await
            .expect("ws send");
        r
    }

    pub async fn recv(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(timeout, self.ws.next())
                .await
                .ok()??
                .ok()?;
            if let WsMessage::Text(t) = m {
                return serde_json::from_str(&t).ok();
            }
        }
    }

    /// Next message with this event (others are skipped).
    pub async fn next_event(&mut self, event: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.recv(left).await?;
            if m["event"] == event {
                return Some(m);
            }
        }
    }

    /// Join with postgres_changes bindings; returns the ids of the reply, in order.
    pub async fn join(&mut self, topic: &str, token: &str, bindings: Value) -> Vec<u64> {
        let r = self
            .send(
                &format!("realtime:{topic}"),
                "phx_join",
                json!({"config": {"broadcast": {"self": false}, "presence": {"enabled": false}, "postgres_changes": bindings}, "access_token": token}),
                None,
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self
                .recv(deadline - Instant::now())
                .await
                .expect("join reply");
            if m["event"] == "phx_reply" && m["ref"] == r.as_str() {
                assert_eq!(m["payload"]["status"], "ok", "join refused: {m}");
                return m["payload"]["response"]["postgres_changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["id"].as_u64().unwrap())
                    .collect();
            }
        }
    }

    /// The next postgres_changes `system` message of a channel: (status, message).
    pub async fn system(&mut self, timeout: Duration) -> Option<(String, String)> {
        let m = self.next_event("system", timeout).await?;
        assert_eq!(m["payload"]["extension"], "postgres_changes", "{m}");
        Some((
            m["payload"]["status"].as_str()?.to_string(),
            m["payload"]["message"].as_str()?.to_string(),
        ))
    }

    pub async fn subscribed(&mut self) {
        let s = self
            .system(Duration::from_secs(15))
            .await
            .expect("no system message");
        assert_eq!(s, ("ok".into(), "Subscribed to PostgreSQL".into()));
    }

    /// Next change: (ids as a set, data).
    pub async fn change(&mut self, timeout: Duration) -> Option<(BTreeSet<u64>, Value)> {
        let m = self.next_event("postgres_changes", timeout).await?;
        let ids = m["payload"]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        Some((ids, m["payload"]["data"].clone()))
    }
}

pub const WAIT: Duration = Duration::from_secs(10);
pub const QUIET: Duration = Duration::from_millis(700);

/// Fresh tables + publication for one test.
pub async fn prepare(c: &tokio_postgres::Client, name: &str, ddl: &str, tables: &[&str]) {
    drop_slot(c, &format!("slot_{name}")).await;
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS pub_{name}; {ddl}"))
        .await
        .expect("ddl");
    c.batch_execute(&format!(
        "CREATE PUBLICATION pub_{name} FOR TABLE {}",
        tables.join(", ")
    ))
    .await
    .expect("publication");
}
