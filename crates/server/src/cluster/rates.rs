//! Rate limits for the cluster as a whole: the tenant's events, joins and presence counters.
//!
//! Each counter keeps counting on this node as on one node (5 s buckets, a 60 s window, see
//! `limits`), and this task reports what it counted to Redis every [`REPORT_EVERY`]: one
//! script call adds every counter's delta to its current bucket key (`<prefix>:rate:<name>:
//! <bucket>`, bucket = wall-clock ms / 5000, expiring after the window) and answers each
//! counter's cluster-wide window total (the sum of its last 12 buckets). A check then
//! compares that total plus what this node counted since with the limit: no Redis round trip
//! on the hot path, and one call per node per period whatever the traffic.
//!
//! Near the limit a period is too long: three nodes flooding at once would each spend the
//! headroom before hearing of the others. So a node whose counts since its last report reach
//! a part of the headroom left (headroom / 2·nodes) wakes the reporter at once; early reports
//! are at least [`EARLY_SPACING`] apart (so a flood costs Redis at most 1,000 calls a second
//! per node), and none is made once the cluster is at or over the limit (everything is
//! refused until the window moves on).
//!
//! Counters rather than leased per-node shares, because a tenant's traffic is rarely spread
//! evenly over the nodes (a load balancer balances connections, not messages): with shares a
//! node would refuse while the cluster is under the limit. The price is the staleness of the
//! other nodes' counts: a node sees them one report late, so the cluster can go over a
//! window's limit by what the *other* nodes count between two of their reports (near the
//! limit: about a round trip plus the early spacing, since they report early there).
//! Measured on loopback with a 60-per-window limit and three nodes flooding at once (tests
//! `cluster_limits.rs`): 61–62 joins admitted, 61–62 REST broadcasts; a tight loop of presence
//! tracks (each costing 2) reached 33–46 tracks where one node would stop at 30. Buckets follow the nodes' clocks; a skew of some milliseconds moves a count to the
//! next bucket, which the 60 s window hardly notices.
//!
//! While Redis does not answer, each node enforces its share of the limit (limit / nodes last
//! seen) on its own count, logged when it starts and ends; what it counted meanwhile is
//! reported when Redis is back, capped at its own window total (older counts left the window).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{now_ms, scripts, Shared};
use crate::limits::{Pool, RateCounter, BUCKET, BUCKETS};

/// How often this node reports its counts and learns the cluster's.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(10);
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Reports made early (a node's counts near the cluster's headroom) are at least this far
/// apart, so a flood costs Redis at most 1,000 calls a second per node.
const EARLY_SPACING: Duration = Duration::from_millis(1);

/// A tenant counter shared with the cluster.
pub(crate) struct Pooled {
    name: &'static str,
    counter: Arc<RateCounter>,
    pool: Arc<Pool>,
}

impl Pooled {
    /// `wake`: the reporter's, for counts that should not wait for the next period.
    pub(crate) fn new(name: &'static str, counter: Arc<RateCounter>, wake: &Arc<Notify>) -> Self {
        let pool = counter.pool();
        pool.wake_with(wake.clone());
        Pooled {
            name,
            counter,
            pool,
        }
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    counters: Vec<Pooled>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut live = false;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_attempt = tokio::time::Instant::now();
    let mut last_report = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = wake.notified() => {
                // Near the limit: report now, but at most once per EARLY_SPACING.
                tokio::time::sleep_until(last_report + EARLY_SPACING).await;
            }
        }
        last_report = tokio::time::Instant::now();
        let nodes = shared.status.nodes_seen.load(Ordering::SeqCst).max(1);
        if conn.is_none() {
            for c in &counters {
                c.pool.set_nodes(nodes);
            }
            if tokio::time::Instant::now() < next_attempt {
                continue;
            }
            match connect(&shared).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: Redis still unreachable (rate limits)");
                    next_attempt = tokio::time::Instant::now() + RETRY_EVERY;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        for c in &counters {
            c.pool.set_nodes(nodes);
        }
        match report(&shared, &counters, live, c).await {
            Ok(()) => {
                shared.status.rate_reports.fetch_add(1, Ordering::Relaxed);
                if !live {
                    tracing::info!(node = %shared.node, "cluster: rate limits count for the whole cluster (Redis answers)");
                    live = true;
                    shared.status.rates_up.store(true, Ordering::SeqCst);
                }
            }
            Err(e) => {
                for c in &counters {
                    c.pool.failed(nodes);
                }
                conn = None;
                next_attempt = tokio::time::Instant::now() + RETRY_EVERY;
                if live || !shared.status.rates_warned.swap(true, Ordering::SeqCst) {
                    tracing::warn!(node = %shared.node, error = %e, nodes, "cluster: Redis unreachable (rate limits): this node enforces limit / {nodes} on its own counts");
                }
                live = false;
                shared.status.rates_up.store(false, Ordering::SeqCst);
            }
        }
    }
}

async fn connect(shared: &Shared) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    shared
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One call: every counter's delta in, every counter's cluster total out.
async fn report(
    shared: &Shared,
    counters: &[Pooled],
    live: bool,
    conn: &mut MultiplexedConnection,
) -> RedisResult<()> {
    let bucket = now_ms() / BUCKET.as_millis() as u64;
    let mut call = scripts::RATES.prepare_invoke();
    for c in counters {
        for back in 0..BUCKETS as u64 {
            call.key(shared.keys.rate(c.name, bucket.saturating_sub(back)));
        }
    }
    for c in counters {
        // After an outage only what is still in this node's window is worth reporting.
        let cap = if live {
            u64::MAX
        } else {
            c.counter.local_total()
        };
        call.arg(c.pool.take(cap));
    }
    let ttl_ms = BUCKET.as_millis() as u64 * (BUCKETS as u64 + 1);
    call.arg(BUCKETS).arg(ttl_ms);
    let totals: Vec<u64> = call.invoke_async(conn).await?;
    for (c, total) in counters.iter().zip(totals) {
        c.pool.reported(total);
    }
    Ok(())
}
