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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const BUCKETS: usize = 12;
const BUCKET: Duration = Duration::from_secs(5);

/// Events counted in 5 s buckets; the rate is the average over the last 60 s, as upstream's
/// rate counters compute it.
#[derive(Debug)]
pub(crate) struct RateCounter {
    limit_per_second: u64,
    inner: Mutex<Buckets>,
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
        b.total > self.limit()
    }

    fn limit(&self) -> u64 {
        self.limit_per_second * (BUCKETS as u64) * BUCKET.as_secs()
    }

    /// Whether the 60 s average is above the limit.
    pub(crate) fn exceeded(&self) -> bool {
        let mut b = self.inner.lock();
        Self::rotate(&mut b, Instant::now());
        b.total > self.limit()
    }

    /// Count `n` events unless the limit is already exceeded (then nothing is counted, as
    /// upstream does not count what it skips); `false` when over. One lock for both steps.
    pub(crate) fn try_add(&self, n: u64) -> bool {
        let mut b = self.inner.lock();
        Self::rotate(&mut b, Instant::now());
        if b.total > self.limit() {
            return false;
        }
        let i = b.current;
        b.counts[i] = b.counts[i].saturating_add(n);
        b.total = b.total.saturating_add(n);
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
    fn window_allows_max_then_refuses() {
        let mut w = SlidingWindow::new(5, Duration::from_secs(30));
        for _ in 0..5 {
            assert!(w.allow());
        }
        assert!(!w.allow());
    }
}
