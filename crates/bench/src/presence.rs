//! Presence: `n` sockets (raw tokio-tungstenite, serializer 1.0.0, like the fan-out
//! receivers: this measures the server) join one channel with their own presence key; then
//! all send `track` at once. Measured: the time until every track is acknowledged, and until
//! every socket has seen all `n` presences (from `presence_state` and `presence_diff`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::*;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PresenceResult {
    pub clients: usize,
    pub track_secs: f64,
    pub full_state_secs: f64,
    pub diffs_per_sec: f64,
}

const TOPIC: &str = "realtime:presence-bench";

async fn join(addr: &str, i: usize) -> Res<Ws> {
    let mut ws = ws_connect(&server_ws_url(addr, false)).await?;
    let payload = format!(
        "{{\"config\":{{\"broadcast\":{{\"self\":false,\"ack\":false}},\"presence\":{{\"key\":\"u{i}\",\"enabled\":true}},\"postgres_changes\":[],\"private\":false}},\"access_token\":\"{ANON_KEY}\"}}"
    );
    ws.send(WsMessage::text(client_frame(
        false, "1", "1", TOPIC, "phx_join", &payload,
    )))
    .await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "join timed out")?
            .ok_or("closed during join")??;
        if let WsMessage::Text(t) = m {
            if t.contains("phx_reply") {
                return if t.contains("\"ok\"") {
                    Ok(ws)
                } else {
                    Err(format!("join refused: {t}").into())
                };
            }
        }
    }
}

/// Keys named in a `presence_state` payload or in a diff's `joins`/`leaves`.
fn keys(v: &Value) -> impl Iterator<Item = &String> {
    v.as_object().into_iter().flat_map(|m| m.keys())
}

/// `spread`: the nodes of a cluster to spread the sockets over (empty: all on `proc`).
pub async fn run(
    proc: &Proc,
    spread: &[String],
    n: usize,
    bar: &ProgressBar,
) -> Res<PresenceResult> {
    bar.set_message(format!("presence: {n} sockets joining"));
    let own = [proc.addr.clone()];
    let addrs: Vec<String> = if spread.is_empty() {
        own.to_vec()
    } else {
        spread.to_vec()
    };
    let socks = bounded((0..n).collect::<Vec<_>>(), 128, |i| {
        let addr = addrs[i % addrs.len()].clone();
        async move { join(&addr, i).await }
    })
    .await;
    let (go_tx, go_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let acked = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for (i, ws) in socks.into_iter().enumerate() {
        let mut ws = ws?;
        let (mut go, mut stop) = (go_rx.clone(), stop_rx.clone());
        let (acked, full) = (acked.clone(), full.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut done = false;
            let mut started = false;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = go.changed(), if !started => {
                        started = true;
                        let body = format!("{{\"type\":\"presence\",\"event\":\"track\",\"payload\":{{\"user\":{i},\"online_at\":\"2026-01-01T00:00:00Z\"}}}}");
                        if ws.send(WsMessage::text(client_frame(false, "1", "track", TOPIC, "presence", &body))).await.is_err() {
                            break;
                        }
                    }
                    m = ws.next() => {
                        let Some(Ok(WsMessage::Text(t))) = m else {
                            if matches!(m, Some(Ok(_))) { continue } else { break }
                        };
                        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                        match v["event"].as_str() {
                            Some("phx_reply") if v["ref"] == "track" => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Some("presence_state") => seen.extend(keys(&v["payload"]).cloned()),
                            Some("presence_diff") => {
                                seen.extend(keys(&v["payload"]["joins"]).cloned());
                                for k in keys(&v["payload"]["leaves"]) {
                                    seen.remove(k);
                                }
                            }
                            _ => {}
                        }
                        if !done && seen.len() >= n {
                            done = true;
                            full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    bar.set_message(format!("presence: {n} sockets tracking"));
    let t0 = Instant::now();
    let _ = go_tx.send(true);
    let mut track_secs = None;
    let deadline = t0 + Duration::from_secs(120);
    while full.load(Ordering::Relaxed) < n {
        if track_secs.is_none() && acked.load(Ordering::Relaxed) >= n {
            track_secs = Some(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            let _ = stop_tx.send(true);
            return Err(format!(
                "presence: {} of {n} sockets saw the full state, {} tracks acknowledged, in 120 s",
                full.load(Ordering::Relaxed),
                acked.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let full_secs = t0.elapsed().as_secs_f64();
    while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let track_secs = track_secs.unwrap_or_else(|| t0.elapsed().as_secs_f64());
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(PresenceResult {
        clients: n,
        track_secs,
        full_state_secs: full_secs,
        diffs_per_sec: (n * n) as f64 / full_secs,
    })
}

/// Presence through the Rust client: `n` [`supa_realtime::RealtimeClient`]s in this process
/// (one socket each) join one channel with their own key, listen to presence events and
/// track; measured: the time until every client's presence state holds all `n`, and this
/// process's peak RSS (what the client's presence bookkeeping costs: `n` states of `n`
/// presences, plus whatever its queued `Sync` events hold).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClientPresenceResult {
    pub clients: usize,
    pub full_state_secs: f64,
    pub peak_rss_kb: u64,
    pub base_rss_kb: u64,
    /// Once all `n` are connected and subscribed, before any track: what the clients
    /// themselves cost, so that the peak minus this is the presence bookkeeping.
    pub connected_rss_kb: u64,
}

pub async fn run_clients(proc: &Proc, n: usize, bar: &ProgressBar) -> Res<ClientPresenceResult> {
    use supa_realtime::{ChannelConfig, ClientOptions, PresenceEvent, RealtimeClient};

    bar.set_message(format!("presence (Rust clients): {n} connecting"));
    let base_rss_kb = rss_kb(std::process::id());
    let url = format!("http://{}", proc.addr);
    let made = bounded((0..n).collect::<Vec<_>>(), 64, |i| {
        let url = url.clone();
        async move {
            // A generous timeout: 1,000 tracks at once keep the server busy for seconds.
            let options = ClientOptions::default().with_timeout(Duration::from_secs(120));
            let client = RealtimeClient::connect(&url, ANON_KEY, options).await?;
            let ch = client
                .channel(
                    "presence-clients",
                    ChannelConfig::default().presence_key(format!("u{i}")),
                )
                .await?;
            let events = ch.presence_events().await?;
            ch.subscribe().await?;
            Ok::<_, supa_realtime::Error>((client, ch, events))
        }
    })
    .await;
    let mut clients = Vec::with_capacity(n);
    for m in made {
        clients.push(m?);
    }
    let full = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for (client, ch, mut events) in clients {
        let full = full.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let PresenceEvent::Sync { state } = ev {
                    if state.len() >= n {
                        full.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            // Keep draining (a stream left unread would, by design, slow its socket).
            while events.recv().await.is_some() {}
        }));
        handles.push((client, ch));
    }
    let connected_rss_kb = rss_kb(std::process::id());
    bar.set_message(format!("presence (Rust clients): {n} tracking"));
    let t0 = Instant::now();
    let tracks = bounded(
        handles.iter().map(|(_, ch)| ch.clone()).collect(),
        256,
        |ch| async move {
            ch.track(serde_json::json!({"online_at": "2026-01-01T00:00:00Z"}))
                .await
        },
    )
    .await;
    for t in tracks {
        t?;
    }
    let deadline = t0 + Duration::from_secs(300);
    let mut peak = rss_kb(std::process::id());
    while full.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "presence (Rust clients): {} of {n} saw the full state in 300 s",
                full.load(Ordering::Relaxed)
            )
            .into());
        }
        peak = peak.max(rss_kb(std::process::id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full_state_secs = t0.elapsed().as_secs_f64();
    peak = peak.max(rss_kb(std::process::id()));
    for (client, _) in &handles {
        client.disconnect().await;
    }
    drop(handles);
    for t in tasks {
        t.abort();
    }
    Ok(ClientPresenceResult {
        clients: n,
        full_state_secs,
        peak_rss_kb: peak,
        base_rss_kb,
        connected_rss_kb,
    })
}
