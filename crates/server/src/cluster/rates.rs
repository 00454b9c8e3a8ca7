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
//! Counters rather than leased per-node shares, because a tenant's traffic is rarely spread
//! evenly over the nodes (a load balancer balances connections, not messages): with shares a
//! node would refuse while the cluster is under the limit. The price is the staleness of the
//! other nodes' counts: a node sees them at most one period plus one round trip late, so the
//! cluster can go over a window's limit by what the *other* nodes count in that time (at
//! 10 ms, a flood of 1,000 joins/s per node over 3 nodes overshoots by at most ~20 joins of a
//! window). Buckets follow the nodes' clocks; a skew of some milliseconds moves a count to the
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
use tokio_util::sync::CancellationToken;

use super::{now_ms, scripts, Shared};
use crate::limits::{Pool, RateCounter, BUCKET, BUCKETS};

/// How often this node reports its counts and learns the cluster's.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(10);
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// A tenant counter shared with the cluster.
pub(crate) struct Pooled {
    name: &'static str,
    counter: Arc<RateCounter>,
    pool: Arc<Pool>,
}

impl Pooled {
    pub(crate) fn new(name: &'static str, counter: Arc<RateCounter>) -> Self {
        let pool = counter.pool();
        Pooled {
            name,
            counter,
            pool,
        }
    }
}

pub(crate) async fn run(shared: Arc<Shared>, counters: Vec<Pooled>, shutdown: CancellationToken) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut live = false;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_attempt = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
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
        match report(&shared, &counters, live, c).await {
            Ok(()) => {
                if !live {
                    tracing::info!(node = %shared.node, "cluster: rate limits count for the whole cluster again");
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
