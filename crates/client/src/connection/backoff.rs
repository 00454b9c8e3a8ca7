//! Reconnect delays: exponential in the attempt count, capped, with jitter.

use std::time::Duration;

/// The delay before reconnect attempt `attempt` (0 for the first retry).
///
/// The nominal delay is `initial · 2^attempt`, capped at `max`; the actual delay is drawn
/// uniformly from the upper half of it (`jitter` ∈ [0, 1] picks the point), so that many
/// clients dropped at once by a restarting server do not come back in lockstep, while no
/// delay is ever shorter than half the nominal one.
pub fn reconnect_delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    let nominal = initial.saturating_mul(factor).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    nominal.mul_f64(0.5 + 0.5 * jitter)
}

/// [`reconnect_delay`] with a random jitter.
pub fn reconnect_delay_random(attempt: u32, initial: Duration, max: Duration) -> Duration {
    reconnect_delay(attempt, initial, max, rand::random::<f64>())
}

/// The rejoin delay of a channel after `attempt` failed joins, from the table of steps (the
/// last step repeats). An empty table means 1 s.
pub fn rejoin_delay(attempt: u32, steps: &[Duration]) -> Duration {
    match steps.len() {
        0 => Duration::from_secs(1),
        n => steps[(attempt as usize).min(n - 1)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_then_caps() {
        let d = |a| reconnect_delay(a, 100 * MS, 2000 * MS, 1.0);
        assert_eq!(d(0), 100 * MS);
        assert_eq!(d(1), 200 * MS);
        assert_eq!(d(4), 1600 * MS);
        assert_eq!(d(5), 2000 * MS);
        assert_eq!(d(1000), 2000 * MS);
    }

    #[test]
    fn jitter_stays_in_upper_half() {
        for a in 0..40 {
            let nominal = reconnect_delay(a, 100 * MS, 10_000 * MS, 1.0);
            for _ in 0..50 {
                let d = reconnect_delay_random(a, 100 * MS, 10_000 * MS);
                assert!(
                    d <= nominal && d >= nominal / 2,
                    "{a}: {d:?} vs {nominal:?}"
                );
            }
        }
        assert_eq!(reconnect_delay(0, 100 * MS, 10_000 * MS, 0.0), 50 * MS);
    }

    #[test]
    fn rejoin_table_repeats_last() {
        let steps = [MS, 2 * MS, 5 * MS];
        assert_eq!(rejoin_delay(0, &steps), MS);
        assert_eq!(rejoin_delay(2, &steps), 5 * MS);
        assert_eq!(rejoin_delay(99, &steps), 5 * MS);
        assert_eq!(rejoin_delay(3, &[]), Duration::from_secs(1));
    }
}
