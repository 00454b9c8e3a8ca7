//! Presence snapshots share memory with the live state (real server, real sockets).
//!
//! Every `Sync` carries the whole presence state. Before this was structurally shared, each
//! one (per diff, later per read batch) was a deep copy, so n clients of one channel in one
//! process held O(n³) copies of presences. These tests fail if any snapshot handed out (a
//! `Sync`'s state, `presence_state()`, a `Join`'s presences) is a copy instead of the
//! state's own storage, or if copy-on-write leaks a later change into an older snapshot.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, ANON};
use serde_json::json;
use supa_realtime::{
    ChannelConfig, ClientOptions, EventStream, PresenceEvent, PresenceState, RealtimeChannel,
    RealtimeClient, Vsn,
};

const MS: Duration = Duration::from_millis(1);
const TRACKERS: usize = 12;

fn options() -> ClientOptions {
    ClientOptions::default()
        .with_vsn(Vsn::V2)
        .with_timeout(10_000 * MS)
        .with_backoff(50 * MS, 1000 * MS)
}

/// Receive presence events until `done` holds for the latest `Sync` state; returns every
/// event seen, in order.
async fn collect_until(
    events: &mut EventStream<PresenceEvent>,
    done: impl Fn(&PresenceState) -> bool,
) -> Vec<PresenceEvent> {
    let deadline = Instant::now() + 20_000 * MS;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "presence never converged: {seen:?}"
        );
        let Ok(Some(ev)) = tokio::time::timeout(500 * MS, events.recv()).await else {
            continue;
        };
        let finished = matches!(&ev, PresenceEvent::Sync { state } if done(state));
        seen.push(ev);
        if finished {
            return seen;
        }
    }
}

async fn tracker(server: &Server, i: usize) -> (RealtimeClient, RealtimeChannel) {
    let c = RealtimeClient::connect(&server.url(), ANON, options())
        .await
        .unwrap();
    let ch = c
        .channel(
            "share",
            ChannelConfig::default().presence_key(format!("u{i:02}")),
        )
        .await
        .unwrap();
    ch.subscribe().await.unwrap();
    ch.track(json!({"i": i, "status": "online"})).await.unwrap();
    (c, ch)
}

#[tokio::test]
async fn presence_snapshots_share_storage_with_the_live_state() {
    let server = Server::start();
    let observer = RealtimeClient::connect(&server.url(), ANON, options())
        .await
        .unwrap();
    let obs = observer
        .channel("share", ChannelConfig::default().presence_enabled(true))
        .await
        .unwrap();
    let mut events = obs.presence_events().await.unwrap();
    obs.subscribe().await.unwrap();

    // One tracker at a time, so the observer sees (about) one diff per read batch: the
    // case that made a full copy per diff.
    let mut trackers = Vec::new();
    for i in 0..TRACKERS {
        trackers.push(tracker(&server, i).await);
    }
    let seen = collect_until(&mut events, |s| s.len() == TRACKERS).await;
    let live = obs.presence_state();
    assert_eq!(live.len(), TRACKERS, "{live:?}");

    let syncs: Vec<&PresenceState> = seen
        .iter()
        .filter_map(|e| match e {
            PresenceEvent::Sync { state } => Some(state),
            _ => None,
        })
        .collect();
    assert!(
        syncs.len() >= 2,
        "expected a sync per batch of diffs, got {}",
        syncs.len()
    );
    // Each tracker tracked once, so from its join on a key's presences never change: every
    // snapshot that holds a key holds the live state's own list of it, and its presence is
    // the live one (not an equal copy).
    let mut shared = 0;
    for s in &syncs {
        for (key, list) in s.iter() {
            assert!(
                Arc::ptr_eq(list, &live[key]),
                "a Sync snapshot copied the presences of {key}"
            );
            assert!(Arc::ptr_eq(&list[0], &live[key][0]));
            shared += 1;
        }
    }
    assert!(
        shared > TRACKERS,
        "too few snapshot entries compared ({shared})"
    );
    // The presences a Join hands out are the state's too.
    let mut joins = 0;
    for e in &seen {
        if let PresenceEvent::Join { key, new, current } = e {
            assert!(current.is_empty(), "{key} joined twice: {current:?}");
            assert!(Arc::ptr_eq(new, &live[key]), "the Join of {key} is a copy");
            joins += 1;
        }
    }
    assert_eq!(joins, TRACKERS);
    // presence_state() is a snapshot of the same storage.
    let again = obs.presence_state();
    for (key, list) in again.iter() {
        assert!(Arc::ptr_eq(list, &live[key]));
    }

    // Copy on write: an update reaches the live state and new snapshots, never an old one,
    // and the other keys stay shared between the old snapshot and the new state.
    trackers[3]
        .1
        .track(json!({"i": 3, "status": "away"}))
        .await
        .unwrap();
    collect_until(&mut events, |s| {
        s.get("u03")
            .is_some_and(|l| l.len() == 1 && l[0]["status"] == "away")
    })
    .await;
    let after = obs.presence_state();
    assert_eq!(
        live["u03"][0]["status"], "online",
        "an old snapshot changed"
    );
    assert_eq!(after["u03"][0]["status"], "away");
    assert!(!Arc::ptr_eq(&live["u03"], &after["u03"]));
    for (key, list) in live.iter().filter(|(k, _)| k.as_str() != "u03") {
        assert!(
            Arc::ptr_eq(list, &after[key]),
            "{key} was copied by a change to u03"
        );
    }
    for (c, _) in &trackers {
        c.disconnect().await;
    }
    observer.disconnect().await;
}
