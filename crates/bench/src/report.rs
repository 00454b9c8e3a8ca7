//! BENCHMARKS.md and the charts.

use std::fmt::Write as _;
use std::path::Path;

use crate::charts::{self, human};
use crate::common::Latency;
use crate::fanout::FanoutResult;
use crate::Results;

mod cluster;
mod targets;

use cluster::cluster_section;
use targets::targets;

pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("bash")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn line_fanout(name: &str, r: &crate::common::Res<FanoutResult>) -> String {
    match r {
        Ok(f) => format!(
            "{name}: {:.0} deliveries/s, p50 {:.2} ms p99 {:.2} ms (paced {}/s: p50 {:.2} p99 {:.2})",
            f.deliveries_per_sec, f.saturated.p50, f.saturated.p99, human(f.paced_rate as f64), f.paced.p50, f.paced.p99
        ),
        Err(e) => format!("{name}: failed: {e}"),
    }
}

fn fan<'a>(r: &'a Results, name: &str) -> Option<&'a FanoutResult> {
    r.fanout
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, x)| x.as_ref().ok())
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn pct(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "n/a".into()
    }
}

fn lat(l: &Latency) -> String {
    format!("{:.2} / {:.2} / {:.2}", l.p50, l.p95, l.p99)
}

fn status(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

/// The one-screen summary printed at the end of a run.
pub fn print_summary(r: &Results) {
    for t in targets(r) {
        eprintln!(
            "{:<58} {:<34} {:<26} {}",
            t.0,
            t.1,
            t.2,
            t.3.replace("**", "")
        );
    }
}

pub fn write(
    out: &Path,
    charts_dir: &Path,
    r: &Results,
    note: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    // image links relative to the report
    let base = out.parent().unwrap_or(Path::new(""));
    let rel = charts_dir
        .strip_prefix(base)
        .unwrap_or(charts_dir)
        .to_string_lossy()
        .into_owned();
    let img = |name: &str| {
        if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        }
    };
    let s = r.sizes.clone();
    let quick = s.as_ref().map(|s| s.quick).unwrap_or(false);
    let mut md = String::new();
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Measured by `scripts/bench.sh{}` (the `supa-realtime-bench` crate, `crates/bench`), all on loopback, in one run: {}. \
         Every figure stands next to its reference measured in the same run: the raw WebSocket fan-out server for the server, \
         the official Python client for ours. Nothing here is asserted by a test; CI runs `scripts/bench.sh --quick` only to keep the harness working.\n",
        if quick { " --quick" } else { "" },
        r.started
    );
    if quick {
        let _ = writeln!(md, "> **Quick mode**: small sizes, figures mean little. The full run is `scripts/bench.sh`.\n");
    }
    if !note.is_empty() {
        let _ = writeln!(md, "> {note}\n");
    }
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {} RAM, Linux {}; commit `{}`. Load average (1/5/15 min) at start {}, at end {}; the run took {:.0} s. \
         Server: release build, its own process, limits raised (`--max-events-per-second`, `--max-joins-per-second`, `--max-concurrent-users`, `--max-channels-per-client`, presence limits), `--log-level warn`.\n",
        sh("nproc"),
        cpu.trim(),
        sh("free -h | awk '/Mem:/{print $2}'"),
        sh("uname -r"),
        sh("git rev-parse --short HEAD 2>/dev/null"),
        r.load_before,
        r.load_after,
        r.secs
    );

    let _ = writeln!(md, "## Where each target stands\n\n| target | measured | ratio (same run) | status |\n|---|---|---|---|");
    for t in targets(r) {
        let _ = writeln!(md, "| {} | {} | {} | {} |", t.0, t.1, t.2, t.3);
    }

    // fan-out
    let _ = writeln!(
        md,
        "\n## 1-2. Broadcast fan-out (baseline: raw WebSocket fan-out)\n"
    );
    let _ = writeln!(
        md,
        "One sender, subscribers on raw tokio-tungstenite sockets that only read the payload's timestamp (the same receivers for all rows). \
         *Saturated*: the sender keeps at most {} deliveries in flight for {:.0} s after a warm-up; deliveries/s and latency are measured together. \
         *Paced*: latency at a fixed rate, half of the baseline's saturated deliveries/s (the throughput target), sent in 1 ms ticks for up to 3 s; \
         this is the latency the p99 target is read on, since at saturation latency is set by how much is let in flight. Latency = receive time - send time carried in the payload, in ms (p50 / p95 / p99). \
         The baseline server (`supa-realtime-bench baseline-server`) forwards the exact 1.0.0 frames the server delivers, with the same writer shape \
         (one task per socket, bounded queue, batch then flush). v1 = serializer 1.0.0 (JSON text), v2 = 2.0.0 (sender pushes binary kind-3, subscribers get binary kind-4). \
         The receivers share the machine's 2 cores with the server, so deliveries/s is partly bound by them, for the baseline as for the server; \
         *server CPU µs/delivery* (the server process's user + system time during the saturated phase, from /proc, over the deliveries in that time) \
         compares the two servers' own cost.\n",
        human(s.as_ref().map(|s| (16 * s.fan_subs.max(s.fan_1)).max(16_000)).unwrap_or(16_000) as f64),
        s.as_ref().map(|s| s.measure_s).unwrap_or(0.0)
    );
    let _ = writeln!(md, "| scenario | deliveries/s | vs baseline | broadcasts/s | saturated latency ms | paced rate | paced latency ms | frame bytes | server CPU µs/delivery | vs baseline | lost |\n|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, res) in &r.fanout {
        let shape = name.split('-').nth(1).unwrap_or("");
        let base = fan(r, &format!("fanout-{shape}-baseline"))
            .map(|b| b.deliveries_per_sec)
            .unwrap_or(0.0);
        let base_cpu = fan(r, &format!("fanout-{shape}-baseline"))
            .map(|b| b.cpu_us_per_delivery)
            .unwrap_or(0.0);
        match res {
            Ok(f) => {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} | {}/s | {} | {} | {:.2} | {} | {} |",
                    human(f.deliveries_per_sec),
                    pct(f.deliveries_per_sec, base),
                    human(f.messages_per_sec),
                    lat(&f.saturated),
                    human(f.paced_rate as f64),
                    lat(&f.paced),
                    f.frame_bytes,
                    f.cpu_us_per_delivery,
                    ratio(f.cpu_us_per_delivery, base_cpu),
                    f.lost
                );
            }
            Err(e) => {
                let _ = writeln!(md, "| {name} | failed: {e} | | | | | | | | | |");
            }
        }
    }
    let _ = writeln!(
        md,
        "\n![fan-out deliveries per second]({})\n\n![fan-out latency]({})\n",
        img("fanout.png"),
        img("fanout-latency.png")
    );

    // connections
    let _ = writeln!(md, "## 3. Connections\n");
    let _ = writeln!(md, "Sockets connect 128 at a time; on the server each joins `realtime:conn-<i % 100>` (1.0.0) and heartbeats (first within 1 s, then every 25 s); the baseline holds the same number of idle sockets in 100 groups. Per connection = (VmRSS after - VmRSS before) / connections, read from /proc 2.5 s after the last join.\n");
    let _ = writeln!(md, "| server | connections | RSS before | RSS after | per connection | vs baseline | connect+join time | heartbeat replies |\n|---|---|---|---|---|---|---|---|");
    let bb = r
        .conns_baseline
        .as_ref()
        .and_then(|b| b.as_ref().ok())
        .map(|b| b.bytes_per_conn)
        .unwrap_or(0.0);
    for (name, c) in [
        ("baseline (raw WebSocket)", &r.conns_baseline),
        ("supa-realtime-server", &r.conns_server),
    ] {
        match c {
            Some(Ok(c)) => {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {:.1} MB | {:.1} MB | {:.1} KB | {} | {:.2} s | {} |",
                    c.connections,
                    c.rss_before_kb as f64 / 1024.0,
                    c.rss_after_kb as f64 / 1024.0,
                    c.bytes_per_conn / 1000.0,
                    ratio(c.bytes_per_conn, bb),
                    c.connect_secs,
                    c.heartbeat_replies
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(md, "| {name} | failed: {e} | | | | | | |");
            }
            None => {}
        }
    }

    // python
    let _ = writeln!(
        md,
        "\n## 4. Python clients (reference: the official `realtime` from PyPI)\n"
    );
    if let Some(p) = &r.python {
        match p {
            Ok(p) => {
                let off_ver = sh(".venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"realtime\"))' 2>/dev/null");
                let _ = writeln!(
                    md,
                    "Both clients run at once, each in its own Python process (`bench/py_client.py`, asyncio, the same code through the official API names), subscribed to the same \
                     topic; the broadcasts come through the server's REST endpoint, {} connections each posting one pre-serialized batch of {} again and again, as fast as the server takes them \
                     ({} broadcasts, {}/s in all: the sender is not the limit unless a client's rate reaches this). The server runs with `--slow-consumer-policy drop`, \
                     so a client that falls behind loses frames rather than its socket: each rate is callbacks per second between its first and last callback. \
                     Round trip: one client at a time, a broadcast to its own channel (`self: true`) until its callback runs, one after another (a tenth more first as warm-up). Official `realtime` {off_ver}.\n",
                    crate::python::SENDERS,
                    crate::python::PER_REQUEST,
                    p.sent,
                    human(p.sent_per_sec)
                );
                let _ = writeln!(md, "| client | callbacks | callbacks/s | vs official | round trip p50 / p95 / p99 ms | vs official p50 |\n|---|---|---|---|---|---|");
                for (name, c) in [
                    ("supa_realtime", &p.ours),
                    ("realtime (official)", &p.official),
                ] {
                    if c.available {
                        let _ = writeln!(
                            md,
                            "| {name} | {} | {} | {} | {} | {} |",
                            c.received,
                            human(c.per_sec),
                            ratio(c.per_sec, p.official.per_sec),
                            lat(&c.rtt),
                            ratio(c.rtt.p50, p.official.rtt.p50)
                        );
                    } else {
                        let _ = writeln!(md, "| {name} | {} | | | | |", c.note);
                    }
                }
                let _ = writeln!(md, "\n![Python clients]({})\n", img("python.png"));
            }
            Err(e) => {
                let _ = writeln!(md, "failed: {e}\n");
            }
        }
    }

    // postgres
    let _ = writeln!(md, "## 5, 7. postgres_changes and database broadcast\n");
    match &r.pg {
        Some(Ok(p)) => {
            let sz = s.as_ref();
            let _ = writeln!(
                md,
                "PostgreSQL 15 on loopback (`scripts/postgres.sh`, `synchronous_commit` on), logical replication (pgoutput) into the server; subscribers use the Rust client. \
                 Each row and each `realtime.send` payload carries the bench clock read just *before* the statement is sent, so the latency includes executing and committing it \
                 (the *commit* column is that part alone: statement sent -> commit acknowledged).\n\n\
                 *Latency*: one subscriber (an authenticated user, binding `INSERT` on `public.{}` with `filter: room=eq.1000`, RLS enabled), {} single-row autocommit INSERTs one after another. \
                 *Throughput*: {} subscribers, each its own user (so {} distinct claims for RLS), bindings filtered on `room=eq.<i % 10>`, RLS enabled with a policy `TO authenticated USING (room >= 0 AND auth.uid() IS NOT NULL)`; \
                 {} rows in transactions of 1,000; from the first INSERT to the last delivery. \
                 *Database broadcast*: `SELECT realtime.send(jsonb_build_object('t', ..), 'e', 'dbb', false)` in autocommit, {} one after another, to one subscriber of the public channel `dbb`.\n",
                crate::pg::TABLE,
                sz.map(|s| s.pg_latency).unwrap_or(0),
                p.subscribers,
                p.subscribers,
                p.changes,
                sz.map(|s| s.pg_latency).unwrap_or(0),
            );
            let _ = writeln!(
                md,
                "| figure | p50 / p95 / p99 ms | max ms | rate |\n|---|---|---|---|"
            );
            let _ = writeln!(
                md,
                "| postgres_changes commit -> callback | {} | {:.2} | |",
                lat(&p.latency),
                p.latency.max
            );
            let _ = writeln!(
                md,
                "| (the INSERT's own commit) | {} | {:.2} | |",
                lat(&p.commit),
                p.commit.max
            );
            let _ = writeln!(
                md,
                "| postgres_changes, {} subscribers, RLS, under load | {} | {:.2} | {} changes/s, {} deliveries/s |",
                p.subscribers,
                lat(&p.load_latency),
                p.load_latency.max,
                human(p.changes_per_sec),
                human(p.deliveries_per_sec)
            );
            let _ = writeln!(
                md,
                "| postgres_changes, {} subscribers, RLS, paced at half that rate | {} | {:.2} | {} changes/s offered, {} not delivered |",
                p.subscribers,
                lat(&p.paced_latency),
                p.paced_latency.max,
                human(p.paced_rate),
                p.paced_missing
            );
            let _ = writeln!(
                md,
                "| database broadcast realtime.send -> receive | {} | {:.2} | |",
                lat(&p.dbb_latency),
                p.dbb_latency.max
            );
            let _ = writeln!(
                md,
                "| (the realtime.send's own commit) | {} | {:.2} | |",
                lat(&p.dbb_commit),
                p.dbb_commit.max
            );
            if let Some(reference) = &r.pg_reference {
                match reference {
                    Ok(b) => {
                        let _ = writeln!(
                            md,
                            "\n**Before / after, one run**: the same scenario first against the previous build \
                             (`--pg-reference-bin`), then against this one, on the same database.\n\n\
                             | figure | previous build | this build | ratio |\n|---|---|---|---|\n\
                             | changes/s, {n} RLS subscribers (saturated) | {} | {} | {} |\n\
                             | deliveries/s (saturated) | {} | {} | {} |\n\
                             | latency under saturation p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | |\n\
                             | paced at half the saturated rate: rate, p99 ms | {} /s, {:.2} | {} /s, {:.2} | |\n\
                             | single change commit -> callback p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | {} |\n",
                            human(b.changes_per_sec),
                            human(p.changes_per_sec),
                            ratio(p.changes_per_sec, b.changes_per_sec),
                            human(b.deliveries_per_sec),
                            human(p.deliveries_per_sec),
                            ratio(p.deliveries_per_sec, b.deliveries_per_sec),
                            b.load_latency.p50,
                            b.load_latency.p99,
                            p.load_latency.p50,
                            p.load_latency.p99,
                            human(b.paced_rate),
                            b.paced_latency.p99,
                            human(p.paced_rate),
                            p.paced_latency.p99,
                            b.latency.p50,
                            b.latency.p99,
                            p.latency.p50,
                            p.latency.p99,
                            ratio(p.latency.p50, b.latency.p50),
                            n = p.subscribers,
                        );
                    }
                    Err(e) => {
                        let _ =
                            writeln!(md, "\nPrevious build (`--pg-reference-bin`): failed: {e}\n");
                    }
                }
            }
            let _ = writeln!(
                md,
                "\nNever delivered: {} of the single-row changes{}, {} of the throughput deliveries{}, {} of the database broadcasts \
                 (a change is waited for 2 s, then counted lost; the run goes on).\n",
                p.lost,
                if p.lost_detail.is_empty() { String::new() } else { format!(" (INSERTs {})", p.lost_detail.trim_end()) },
                p.load_missing,
                if p.load_missing_detail.is_empty() { String::new() } else { format!(": {}", p.load_missing_detail) },
                p.dbb_lost
            );
            let _ = writeln!(
                md,
                "\n![latency distributions]({})\n",
                img("latency-cdf.png")
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "{e}\n");
        }
        None => {}
    }

    // presence
    let _ = writeln!(md, "## 6. Presence\n");
    match &r.presence {
        Some(Ok(p)) => {
            let base = fan(
                r,
                &format!(
                    "fanout-1x{}-baseline",
                    s.as_ref().map(|s| s.fan_1).unwrap_or(1000)
                ),
            )
            .map(|b| b.deliveries_per_sec)
            .unwrap_or(0.0);
            let _ = writeln!(
                md,
                "{n} sockets (raw tokio-tungstenite, 1.0.0, like the fan-out receivers: this measures the server) join `presence-bench` with their own key; then all send `track` at once. \
                 *Tracked*: until every `track` is acknowledged. *Full state*: until every socket has seen all {n} presences (`presence_state` and `presence_diff` joins). \
                 That is {nn} presence deliveries; per second it is compared with the raw fan-out baseline (1 x {f1}).\n\n\
                 | clients | tracked | full state everywhere | presence deliveries/s | vs baseline |\n|---|---|---|---|---|\n\
                 | {n} | {:.2} s | {:.2} s | {} | {} |\n",
                p.track_secs,
                p.full_state_secs,
                human(p.diffs_per_sec),
                pct(p.diffs_per_sec, base),
                n = p.clients,
                nn = human((p.clients * p.clients) as f64),
                f1 = s.as_ref().map(|s| s.fan_1).unwrap_or(1000),
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "failed: {e}\n");
        }
        None => {}
    }

    match &r.presence_clients {
        Some(Ok(p)) => {
            let _ = writeln!(
                md,
                "### Presence through the Rust client\n\n{n} `supa_realtime::RealtimeClient`s in one process (one socket each) join `presence-clients` with their own key, each with a presence event stream drained by its own task, then all `track`. \
                 *Full state*: until every client's `Sync` state holds all {n}. Peak RSS is the bench process's (it started at {base} MiB); *connected*: its RSS once all {n} were connected and subscribed, before any track, so the peak minus it is what presence cost ({n}² presences in all).\n\n\
                 | clients | full state everywhere | peak RSS | connected | presence (peak - connected) |\n|---|---|---|---|---|\n| {n} | {:.2} s | {} MiB | {} MiB | {} MiB |\n",
                p.full_state_secs,
                p.peak_rss_kb / 1024,
                p.connected_rss_kb / 1024,
                p.peak_rss_kb.saturating_sub(p.connected_rss_kb) / 1024,
                n = p.clients,
                base = p.base_rss_kb / 1024,
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "### Presence through the Rust client\n\nfailed: {e}\n");
        }
        None => {}
    }

    // burst
    if let Some(b) = &r.burst {
        let _ = writeln!(
            md,
            "## 8. Burst: one client, {} broadcasts at once\n",
            b.as_ref().map_or(0, |b| b.n)
        );
        match b {
            Ok(b) => {
                let _ = writeln!(md, "{}", crate::burst::section(b));
            }
            Err(e) => {
                let _ = writeln!(md, "failed: {e}\n");
            }
        }
    }

    cluster_section(&mut md, r);

    if let Ok(profile) = std::fs::read_to_string(charts_dir.join("PROFILE.md")) {
        let _ = writeln!(md, "{}", profile.trim_end());
        md.push('\n');
    }
    if let Some(p) = &r.perf {
        let _ = writeln!(md, "\nperf profile of this run: {p}\n");
    }
    std::fs::write(out, md)?;
    let _ = std::fs::write(
        charts_dir.join("results.json"),
        serde_json::to_string_pretty(r)?,
    );
    draw(charts_dir, r);
    Ok(())
}

fn draw(dir: &Path, r: &Results) {
    if !charts::init_font() {
        eprintln!("no TrueType font found: charts skipped");
        return;
    }
    let s = r.sizes.as_ref();
    let (f1, fc, fs) = s
        .map(|s| (s.fan_1, s.fan_channels, s.fan_subs))
        .unwrap_or((1000, 100, 100));
    let shapes = [format!("1x{f1}"), format!("{fc}x{fs}")];
    let cats: Vec<String> = shapes
        .iter()
        .map(|s| format!("{s} (channels x subscribers)"))
        .collect();
    let get = |shape: &str, v: &str, f: &dyn Fn(&FanoutResult) -> f64| {
        fan(r, &format!("fanout-{shape}-{v}")).map(f).unwrap_or(0.0)
    };
    let series: Vec<(String, Vec<f64>)> = [
        ("baseline", "raw WebSocket"),
        ("v1", "server 1.0.0"),
        ("v2", "server 2.0.0"),
    ]
    .iter()
    .map(|(v, label)| {
        (
            label.to_string(),
            shapes
                .iter()
                .map(|sh| get(sh, v, &|f| f.deliveries_per_sec))
                .collect(),
        )
    })
    .collect();
    let _ = charts::grouped_bars(
        &dir.join("fanout.png"),
        "Broadcast fan-out: deliveries per second",
        "deliveries/s",
        &cats,
        &series,
    )
    .map_err(|e| eprintln!("chart: {e}"));
    let mut lcats = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut pp99 = Vec::new();
    for (name, res) in &r.fanout {
        if let Ok(f) = res {
            lcats.push(name.trim_start_matches("fanout-").to_owned());
            p50.push(f.saturated.p50);
            p99.push(f.saturated.p99);
            pp99.push(f.paced.p99);
        }
    }
    let _ = charts::grouped_bars(
        &dir.join("fanout-latency.png"),
        "Fan-out end-to-end latency (ms)",
        "ms",
        &lcats,
        &[
            ("saturated p50".into(), p50),
            ("saturated p99".into(), p99),
            ("paced p99".into(), pp99),
        ],
    )
    .map_err(|e| eprintln!("chart: {e}"));
    if let Some(Ok(p)) = &r.python {
        let cats = vec![
            "callbacks per second".to_string(),
            "round trip p50 (ms) x 10,000".to_string(),
        ];
        let _ = charts::grouped_bars(
            &dir.join("python.png"),
            "Python clients, same stream, same run",
            "",
            &cats,
            &[
                (
                    "supa_realtime".into(),
                    vec![p.ours.per_sec, p.ours.rtt.p50 * 10_000.0],
                ),
                (
                    "realtime (official)".into(),
                    vec![p.official.per_sec, p.official.rtt.p50 * 10_000.0],
                ),
            ],
        )
        .map_err(|e| eprintln!("chart: {e}"));
    }
    let mut cdf = Vec::new();
    if let Some(Ok(p)) = &r.pg {
        cdf.push((
            "postgres_changes commit -> callback".to_string(),
            p.latency_samples.clone(),
        ));
        cdf.push((
            "realtime.send -> receive".to_string(),
            p.dbb_samples.clone(),
        ));
    }
    if let Some(Ok(p)) = &r.python {
        cdf.push((
            "Python round trip, supa_realtime".to_string(),
            p.ours.rtt_samples.clone(),
        ));
        cdf.push((
            "Python round trip, official".to_string(),
            p.official.rtt_samples.clone(),
        ));
    }
    let _ = charts::cdf(&dir.join("latency-cdf.png"), "Latency distributions", &cdf)
        .map_err(|e| eprintln!("chart: {e}"));
}
