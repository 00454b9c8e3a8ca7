//! postgres_changes and database broadcast against a real PostgreSQL (logical replication).
//!
//! * commit→callback: one subscriber (Rust client, authenticated user, filtered binding),
//!   `n` single-row autocommit INSERTs one after another; each row carries the bench clock
//!   taken just before the INSERT is sent, so the figure includes the commit itself.
//! * throughput: 100 subscribers, each its own user (100 distinct claims for RLS) with a
//!   filtered binding `room=eq.<i % 10>`, RLS enabled with a policy for `authenticated`;
//!   rows inserted in transactions of 1,000; changes per second until the last delivery.
//!   Then *paced*: the same subscribers, half that rate (10 ms ticks, one transaction per
//!   tick) for 3 s; the latency of each delivery (the target's p99 is read there).
//! * database broadcast: `SELECT realtime.send(...)` in autocommit, one after another, to a
//!   public channel; commit→receive latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use supa_realtime::{
    ChannelConfig, ClientOptions, PostgresChangesFilter, PostgresEvent, RealtimeClient,
};

use crate::common::*;
use crate::{fmt_err, Ctx, Results, Sizes};

pub const TABLE: &str = "bench_pc";

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PgResult {
    pub latency: Latency,
    pub latency_samples: Vec<f64>,
    pub commit: Latency,
    pub changes: u64,
    pub changes_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub load_latency: Latency,
    /// Changes per second of the paced phase (half the saturated rate).
    pub paced_rate: f64,
    pub paced_latency: Latency,
    pub paced_missing: u64,
    pub subscribers: usize,
    pub dbb_latency: Latency,
    pub dbb_samples: Vec<f64>,
    pub dbb_commit: Latency,
    /// Single-row changes never delivered (latency phase).
    pub lost: u64,
    pub lost_detail: String,
    /// Deliveries missing after the throughput phase, with the first few named.
    pub load_missing: u64,
    pub load_missing_detail: String,
    /// realtime.send messages never delivered.
    pub dbb_lost: u64,
}

pub async fn db(url: &str) -> Res<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Table and publication, before the server starts (it streams the publication).
pub async fn prepare(url: &str, publication: &str) -> Res<()> {
    let c = db(url).await?;
    c.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {publication};
         DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, room int NOT NULL, t bigint NOT NULL, body text);
         ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY;
         CREATE PUBLICATION {publication} FOR TABLE {TABLE};"
    ))
    .await?;
    Ok(())
}

/// The policy, once the server has created the roles.
pub async fn policy(url: &str) -> Res<()> {
    let c = db(url).await?;
    c.batch_execute(&format!(
        "GRANT SELECT ON {TABLE} TO authenticated;
         DROP POLICY IF EXISTS bench_read ON {TABLE};
         CREATE POLICY bench_read ON {TABLE} FOR SELECT TO authenticated USING (room >= 0 AND auth.uid() IS NOT NULL);"
    ))
    .await?;
    Ok(())
}

/// Wait for /api/health: database ready, broadcasts streaming, postgres_changes streaming.
pub async fn wait_healthy(addr: &str) -> Res<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(body) = http_get(addr, "/api/health").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if v["database"]["ready"] == true
                    && v["database"]["broadcast_streaming"] == true
                    && v["postgres_changes"]["state"] == "streaming"
                {
                    return Ok(());
                }
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "server not healthy: {}",
                http_get(addr, "/api/health").await.unwrap_or_default()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn uid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

async fn client(addr: &str, token: Option<String>) -> Res<RealtimeClient> {
    let mut o = ClientOptions::default().with_event_queue_capacity(65536);
    if let Some(t) = token {
        o = o.with_access_token(t);
    }
    Ok(RealtimeClient::connect(&format!("http://{addr}"), ANON_KEY, o).await?)
}

fn ms(samples: &[f64]) -> Latency {
    let mut h = histogram();
    for s in samples {
        let _ = h.record(((s * 1000.0) as u64).max(1));
    }
    Latency::of(&h)
}

pub async fn run(
    proc: &Proc,
    url: &str,
    n_latency: usize,
    n_changes: usize,
    n_subs: usize,
    bar: &ProgressBar,
) -> Res<PgResult> {
    let mut res = PgResult {
        subscribers: n_subs,
        ..Default::default()
    };
    let c = db(url).await?;

    // commit -> callback, one subscriber
    bar.set_message(format!("postgres_changes: {n_latency} single-row commits"));
    let cl = client(&proc.addr, Some(user_token(&uid(999_999)))).await?;
    let ch = cl.channel("pc-latency", ChannelConfig::default()).await?;
    let mut changes = ch
        .postgres_changes(
            PostgresChangesFilter::new(PostgresEvent::Insert)
                .schema("public")
                .table(TABLE)
                .filter("room=eq.1000"),
        )
        .await?;
    ch.subscribe().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let insert = c
        .prepare(&format!(
            "INSERT INTO {TABLE} (room, t, body) VALUES (1000, $1, 'x')"
        ))
        .await?;
    let (mut lat, mut commit) = (Vec::new(), Vec::new());
    for i in 0..n_latency + n_latency / 10 {
        let t = now_us() as i64;
        c.execute(&insert, &[&t]).await?;
        let committed = now_us();
        // wait for this row (a late earlier one is skipped); one missing is counted as lost
        let got = loop {
            match tokio::time::timeout(Duration::from_secs(2), changes.recv()).await {
                Ok(Some(g)) if g.new.get("t").and_then(|v| v.as_i64()) == Some(t) => break Some(g),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("postgres_changes stream closed".into()),
                Err(_) => break None,
            }
        };
        let Some(_) = got else {
            res.lost += 1;
            if res.lost_detail.len() < 120 {
                res.lost_detail.push_str(&format!("#{i} "));
            }
            continue;
        };
        let now = now_us();
        if i >= n_latency / 10 {
            lat.push(now.saturating_sub(t as u64) as f64 / 1000.0);
            commit.push(committed.saturating_sub(t as u64) as f64 / 1000.0);
        }
    }
    res.latency = ms(&lat);
    res.commit = ms(&commit);
    res.latency_samples = lat;
    drop(changes);
    cl.disconnect().await;

    // throughput: n_subs subscribers on filtered bindings, RLS on
    bar.set_message(format!("postgres_changes: {n_subs} subscribers"));
    let delivered = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let mut clients = Vec::new();
    // per subscriber: the ids received (to name what is missing if anything is)
    let seen: Vec<Arc<std::sync::Mutex<Vec<i64>>>> = (0..n_subs).map(|_| Arc::default()).collect();
    let dropped = Arc::new(AtomicU64::new(0));
    for (i, seen_ids) in seen.iter().cloned().enumerate() {
        let cl = client(&proc.addr, Some(user_token(&uid(i)))).await?;
        let ch = cl
            .channel(&format!("pc-{i}"), ChannelConfig::default())
            .await?;
        let mut s = ch
            .postgres_changes(
                PostgresChangesFilter::new(PostgresEvent::Insert)
                    .schema("public")
                    .table(TABLE)
                    .filter(format!("room=eq.{}", i % 10)),
            )
            .await?;
        ch.subscribe().await?;
        let (d, l, h) = (delivered.clone(), last.clone(), hist.clone());
        let drops = dropped.clone();
        tokio::spawn(async move {
            let mut local = histogram();
            let mut reported_drops = 0;
            loop {
                let batch = s.recv_many(256).await;
                if batch.is_empty() {
                    break;
                }
                let now = now_us();
                let mut ids = seen_ids.lock().unwrap_or_else(|e| e.into_inner());
                for ch in &batch {
                    let t = ch.new.get("t").and_then(|v| v.as_i64()).unwrap_or(0) as u64;
                    let _ = local.record(now.saturating_sub(t).max(1));
                    ids.push(ch.new.get("id").and_then(|v| v.as_i64()).unwrap_or(-1));
                }
                drop(ids);
                let dr = s.dropped();
                drops.fetch_add(dr - reported_drops, Ordering::Relaxed);
                reported_drops = dr;
                d.fetch_add(batch.len() as u64, Ordering::Relaxed);
                l.fetch_max(now, Ordering::Relaxed);
                if let Ok(mut g) = h.lock() {
                    let _ = g.add(&local);
                }
                local.reset();
            }
        });
        clients.push((cl, ch));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    bar.set_message(format!(
        "postgres_changes: {n_changes} rows to {n_subs} subscribers"
    ));
    let per_tx = 1000.min(n_changes);
    let txs = n_changes.div_ceil(per_tx);
    let batch = c.prepare(&format!("INSERT INTO {TABLE} (room, t, body) SELECT g % 10, $1, 'x' FROM generate_series(1, $2::int) g")).await?;
    let t0 = now_us();
    for _ in 0..txs {
        let t = now_us() as i64;
        c.execute(&batch, &[&t, &(per_tx as i32)]).await?;
    }
    let per_room: Vec<u64> = (0..10)
        .map(|r| (0..n_subs).filter(|i| i % 10 == r).count() as u64)
        .collect();
    let expect: u64 = txs as u64 * (1..=per_tx).map(|g| per_room[g % 10]).sum::<u64>();
    // until everything arrived, or nothing more for 3 s
    let (mut seen_n, mut progress) = (0, std::time::Instant::now());
    while delivered.load(Ordering::Relaxed) < expect && progress.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = delivered.load(Ordering::Relaxed);
        if n != seen_n {
            (seen_n, progress) = (n, std::time::Instant::now());
        }
    }
    let secs = (last.load(Ordering::Relaxed).saturating_sub(t0)) as f64 / 1e6;
    res.changes = (txs * per_tx) as u64;
    res.changes_per_sec = res.changes as f64 / secs.max(1e-6);
    res.deliveries_per_sec = delivered.load(Ordering::Relaxed) as f64 / secs.max(1e-6);
    if let Ok(mut h) = hist.lock() {
        res.load_latency = Latency::of(&h);
        h.reset();
    }
    if delivered.load(Ordering::Relaxed) < expect {
        // which rows are missing, for whom
        let rows = c
            .query(
                &format!("SELECT id, room FROM {TABLE} WHERE room < 10 ORDER BY id"),
                &[],
            )
            .await?;
        let mut missing = Vec::new();
        for (i, ids) in seen.iter().enumerate() {
            let got: std::collections::HashSet<i64> = ids
                .lock()
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            for r in &rows {
                let (id, room): (i64, i32) = (r.get(0), r.get(1));
                if room as usize == i % 10 && !got.contains(&id) {
                    missing.push(format!("subscriber {i} row {id}"));
                }
            }
        }
        let first_id: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        res.load_missing = expect - delivered.load(Ordering::Relaxed);
        res.load_missing_detail = format!(
            "{} (ids from {first_id}; dropped by the client's queue: {})",
            missing
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            dropped.load(Ordering::Relaxed)
        );
    }

    // paced: half the saturated rate, one transaction per 10 ms tick
    let per_tick = ((res.changes_per_sec / 2.0 / 100.0).round() as usize).max(1);
    let ticks = 300;
    bar.set_message(format!(
        "postgres_changes: paced, {} changes/s to {n_subs} subscribers",
        per_tick * 100
    ));
    let d0 = delivered.load(Ordering::Relaxed);
    let mut iv = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..ticks {
        iv.tick().await;
        let t = now_us() as i64;
        c.execute(&batch, &[&t, &(per_tick as i32)]).await?;
    }
    let paced_expect: u64 = ticks as u64 * (1..=per_tick).map(|g| per_room[g % 10]).sum::<u64>();
    let (mut seen_n, mut progress) = (0, std::time::Instant::now());
    while delivered.load(Ordering::Relaxed) - d0 < paced_expect
        && progress.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = delivered.load(Ordering::Relaxed);
        if n != seen_n {
            (seen_n, progress) = (n, std::time::Instant::now());
        }
    }
    res.paced_rate = (per_tick * 100) as f64;
    res.paced_missing = paced_expect.saturating_sub(delivered.load(Ordering::Relaxed) - d0);
    if let Ok(h) = hist.lock() {
        res.paced_latency = Latency::of(&h);
    }
    for (cl, _) in clients {
        cl.disconnect().await;
    }

    // database broadcast: realtime.send -> client
    bar.set_message(format!("database broadcast: {n_latency} realtime.send"));
    let cl = client(&proc.addr, None).await?;
    let ch = cl.channel("dbb", ChannelConfig::default()).await?;
    let mut msgs = ch.broadcasts("e").await?;
    ch.subscribe().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let send = c
        .prepare("SELECT realtime.send(jsonb_build_object('t', $1::bigint), 'e', 'dbb', false)")
        .await?;
    let (mut lat, mut commit) = (Vec::new(), Vec::new());
    for i in 0..n_latency + n_latency / 10 {
        let t = now_us() as i64;
        c.execute(&send, &[&t]).await?;
        let committed = now_us();
        let t_of = |g: &supa_realtime::BroadcastMessage| {
            g.payload
                .as_json()
                .and_then(|v| v.get("t"))
                .and_then(|v| v.as_i64())
        };
        let got = loop {
            match tokio::time::timeout(Duration::from_secs(2), msgs.recv()).await {
                Ok(Some(g)) if t_of(&g) == Some(t) => break true,
                Ok(Some(_)) => continue,
                Ok(None) => return Err("database broadcast stream closed".into()),
                Err(_) => break false,
            }
        };
        if !got {
            res.dbb_lost += 1;
            continue;
        }
        let now = now_us();
        if i >= n_latency / 10 {
            lat.push(now.saturating_sub(t as u64) as f64 / 1000.0);
            commit.push(committed.saturating_sub(t as u64) as f64 / 1000.0);
        }
    }
    res.dbb_latency = ms(&lat);
    res.dbb_commit = ms(&commit);
    res.dbb_samples = lat;
    cl.disconnect().await;
    Ok(res)
}

/// One line for the progress output.
pub(crate) fn summary(r: &Result<PgResult, String>) -> String {
    match r {
        Ok(p) => format!(
            "commit->callback p50 {:.2} ms p99 {:.2} ms; {:.0} changes/s; paced {:.0}/s p99 {:.2} ms; realtime.send p50 {:.2} ms",
            p.latency.p50, p.latency.p99, p.changes_per_sec, p.paced_rate, p.paced_latency.p99, p.dbb_latency.p50
        ),
        Err(e) => format!("failed: {e}"),
    }
}

/// The postgres_changes / database broadcast scenario against the server binary `bin`.
pub(crate) async fn scenario(
    ctx: &Ctx,
    bin: &std::path::Path,
    s: &Sizes,
    r: &mut Results,
    bar: &ProgressBar,
) -> Result<PgResult, String> {
    let Some(url) = &ctx.cli.database_url else {
        return Err("n/a (no DATABASE_URL: start one with scripts/postgres.sh)".into());
    };
    let res: Res<PgResult> = async {
        let slot = format!("bench_slot_{}", std::process::id());
        let publication = "bench_pub";
        prepare(url, publication).await?;
        let mut proc = ctx
            .server_from(
                bin,
                &[
                    "--database-url".into(),
                    url.clone(),
                    "--slot-name".into(),
                    slot.clone(),
                    "--publication".into(),
                    publication.into(),
                ],
                &[("REALTIME_PG_RESUME_GRACE_MS", "0".into())],
                "postgres",
            )
            .await?;
        wait_healthy(&proc.addr).await?;
        policy(url).await?;
        let perf = ctx.perf_start("postgres", proc.pid());
        let out = run(&proc, url, s.pg_latency, s.pg_changes, s.pg_subs, bar).await;
        ctx.perf_stop("postgres", perf, r);
        proc.stop();
        let cleanup = std::process::Command::new(bin)
            .args([
                "cleanup-postgres",
                "--database-url",
                url,
                "--slot-name",
                &slot,
                "--publication",
                publication,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(cleanup, Ok(st) if st.success()) {
            crate::say(bar, format!("warning: could not drop slot {slot}"));
        }
        out
    }
    .await;
    fmt_err(res)
}
