//! What to do after a failed attempt: the one place retry rules live.
//!
//! Retried: 408, 409, 429, every 5xx, connection errors, timeouts, bodies
//! that do not parse, empty replies, and oversized replies (a body past its
//! bound, or more text or tokens than the request allows). Never retried: 400, 401, 403, 404,
//! 422 and other 4xx — sending the same request again cannot fix them, and
//! on a paid API it costs money. Delays use exponential backoff with full
//! jitter (a uniform draw between zero and the exponential ceiling), so many
//! concurrent requests that failed together do not come back together; a
//! `Retry-After` from the server takes precedence.

use std::time::Duration;

use rand::Rng;

use crate::provider::ProviderError;

/// The verdict on one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after the backoff (or the server's `Retry-After`).
    Retry {
        after: Option<Duration>,
        throttled: bool,
    },
    /// Stop the whole run: no request can succeed (bad key, wrong URL or model).
    StopRun,
    /// Give up on this request only (the prompt becomes a reject).
    GiveUp,
}

/// Classifies a failed attempt.
pub fn classify(err: &ProviderError) -> Verdict {
    match err {
        ProviderError::Status {
            status,
            retry_after,
            ..
        } => match *status {
            429 => Verdict::Retry {
                after: *retry_after,
                throttled: true,
            },
            408 | 409 | 500..=599 => Verdict::Retry {
                after: *retry_after,
                throttled: false,
            },
            401 | 403 | 404 => Verdict::StopRun,
            _ => Verdict::GiveUp,
        },
        ProviderError::Transport { .. }
        | ProviderError::Timeout { .. }
        | ProviderError::Malformed { .. }
        | ProviderError::Oversized { .. } => Verdict::Retry {
            after: None,
            throttled: false,
        },
        // The engine answers a queued request before classifying; no
        // retry can send it now anyway.
        ProviderError::Unprocessable(_) | ProviderError::Queued => Verdict::GiveUp,
        ProviderError::Fatal(_) => Verdict::StopRun,
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> ProviderError {
        ProviderError::Status {
            status: s,
            url: "u".into(),
            body: String::new(),
            retry_after: Some(Duration::from_secs(2)),
            rate: Box::default(),
        }
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 409, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(&status(s)),
                    Verdict::Retry {
                        throttled: false,
                        ..
                    }
                ),
                "{s}"
            );
        }
        assert_eq!(
            classify(&status(429)),
            Verdict::Retry {
                after: Some(Duration::from_secs(2)),
                throttled: true
            }
        );
        for s in [401, 403, 404] {
            assert_eq!(classify(&status(s)), Verdict::StopRun, "{s}");
        }
        for s in [400, 422] {
            assert_eq!(classify(&status(s)), Verdict::GiveUp, "{s}");
        }
        let t = ProviderError::Timeout { url: "u".into() };
        assert!(matches!(classify(&t), Verdict::Retry { .. }));
        let big = ProviderError::Oversized {
            url: "u".into(),
            reason: "r".into(),
        };
        assert!(
            matches!(classify(&big), Verdict::Retry { .. }),
            "an oversized reply is retried like a malformed one"
        );
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let b = Backoff::default();
        let mut rng = rand::rng();
        for attempt in 0..30 {
            let d = b.delay(attempt, &mut rng);
            let ceiling = (b.base * 2u32.pow(attempt.min(20))).min(b.cap);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
    }
}
