//! Burst: a raw sender writes N small broadcasts to one client's socket at once, and the
//! client's callbacks (or, for the Rust client, a stream that only counts) take them.
//!
//! The sender is a purpose-built WebSocket server in its own process
//! (`supa-realtime-bench burst-server`): it answers `phx_join` and heartbeats and, right
//! after a join reply, writes N pre-encoded broadcast frames for that topic as fast as the
//! socket takes them (flushing every 256), in the client's serializer: 1.0.0 text objects,
//! 2.0.0 text arrays, or 2.0.0 binary kind 4 (`binary=1` in the URL's query). It speaks just
//! enough of the protocol for that, so what is measured is the client alone: no fan-out, no
//! server queue, and TCP backpressure reaches the sender directly (it blocks in its write).
//!
//! Measured per client: callbacks between the first and the last (their rate), and lost =
//! N − received once no callback came for 5 s. Python clients run in their own process
//! (bench/py_burst.py); the Rust client in this one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use supa_realtime::protocol::binary::encode_user_broadcast;
use supa_realtime::protocol::{UserBroadcast, UserPayload};
use supa_realtime::{ChannelConfig, ClientOptions, RealtimeClient, Vsn};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::*;

/// The serializers a burst is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Wire {
    V1Text,
    V2Text,
    V2Binary,
}

impl Wire {
    pub const ALL: [Wire; 3] = [Wire::V1Text, Wire::V2Text, Wire::V2Binary];

    pub fn label(self) -> &'static str {
        match self {
            Wire::V1Text => "1.0.0 text",
            Wire::V2Text => "2.0.0 text",
            Wire::V2Binary => "2.0.0 binary (kind 4)",
        }
    }

    fn vsn(self) -> &'static str {
        match self {
            Wire::V1Text => "1.0.0",
            Wire::V2Text | Wire::V2Binary => "2.0.0",
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BurstRow {
    pub client: String,
    pub wire: String,
    pub received: u64,
    pub lost: u64,
    pub per_sec: f64,
    pub secs: f64,
    pub peak_rss_kb: u64,
    pub note: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BurstResult {
    pub n: usize,
    pub rows: Vec<BurstRow>,
}

// ----- the sender ----------------------------------------------------------------------------

/// Serve bursts of `n` on `addr` until killed.
pub fn serve(addr: &str, n: usize) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                if let Err(e) = connection(tcp, n).await {
                    eprintln!("burst connection: {e}");
                }
            });
        }
    })
}

enum Out {
    Frame(WsMessage),
    Burst(String),
}

fn frames(wire: Wire, topic: &str, n: usize) -> Vec<WsMessage> {
    (0..n)
        .map(|i| {
            let payload = format!("{{\"i\":{i}}}");
            match wire {
                Wire::V1Text => WsMessage::text(format!(
                    "{{\"topic\":\"{topic}\",\"event\":\"broadcast\",\"payload\":{{\"type\":\"broadcast\",\"event\":\"b\",\"payload\":{payload}}},\"ref\":null,\"join_ref\":null}}"
                )),
                Wire::V2Text => WsMessage::text(format!(
                    "[null,null,\"{topic}\",\"broadcast\",{{\"type\":\"broadcast\",\"event\":\"b\",\"payload\":{payload}}}]"
                )),
                Wire::V2Binary => {
                    let b = UserBroadcast {
                        join_ref: None,
                        msg_ref: None,
                        topic: topic.to_owned(),
                        event: "b".to_owned(),
                        metadata: None,
                        payload: UserPayload::Json(Bytes::from(payload)),
                    };
                    WsMessage::Binary(encode_user_broadcast(&b).unwrap_or_default())
                }
            }
        })
        .collect()
}

/// `(join_ref, ref, topic, event)` of a client frame in either serializer.
fn parse(text: &str) -> Option<(Value, Value, String, String)> {
    let v: Value = serde_json::from_str(text).ok()?;
    match &v {
        Value::Array(a) if a.len() == 5 => Some((
            a[0].clone(),
            a[1].clone(),
            a[2].as_str()?.to_owned(),
            a[3].as_str()?.to_owned(),
        )),
        Value::Object(o) => Some((
            o.get("join_ref").cloned().unwrap_or(Value::Null),
            o.get("ref").cloned().unwrap_or(Value::Null),
            o.get("topic")?.as_str()?.to_owned(),
            o.get("event")?.as_str()?.to_owned(),
        )),
        _ => None,
    }
}

fn reply(v2: bool, join_ref: &Value, msg_ref: &Value, topic: &str) -> WsMessage {
    let payload = json!({"status": "ok", "response": {"postgres_changes": []}});
    if v2 {
        WsMessage::text(json!([join_ref, msg_ref, topic, "phx_reply", payload]).to_string())
    } else {
        WsMessage::text(
            json!({"topic": topic, "event": "phx_reply", "payload": payload, "ref": msg_ref, "join_ref": join_ref})
                .to_string(),
        )
    }
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn connection(tcp: TcpStream, n: usize) -> Res<()> {
    let mut query = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or_default().to_owned();
        Ok(resp)
    })
    .await?;
    let v2 = query.contains("vsn=2.0.0");
    let wire = match (v2, query.contains("binary=1")) {
        (false, _) => Wire::V1Text,
        (true, false) => Wire::V2Text,
        (true, true) => Wire::V2Binary,
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Frame(m) => {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
                Out::Burst(topic) => {
                    let all = frames(wire, &topic, n);
                    for (i, f) in all.into_iter().enumerate() {
                        if sink.feed(f).await.is_err() {
                            return;
                        }
                        if i % 256 == 255 {
                            if sink.flush().await.is_err() {
                                return;
                            }
                            // Replies (heartbeats) go out between chunks, not after the burst.
                            while let Ok(Out::Frame(m)) = rx.try_recv() {
                                if sink.feed(m).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some(Ok(m)) = stream.next().await {
        let WsMessage::Text(t) = m else { continue };
        let Some((join_ref, msg_ref, topic, event)) = parse(t.as_str()) else {
            continue;
        };
        match event.as_str() {
            "phx_join" => {
                let _ = tx.send(Out::Frame(reply(v2, &join_ref, &msg_ref, &topic)));
                let _ = tx.send(Out::Burst(topic));
            }
            "heartbeat" | "phx_leave" | "access_token" => {
                let _ = tx.send(Out::Frame(reply(v2, &join_ref, &msg_ref, &topic)));
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

// ----- the clients ---------------------------------------------------------------------------

/// How long without a delivery before the rest counts as lost.
const IDLE: Duration = Duration::from_secs(5);

/// The Rust client with one stream that only counts.
pub async fn rust_client(addr: &str, wire: Wire, n: usize) -> Res<BurstRow> {
    let mut options = ClientOptions::default().with_vsn(if wire == Wire::V1Text {
        Vsn::V1
    } else {
        Vsn::V2
    });
    if wire == Wire::V2Binary {
        options = options.with_param("binary", "1");
    }
    let client = RealtimeClient::connect(&format!("ws://{addr}/socket"), ANON_KEY, options).await?;
    let ch = client.channel("burst", ChannelConfig::default()).await?;
    let mut stream = ch.broadcasts("b").await?;
    ch.subscribe().await?;
    let mut received = 0u64;
    let mut first = None;
    let mut last = Instant::now();
    while received < n as u64 {
        match tokio::time::timeout(IDLE, stream.recv()).await {
            Ok(Some(_)) => {
                last = Instant::now();
                first.get_or_insert(last);
                received += 1;
            }
            _ => break,
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    client.disconnect().await;
    Ok(BurstRow {
        client: "Rust client (stream)".into(),
        wire: wire.label().into(),
        received,
        lost: n as u64 - received,
        per_sec: if secs > 0.0 {
            received as f64 / secs
        } else {
            0.0
        },
        secs,
        peak_rss_kb: rss_kb(std::process::id()),
        note: String::new(),
    })
}

/// A Python client (`ours-async`, `ours-sync`, `official`) in its own process.
pub async fn python_client(
    python: &std::path::Path,
    script: &std::path::Path,
    imp: &str,
    addr: &str,
    wire: Wire,
    n: usize,
) -> Res<BurstRow> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script).args([
        "--impl",
        imp,
        "--url",
        &format!("ws://{addr}/realtime/v1"),
        "--key",
        ANON_KEY,
        "--n",
        &n.to_string(),
        "--vsn",
        wire.vsn(),
        "--idle",
        &IDLE.as_secs().to_string(),
    ]);
    if wire == Wire::V2Binary {
        cmd.arg("--binary");
    }
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output()).await??;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(800)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        return Err(format!("{imp}: {tail}").into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    let received = v["count"].as_u64().unwrap_or(0);
    let secs = v["secs"].as_f64().unwrap_or(0.0);
    Ok(BurstRow {
        client: match imp {
            "ours-async" => "supa_realtime AsyncRealtimeClient".into(),
            "ours-sync" => "supa_realtime SyncRealtimeClient".into(),
            _ => "official realtime AsyncRealtimeClient".into(),
        },
        wire: wire.label().into(),
        received,
        lost: (n as u64).saturating_sub(received),
        per_sec: if secs > 0.0 {
            received as f64 / secs
        } else {
            0.0
        },
        secs,
        peak_rss_kb: v["peak_rss_kb"].as_u64().unwrap_or(0),
        note: v["note"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Every client and serializer against one burst sender.
pub async fn run(
    sender: &Proc,
    python: &std::path::Path,
    script: &std::path::Path,
    n: usize,
    bar: &indicatif::ProgressBar,
) -> Res<BurstResult> {
    let mut rows = Vec::new();
    let mut add = |row: Res<BurstRow>, client: &str, wire: Wire| {
        let row = row.unwrap_or_else(|e| BurstRow {
            client: client.into(),
            wire: wire.label().into(),
            note: format!("failed: {e}"),
            ..Default::default()
        });
        crate::say(
            bar,
            format!(
                "burst {n}: {} [{}] {} received, {} lost, {:.0}/s",
                row.client, row.wire, row.received, row.lost, row.per_sec
            ),
        );
        rows.push(row);
    };
    let addr = sender.addr.clone();
    for wire in Wire::ALL {
        add(
            rust_client(&addr, wire, n).await,
            "Rust client (stream)",
            wire,
        );
    }
    for imp in ["ours-async", "ours-sync"] {
        for wire in Wire::ALL {
            add(
                python_client(python, script, imp, &addr, wire, n).await,
                imp,
                wire,
            );
        }
    }
    // The official client speaks 1.0.0 only.
    add(
        python_client(python, script, "official", &addr, Wire::V1Text, n).await,
        "official",
        Wire::V1Text,
    );
    Ok(BurstResult { n, rows })
}

/// The report's section.
pub fn section(r: &BurstResult) -> String {
    use std::fmt::Write as _;
    let official = r
        .rows
        .iter()
        .find(|row| row.client.starts_with("official") && row.per_sec > 0.0)
        .map(|row| row.per_sec);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "A raw sender (`supa-realtime-bench burst-server`, its own process, speaking just enough of the protocol) writes **{n}** broadcasts `{{\"i\": k}}` to one client's socket at once, right after its join reply, in the client's serializer; TCP backpressure reaches the sender directly. \
         Each Python client runs in its own process (bench/py_burst.py) with one `on_broadcast(\"b\", cb)` callback that only counts; the Rust client is one `broadcasts(\"b\")` stream that only counts. \
         Rate = callbacks between the first and the last; lost = {n} − received once 5 s passed without a callback. Ratio: against the official client's callbacks/s in the same run.\n\n\
         | client | serializer | received | lost | callbacks/s | vs official | peak RSS | note |\n|---|---|---|---|---|---|---|---|",
        n = r.n
    );
    for row in &r.rows {
        let vs = match official {
            Some(o) if row.per_sec > 0.0 => format!("{:.1}x", row.per_sec / o),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} MiB | {} |",
            row.client,
            row.wire,
            row.received,
            row.lost,
            row.per_sec,
            vs,
            row.peak_rss_kb / 1024,
            row.note
        );
    }
    md
}

/// Handy for the report's targets table: (ours async best, official).
pub fn best_python(r: &BurstResult) -> Option<(f64, u64, f64)> {
    let official = r
        .rows
        .iter()
        .find(|row| row.client.starts_with("official"))?
        .per_sec;
    let ours: Vec<&BurstRow> = r
        .rows
        .iter()
        .filter(|row| row.client.starts_with("supa_realtime"))
        .collect();
    let worst_rate = ours
        .iter()
        .map(|row| row.per_sec)
        .fold(f64::INFINITY, f64::min);
    let lost: u64 = ours.iter().map(|row| row.lost).sum();
    Some((worst_rate, lost, official))
}
