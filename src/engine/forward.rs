//! Calls that are not a [`crate::provider::ChatRequest`]: `cai serve`
//! forwards a client's JSON body as it came, and reads the reply as JSON.
//! Such a call gets the same request slot, rate and token limits, retry
//! rules and error-rate breaker as [`Engine::complete`]; nothing is
//! journaled (the body is the client's, not a run's) and nothing is
//! priced (serve sets no cost cap).

use std::future::Future;
use std::sync::atomic::Ordering;

use super::{Engine, ItemError};
use crate::provider::{ProviderError, RateHints, Usage};

/// What one successful attempt of [`Engine::send`] returned.
pub struct Sent<T> {
    pub value: T,
    /// Token counts, when the reply reported them (a stream reports later).
    pub usage: Option<Usage>,
    pub rate: RateHints,
}

impl Engine {
    /// Runs `attempt` until it succeeds, with the engine's limits and
    /// retries around each try. `est_tokens` is what the rate limiter
    /// reserves before the reply's usage corrects it.
    pub async fn send<T, F, Fut>(&self, est_tokens: u64, mut attempt: F) -> Result<T, ItemError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Sent<T>, ProviderError>>,
    {
        let mut tries = 0u32;
        loop {
            // Unpriced: serve sets no cost cap. A stop while waiting for the
            // limiter drops the reservation, which gives the slot back.
            let mut held = self.reserve(None)?;
            self.wait_turn(est_tokens).await?;
            held.sending();
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = attempt().await;
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(sent) => {
                    self.limiter.learn(&sent.rate);
                    if let Some(u) = sent.usage {
                        self.limiter
                            .correct(est_tokens, u.prompt_tokens + u.completion_tokens);
                        self.stats
                            .tokens_in
                            .fetch_add(u.prompt_tokens, Ordering::Relaxed);
                        self.stats
                            .tokens_out
                            .fetch_add(u.completion_tokens, Ordering::Relaxed);
                    }
                    self.settle(true);
                    return Ok(sent.value);
                }
                Err(e) => self.retry_or_fail(&e, &mut tries).await?,
            }
        }
    }
}
