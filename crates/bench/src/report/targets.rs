//! The summary table: each target, what was measured, the ratio to its reference, met or not.

use super::*;

/// (target, measured, ratio, status)
pub(super) fn targets(r: &Results) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let s = r.sizes.as_ref();
    let (f1, fc, fs) = s
        .map(|s| (s.fan_1, s.fan_channels, s.fan_subs))
        .unwrap_or((1000, 100, 100));
    for (shape, label) in [
        (format!("1x{f1}"), format!("1 sender -> {f1} subscribers")),
        (
            format!("{fc}x{fs}"),
            format!("{fc} channels x {fs} subscribers"),
        ),
    ] {
        if r.fanout.is_empty() {
            break;
        }
        let base = fan(r, &format!("fanout-{shape}-baseline"))
            .map(|b| b.deliveries_per_sec)
            .unwrap_or(0.0);
        let base_cpu = fan(r, &format!("fanout-{shape}-baseline"))
            .map(|b| b.cpu_us_per_delivery)
            .unwrap_or(0.0);
        for v in ["v1", "v2"] {
            let name = format!("fanout-{shape}-{v}");
            match fan(r, &name) {
                Some(f) => {
                    out.push((
                        format!("fan-out {label} ({v}): >= 50% of baseline deliveries/s"),
                        format!("{} deliveries/s", human(f.deliveries_per_sec)),
                        format!(
                            "{} of baseline ({}); server CPU per delivery {} of baseline's",
                            pct(f.deliveries_per_sec, base),
                            human(base),
                            ratio(f.cpu_us_per_delivery, base_cpu)
                        ),
                        status(base > 0.0 && f.deliveries_per_sec >= 0.5 * base).into(),
                    ));
                    out.push((
                        format!("fan-out {label} ({v}): p99 < 50 ms at half the baseline's rate"),
                        format!(
                            "p50 {:.2} ms, p99 {:.2} ms at {}/s",
                            f.paced.p50,
                            f.paced.p99,
                            human(f.paced_rate as f64)
                        ),
                        format!("saturated: p99 {:.1} ms", f.saturated.p99),
                        status(f.paced.p99 < 50.0 && f.paced.count > 0).into(),
                    ));
                }
                None => out.push((
                    format!("fan-out {label} ({v})"),
                    "failed".into(),
                    "".into(),
                    "**not measured**".into(),
                )),
            }
        }
    }
    match (&r.conns_server, &r.conns_baseline) {
        (Some(Ok(c)), b) => {
            let bb = b
                .as_ref()
                .and_then(|b| b.as_ref().ok())
                .map(|b| b.bytes_per_conn)
                .unwrap_or(0.0);
            out.push((
                format!("{} idle joined connections: < 30 KB each", c.connections),
                format!("{:.1} KB/connection", c.bytes_per_conn / 1000.0),
                format!(
                    "{} of baseline's {:.1} KB",
                    ratio(c.bytes_per_conn, bb),
                    bb / 1000.0
                ),
                status(c.bytes_per_conn < 30_000.0).into(),
            ))
        }
        _ => out.push((
            "connections".into(),
            "failed".into(),
            "".into(),
            "**not measured**".into(),
        )),
    }
    match &r.python {
        Some(Ok(p)) if p.ours.available && p.official.available => {
            out.push((
                "Python: 10x the official client's throughput".into(),
                format!(
                    "{}/s vs {}/s",
                    human(p.ours.per_sec),
                    human(p.official.per_sec)
                ),
                ratio(p.ours.per_sec, p.official.per_sec),
                status(p.ours.per_sec >= 10.0 * p.official.per_sec).into(),
            ));
            out.push((
                "Python: half the official client's p50 round trip".into(),
                format!("{:.2} ms vs {:.2} ms", p.ours.rtt.p50, p.official.rtt.p50),
                ratio(p.ours.rtt.p50, p.official.rtt.p50),
                status(p.ours.rtt.p50 <= 0.5 * p.official.rtt.p50).into(),
            ));
            out.push((
                "Python: p50 round trip no slower than the official client's".into(),
                format!("{:.2} ms vs {:.2} ms", p.ours.rtt.p50, p.official.rtt.p50),
                ratio(p.ours.rtt.p50, p.official.rtt.p50),
                status(p.ours.rtt.p50 <= p.official.rtt.p50).into(),
            ));
        }
        Some(Ok(p)) => out.push((
            "Python clients".into(),
            format!("official {}/s", human(p.official.per_sec)),
            p.ours.note.clone(),
            "**not measured**".into(),
        )),
        _ => out.push((
            "Python clients".into(),
            "failed".into(),
            "".into(),
            "**not measured**".into(),
        )),
    }
    match &r.pg {
        Some(Ok(p)) => {
            out.push((
                "postgres_changes commit->callback p50 < 10 ms".into(),
                format!("p50 {:.2} ms, p99 {:.2} ms", p.latency.p50, p.latency.p99),
                format!(
                    "{} of the commit itself ({:.2} ms)",
                    ratio(p.latency.p50, p.commit.p50),
                    p.commit.p50
                ),
                status(p.latency.p50 < 10.0).into(),
            ));
            let reference = match &r.pg_reference {
                Some(Ok(b)) => Some(b),
                _ => None,
            };
            out.push((
                format!(
                    "postgres_changes, {} RLS subscribers, distinct claims >= 11,000 changes/s",
                    p.subscribers
                ),
                format!("{} changes/s", human(p.changes_per_sec)),
                reference.map_or(String::new(), |b| {
                    format!(
                        "{} of the previous build ({} changes/s)",
                        ratio(p.changes_per_sec, b.changes_per_sec),
                        human(b.changes_per_sec)
                    )
                }),
                status(p.changes_per_sec >= 11_000.0).into(),
            ));
            out.push((
                "postgres_changes p99 < 100 ms at half the saturated rate".into(),
                format!(
                    "p99 {:.2} ms at {} changes/s",
                    p.paced_latency.p99,
                    human(p.paced_rate)
                ),
                reference.map_or(String::new(), |b| {
                    format!(
                        "previous build: p99 {:.2} ms at {} changes/s",
                        b.paced_latency.p99,
                        human(b.paced_rate)
                    )
                }),
                status(p.paced_latency.p99 < 100.0 && p.paced_missing == 0).into(),
            ));
            if let Some(b) = reference {
                out.push((
                    "postgres_changes single-change p50 not worse than before".into(),
                    format!("p50 {:.2} ms", p.latency.p50),
                    format!(
                        "{} of the previous build ({:.2} ms)",
                        ratio(p.latency.p50, b.latency.p50),
                        b.latency.p50
                    ),
                    status(p.latency.p50 <= b.latency.p50 * 1.05).into(),
                ));
            }
            out.push((
                "postgres_changes / database broadcast: nothing lost".into(),
                format!(
                    "lost {} + {} changes, {} broadcasts",
                    p.lost, p.load_missing, p.dbb_lost
                ),
                String::new(),
                status(p.lost == 0 && p.load_missing == 0 && p.dbb_lost == 0).into(),
            ));
            out.push((
                "database broadcast realtime.send->receive (no target)".into(),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms",
                    p.dbb_latency.p50, p.dbb_latency.p99
                ),
                format!(
                    "{} of postgres_changes p50",
                    ratio(p.dbb_latency.p50, p.latency.p50)
                ),
                "reported".into(),
            ));
        }
        Some(Err(e)) => out.push((
            "postgres_changes / database broadcast".into(),
            e.clone(),
            "".into(),
            "**not measured**".into(),
        )),
        None => {}
    }
    match &r.burst {
        Some(Ok(b)) => {
            if let Some((worst, lost, official)) = crate::burst::best_python(b) {
                out.push((
                    format!(
                        "burst {}: 0 lost, >= 10x the official client's callbacks/s",
                        b.n
                    ),
                    format!(
                        "lost {lost}; slowest of ours {}/s vs official {}/s",
                        human(worst),
                        human(official)
                    ),
                    ratio(worst, official),
                    status(lost == 0 && worst >= 10.0 * official).into(),
                ));
            }
        }
        Some(Err(e)) => out.push((
            "burst".into(),
            e.clone(),
            "".into(),
            "**not measured**".into(),
        )),
        None => {}
    }
    match &r.presence {
        Some(Ok(p)) => {
            let base = fan(r, &format!("fanout-1x{f1}-baseline"))
                .map(|b| b.deliveries_per_sec)
                .unwrap_or(0.0);
            out.push((
                format!(
                    "presence: {} clients track, all see full state (no target)",
                    p.clients
                ),
                format!(
                    "{:.2} s (tracks acked in {:.2} s)",
                    p.full_state_secs, p.track_secs
                ),
                format!(
                    "{} diffs/s = {} of baseline",
                    human(p.diffs_per_sec),
                    pct(p.diffs_per_sec, base)
                ),
                "reported".into(),
            ));
        }
        Some(Err(e)) => out.push((
            "presence".into(),
            e.clone(),
            "".into(),
            "**not measured**".into(),
        )),
        None => {}
    }
    match &r.presence_clients {
        // 1,000 clients hold 1,000,000 presences; one shared copy each (about 0.8 KiB as
        // serde_json keeps a small object) plus the clients themselves fits in 1 GiB.
        Some(Ok(p)) => out.push((
            format!(
                "presence through the Rust client: {} clients in one process see the full state, peak RSS < 1 GiB",
                p.clients
            ),
            format!(
                "{:.2} s, peak {} MiB ({} MiB before tracking)",
                p.full_state_secs,
                p.peak_rss_kb / 1024,
                p.connected_rss_kb / 1024
            ),
            format!(
                "presence {} MiB = {:.0} B per presence",
                p.peak_rss_kb.saturating_sub(p.connected_rss_kb) / 1024,
                (p.peak_rss_kb.saturating_sub(p.connected_rss_kb) * 1024) as f64
                    / (p.clients * p.clients).max(1) as f64
            ),
            if p.base_rss_kb > 64 * 1024 {
                "not comparable (the process held memory of earlier scenarios; run it alone)"
                    .into()
            } else if p.peak_rss_kb < 1024 * 1024 {
                "met".into()
            } else {
                "**not met**".into()
            },
        )),
        Some(Err(e)) => out.push((
            "presence through the Rust client".into(),
            e.clone(),
            "".into(),
            "**not measured**".into(),
        )),
        None => {}
    }
    out
}
