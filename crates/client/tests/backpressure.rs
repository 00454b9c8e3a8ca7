//! Slow consumers against the real server: nothing is lost by default, memory stays
//! bounded, the paused socket does not time out, and drop policies report every drop.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, ANON};
use serde_json::json;
use supa_realtime::{
    BroadcastPayload, ChannelConfig, ClientEvent, ClientOptions, ConnectionState, RealtimeClient,
    Vsn,
};

const MS: Duration = Duration::from_millis(1);

/// A server that keeps, for a socket that reads slowly, up to 300,000 queued frames (its own
/// slow-consumer policy would otherwise close it: that is the server's decision, and the
/// client must not lose anything before it).
fn patient_server() -> Server {
    Server::start_with(&["--outbox-capacity", "300000"])
}

fn options() -> ClientOptions {
    ClientOptions::default()
        .with_vsn(Vsn::V2)
        // Heartbeats far more often than the consumer's pause: a heartbeat timeout counted
        // while we hold the socket paused would close it.
        .with_hb_interval(500 * MS)
        .with_heartbeat_timeout(1500 * MS)
        .with_timeout(10_000 * MS)
        .with_backoff(50 * MS, 1000 * MS)
}

/// Resident set size of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// 100,000 broadcasts of about 1 KiB sent while the receiving stream is not read for 3 s,
/// then read slowly: every one arrives, in order; the socket stays open although heartbeats
/// (every 500 ms, 1.5 s timeout) could not be answered while reading was paused; and the
/// process holds a bounded amount of them.
///
/// The memory bound: at most `event_queue_capacity` (1024) events queued for the stream plus
/// `backlog_events` (4096) waiting on the task, about 1.1 KiB each, i.e. about 6 MiB.
/// Without backpressure the 100,000 would be held (well over 100 MiB with their JSON
/// values). The assertion allows 48 MiB of growth (allocator slack, the sender's buffers, the
/// kernel not counting: socket buffers are not in RSS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_with_a_slow_stream_is_lossless_ordered_and_bounded() {
    const N: usize = 100_000;
    let server = patient_server();
    let receiver = RealtimeClient::connect(&server.url(), ANON, options())
        .await
        .unwrap();
    let sender = RealtimeClient::connect(&server.url(), ANON, options())
        .await
        .unwrap();
    let rx_ch = receiver
        .channel("burst", ChannelConfig::default())
        .await
        .unwrap();
    let mut stream = rx_ch.broadcasts("b").await.unwrap();
    let mut socket_events = receiver.events().await.unwrap();
    rx_ch.subscribe().await.unwrap();
    let tx_ch = sender
        .channel("burst", ChannelConfig::default())
        .await
        .unwrap();
    tx_ch.subscribe().await.unwrap();

    let filler = "x".repeat(1000);
    let base = rss();
    let send = tokio::spawn(async move {
        for i in 0..N {
            tx_ch
                .send_broadcast("b", json!({"i": i, "f": filler}))
                .await
                .unwrap();
        }
        sender
    });

    // The consumer does not read for 3 s: its queue fills, the backlog fills, reading stops.
    tokio::time::sleep(3000 * MS).await;
    let mut peak = rss();
    assert_eq!(
        receiver.connection_state(),
        ConnectionState::Open,
        "a socket paused by its own consumer is not dead"
    );

    let started = Instant::now();
    let mut next = 0usize;
    while next < N {
        let m = tokio::time::timeout(30_000 * MS, stream.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled at {next} of {N}"))
            .unwrap();
        let BroadcastPayload::Json(v) = &m.payload else {
            panic!("json payload expected")
        };
        if v["i"] != json!(next) {
            let mut evs = Vec::new();
            while let Some(ev) = socket_events.try_recv() {
                evs.push(format!("{ev:?}"));
            }
            panic!("expected {next}, got {}; socket events: {evs:?}", v["i"]);
        }
        next += 1;
        if next.is_multiple_of(10_000) {
            peak = peak.max(rss());
            // Slow: a pause now and then keeps the socket paused again and again.
            tokio::time::sleep(50 * MS).await;
        }
    }
    let _sender = send.await.unwrap();
    eprintln!(
        "BURST: {N} delivered in order after a 3 s stall, read in {:?}; RSS growth {} KiB",
        started.elapsed(),
        peak.saturating_sub(base) / 1024
    );
    assert_eq!(stream.dropped(), 0);
    assert_eq!(rx_ch.dropped_events(), 0);
    assert_eq!(receiver.dropped_events(), 0);
    assert!(
        peak.saturating_sub(base) < 48 << 20,
        "RSS grew by {} MiB",
        peak.saturating_sub(base) >> 20
    );
    while let Some(ev) = socket_events.try_recv() {
        match ev {
            ClientEvent::Close { reason, .. } => panic!("socket closed during the burst: {reason}"),
            ClientEvent::Error(e) => panic!("socket error during the burst: {e}"),
            _ => {}
        }
    }
}
