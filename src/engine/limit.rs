//! Request- and token-rate limiting shared by every request of a run.
//!
//! Two token buckets (`--rpm`, `--tpm`) plus a client-wide pause. Tokens are
//! estimated before a call and corrected from the reply's `usage` after.
//! When an endpoint answers 429, or says through `x-ratelimit-remaining-*`
//! that nothing is left, the *whole client* pauses until the reset time,
//! rather than each request discovering the limit on its own and burning
//! retries. Limits the endpoint advertises (`x-ratelimit-limit-*`) are
//! adopted when the user set none.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::provider::RateHints;

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
    /// Learned from headers rather than set by the user.
    learned: bool,
}

impl Bucket {
    fn per_minute(limit: u64, burst: f64, learned: bool) -> Self {
        let per_sec = limit as f64 / 60.0;
        let capacity = burst.max(1.0);
        Self {
            capacity,
            tokens: capacity,
            per_sec,
            last: Instant::now(),
            learned,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Time until `n` tokens are available (zero if they are). A request
    /// larger than the bucket waits only until the bucket is full, so it
    /// cannot wait forever.
    fn wait_for(&self, n: f64) -> Duration {
        let need = n.min(self.capacity) - self.tokens;
        if need <= 0.0 || self.per_sec <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.per_sec)
        }
    }
}

#[derive(Debug, Default)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: Option<Instant>,
}

/// The run's rate limiter.
#[derive(Debug, Default)]
pub struct Limiter {
    state: Mutex<State>,
}

impl Limiter {
    /// `rpm`/`tpm` of `None` mean no limit (until an endpoint advertises one).
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Self {
        // Request bursts are kept to one request so that a server counting
        // per minute never sees more than the limit; token bursts may use a
        // second's worth so one long prompt does not stall.
        let state = State {
            requests: rpm.map(|r| Bucket::per_minute(r, 1.0, false)),
            tokens: tpm.map(|t| Bucket::per_minute(t, t as f64 / 60.0, false)),
            paused_until: None,
        };
        Self {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one request of `est_tokens` tokens may be sent, and takes it.
    pub async fn acquire(&self, est_tokens: u64) {
        loop {
            let wait = {
                let mut s = self.lock();
                let now = Instant::now();
                let mut wait = s
                    .paused_until
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                if let Some(b) = s.requests.as_mut() {
                    b.refill(now);
                    wait = wait.max(b.wait_for(1.0));
                }
                if let Some(b) = s.tokens.as_mut() {
                    b.refill(now);
                    wait = wait.max(b.wait_for(est_tokens as f64));
                }
                if wait.is_zero() {
                    if let Some(b) = s.requests.as_mut() {
                        b.tokens -= 1.0;
                    }
                    if let Some(b) = s.tokens.as_mut() {
                        b.tokens -= est_tokens as f64;
                    }
                    return;
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Charges the difference between the estimate and the real token count.
    pub fn correct(&self, est_tokens: u64, actual_tokens: u64) {
        let mut s = self.lock();
        if let Some(b) = s.tokens.as_mut() {
            b.tokens -= actual_tokens as f64 - est_tokens as f64;
        }
    }

    /// Pauses every request until `d` from now (a 429 with `Retry-After`).
    pub fn pause(&self, d: Duration) {
        let mut s = self.lock();
        let until = Instant::now() + d;
        if s.paused_until.is_none_or(|t| t < until) {
            s.paused_until = Some(until);
        }
    }

    /// Adopts what the endpoint said about its limits.
    pub fn learn(&self, h: &RateHints) {
        let mut s = self.lock();
        if let Some(limit) = h.limit_requests.filter(|&l| l > 0) {
            match s.requests.as_mut() {
                None => s.requests = Some(Bucket::per_minute(limit, 1.0, true)),
                Some(b) if b.learned => b.per_sec = limit as f64 / 60.0,
                Some(_) => {}
            }
        }
        if let Some(limit) = h.limit_tokens.filter(|&l| l > 0) {
            match s.tokens.as_mut() {
                None => s.tokens = Some(Bucket::per_minute(limit, limit as f64 / 60.0, true)),
                Some(b) if b.learned => b.per_sec = limit as f64 / 60.0,
                Some(_) => {}
            }
        }
        let exhausted = |rem: Option<u64>, reset: Option<Duration>| match (rem, reset) {
            (Some(0), Some(r)) => Some(r),
            _ => None,
        };
        let pause = [
            exhausted(h.remaining_requests, h.reset_requests),
            exhausted(h.remaining_tokens, h.reset_tokens),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(d) = pause {
            let until = Instant::now() + d;
            if s.paused_until.is_none_or(|t| t < until) {
                s.paused_until = Some(until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rpm_spaces_requests_evenly() {
        let l = Limiter::new(Some(600), None);
        let start = Instant::now();
        for _ in 0..21 {
            l.acquire(10).await;
        }
        // One free, then 20 at 10/s.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_request() {
        let l = Limiter::new(None, None);
        l.pause(Duration::from_secs(3));
        let start = Instant::now();
        l.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_corrected_after_the_reply() {
        let l = Limiter::new(None, Some(6000)); // 100 tokens/s, burst 100
        l.acquire(100).await;
        l.correct(100, 300); // 200 more were used than estimated
        let start = Instant::now();
        l.acquire(100).await;
        // Bucket at -200: needs 300 tokens of refill = 3 s.
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_headers_pause_until_reset() {
        let l = Limiter::new(None, None);
        l.learn(&RateHints {
            limit_requests: Some(60),
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(5)),
            ..Default::default()
        });
        let start = Instant::now();
        l.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // The advertised limit (1/s) is now enforced.
        l.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }
}
