//! Drop policies are explicit: a consumer that opted into one and falls behind loses
//! events, and every loss is counted and reported. (Its own test binary, so that the RSS
//! measured by `backpressure.rs` is that test's alone.)
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, ANON};
use serde_json::json;
use supa_realtime::{ChannelConfig, ClientOptions, ErrorKind, Overflow, RealtimeClient, Vsn};

const MS: Duration = Duration::from_millis(1);

fn options() -> ClientOptions {
    ClientOptions::default()
        .with_vsn(Vsn::V2)
        .with_hb_interval(500 * MS)
        .with_heartbeat_timeout(1500 * MS)
        .with_timeout(10_000 * MS)
        .with_backoff(50 * MS, 1000 * MS)
}

/// A channel that opts into `drop_newest`: a consumer that does not keep up loses events,
/// and each loss is counted on the stream, the channel and the client, and reported to the
/// channel's error listeners with the count. Events that were kept are in order.
#[tokio::test]
async fn drop_policy_counts_and_reports_every_drop() {
    const N: u64 = 3000;
    let server = Server::start_with(&["--outbox-capacity", "300000"]);
    let receiver =
        RealtimeClient::connect(&server.url(), ANON, options().with_event_queue_capacity(16))
            .await
            .unwrap();
    let sender = RealtimeClient::connect(&server.url(), ANON, options())
        .await
        .unwrap();
    let rx_ch = receiver
        .channel(
            "lossy",
            ChannelConfig::default().overflow(Overflow::DropNewest),
        )
        .await
        .unwrap();
    let mut stream = rx_ch.broadcasts("b").await.unwrap();
    let mut errors = rx_ch.errors().await.unwrap();
    rx_ch.subscribe().await.unwrap();
    let tx_ch = sender
        .channel("lossy", ChannelConfig::default().broadcast_ack(true))
        .await
        .unwrap();
    tx_ch.subscribe().await.unwrap();
    for i in 0..N {
        tx_ch.send_broadcast("b", json!({ "i": i })).await.unwrap();
    }
    // Everything was acknowledged by the server; give delivery a moment, then read.
    tokio::time::sleep(500 * MS).await;
    let mut kept = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(300 * MS, stream.recv()).await {
        kept.push(m.payload.as_json().unwrap()["i"].as_u64().unwrap());
    }
    let dropped = stream.dropped();
    let mut dup = kept.clone();
    dup.dedup();
    eprintln!(
        "DROP: kept {} (distinct {}), dropped {dropped}, first kept {:?}",
        kept.len(),
        dup.len(),
        &kept[..kept.len().min(20)]
    );
    assert!(
        dropped > 0,
        "a 16-event queue unread during 3000 events drops"
    );
    assert_eq!(kept.len() as u64 + dropped, N, "kept + dropped = sent");
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "kept events in order");
    // The channel and client count the drops of all their streams (the error stream's too).
    let on_channel = rx_ch.dropped_events();
    assert!(on_channel >= dropped, "{on_channel} < {dropped}");
    assert_eq!(receiver.dropped_events(), on_channel);

    let mut reported = 0;
    while let Ok(Some(e)) = tokio::time::timeout(1000 * MS, errors.recv()).await {
        assert_eq!(e.kind(), ErrorKind::Overflow);
        assert!(e.message().contains("dropped"), "{e}");
        reported += e
            .message()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        if reported >= rx_ch.dropped_events() {
            break;
        }
    }
    assert_eq!(
        reported,
        rx_ch.dropped_events(),
        "every drop reported with its count"
    );
}
