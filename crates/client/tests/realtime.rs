//! End-to-end tests against the real server process, including injected faults.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{jwt, Server, ANON};
use serde_json::json;
use supa_realtime::{
    BroadcastPayload, ChannelConfig, ChannelStatus, ClientEvent, ClientOptions, ConnectionState,
    ErrorKind, EventStream, OfflinePolicy, PresenceEvent, RealtimeChannel, RealtimeClient,
    TokenProvider, Vsn,
};

const MS: Duration = Duration::from_millis(1);

fn fast(vsn: Vsn) -> ClientOptions {
    ClientOptions::default()
        .with_vsn(vsn)
        .with_hb_interval(1000 * MS)
        .with_heartbeat_timeout(1000 * MS)
        .with_timeout(5000 * MS)
        .with_backoff(50 * MS, 1000 * MS)
        .with_rejoin_backoff(vec![100 * MS, 200 * MS, 500 * MS, 1000 * MS])
}

async fn recv<T, S>(s: &mut EventStream<T, S>, within: Duration) -> Option<T> {
    tokio::time::timeout(within, s.recv()).await.ok().flatten()
}

async fn wait_status(ch: &RealtimeChannel, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let mut w = ch.status_watch();
    tokio::time::timeout(within, async {
        loop {
            if w.borrow_and_update().as_str() == want {
                return;
            }
            if w.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} did not reach {want} within {within:?}; is {:?}",
            ch.topic(),
            ch.status()
        )
    });
    start.elapsed()
}

async fn pair(
    server: &Server,
    vsn: Vsn,
    room: &str,
    config: ChannelConfig,
) -> (
    RealtimeClient,
    RealtimeChannel,
    RealtimeClient,
    RealtimeChannel,
) {
    let a = RealtimeClient::connect(&server.url(), ANON, fast(vsn))
        .await
        .unwrap();
    let b = RealtimeClient::connect(&server.url(), ANON, fast(vsn))
        .await
        .unwrap();
    let ca = a.channel(room, config.clone()).await.unwrap();
    let cb = b.channel(room, config).await.unwrap();
    (a, ca, b, cb)
}

async fn broadcast_round_trip(vsn: Vsn) {
    let server = Server::start();
    let (_a, ca, _b, cb) = pair(
        &server,
        vsn,
        "room1",
        ChannelConfig::default()
            .broadcast_ack(true)
            .broadcast_self(true),
    )
    .await;
    let mut on_a = ca.broadcasts("*").await.unwrap();
    let mut on_b = cb.broadcasts("cursor").await.unwrap();
    ca.subscribe().await.unwrap();
    cb.subscribe().await.unwrap();
    assert_eq!(ca.status(), ChannelStatus::Subscribed);

    // ack: resolves only once the server acknowledged it.
    ca.send_broadcast("cursor", json!({"x": 1})).await.unwrap();
    let got = recv(&mut on_b, 2000 * MS).await.expect("b receives");
    assert_eq!(got.event, "cursor");
    assert_eq!(got.payload, BroadcastPayload::Json(json!({"x": 1})));
    // self: the sender gets its own broadcast.
    let own = recv(&mut on_a, 2000 * MS).await.expect("self delivery");
    assert_eq!(own.payload, BroadcastPayload::Json(json!({"x": 1})));
    // b's listener is for "cursor" only.
    cb.send_broadcast("other", json!({})).await.unwrap();
    if let Some(m) = recv(&mut on_b, 300 * MS).await {
        panic!("b's cursor listener got {m:?}");
    }
}

#[tokio::test]
async fn broadcast_self_and_ack_v2() {
    broadcast_round_trip(Vsn::V2).await;
}

#[tokio::test]
async fn broadcast_self_and_ack_v1() {
    broadcast_round_trip(Vsn::V1).await;
}

#[tokio::test]
async fn binary_broadcast_v2_and_refused_on_v1() {
    let server = Server::start();
    let (_a, ca, _b, cb) = pair(
        &server,
        Vsn::V2,
        "bin",
        ChannelConfig::default().broadcast_ack(true),
    )
    .await;
    let mut on_b = cb.broadcasts("blob").await.unwrap();
    ca.subscribe().await.unwrap();
    cb.subscribe().await.unwrap();
    ca.send_broadcast("blob", vec![0xca_u8, 0xfe, 0x00])
        .await
        .unwrap();
    let got = recv(&mut on_b, 2000 * MS).await.expect("binary delivered");
    assert_eq!(
        got.payload.as_bytes().map(|b| b.to_vec()),
        Some(vec![0xca, 0xfe, 0x00])
    );

    let v1 = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V1))
        .await
        .unwrap();
    let c1 = v1.channel("bin", ChannelConfig::default()).await.unwrap();
    c1.subscribe().await.unwrap();
    let e = c1.send_broadcast("blob", vec![1u8]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn rest_send_when_not_joined() {
    let server = Server::start();
    let (_a, ca, _b, cb) = pair(&server, Vsn::V2, "rest", ChannelConfig::default()).await;
    let mut on_b = cb.broadcasts("*").await.unwrap();
    cb.subscribe().await.unwrap();
    // `ca` was never subscribed: send_broadcast goes through POST /api/broadcast/...
    ca.send_broadcast("hello", json!({"via": "rest"}))
        .await
        .unwrap();
    let got = recv(&mut on_b, 2000 * MS)
        .await
        .expect("REST broadcast delivered");
    assert_eq!(got.event, "hello");
    assert_eq!(got.payload, BroadcastPayload::Json(json!({"via": "rest"})));
    ca.http_send("bytes", vec![1u8, 2, 3]).await.unwrap();
    let got = recv(&mut on_b, 2000 * MS)
        .await
        .expect("REST binary delivered");
    assert_eq!(
        got.payload.as_bytes().map(|b| b.to_vec()),
        Some(vec![1, 2, 3])
    );
}

#[tokio::test]
async fn presence_between_two_clients() {
    let server = Server::start();
    let a = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V2))
        .await
        .unwrap();
    let b = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V1))
        .await
        .unwrap();
    let ca = a
        .channel("lobby", ChannelConfig::default().presence_key("alice"))
        .await
        .unwrap();
    let cb = b
        .channel("lobby", ChannelConfig::default().presence_key("bob"))
        .await
        .unwrap();
    let mut pb = cb.presence_events().await.unwrap();
    ca.subscribe().await.unwrap();
    ca.track(json!({"status": "online"})).await.unwrap();
    cb.subscribe().await.unwrap();
    cb.track(json!({"status": "here"})).await.unwrap();

    // b's state converges to {alice, bob} whatever order state/diffs arrive in.
    let deadline = Instant::now() + 3000 * MS;
    loop {
        let st = cb.presence_state();
        if st.contains_key("alice") && st.contains_key("bob") {
            assert_eq!(st["alice"].len(), 1);
            assert_eq!(st["alice"][0]["status"], "online");
            assert!(st["alice"][0].contains_key("presence_ref"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence never converged: {st:?}"
        );
        let _ = recv(&mut pb, 200 * MS).await;
    }
    // an update under the same key replaces the meta.
    ca.track(json!({"status": "away"})).await.unwrap();
    let deadline = Instant::now() + 3000 * MS;
    while cb
        .presence_state()
        .get("alice")
        .and_then(|m| m.first())
        .map(|m| m["status"].clone())
        != Some(json!("away"))
    {
        assert!(
            Instant::now() < deadline,
            "update not seen: {:?}",
            cb.presence_state()
        );
        let _ = recv(&mut pb, 200 * MS).await;
    }
    assert_eq!(cb.presence_state()["alice"].len(), 1);
    // untrack → leave.
    ca.untrack().await.unwrap();
    let mut saw_leave = false;
    let deadline = Instant::now() + 3000 * MS;
    while cb.presence_state().contains_key("alice") || !saw_leave {
        assert!(Instant::now() < deadline, "leave not seen");
        if let Some(PresenceEvent::Leave { key, .. }) = recv(&mut pb, 200 * MS).await {
            saw_leave |= key == "alice";
        }
    }
}

#[tokio::test]
async fn bad_key_is_an_authorization_error_with_reason() {
    let server = Server::start();
    let e = RealtimeClient::connect(&server.url(), "not-a-jwt", fast(Vsn::V2))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authorization, "{e:?}");
    assert!(e.reason().is_some_and(|r| !r.is_empty()), "{e:?}");

    let c = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2).with_access_token(jwt("authenticated", -10)),
    )
    .await
    .unwrap();
    let ch = c
        .channel("expired", ChannelConfig::default())
        .await
        .unwrap();
    let e = ch.subscribe().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authorization, "{e:?}");
    assert!(e.reason().unwrap_or_default().contains("expired"), "{e:?}");
    assert!(matches!(
        ch.status(),
        ChannelStatus::ChannelError { .. } | ChannelStatus::Joining
    ));
}

/// Kill the server, restart it on the same port: every channel is back and events flow,
/// with no user action. Prints the recovery time.
#[tokio::test]
async fn server_killed_and_restarted() {
    common::init_tracing();
    let mut server = Server::start();
    let (a, ca, _b, cb) = pair(
        &server,
        Vsn::V2,
        "resilient",
        ChannelConfig::default().broadcast_ack(true),
    )
    .await;
    let other = a
        .channel("second", ChannelConfig::default().presence_key("alice"))
        .await
        .unwrap();
    let mut on_b = cb.broadcasts("*").await.unwrap();
    ca.subscribe().await.unwrap();
    cb.subscribe().await.unwrap();
    other.subscribe().await.unwrap();
    other.track(json!({"n": 1})).await.unwrap();
    ca.send_broadcast("before", json!(1)).await.unwrap();
    assert!(recv(&mut on_b, 2000 * MS).await.is_some());

    for round in 1..=3 {
        server.kill();
        wait_status(&ca, "CHANNEL_ERROR", 5000 * MS).await;
        tokio::time::sleep(Duration::from_millis(300 * round)).await;
        server.restart();
        let up = Instant::now();
        wait_status(&ca, "SUBSCRIBED", 10_000 * MS).await;
        wait_status(&cb, "SUBSCRIBED", 10_000 * MS).await;
        wait_status(&other, "SUBSCRIBED", 10_000 * MS).await;
        let rejoined = up.elapsed();
        ca.send_broadcast("after", json!(round)).await.unwrap();
        let got = recv(&mut on_b, 3000 * MS)
            .await
            .expect("events flow after restart");
        assert_eq!(got.payload, BroadcastPayload::Json(json!(round)));
        let flowing = up.elapsed();
        // presence was re-tracked.
        let deadline = Instant::now() + 3000 * MS;
        while !other.presence_state().contains_key("alice") {
            assert!(
                Instant::now() < deadline,
                "presence not re-tracked: {:?}",
                other.presence_state()
            );
            tokio::time::sleep(20 * MS).await;
        }
        eprintln!(
            "RECOVERY server restart (down {} ms): all 3 channels SUBSCRIBED {} ms after the server was up, first broadcast delivered at {} ms",
            300 * round,
            rejoined.as_millis(),
            flowing.as_millis()
        );
    }
}

/// SIGSTOP the server: the dead socket must be noticed within hb_interval + heartbeat_timeout.
#[tokio::test]
async fn server_stopped_is_detected_by_heartbeat() {
    let server = Server::start();
    let hb = 500 * MS;
    let hb_timeout = 500 * MS;
    let client = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2)
            .with_hb_interval(hb)
            .with_heartbeat_timeout(hb_timeout),
    )
    .await
    .unwrap();
    let ch = client
        .channel("stopped", ChannelConfig::default())
        .await
        .unwrap();
    ch.subscribe().await.unwrap();
    let mut events = client.events().await.unwrap();
    // a heartbeat is answered and its latency observable.
    tokio::time::sleep(hb * 2).await;
    assert!(client.heartbeat_latency().is_some());

    server.signal("STOP");
    let stopped = Instant::now();
    let mut state = client.connection_state_watch();
    tokio::time::timeout(5000 * MS, async {
        while state.borrow_and_update().is_open() {
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("dead socket detected");
    let detected = stopped.elapsed();
    eprintln!(
        "RECOVERY SIGSTOP: dead socket detected after {} ms (bound hb_interval {} ms + timeout {} ms = {} ms)",
        detected.as_millis(),
        hb.as_millis(),
        hb_timeout.as_millis(),
        (hb + hb_timeout).as_millis()
    );
    assert!(detected <= hb + hb_timeout + 200 * MS, "took {detected:?}");
    let mut saw_timeout = false;
    while let Some(ev) = events.try_recv() {
        if let ClientEvent::Error(e) = ev {
            saw_timeout |= e.kind() == ErrorKind::Timeout;
        }
    }
    assert!(saw_timeout, "heartbeat timeout reported as an error event");

    server.signal("CONT");
    let resumed = Instant::now();
    wait_status(&ch, "SUBSCRIBED", 10_000 * MS).await;
    eprintln!(
        "RECOVERY SIGCONT: channel SUBSCRIBED again {} ms after SIGCONT",
        resumed.elapsed().as_millis()
    );
    assert_eq!(client.connection_state(), ConnectionState::Open);
}

/// Tokens that live 4 s, refreshed by a provider: the channel stays subscribed and events
/// keep flowing across several expiries.
#[tokio::test]
async fn token_provider_refreshes_before_expiry() {
    let server = Server::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let provider = TokenProvider::new(move || {
        c2.fetch_add(1, Ordering::SeqCst);
        async { Ok(jwt("authenticated", 4)) }
    });
    let a = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2)
            .with_token_provider(provider)
            .with_access_token(jwt("authenticated", 4)),
    )
    .await
    .unwrap();
    let ch = a
        .channel(
            "tokens",
            ChannelConfig::default()
                .broadcast_self(true)
                .broadcast_ack(true),
        )
        .await
        .unwrap();
    let mut mine = ch.broadcasts("*").await.unwrap();
    let mut statuses = ch.status_changes().await.unwrap();
    ch.subscribe().await.unwrap();
    for i in 0..5 {
        tokio::time::sleep(2000 * MS).await;
        assert_eq!(
            ch.status(),
            ChannelStatus::Subscribed,
            "after {}s",
            (i + 1) * 2
        );
        ch.send_broadcast("tick", json!(i)).await.unwrap();
        assert!(recv(&mut mine, 2000 * MS).await.is_some());
    }
    let n = calls.load(Ordering::SeqCst);
    eprintln!("TOKENS: provider called {n} times over ~10 s with 4 s tokens; channel never left SUBSCRIBED");
    assert!(n >= 3, "provider called {n} times");
    while let Some(s) = statuses.try_recv() {
        assert!(
            !matches!(s, ChannelStatus::Closed { .. }),
            "channel was closed: {s:?}"
        );
    }
}

/// Without a provider the server closes the channel when its token expires; the channel
/// reports CLOSED with the server's reason.
#[tokio::test]
async fn token_expiry_without_provider_is_reported() {
    let server = Server::start();
    let a = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2).with_access_token(jwt("authenticated", 2)),
    )
    .await
    .unwrap();
    let ch = a
        .channel("expiring", ChannelConfig::default())
        .await
        .unwrap();
    let mut statuses = ch.status_changes().await.unwrap();
    ch.subscribe().await.unwrap();
    let deadline = Instant::now() + 8000 * MS;
    loop {
        assert!(Instant::now() < deadline, "no close after expiry");
        if let Some(ChannelStatus::Closed { reason }) = recv(&mut statuses, 500 * MS).await {
            eprintln!("TOKENS: server closed the channel: {reason:?}");
            assert!(reason
                .unwrap_or_default()
                .to_lowercase()
                .contains("expired"));
            break;
        }
    }
    // fix the token: the channel comes back by itself.
    a.set_auth(Some(jwt("authenticated", 3600))).await.unwrap();
    wait_status(&ch, "SUBSCRIBED", 10_000 * MS).await;
}

/// A flood of sends while disconnected: the offline buffer holds up to its capacity, in
/// order, and everything in it is delivered after reconnect; the excess fails at once with
/// BufferFull.
#[tokio::test]
async fn flood_while_disconnected_is_bounded_and_lossless() {
    let mut server = Server::start();
    let capacity = 200;
    let opts = fast(Vsn::V2).with_offline_policy(OfflinePolicy::Buffer {
        capacity,
        timeout: Duration::from_secs(30),
    });
    let a = RealtimeClient::connect(&server.url(), ANON, opts)
        .await
        .unwrap();
    let ch = a
        .channel(
            "flood",
            ChannelConfig::default()
                .broadcast_self(true)
                .broadcast_ack(true),
        )
        .await
        .unwrap();
    let mut mine = ch.broadcasts("*").await.unwrap();
    ch.subscribe().await.unwrap();

    server.kill();
    wait_status(&ch, "CHANNEL_ERROR", 5000 * MS).await;
    let extra = 25;
    let mut sends = Vec::new();
    for i in 0..capacity + extra {
        let ch = ch.clone();
        sends.push(tokio::spawn(async move {
            (i, ch.send_broadcast("n", json!(i)).await)
        }));
        // keep submission order deterministic
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    tokio::time::sleep(500 * MS).await;
    server.restart();
    let up = Instant::now();
    let mut ok = 0;
    let mut full = 0;
    for s in sends {
        let (i, r) = s.await.unwrap();
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::BufferFull, "push {i}: {e:?}");
                assert!(i >= capacity, "push {i} should have fitted");
                full += 1;
            }
        }
    }
    assert_eq!((ok, full), (capacity, extra));
    let mut got = Vec::new();
    while got.len() < capacity {
        let m = recv(&mut mine, 5000 * MS)
            .await
            .expect("buffered broadcast delivered");
        got.push(m.payload.as_json().and_then(|v| v.as_u64()).unwrap() as usize);
    }
    assert_eq!(
        got,
        (0..capacity).collect::<Vec<_>>(),
        "in order, none lost"
    );
    eprintln!(
        "FLOOD: {} sends while down, {capacity} buffered and delivered in order {} ms after restart, {extra} refused with BufferFull",
        capacity + extra,
        up.elapsed().as_millis()
    );

    // The other policy fails at once with NotConnected.
    let b = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2).with_offline_policy(OfflinePolicy::Fail),
    )
    .await
    .unwrap();
    let cb = b.channel("flood", ChannelConfig::default()).await.unwrap();
    cb.subscribe().await.unwrap();
    server.kill();
    wait_status(&cb, "CHANNEL_ERROR", 5000 * MS).await;
    let e = cb.send_broadcast("n", json!(0)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected);
}

#[tokio::test]
async fn channels_unsubscribe_and_remove() {
    let server = Server::start();
    let a = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V2))
        .await
        .unwrap();
    let c1 = a.channel("one", ChannelConfig::default()).await.unwrap();
    let c1_again = a
        .channel("realtime:one", ChannelConfig::default())
        .await
        .unwrap();
    assert_eq!(c1, c1_again);
    let c2 = a.channel("two", ChannelConfig::default()).await.unwrap();
    c1.subscribe().await.unwrap();
    c2.subscribe().await.unwrap();
    let topics: Vec<String> = a
        .channels()
        .await
        .unwrap()
        .iter()
        .map(|c| c.topic().to_owned())
        .collect();
    assert_eq!(topics, vec!["realtime:one", "realtime:two"]);
    c1.unsubscribe().await.unwrap();
    assert_eq!(c1.status(), ChannelStatus::Closed { reason: None });
    a.remove_channel(&c2).await.unwrap();
    assert_eq!(a.channels().await.unwrap().len(), 1);
    a.remove_all_channels().await.unwrap();
    assert!(a.channels().await.unwrap().is_empty());
}

#[test]
fn blocking_facade_round_trip() {
    let server = Server::start();
    let client =
        supa_realtime::blocking::RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V2))
            .unwrap();
    let ch = client
        .channel(
            "blocking",
            ChannelConfig::default()
                .broadcast_self(true)
                .broadcast_ack(true),
        )
        .unwrap();
    let mut msgs = ch.broadcasts("*").unwrap();
    ch.subscribe().unwrap();
    ch.send_broadcast("hi", json!({"n": 1})).unwrap();
    let m = msgs
        .next_timeout(Duration::from_secs(2))
        .expect("delivered");
    assert_eq!(m.event, "hi");
    client.disconnect();
}

/// wss:// goes through rustls: against a peer that is not TLS the attempt fails with a typed
/// error (no panic about a missing crypto provider).
#[tokio::test]
async fn wss_uses_rustls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let e = RealtimeClient::connect(
        &format!("wss://127.0.0.1:{port}"),
        ANON,
        fast(Vsn::V2).with_max_retries(Some(0)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected, "{e:?}");
    let source = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        source.to_lowercase().contains("tls") || source.to_lowercase().contains("io"),
        "{source}"
    );
}

/// postgres_changes end to end, when a database is available (`DATABASE_URL`, e.g. from
/// `scripts/postgres.sh`); skipped otherwise. Bindings are matched to the server's ids by
/// position and changes arrive normalised (eventType/new/old, typed values).
#[tokio::test]
async fn postgres_changes_end_to_end() {
    let Ok(db) = std::env::var("DATABASE_URL") else {
        eprintln!("SKIP postgres_changes_end_to_end: DATABASE_URL not set");
        return;
    };
    let port = common::free_port();
    let table = format!("rs_client_todos_{port}");
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .arg(&db)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(&format!(
        "create table public.{table} (id bigint primary key, title text, done bool, meta jsonb); \
         alter table public.{table} replica identity full; \
         grant select on public.{table} to anon, authenticated; \
         do $$ begin if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') \
         then create publication supabase_realtime; end if; end $$; \
         alter publication supabase_realtime add table public.{table};"
    ));
    let slot = format!("rs_client_slot_{port}");
    // Drop the table and the server's (permanent) slot whatever happens.
    struct Cleanup(String, String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let sql = format!(
                "drop table if exists public.{t}; select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                 where slot_name = '{s}' and not active;",
                t = self.1,
                s = self.2
            );
            let _ = std::process::Command::new("psql")
                .arg(&self.0)
                .args(["-q", "-c", &sql])
                .output();
        }
    }
    let _cleanup = Cleanup(db.clone(), table.clone(), slot.clone());
    let server = Server::start_with(&["--database-url", &db, "--slot-name", &slot]);
    let client = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V2))
        .await
        .unwrap();
    let ch = client
        .channel("db", ChannelConfig::default())
        .await
        .unwrap();
    use supa_realtime::{PostgresChangesFilter, PostgresEvent};
    let mut all = ch
        .postgres_changes(PostgresChangesFilter::new(PostgresEvent::All).table(&table))
        .await
        .unwrap();
    let mut inserts_of_2 = ch
        .postgres_changes(
            PostgresChangesFilter::new(PostgresEvent::Insert)
                .table(&table)
                .filter("id=eq.2"),
        )
        .await
        .unwrap();
    let mut system = ch.system_messages().await.unwrap();
    ch.subscribe().await.unwrap();
    // postgres_changes flow only after "Subscribed to PostgreSQL".
    let deadline = Instant::now() + 10_000 * MS;
    loop {
        assert!(Instant::now() < deadline, "no 'Subscribed to PostgreSQL'");
        if let Some(s) = recv(&mut system, 500 * MS).await {
            assert!(!s.is_error(), "{s:?}");
            if s.extension == "postgres_changes" {
                break;
            }
        }
    }
    psql(&format!(
        "insert into public.{table} values (1, 'a', true, '{{\"k\": 1}}'), (2, 'b', false, null)"
    ));
    psql(&format!(
        "update public.{table} set title = 'c' where id = 1"
    ));
    psql(&format!("delete from public.{table} where id = 2"));
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let c = recv(&mut all, 10_000 * MS).await.expect("change delivered");
        seen.push(c);
    }
    assert_eq!(seen[0].event_type, PostgresEvent::Insert);
    assert_eq!(seen[0].new["id"], json!(1));
    assert_eq!(seen[0].new["done"], json!(true));
    assert_eq!(seen[0].new["meta"], json!({"k": 1}));
    assert_eq!(seen[2].event_type, PostgresEvent::Update);
    assert_eq!(seen[2].new["title"], json!("c"));
    assert_eq!(seen[3].event_type, PostgresEvent::Delete);
    assert_eq!(seen[3].old["id"], json!(2));
    assert!(seen[3].new.is_empty());
    let only = recv(&mut inserts_of_2, 2000 * MS)
        .await
        .expect("filtered binding");
    assert_eq!(only.new["id"], json!(2));
    assert!(
        recv(&mut inserts_of_2, 500 * MS).await.is_none(),
        "filter/event respected"
    );
    drop(server);
}

/// A handshake refused for the key (401, expired JWT as apikey): `subscribe` fails at once
/// with Authorization and the server's text instead of waiting for its timeout, and the
/// channel reports CHANNEL_ERROR with that kind. A disconnected client fails fast too.
#[tokio::test]
async fn subscribe_fails_fast_when_the_handshake_is_refused() {
    let server = Server::start();
    let opts = fast(Vsn::V2).with_timeout(8000 * MS);
    let client = RealtimeClient::new(&server.url(), &jwt("anon", -60), opts).unwrap();
    let ch = client
        .channel("refused", ChannelConfig::default())
        .await
        .unwrap();
    for attempt in 0..2 {
        let start = Instant::now();
        let e = ch.subscribe().await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), ErrorKind::Authorization, "{e:?}");
        assert!(
            e.reason().unwrap_or_default().contains("Token has expired"),
            "{e:?}"
        );
        assert!(took < 2000 * MS, "attempt {attempt} took {took:?}");
        match ch.status() {
            ChannelStatus::ChannelError { reason, kind } => {
                assert_eq!(kind, ErrorKind::Authorization);
                assert!(reason.contains("Token has expired"), "{reason}");
            }
            other => panic!("status {other:?}"),
        }
        assert_eq!(ch.status().error_kind(), Some(ErrorKind::Authorization));
    }
    client.disconnect().await;

    let good = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V2))
        .await
        .unwrap();
    good.disconnect().await;
    let ch = good
        .channel("offline", ChannelConfig::default())
        .await
        .unwrap();
    let start = Instant::now();
    let e = ch.subscribe().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected, "{e:?}");
    assert!(start.elapsed() < 1000 * MS);
    // ...and the channel joins once the client reconnects.
    good.reconnect().await.unwrap();
    wait_status(&ch, "SUBSCRIBED", 5000 * MS).await;
}

/// Join errors carry their kind in the status; `on_error` gets an `Error`.
#[tokio::test]
async fn channel_error_status_has_a_kind() {
    let server = Server::start();
    let c = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2).with_access_token(jwt("authenticated", -10)),
    )
    .await
    .unwrap();
    let ch = c.channel("kinds", ChannelConfig::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    ch.on_error(move |e| {
        let _ = tx.send(e);
    })
    .await
    .unwrap();
    let _ = ch.subscribe().await.unwrap_err();
    let e = tokio::time::timeout(2000 * MS, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Authorization, "{e:?}");
    assert!(e.reason().unwrap_or_default().contains("expired"), "{e:?}");
}

/// Presence enabled on a joined channel (a presence listener added after subscribe) rejoins
/// it with presence on, so the state arrives; `Sync` carries the state.
#[tokio::test]
async fn presence_listener_on_joined_channel_rejoins() {
    let server = Server::start();
    let (_a, ca, _b, cb) = pair(&server, Vsn::V2, "late", ChannelConfig::default()).await;
    ca.subscribe().await.unwrap();
    cb.subscribe().await.unwrap();
    cb.track(json!({"name": "bob"})).await.unwrap();
    let mut statuses = ca.status_changes().await.unwrap();
    // No presence on a's join: nothing arrives.
    tokio::time::sleep(300 * MS).await;
    assert!(ca.presence_state().is_empty());

    let mut presence = ca.presence_events().await.unwrap();
    let deadline = Instant::now() + 3000 * MS;
    let state = loop {
        assert!(
            Instant::now() < deadline,
            "no presence state after enabling"
        );
        if let Some(PresenceEvent::Sync { state }) = recv(&mut presence, 200 * MS).await {
            if !state.is_empty() {
                break state;
            }
        }
    };
    assert_eq!(state.len(), 1, "{state:?}");
    let metas = state.values().next().unwrap();
    assert_eq!(metas[0]["name"], "bob");
    assert_eq!(state, ca.presence_state());
    assert_eq!(ca.status(), ChannelStatus::Subscribed);
    let seen: Vec<&str> = std::iter::from_fn(|| statuses.try_recv())
        .map(|s| s.as_str())
        .collect();
    assert_eq!(seen, ["JOINING", "SUBSCRIBED"]);
    // Events still flow on the new join.
    let mut on_a = ca.broadcasts("*").await.unwrap();
    cb.send_broadcast("after", json!(1)).await.unwrap();
    assert!(recv(&mut on_a, 2000 * MS).await.is_some());
}

async fn count_statuses(s: &mut EventStream<ChannelStatus>, within: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(st)) = tokio::time::timeout_at(deadline, s.recv()).await {
        seen.push(st.as_str().to_owned());
    }
    seen
}

/// Per-channel rejoin policy: `max_retries` gives up after that many failed rejoins,
/// `initial_backoff` sets the first delay, while a channel with the default policy on the
/// same client keeps retrying.
#[tokio::test]
async fn per_channel_max_retries_and_initial_backoff() {
    let server = Server::start();
    let c = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2)
            .with_access_token(jwt("authenticated", -10))
            .with_rejoin_backoff(vec![1500 * MS]),
    )
    .await
    .unwrap();
    let limited = c
        .channel(
            "limited",
            ChannelConfig::default()
                .max_retries(Some(2))
                .initial_backoff(100 * MS),
        )
        .await
        .unwrap();
    let default = c
        .channel("unlimited", ChannelConfig::default())
        .await
        .unwrap();
    let mut ls = limited.status_changes().await.unwrap();
    let mut ds = default.status_changes().await.unwrap();
    let start = Instant::now();
    assert!(limited.subscribe().await.is_err());
    assert!(default.subscribe().await.is_err());
    let seen = count_statuses(&mut ls, 2500 * MS).await;
    let joins = seen.iter().filter(|s| *s == "JOINING").count();
    // first join + 2 retries (after 100 ms and 200 ms), then it gives up.
    assert_eq!(joins, 3, "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("CHANNEL_ERROR"));
    assert!(start.elapsed() < 4000 * MS);
    // it stays given up: not joined, sends refused.
    let e = limited.send_broadcast("x", json!(1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected, "{e:?}");
    let more = count_statuses(&mut ls, 500 * MS).await;
    assert!(more.is_empty(), "{more:?}");
    // the default channel uses the client's table (1.5 s) and keeps going.
    let seen = count_statuses(&mut ds, 2000 * MS).await;
    assert!(
        seen.iter().filter(|s| *s == "JOINING").count() >= 1,
        "{seen:?}"
    );
    assert!(default.status().error_kind().is_some());
}

/// `auto_rejoin(false)`: after a connection loss the channel is not rejoined, while the
/// other channels of the client are; subscribing again works.
#[tokio::test]
async fn per_channel_auto_rejoin_off_after_connection_loss() {
    let mut server = Server::start();
    let c = RealtimeClient::connect(&server.url(), ANON, fast(Vsn::V2))
        .await
        .unwrap();
    let once = c
        .channel("once", ChannelConfig::default().auto_rejoin(false))
        .await
        .unwrap();
    let keeps = c.channel("keeps", ChannelConfig::default()).await.unwrap();
    once.subscribe().await.unwrap();
    keeps.subscribe().await.unwrap();
    server.kill();
    wait_status(&once, "CHANNEL_ERROR", 5000 * MS).await;
    server.restart();
    wait_status(&keeps, "SUBSCRIBED", 10_000 * MS).await;
    tokio::time::sleep(500 * MS).await;
    assert_eq!(
        once.status(),
        ChannelStatus::ChannelError {
            reason: "connection lost".into(),
            kind: ErrorKind::NotConnected
        }
    );
    let e = once.send_broadcast("x", json!(1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected);
    once.subscribe().await.unwrap();
}

/// A channel's `hb_interval` shorter than the client's drives the socket's heartbeat at
/// runtime; removing the channel restores the client's interval.
#[tokio::test]
async fn channel_hb_interval_drives_the_socket_heartbeat() {
    let server = Server::start();
    let c = RealtimeClient::connect(
        &server.url(),
        ANON,
        fast(Vsn::V2).with_hb_interval(Duration::from_secs(25)),
    )
    .await
    .unwrap();
    let mut events = c.events().await.unwrap();
    let beats = |events: &mut EventStream<ClientEvent, ClientEvent>| {
        std::iter::from_fn(|| events.try_recv())
            .filter(|e| matches!(e, ClientEvent::Heartbeat { .. }))
            .count()
    };
    tokio::time::sleep(600 * MS).await;
    assert_eq!(beats(&mut events), 0);
    let fast_ch = c
        .channel("ticker", ChannelConfig::default().hb_interval(150 * MS))
        .await
        .unwrap();
    let slow_ch = c
        .channel(
            "chat",
            ChannelConfig::default().hb_interval(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    fast_ch.subscribe().await.unwrap();
    slow_ch.subscribe().await.unwrap();
    tokio::time::sleep(1200 * MS).await;
    let n = beats(&mut events);
    assert!(n >= 5, "only {n} heartbeats in 1.2 s at 150 ms");
    c.remove_channel(&fast_ch).await.unwrap();
    tokio::time::sleep(200 * MS).await;
    let _ = beats(&mut events);
    tokio::time::sleep(1000 * MS).await;
    assert_eq!(beats(&mut events), 0, "back to the client's 25 s");
}
