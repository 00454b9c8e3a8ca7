//! Section 9 of the report: the cluster scenario (fan-out and presence over three nodes).

use super::*;

/// Cluster mode: the same fan-out and presence, spread over three nodes through Redis.
pub(super) fn cluster_section(md: &mut String, r: &Results) {
    if r.cluster_fanout.is_empty() && r.cluster_presence.is_empty() {
        return;
    }
    let _ = writeln!(md, "## 9. Cluster: three nodes through Redis\n");
    let _ = writeln!(
        md,
        "The fan-out of section 2 (1 sender, serializer 2.0.0) with its subscribers spread round-robin over three server processes \
         that meet through a local redis-server (Debian's, no persistence), against all of them on one node, and one node with Redis \
         (every broadcast goes through Redis and back, so that row isolates the hop). The sender is on the first node. \
         All processes and the receivers share the machine's 2 cores, so three nodes here measure the cost of the cluster path, \
         not the capacity of three machines. Latency in ms (p50 / p95 / p99); paced rate: half of one node's saturated rate.\n"
    );
    let base = r
        .cluster_fanout
        .first()
        .and_then(|(_, x)| x.as_ref().ok())
        .map(|b| (b.deliveries_per_sec, b.paced.p50, b.paced.p99));
    let _ = writeln!(md, "| nodes | deliveries/s | vs 1 node | saturated latency ms | paced rate | paced latency ms | p50 / p99 added vs 1 node | lost |\n|---|---|---|---|---|---|---|---|");
    for (label, res) in &r.cluster_fanout {
        match res {
            Ok(f) => {
                let added = base
                    .map(|(_, p50, p99)| {
                        format!("{:+.2} / {:+.2} ms", f.paced.p50 - p50, f.paced.p99 - p99)
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    md,
                    "| {label} | {} | {} | {} | {}/s | {} | {added} | {} |",
                    human(f.deliveries_per_sec),
                    pct(f.deliveries_per_sec, base.map(|b| b.0).unwrap_or(0.0)),
                    lat(&f.saturated),
                    human(f.paced_rate as f64),
                    lat(&f.paced),
                    f.lost
                );
            }
            Err(e) => {
                let _ = writeln!(md, "| {label} | failed: {e} | | | | | | |");
            }
        }
    }
    projection(md, r);
    if !r.cluster_presence.is_empty() {
        let _ = writeln!(md, "\nPresence (section 6's measurement, sockets spread round-robin over the nodes):\n\n| nodes | clients | tracked | full state everywhere | vs 1 node |\n|---|---|---|---|---|");
        let base = r
            .cluster_presence
            .first()
            .and_then(|(_, x)| x.as_ref().ok())
            .map(|p| p.full_state_secs)
            .unwrap_or(0.0);
        for (label, res) in &r.cluster_presence {
            match res {
                Ok(p) => {
                    let _ = writeln!(
                        md,
                        "| {label} | {} | {:.2} s | {:.2} s | {} |",
                        p.clients,
                        p.track_secs,
                        p.full_state_secs,
                        ratio(p.full_state_secs, base)
                    );
                }
                Err(e) => {
                    let _ = writeln!(md, "| {label} | failed: {e} | | | |");
                }
            }
        }
    }
    md.push('\n');
}

/// A projection on paper from this run's rows: what N nodes on separate machines would carry.
fn projection(md: &mut String, r: &Results) {
    let rate = |i: usize| {
        r.cluster_fanout
            .get(i)
            .and_then(|(_, x)| x.as_ref().ok())
            .map(|f| f.deliveries_per_sec)
    };
    let (Some(one), Some(hop)) = (rate(0), rate(1)) else {
        return;
    };
    if one <= 0.0 {
        return;
    }
    let share = hop / one;
    let _ = write!(
        md,
        "\n**Projection on paper** (not measured: the rows above are on one machine). A node's work is delivering to its own \
         subscribers, plus one Redis round trip per broadcast and topic, not per delivery; the *1 node + Redis* row prices that \
         hop: {:.0}% of one node's deliveries/s. On separate machines, N nodes would carry about N x {} x {} deliveries/s of \
         1 -> 1,000 fan-out:",
        share * 100.0,
        format_args!("{share:.2}"),
        human(one)
    );
    for n in [2u32, 3, 6, 10] {
        let _ = write!(md, " {n} nodes {},", human(f64::from(n) * share * one));
    }
    md.pop();
    let _ = writeln!(
        md,
        ". That holds while Redis keeps up: it sees one publish (one Lua call: the offset, the stream entry, the \
         publish) per broadcast, so 1 -> 1,000 fan-out at {} deliveries/s asks it for about {} publishes/s. For many small \
         topics (1 -> few) every delivery is nearly a publish, and Redis's single thread, not measured here, becomes the \
         ceiling; the balancer's connection capacity is the other one.",
        human(10.0 * share * one),
        human(10.0 * share * one / 1000.0)
    );
}
