//! Connections: N sockets, each joined to a channel (N/100 per channel) and heartbeating;
//! the server's RSS growth per connection, against the raw baseline server holding the
//! same number of idle sockets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::*;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConnsResult {
    pub connections: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub bytes_per_conn: f64,
    pub connect_secs: f64,
    pub heartbeat_replies: u64,
}

/// Connect `n` sockets to `proc` (server: joined to one of 100 channels and heartbeating
/// every `hb`; baseline: idle in one of 100 groups), then measure RSS.
pub async fn run(
    proc: &Proc,
    server: bool,
    n: usize,
    hb: Duration,
    bar: &ProgressBar,
) -> Res<ConnsResult> {
    // warm the process (first connection initialises lazily allocated state)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc.rss_kb();
    let (stop_tx, stop_rx) = watch::channel(false);
    let replies = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t0 = std::time::Instant::now();
    let addr = proc.addr.clone();
    let bar2 = bar.clone();
    bar.set_message(format!("{} connections to {}", n, proc.name));
    let socks = bounded((0..n).collect::<Vec<_>>(), 128, |i| {
        let addr = addr.clone();
        let bar = bar2.clone();
        async move {
            let c = i % 100;
            let r: Res<Ws> = async {
                if server {
                    let mut ws = ws_connect(&server_ws_url(&addr, false)).await?;
                    join_all(&mut ws, false, &[format!("realtime:conn-{c}")]).await?;
                    Ok(ws)
                } else {
                    ws_connect(&format!("ws://{addr}/?g={}", 1000 + c)).await
                }
            }
            .await;
            if i % 500 == 0 {
                bar.set_message(format!("{i}/{n} connections to {addr}"));
            }
            r
        }
    })
    .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let mut tasks = Vec::with_capacity(n);
    for (i, ws) in socks.into_iter().enumerate() {
        let mut ws = ws?;
        let mut stop = stop_rx.clone();
        let replies = replies.clone();
        tasks.push(tokio::spawn(async move {
            // first heartbeat at once (spread over 1 s), then every `hb`
            let first = Duration::from_micros((i as u64 * 997) % 1_000_000);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, hb);
            let mut r = 0u64;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick(), if server => {
                        r += 1;
                        let f = format!("{{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{{}},\"ref\":\"h{r}\"}}");
                        if ws.send(WsMessage::text(f)).await.is_err() { break; }
                    }
                    m = ws.next() => match m {
                        Some(Ok(WsMessage::Text(t))) if t.contains("phx_reply") => {
                            replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    bar.set_message(format!("{n} connections to {}: settling", proc.name));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rss_after = proc.rss_kb();
    let heartbeat_replies = replies.load(std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(ConnsResult {
        connections: n,
        rss_before_kb: rss_before,
        rss_after_kb: rss_after,
        bytes_per_conn: (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / n as f64,
        connect_secs,
        heartbeat_replies,
    })
}
