//! The ceiling: a raw WebSocket fan-out server (tokio-tungstenite, no protocol logic), run
//! as its own process (`supa-realtime-bench baseline-server`) so its CPU and RSS are
//! measured like the real server's.
//!
//! Subscribers connect to `/?g=<group>`; the sender connects to `/?sender=1` and sends text
//! frames `<group>\n<frame>`: the server forwards `<frame>` (one shared buffer) to every socket
//! of the group, through the same shape the real server uses: one writer task per socket
//! fed by a bounded queue, `try_send` from the fan-out, writes batched until the queue is
//! empty, then one flush. Any other frame from a subscriber is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use std::sync::RwLock;
use tokio::net::{TcpListener, TcpStream};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Groups = Arc<RwLock<HashMap<u32, Vec<mpsc::Sender<Utf8Bytes>>>>>;

pub fn run(addr: &str) -> std::io::Result<()> {
    crate::common::raise_nofile();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let groups: Groups = Arc::default();
        loop {
            let (tcp, _) = listener.accept().await?;
            let groups = groups.clone();
            tokio::spawn(async move {
                let _ = conn(tcp, groups).await;
            });
        }
    })
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn conn(
    tcp: TcpStream,
    groups: Groups,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tcp.set_nodelay(true)?;
    let mut query = String::new();
    // An 8 KiB read buffer instead of tungstenite's 128 KiB default, which is allocated and
    // touched per socket (140 KB of RSS per idle socket with the default, 9 KB with 4 KiB):
    // the ceiling for memory as well. BENCH_BASELINE_READ_BUFFER (bytes) overrides it.
    let read_buffer = std::env::var("BENCH_BASELINE_READ_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8 * 1024);
    let config = Some(WebSocketConfig::default().read_buffer_size(read_buffer));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        |req: &Request, resp: Response| {
            query = req.uri().query().unwrap_or("").to_owned();
            Ok(resp)
        },
        config,
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    if query.contains("sender=1") {
        while let Some(m) = stream.next().await {
            if let Message::Text(t) = m? {
                let Some(nl) = t.as_str().find('\n') else {
                    continue;
                };
                let g: u32 = t.as_str()[..nl].parse().unwrap_or(0);
                // the frame shares the received buffer (no copy), like the server's Bytes
                let Ok(frame) = Utf8Bytes::try_from(Bytes::from(t).slice(nl + 1..)) else {
                    continue;
                };
                let Ok(gs) = groups.read() else { continue };
                if let Some(subs) = gs.get(&g) {
                    for s in subs {
                        let _ = s.try_send(frame.clone());
                    }
                }
            }
        }
        return Ok(());
    }
    let g: u32 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("g="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(4096);
    if let Ok(mut gs) = groups.write() {
        gs.entry(g).or_default().push(tx);
    }
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.feed(Message::Text(f)).await.is_err() {
                return;
            }
            while let Ok(f) = rx.try_recv() {
                if sink.feed(Message::Text(f)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(m) = stream.next().await {
        if m.is_err() {
            break;
        }
    }
    writer.abort();
    if let Ok(mut gs) = groups.write() {
        if let Some(v) = gs.get_mut(&g) {
            v.retain(|s| !s.is_closed());
        }
    }
    Ok(())
}
