//! Streamed requests through the engine: the same limits, retry rules,
//! budgets and breaker as [`Engine::complete`], applied to opening the
//! stream. Once the first byte of a reply has been handed on it cannot be
//! taken back, so a failure inside a stream ends it instead of being retried.
//! Nothing is reserved against `--max-cost` and streamed tokens are counted
//! but not priced: `cai serve`, the only caller, sets no cost cap.

use std::sync::atomic::Ordering;

use futures::StreamExt;

use super::{estimate_tokens, Engine, ItemError};
use crate::provider::{ChatRequest, EventStream, StreamEvent};

impl Engine {
    /// Opens a streamed reply for `req`, retrying failures to open it.
    /// Token counts reach the run's statistics as the stream reports them.
    pub async fn open_stream(&self, req: &ChatRequest) -> Result<EventStream, ItemError> {
        let mut attempt = 0u32;
        loop {
            let mut held = self.reserve(None)?;
            let est = estimate_tokens(req) + u64::from(req.params.max_tokens);
            self.wait_turn(est).await?;
            held.sending();
            let opened = self.provider.stream(req).await;
            held.spend(0);
            let err = match opened {
                Ok(events) => {
                    self.settle(true);
                    let stats = self.stats.clone();
                    return Ok(Box::pin(events.inspect(move |e| {
                        if let Ok(StreamEvent::Usage(u)) = e {
                            stats
                                .tokens_in
                                .fetch_add(u.prompt_tokens, Ordering::Relaxed);
                            stats
                                .tokens_out
                                .fetch_add(u.completion_tokens, Ordering::Relaxed);
                            stats.count_cache(u);
                        }
                    })));
                }
                Err(e) => e,
            };
            self.retry_or_fail(&err, &mut attempt).await?;
        }
    }
}
