//! Rate limits with upstream's semantics: averages over a 60 s window, and a per-channel
//! window for presence calls.
//!
//! Upstream counts every socket's broadcasts and deliveries in one tenant-wide counter and,
//! once it is over the limit, shuts down every channel that receives a message ("Too many
//! messages per second"). So one socket flooding a topic nobody listens to silences everyone
//! else and is itself never told. Here each socket has its own [`RateCounter`] with upstream's
//! limit and window ([`ClientRate`]): what it pushes and what it receives count against it,
//! and the channel that pushes or receives while it is over gets upstream's shutdown. The
//! tenant-wide counter remains for what no socket sends (REST and database broadcasts).
//!
//! In cluster mode the tenant-wide counters (events, joins, presence) count for the cluster
//! as a whole: each has a [`Pool`] that the cluster module feeds (it batches this node's
//! counts to Redis every few milliseconds and brings back the cluster's total), and the
//! check compares the cluster's total plus what this node counted since with the limit.
//! While the pool is not fed (Redis unreachable) a node enforces its share, limit / nodes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub(crate) const BUCKETS: usize = 12;
pub(crate) const BUCKET: Duration = Duration::from_secs(5);

/// Events counted in 5 s buckets; the rate is the average over the last 60 s, as upstream's
/// rate counters compute it.
#[derive(Debug)]
pub(crate) struct RateCounter {
    limit_per_second: u64,
    inner: Mutex<Buckets>,
    /// Cluster mode: the count shared with the other nodes.
    pool: OnceLock<Arc<Pool>>,
}

/// A counter's share of a cluster-wide count, fed by the cluster module.
///
/// `pending` is what this node counted since its last report, `in_flight` what the report
/// under way carries, `total` the cluster's window total (this node's reports included) as
/// Redis last answered. Checks read the three without a lock.
#[derive(Debug)]
pub(crate) struct Pool {
    pending: AtomicU64,
    in_flight: AtomicU64,
    total: AtomicU64,
    /// Whether `total` is fresh (Redis answers); otherwise the node enforces its share.
    live: AtomicBool,
    /// Nodes the share divides the limit by.
    nodes: AtomicUsize,
    /// The counter's window limit.
    limit: u64,
    /// Pending counts that make the reporter report at once rather than at its next tick:
    /// a part of the headroom left, so that near the limit the nodes hear of each other's
    /// floods within a round trip, not a whole period.
    early: AtomicU64,
    /// Wakes the reporter (set by the cluster module).
    wake: OnceLock<Arc<tokio::sync::Notify>>,
}

impl Pool {
    /// Take what this node counted since the last report, at most `cap` (a report after an
    /// outage carries no more than what is still in the window).
    pub(crate) fn take(&self, cap: u64) -> u64 {
        let n = self.pending.swap(0, Ordering::AcqRel).min(cap);
        self.in_flight.store(n, Ordering::Release);
        n
    }

    /// Redis took the report and answered the cluster's window total.
    pub(crate) fn reported(&self, total: u64) {
        // Total first: for a moment the report counts twice, never zero times.
        self.total.store(total, Ordering::Release);
        self.in_flight.store(0, Ordering::Release);
        self.live.store(true, Ordering::Release);
        // Over the limit (or at it) every count is refused until the window moves on:
        // nothing to hurry for.
        let nodes = self.nodes.load(Ordering::Acquire).max(1) as u64;
        let early = match self.limit.saturating_sub(total) {
            0 => u64::MAX,
            headroom => (headroom / (2 * nodes)).max(1),
        };
        self.early.store(early, Ordering::Release);
    }

    /// Wake `notify` when this node's counts near the cluster's headroom.
    pub(crate) fn wake_with(&self, notify: Arc<tokio::sync::Notify>) {
        let _ = self.wake.set(notify);
    }

    fn counted(&self, n: u64) {
        let pending = self.pending.fetch_add(n, Ordering::AcqRel) + n;
        if pending >= self.early.load(Ordering::Acquire) {
            if let Some(wake) = self.wake.get() {
                wake.notify_one();
            }
        }
    }

    /// The report failed: its counts go back to pending, the node enforces its share.
    pub(crate) fn failed(&self, nodes: usize) {
        let n = self.in_flight.swap(0, Ordering::AcqRel);
        self.pending.fetch_add(n, Ordering::AcqRel);
        self.nodes.store(nodes.max(1), Ordering::Release);
        self.live.store(false, Ordering::Release);
        self.early.store(u64::MAX, Ordering::Release);
    }

    pub(crate) fn set_nodes(&self, nodes: usize) {
        self.nodes.store(nodes.max(1), Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Whether the cluster is over `limit` (window total), or this node over its share of
    /// it when the pool is not live; `local` is this node's own window total.
    ///
    /// Live, the check is the one-node check on the cluster's total as last reported plus
    /// what this node counted since, so a batch (a REST request of 30 messages) is judged
    /// as on one node. (Rationing the headroom between nodes until their next report was
    /// tried: it refused such batches on an idle cluster and hardly reduced a flood's
    /// overshoot, the nodes' reports being staggered.)
    fn over(&self, limit: u64, local: u64) -> bool {
        if self.live.load(Ordering::Acquire) {
            let seen = self.total.load(Ordering::Acquire)
                + self.in_flight.load(Ordering::Acquire)
                + self.pending.load(Ordering::Acquire);
            seen > limit
        } else {
            local > limit / self.nodes.load(Ordering::Acquire).max(1) as u64
        }
    }
}

#[derive(Debug)]
struct Buckets {
    counts: [u64; BUCKETS],
    /// The sum of `counts`, kept as buckets fill and empty: checked on every delivery.
    total: u64,
    current: usize,
    started: Instant,
}

impl RateCounter {
    pub(crate) fn new(limit_per_second: u64) -> Self {
        RateCounter {
            limit_per_second,
            inner: Mutex::new(Buckets {
                counts: [0; BUCKETS],
                total: 0,
                current: 0,
                started: Instant::now(),
            }),
            pool: OnceLock::new(),
        }
    }

    /// Share this counter with the cluster (once; later calls return the same pool).
    pub(crate) fn pool(&self) -> Arc<Pool> {
        self.pool
            .get_or_init(|| {
                Arc::new(Pool {
                    pending: AtomicU64::new(0),
                    in_flight: AtomicU64::new(0),
                    total: AtomicU64::new(0),
                    live: AtomicBool::new(false),
                    nodes: AtomicUsize::new(1),
                    limit: self.limit(),
                    early: AtomicU64::new(u64::MAX),
                    wake: OnceLock::new(),
                })
            })
            .clone()
    }

    /// This node's own count in the window.
    pub(crate) fn local_total(&self) -> u64 {
        let mut b = self.inner.lock();
        Self::rotate(&mut b, Instant::now());
        b.total
    }

    fn over(&self, local: u64) -> bool {
        match self.pool.get() {
            Some(pool) => pool.over(self.limit(), local),
            None => local > self.limit(),
        }
    }

    fn rotate(b: &mut Buckets, now: Instant) {
        // The common case, on every delivery: still in the current bucket.
        if now < b.started + BUCKET {
            return;
        }
        let elapsed = now.saturating_duration_since(b.started);
        let steps = (elapsed.as_millis() / BUCKET.as_millis()) as usize;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(BUCKETS) {
            b.current = (b.current + 1) % BUCKETS;
            b.total = b.total.saturating_sub(b.counts[b.current]);
            b.counts[b.current] = 0;
        }
        b.started += BUCKET * steps as u32;
    }

    /// Count `n` events.
    pub(crate) fn add(&self, n: u64) {
        self.add_and_check_at(n, Instant::now());
    }

    /// Count `n` events at `now` (taken once for a whole fan-out) and say whether the limit
    /// is now exceeded.
    pub(crate) fn add_and_check_at(&self, n: u64, now: Instant) -> bool {
        let mut b = self.inner.lock();
        Self::rotate(&mut b, now);
        let i = b.current;
        b.counts[i] = b.counts[i].saturating_add(n);
        b.total = b.total.saturating_add(n);
        let local = b.total;
        drop(b);
        if let Some(pool) = self.pool.get() {
            pool.counted(n);
        }
        self.over(local)
    }

    fn limit(&self) -> u64 {
        self.limit_per_second * (BUCKETS as u64) * BUCKET.as_secs()
    }

    /// Whether the 60 s average is above the limit.
    pub(crate) fn exceeded(&self) -> bool {
        let local = self.local_total();
        self.over(local)
    }

    /// Count `n` events unless the limit is already exceeded (then nothing is counted, as
    /// upstream does not count what it skips); `false` when over. One lock for both steps;
    /// in cluster mode the check is the cluster's and the count is reported to it.
    pub(crate) fn try_add(&self, n: u64) -> bool {
        let mut b = self.inner.lock();
        Self::rotate(&mut b, Instant::now());
        if self.over(b.total) {
            return false;
        }
        let i = b.current;
        b.counts[i] = b.counts[i].saturating_add(n);
        b.total = b.total.saturating_add(n);
        drop(b);
        if let Some(pool) = self.pool.get() {
            pool.counted(n);
        }
        true
    }

    /// Count `n` events and say whether the limit is now exceeded.
    pub(crate) fn add_and_check(&self, n: u64) -> bool {
        self.add_and_check_at(n, Instant::now())
    }
}

/// One socket's events budget: its broadcasts and what it is delivered, at upstream's
/// `max_events_per_second` averaged over 60 s. Shared by the socket's read loop (pushes) and
/// the fan-outs that deliver to it.
pub(crate) type ClientRate = RateCounter;

/// At most `max` calls within any `window`.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    max: usize,
    window: Duration,
    calls: VecDeque<Instant>,
}

impl SlidingWindow {
    pub(crate) fn new(max: usize, window: Duration) -> Self {
        SlidingWindow {
            max,
            window,
            calls: VecDeque::new(),
        }
    }

    /// Record a call; `false` when it goes over the limit.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        while let Some(first) = self.calls.front() {
            if now.saturating_duration_since(*first) >= self.window {
                self.calls.pop_front();
            } else {
                break;
            }
        }
        if self.calls.len() >= self.max {
            return false;
        }
        self.calls.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_over_the_window() {
        let c = RateCounter::new(10);
        assert!(!c.add_and_check(600));
        assert!(c.add_and_check(1));
    }

    #[test]
    fn try_add_counts_only_what_it_admits() {
        let c = RateCounter::new(1);
        assert!(c.try_add(60));
        assert!(c.try_add(2), "at the limit, not over it: admitted");
        assert!(!c.try_add(1));
        assert!(!c.try_add(1));
        assert!(c.exceeded());
    }

    #[test]
    fn events_leave_the_window_after_60_s() {
        let c = RateCounter::new(10);
        let t0 = Instant::now();
        assert!(!c.add_and_check_at(400, t0));
        assert!(!c.add_and_check_at(200, t0 + Duration::from_secs(30)));
        assert!(c.add_and_check_at(1, t0 + Duration::from_secs(31)));
        // The first 400 are out of the window, the next 200 still in.
        assert!(!c.add_and_check_at(1, t0 + Duration::from_secs(62)));
        assert!(c.add_and_check_at(400, t0 + Duration::from_secs(62)));
        // Long silence empties it.
        assert!(!c.add_and_check_at(1, t0 + Duration::from_secs(600)));
    }

    #[test]
    fn a_pooled_counter_checks_the_cluster_total_or_its_share() {
        let c = RateCounter::new(1); // 60 per window
        let pool = c.pool();
        // Not live yet: the share of one node is the whole limit.
        pool.set_nodes(3);
        assert!(!c.add_and_check(20));
        assert!(c.add_and_check(1), "over the share of 3 nodes");
        // Live: the cluster's total counts, plus what this node counted since.
        assert_eq!(pool.take(u64::MAX), 21);
        pool.reported(30);
        assert!(
            !c.add_and_check(30),
            "a batch within the cluster's headroom"
        );
        assert!(c.add_and_check(1));
        assert_eq!(pool.take(u64::MAX), 31);
        pool.reported(61);
        assert!(c.exceeded(), "the cluster is over");
        assert_eq!(pool.take(u64::MAX), 0);
        pool.reported(50);
        assert!(!c.add_and_check(10));
        assert!(c.add_and_check(1));
        // A failed report goes back to pending, capped at what is in the window.
        assert_eq!(pool.take(u64::MAX), 11);
        pool.failed(2);
        assert!(!pool.is_live());
        assert_eq!(pool.take(5), 5);
    }

    #[test]
    fn window_allows_max_then_refuses() {
        let mut w = SlidingWindow::new(5, Duration::from_secs(30));
        for _ in 0..5 {
            assert!(w.allow());
        }
        assert!(!w.allow());
    }
}
