//! Broadcast fan-out: one sender, `channels x subs` subscriber sockets; deliveries per second
//! at saturation (a bounded number of deliveries in flight) and end-to-end latency, then
//! latency again at a fixed moderate rate. The same receivers (raw tokio-tungstenite
//! sockets that only read the timestamp) and the same frames run against the raw baseline
//! server and against supa-realtime-server with either serializer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use supa_realtime_protocol::{binary, UserBroadcast, UserPayload};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::common::*;

/// What the receivers talk to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The raw fan-out server ([`crate::baseline`]).
    Baseline,
    /// supa-realtime-server, subscribers and sender on serializer 1.0.0 or 2.0.0.
    Server { v2: bool },
}

#[derive(Clone, Debug)]
pub struct FanoutParams {
    pub channels: usize,
    pub subs: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Deliveries allowed in flight at saturation.
    pub window: u64,
    /// Deliveries per second of the paced latency phase; `None`: half of this run's own
    /// saturated rate (the baseline), else half of the baseline's.
    pub paced_rate: Option<u64>,
    pub paced: Duration,
    /// Padding of the payload, so the delivered frame is ~150 bytes.
    pub pad: usize,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FanoutResult {
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    pub saturated: Latency,
    pub paced: Latency,
    pub paced_rate: u64,
    pub frame_bytes: usize,
    pub server_cpu_s: f64,
    /// Server CPU time (user + system) per delivery during the saturated phase.
    pub cpu_us_per_delivery: f64,
    pub lost: u64,
}

pub fn topic(c: usize) -> String {
    format!("realtime:fan-{c}")
}

/// The frame a 1.0.0 subscriber receives for one broadcast (what the baseline forwards).
pub fn delivered_v1(c: usize, t: u64, pad: &str) -> String {
    format!(
        "{{\"event\":\"broadcast\",\"payload\":{{\"event\":\"b\",\"payload\":{{\"p\":\"{pad}\",\"t\":{t}}},\"type\":\"broadcast\"}},\"ref\":null,\"topic\":\"{}\"}}",
        topic(c)
    )
}

struct Shared {
    delivered: AtomicU64,
    /// Window of the measurement in bench microseconds: [start, end).
    start: AtomicU64,
    end: AtomicU64,
    measured: AtomicU64,
}

/// Connect the subscribers; each task returns its latency histograms (saturated, paced).
async fn subscribers(
    target: Target,
    addrs: &[String],
    p: &FanoutParams,
    shared: Arc<Shared>,
    paced_from: Arc<AtomicU64>,
    bar: &ProgressBar,
) -> Res<Vec<tokio::task::JoinHandle<(Histogram<u64>, Histogram<u64>)>>> {
    let n = p.channels * p.subs;
    let items: Vec<usize> = (0..n).collect();
    bar.set_message(format!("connecting {n} subscribers"));
    let socks = bounded(items, 128, |i| {
        // Spread over the nodes of a cluster (one address: all on it).
        let addr = addrs[i % addrs.len()].clone();
        let c = i % p.channels;
        async move {
            let r: Res<Ws> = async {
                match target {
                    Target::Baseline => ws_connect(&format!("ws://{addr}/?g={c}")).await,
                    Target::Server { v2 } => {
                        let mut ws = ws_connect(&server_ws_url(&addr, v2)).await?;
                        join_all(&mut ws, v2, &[topic(c)]).await?;
                        Ok(ws)
                    }
                }
            }
            .await;
            r
        }
    })
    .await;
    let mut handles = Vec::with_capacity(n);
    for ws in socks {
        let mut ws = ws?;
        let shared = shared.clone();
        let paced_from = paced_from.clone();
        handles.push(tokio::spawn(async move {
            let mut sat = histogram();
            let mut paced = histogram();
            // no select per frame: the receiver exits on the sender's stop frame (or a close)
            while let Some(m) = ws.next().await {
                let now = now_us();
                let frame: &[u8] = match &m {
                    Ok(WsMessage::Text(t)) => t.as_bytes(),
                    Ok(WsMessage::Binary(b)) => b,
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let Some(t) = find_t(frame) else {
                    if frame.windows(6).any(|w| w == b"\"stop\"") {
                        break;
                    }
                    continue;
                };
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                let lat = now.saturating_sub(t).max(1);
                if t >= paced_from.load(Ordering::Relaxed) {
                    let _ = paced.record(lat);
                } else if t >= shared.start.load(Ordering::Relaxed)
                    && t < shared.end.load(Ordering::Relaxed)
                {
                    shared.measured.fetch_add(1, Ordering::Relaxed);
                    let _ = sat.record(lat);
                }
            }
            (sat, paced)
        }));
    }
    Ok(handles)
}

/// The sending side: frames for channel `c` with timestamp `t`.
enum Sender {
    Baseline(Ws),
    Server { ws: Ws, v2: bool, n: u64 },
}

impl Sender {
    async fn feed(&mut self, c: usize, pad: &str) -> Res<()> {
        let t = now_us();
        match self {
            Sender::Baseline(ws) => {
                ws.feed(WsMessage::text(format!("{c}\n{}", delivered_v1(c, t, pad))))
                    .await?
            }
            Sender::Server { ws, v2, n } => {
                *n += 1;
                let payload = format!("{{\"p\":\"{pad}\",\"t\":{t}}}");
                let join_ref = format!("j{c}");
                if *v2 {
                    let b = UserBroadcast {
                        join_ref: Some(join_ref),
                        msg_ref: Some(n.to_string()),
                        topic: topic(c),
                        event: "b".into(),
                        metadata: None,
                        payload: UserPayload::Json(Bytes::from(payload)),
                    };
                    let bytes =
                        binary::encode_user_broadcast_push(&b).map_err(|e| format!("{e:?}"))?;
                    ws.feed(WsMessage::Binary(bytes)).await?
                } else {
                    let body =
                        format!("{{\"type\":\"broadcast\",\"event\":\"b\",\"payload\":{payload}}}");
                    ws.feed(WsMessage::text(client_frame(
                        false,
                        &join_ref,
                        &n.to_string(),
                        &topic(c),
                        "broadcast",
                        &body,
                    )))
                    .await?
                }
            }
        }
        Ok(())
    }

    /// A frame without a timestamp that tells every receiver of channel `c` to finish.
    async fn feed_stop(&mut self, c: usize) -> Res<()> {
        match self {
            Sender::Baseline(ws) => {
                ws.feed(WsMessage::text(format!("{c}\n{{\"stop\":1}}")))
                    .await?
            }
            Sender::Server { ws, n, v2 } => {
                *n += 1;
                let body = "{\"type\":\"broadcast\",\"event\":\"b\",\"payload\":{\"stop\":1}}";
                ws.feed(WsMessage::text(client_frame(
                    *v2,
                    &format!("j{c}"),
                    &n.to_string(),
                    &topic(c),
                    "broadcast",
                    body,
                )))
                .await?
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Res<()> {
        match self {
            Sender::Baseline(ws) | Sender::Server { ws, .. } => ws.flush().await?,
        }
        Ok(())
    }
}

/// Run one fan-out measurement against a running `proc`: the sender on it, the subscribers
/// on it too, or spread over `spread` (the nodes of a cluster) when given.
pub async fn run(
    target: Target,
    proc: &Proc,
    spread: &[String],
    p: &FanoutParams,
    bar: &ProgressBar,
) -> Res<FanoutResult> {
    let own = [proc.addr.clone()];
    let addrs = if spread.is_empty() { &own[..] } else { spread };
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        start: AtomicU64::new(u64::MAX),
        end: AtomicU64::new(u64::MAX),
        measured: AtomicU64::new(0),
    });
    let paced_from = Arc::new(AtomicU64::new(u64::MAX));
    let handles = subscribers(target, addrs, p, shared.clone(), paced_from.clone(), bar).await?;
    let per_msg = p.subs as u64;
    let pad = "x".repeat(p.pad);
    let mut sender = match target {
        Target::Baseline => {
            Sender::Baseline(ws_connect(&format!("ws://{}/?sender=1", proc.addr)).await?)
        }
        Target::Server { v2 } => {
            let mut ws = ws_connect(&server_ws_url(&proc.addr, v2)).await?;
            let topics: Vec<String> = (0..p.channels).map(topic).collect();
            join_all(&mut ws, v2, &topics).await?;
            Sender::Server { ws, v2, n: 0 }
        }
    };
    // the sender never reads (self is off), but the server may write to it: drain nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // saturation: keep at most `window` deliveries in flight, refilled every millisecond
    bar.set_message(format!(
        "{:?} {}x{}: saturation",
        target, p.channels, p.subs
    ));
    let t_begin = now_us();
    let warm_end = t_begin + p.warmup.as_micros() as u64;
    let t_end = warm_end + p.measure.as_micros() as u64;
    shared.start.store(warm_end, Ordering::Relaxed);
    shared.end.store(t_end, Ordering::Relaxed);
    let cpu0 = cpu_seconds(proc.pid());
    let delivered0 = shared.delivered.load(Ordering::Relaxed);
    let mut sent: u64 = 0;
    let mut c = 0usize;
    loop {
        let now = now_us();
        if now >= t_end {
            break;
        }
        let inflight = sent.saturating_sub(shared.delivered.load(Ordering::Relaxed));
        if inflight + per_msg > p.window {
            tokio::time::sleep(Duration::from_micros(500)).await;
            continue;
        }
        let mut room = (p.window - inflight) / per_msg;
        while room > 0 {
            sender.feed(c, &pad).await?;
            c = (c + 1) % p.channels;
            sent += per_msg;
            room -= 1;
        }
        sender.flush().await?;
    }
    let cpu1 = cpu_seconds(proc.pid());
    let delivered1 = shared.delivered.load(Ordering::Relaxed);
    // let the last messages arrive
    let drain = tokio::time::Instant::now() + Duration::from_secs(10);
    while shared.delivered.load(Ordering::Relaxed) < sent && tokio::time::Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost_sat = sent.saturating_sub(shared.delivered.load(Ordering::Relaxed));
    let measured = shared.measured.load(Ordering::Relaxed);
    let secs = p.measure.as_secs_f64();

    // paced: a fixed rate, spread over 1 ms ticks
    bar.set_message(format!(
        "{:?} {}x{}: paced latency",
        target, p.channels, p.subs
    ));
    let rate = p
        .paced_rate
        .unwrap_or((measured as f64 / secs * 0.5) as u64);
    let msgs_per_sec = (rate / per_msg).max(1);
    let before = shared.delivered.load(Ordering::Relaxed);
    paced_from.store(now_us(), Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let start = tokio::time::Instant::now();
    let mut paced_sent = 0u64;
    while start.elapsed() < p.paced {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * msgs_per_sec as f64) as u64;
        while paced_sent < due {
            sender.feed(c, &pad).await?;
            c = (c + 1) % p.channels;
            paced_sent += 1;
        }
        sender.flush().await?;
    }
    let want = before + paced_sent * per_msg;
    let drain = tokio::time::Instant::now() + Duration::from_secs(10);
    while shared.delivered.load(Ordering::Relaxed) < want && tokio::time::Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost = lost_sat + want.saturating_sub(shared.delivered.load(Ordering::Relaxed));
    for ch in 0..p.channels {
        sender.feed_stop(ch).await?;
    }
    sender.flush().await?;
    let mut sat = histogram();
    let mut paced = histogram();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for h in handles {
        if let Ok(Ok((s, pc))) = tokio::time::timeout_at(deadline, h).await {
            let _ = sat.add(&s);
            let _ = paced.add(&pc);
        }
    }
    drop(sender);
    Ok(FanoutResult {
        deliveries_per_sec: measured as f64 / secs,
        messages_per_sec: measured as f64 / secs / per_msg as f64,
        saturated: Latency::of(&sat),
        paced: Latency::of(&paced),
        paced_rate: msgs_per_sec * per_msg,
        frame_bytes: delivered_v1(0, 1_000_000_000, &pad).len(),
        server_cpu_s: cpu1 - cpu0,
        cpu_us_per_delivery: (cpu1 - cpu0) * 1e6
            / (delivered1.saturating_sub(delivered0)).max(1) as f64,
        lost,
    })
}
