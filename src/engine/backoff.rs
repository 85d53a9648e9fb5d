//! Retry delays: exponential in the attempt number, capped, with jitter so that a store coming
//! back from an outage is not hit by every retry at the same instant.
use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt` (1-based): half of
    /// `min(max, base·2^(attempt-1))` fixed, the other half random ("equal jitter"), so a retry
    /// is never immediate and never later than the cap.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(rng.random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_stay_within_bounds() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(5) };
        let mut rng = rand::rng();
        for attempt in 1..40 {
            let ceiling = Duration::from_millis(100 * 2u64.pow((attempt - 1).min(30))).min(b.max);
            for _ in 0..50 {
                let d = b.delay(attempt, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?} vs {ceiling:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
        let mut rng = rand::rng();
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.len() > 10);
    }
}
