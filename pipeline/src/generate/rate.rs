//! A token bucket that paces publishing to `--rate` records per second.
//!
//! Tokens are counted in billionths so the arithmetic stays in integers; the bucket holds at most
//! 20 ms worth of tokens, so a stall is not followed by a burst larger than that.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Billionths of a token per token.
const NANO: u128 = 1_000_000_000;

/// Paces calls to [`TokenBucket::take`] to a fixed rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_s: u128,
    capacity: u128,
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_per_s` tokens per second.
    pub fn new(rate_per_s: NonZeroU64, now: Instant) -> TokenBucket {
        let rate = u128::from(rate_per_s.get());
        let capacity = (rate / 50).max(1) * NANO;
        TokenBucket {
            rate_per_s: rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token, or says how long to wait before one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed_ns = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed_ns * self.rate_per_s).min(self.capacity);
        if self.tokens >= NANO {
            self.tokens -= NANO;
            return Ok(());
        }
        let wait_ns = (NANO - self.tokens).div_ceil(self.rate_per_s);
        Err(Duration::from_nanos(
            u64::try_from(wait_ns).unwrap_or(u64::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_in(rate: u64, window: Duration) -> u64 {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(NonZeroU64::new(rate).unwrap(), start);
        let mut now = start;
        let mut taken = 0;
        // Simulated clock: advance by the wait the bucket asks for.
        for _ in 0..10_000_000 {
            match bucket.take(now) {
                Ok(()) => taken += 1,
                Err(wait) => now += wait,
            }
            if now >= start + window {
                break;
            }
        }
        taken
    }

    #[test]
    fn paces_to_the_rate_plus_one_burst() {
        // One second at 10,000/s: 10,000 plus the initial burst of 200.
        let taken = count_in(10_000, Duration::from_secs(1));
        assert!((10_150..=10_250).contains(&taken), "{taken}");
        let slow = count_in(3, Duration::from_secs(10));
        assert!((30..=32).contains(&slow), "{slow}");
    }

    #[test]
    fn a_stall_does_not_bank_more_than_the_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(NonZeroU64::new(1_000).unwrap(), start);
        let later = start + Duration::from_secs(60);
        let burst = (0..100_000)
            .take_while(|_| bucket.take(later).is_ok())
            .count();
        assert_eq!(burst, 20);
    }
}
