//! The request engine: everything between "this conversation needs a reply"
//! and the provider's single attempt.
//!
//! [`Engine::complete`] looks the request up in the [`Journal`] (a resumed
//! run pays for nothing twice), waits for the [`Limiter`], sends, classifies
//! failures ([`retry::classify`]) and retries with backoff, enforces the
//! request budget and the error-rate breaker, and records the reply. The
//! pipeline above it only sees a finished [`Completion`] or a [`ItemError`]
//! saying whether the prompt or the whole run must stop.

pub mod batch;
mod forward;
pub mod ids;
pub mod journal;
pub mod limit;
pub mod progress;
pub mod retry;
pub mod rundir;
pub mod scheduler;
mod stream;

pub use forward::Sent;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use journal::Journal;
pub use limit::Limiter;
use retry::{Backoff, Verdict};

use crate::provider::{
    estimated_text_tokens, ChatRequest, Completion, FinishReason, Message, Provider, ProviderError,
    Reply,
};

/// Why a run stopped early; every one leaves it resumable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// `--max-requests` reached.
    MaxRequests,
    /// Too many recent requests failed after retries.
    ErrorRate,
    /// `--max-cost` reached: the next request could pass the cap.
    MaxCost,
    /// Not a stop of the run: this prompt's next request was queued for a
    /// batch API ([`batch`]), and the prompt continues in the next stage.
    /// Like any aborted prompt it is neither written nor rejected now.
    Batched,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbortReason::Signal => "interrupted",
            AbortReason::MaxRequests => "the --max-requests budget was reached",
            AbortReason::ErrorRate => {
                "more than half of the last 50 requests failed after retries (error-rate breaker)"
            }
            AbortReason::MaxCost => {
                "the --max-cost budget was reached (the next request could have passed it)"
            }
            AbortReason::Batched => "waiting for a batch",
        })
    }
}

/// Why a request produced no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemError {
    /// This prompt cannot be completed; it goes to `rejects.jsonl`.
    Reject(String),
    /// No request can succeed (bad key, wrong URL, missing model): stop the run.
    Stop(String),
    /// The run is stopping (signal, budget, breaker).
    Aborted(AbortReason),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_retries: u32,
    pub backoff: Backoff,
    /// Attempts that may be sent in this invocation (retries included).
    pub max_requests: Option<u64>,
    /// Size of the error-rate breaker's window.
    pub breaker_window: usize,
    /// Price of the model, for the running cost (`None`: unknown).
    pub price: Option<crate::cost::Price>,
    /// Spend cap in USD for this invocation (`--max-cost`); needs `price`.
    pub max_cost: Option<f64>,
    /// Return a reply cut off by the token limit as it is, instead of
    /// retrying it with a doubled limit and then rejecting it (a proxy
    /// passes `finish_reason: length` on to its client).
    pub keep_truncated: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            rpm: None,
            tpm: None,
            max_retries: 8,
            backoff: Backoff::default(),
            max_requests: None,
            breaker_window: 50,
            price: None,
            max_cost: None,
            keep_truncated: false,
        }
    }
}

/// Counters for progress and the manifest.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP attempts (or local generations) started.
    pub sent: AtomicU64,
    /// Requests answered from the journal of an earlier run.
    pub cached: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    /// Requests that failed after every retry.
    pub failed: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
    /// Of `tokens_in`: read from the provider's prompt cache.
    pub tokens_cached: AtomicU64,
    /// Of `tokens_in`: written to the provider's prompt cache.
    pub tokens_cache_write: AtomicU64,
    pub in_flight: AtomicI64,
    /// Cost of the replies so far, in millionths of a USD (from `usage`).
    pub cost_micro_usd: AtomicU64,
}

/// A copy of [`Stats`] at one moment: the `requests` object of
/// `manifest.json` and of `report.json`. Read back (merge, report) with
/// missing counters as 0, so older runs load.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub cached: u64,
    pub retries: u64,
    pub throttled_429: u64,
    pub failed: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Of `tokens_in`: read from the provider's prompt cache.
    pub tokens_cached: u64,
    /// Of `tokens_in`: written to the provider's prompt cache.
    pub tokens_cache_write: u64,
    pub in_flight: i64,
    /// Running cost in millionths of a USD; 0 when the price is unknown.
    pub cost_micro_usd: u64,
}

impl StatsSnapshot {
    /// The counters of `self` and `other` added (merged shards).
    pub fn plus(&self, other: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.saturating_add(other.requests),
            cached: self.cached.saturating_add(other.cached),
            retries: self.retries.saturating_add(other.retries),
            throttled_429: self.throttled_429.saturating_add(other.throttled_429),
            failed: self.failed.saturating_add(other.failed),
            tokens_in: self.tokens_in.saturating_add(other.tokens_in),
            tokens_out: self.tokens_out.saturating_add(other.tokens_out),
            tokens_cached: self.tokens_cached.saturating_add(other.tokens_cached),
            tokens_cache_write: self
                .tokens_cache_write
                .saturating_add(other.tokens_cache_write),
            in_flight: self.in_flight.saturating_add(other.in_flight),
            cost_micro_usd: self.cost_micro_usd.saturating_add(other.cost_micro_usd),
        }
    }
}

impl Stats {
    /// Adds a reply's prompt-cache reads and writes.
    pub fn count_cache(&self, u: &crate::provider::Usage) {
        self.tokens_cached
            .fetch_add(u.cached_tokens, Ordering::Relaxed);
        self.tokens_cache_write
            .fetch_add(u.cache_write_tokens, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.sent.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled_429: self.throttled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            tokens_in: self.tokens_in.load(Ordering::Relaxed),
            tokens_out: self.tokens_out.load(Ordering::Relaxed),
            tokens_cached: self.tokens_cached.load(Ordering::Relaxed),
            tokens_cache_write: self.tokens_cache_write.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            cost_micro_usd: self.cost_micro_usd.load(Ordering::Relaxed),
        }
    }
}

/// Shared stop signal: the first reason set wins.
#[derive(Clone)]
pub struct StopSignal {
    tx: Arc<watch::Sender<Option<AbortReason>>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl StopSignal {
    pub fn stop(&self, reason: AbortReason) {
        self.tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn reason(&self) -> Option<AbortReason> {
        *self.tx.borrow()
    }

    /// Resolves once a stop is requested.
    pub async fn stopped(&self) -> AbortReason {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(r) = *rx.borrow_and_update() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as self; unreachable in practice.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Rough token count of a request: about four characters a token, plus a
/// few tokens of chat framing per message. Used for `--tpm` before the
/// reply's real `usage` corrects it.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    estimate_message_tokens(&req.messages)
}

/// [`estimate_tokens`] of a run of messages (a stage's shared prefix).
pub fn estimate_message_tokens<'a>(messages: impl IntoIterator<Item = &'a Message>) -> u64 {
    messages.into_iter().map(Message::estimated_tokens).sum()
}

/// Tokens in and out of a reply: its `usage`, or estimated from the
/// request (`est_in`) and the reply's length when the endpoint reported none.
fn usage_or_estimate(c: &Completion, est_in: u64) -> (u64, u64) {
    match c.usage {
        Some(u) => (u.prompt_tokens, u.completion_tokens),
        None => (est_in, estimated_text_tokens(&c.text)),
    }
}

/// What [`Engine::complete`] does with a reply.
enum Fate {
    Keep,
    /// Cut off by the token limit: once more with room to finish.
    Widen,
    /// An empty reply: retried like a malformed one.
    Empty,
}

/// One attempt's hold on the run's budgets: a `--max-requests` slot and
/// its worst-case cost against `--max-cost`. Dropped before the request
/// goes out, or [`refund`](Reservation::refund)ed, it gives both back: an
/// attempt that was never sent (the run stopped, or the request was queued
/// for a batch) costs nothing, on every path out of [`Engine::complete`].
pub(crate) struct Reservation<'a> {
    engine: &'a Engine,
    /// Reserved against the budget, in millionths of a USD.
    micros: u64,
    /// Whether a drop gives the slot and the reservation back.
    refund_on_drop: bool,
}

impl Reservation<'_> {
    /// The request goes out: from here a drop (its task cancelled while it
    /// is in flight) keeps both, since the endpoint may bill it.
    pub(crate) fn sending(&mut self) {
        self.refund_on_drop = false;
    }

    /// Nothing was sent after all (the request was queued for a batch).
    pub(crate) fn refund(mut self) {
        self.refund_on_drop = true;
    }

    /// The attempt was sent: the slot stays taken and the reservation is
    /// replaced by what the attempt really cost.
    pub(crate) fn spend(mut self, micros: u64) {
        self.refund_on_drop = false;
        let e = self.engine;
        e.stats.cost_micro_usd.fetch_add(micros, Ordering::Relaxed);
        if let Some(b) = &e.budget {
            b.settle(self.micros, micros);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.refund_on_drop {
            return;
        }
        let e = self.engine;
        e.stats.sent.fetch_sub(1, Ordering::Relaxed);
        if let Some(b) = &e.budget {
            b.settle(self.micros, 0);
        }
    }
}

/// Sends requests for a run.
pub struct Engine {
    provider: Arc<dyn Provider>,
    journal: Journal,
    limiter: Limiter,
    cfg: EngineConfig,
    stats: Arc<Stats>,
    stop: StopSignal,
    recent: Mutex<VecDeque<bool>>,
    budget: Option<crate::cost::Budget>,
    /// Request keys without rehashing each stage's shared prefix.
    keys: journal::KeyCache,
}

impl Engine {
    pub fn new(
        provider: Arc<dyn Provider>,
        journal: Journal,
        cfg: EngineConfig,
        stop: StopSignal,
    ) -> Self {
        Self {
            provider,
            journal,
            limiter: Limiter::new(cfg.rpm, cfg.tpm),
            budget: cfg.max_cost.map(crate::cost::Budget::new),
            cfg,
            stats: Arc::new(Stats::default()),
            stop,
            recent: Mutex::new(VecDeque::new()),
            keys: journal::KeyCache::default(),
        }
    }

    /// Shares `stats` with other engines of the same run (judges): counters,
    /// progress and the `--max-requests` budget then cover all of them.
    pub fn with_stats(mut self, stats: Arc<Stats>) -> Self {
        self.stats = stats;
        self
    }

    pub fn provider(&self) -> &dyn Provider {
        self.provider.as_ref()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Before each attempt: refuses when the run is stopping, and reserves
    /// one request of `--max-requests` atomically (so concurrent tasks
    /// cannot overshoot the budget) and, when the price is known
    /// (`micros`), the attempt's worst-case cost against `--max-cost`. The returned
    /// [`Reservation`] gives both back when dropped before
    /// [`Reservation::spend`] (the attempt was not sent).
    pub(crate) fn reserve(&self, micros: Option<u64>) -> Result<Reservation<'_>, ItemError> {
        if let Some(r) = self.stop.reason() {
            return Err(ItemError::Aborted(r));
        }
        let prev = self.stats.sent.fetch_add(1, Ordering::Relaxed);
        // From here on, every early return refunds the slot on drop.
        let mut held = Reservation {
            engine: self,
            micros: 0,
            refund_on_drop: true,
        };
        if self.cfg.max_requests.is_some_and(|max| prev >= max) {
            self.stop.stop(AbortReason::MaxRequests);
            return Err(ItemError::Aborted(AbortReason::MaxRequests));
        }
        if let (Some(b), Some(micros)) = (&self.budget, micros) {
            if !b.reserve(micros) {
                self.stop.stop(AbortReason::MaxCost);
                return Err(ItemError::Aborted(AbortReason::MaxCost));
            }
            held.micros = micros;
        }
        Ok(held)
    }

    /// Waits for the rate limiter to let `tokens` through, or refuses when
    /// the run stops first.
    async fn wait_turn(&self, tokens: u64) -> Result<(), ItemError> {
        tokio::select! {
            _ = self.limiter.acquire(tokens) => Ok(()),
            r = self.stop.stopped() => Err(ItemError::Aborted(r)),
        }
    }

    /// Records a final outcome in the breaker window; trips it when more
    /// than half of a full window failed.
    fn settle(&self, ok: bool) {
        if !ok {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut w = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        w.push_back(ok);
        if w.len() > self.cfg.breaker_window {
            w.pop_front();
        }
        let failures = w.iter().filter(|ok| !**ok).count();
        if w.len() == self.cfg.breaker_window && failures * 2 > self.cfg.breaker_window {
            self.stop.stop(AbortReason::ErrorRate);
        }
    }

    fn stop_message(&self, err: &ProviderError) -> String {
        let p = &self.provider;
        match err {
            ProviderError::Status {
                status: status @ (401 | 403),
                url,
                body,
                ..
            } => {
                let var = p
                    .key_var()
                    .map(|v| format!("the key in ${v} was rejected (it is not shown here); check ${v} and that it belongs to this service"))
                    .unwrap_or_else(|| "no key was sent; set one with --api-key-env VAR".into());
                format!("{url} rejected the request with HTTP {status} (authentication): {var}. Server said: {body}")
            }
            ProviderError::Status {
                status: 404,
                url,
                body,
                ..
            } => format!(
                "{url} answered HTTP 404: check --base-url and that model `{}` exists there (list them with `cai models --provider {} --base-url {}`). Server said: {body}",
                p.model(),
                p.name(),
                p.endpoint()
            ),
            other => other.to_string(),
        }
    }

    /// Waits `d`, or less if the run is stopping.
    async fn sleep(&self, d: Duration) -> Result<(), ItemError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            r = self.stop.stopped() => Err(ItemError::Aborted(r)),
        }
    }

    /// A finished reply for `req`, from the journal or the endpoint.
    pub async fn complete(
        &self,
        stage: &str,
        prompt_id: &str,
        req: &ChatRequest,
    ) -> Result<Completion, ItemError> {
        let key = self
            .keys
            .key(self.provider.name(), self.provider.model(), stage, req);
        if let Some(c) = self.journaled(&key) {
            return Ok(c);
        }
        let mut req = std::borrow::Cow::Borrowed(req);
        let mut attempt = 0u32;
        let mut widened = false;
        loop {
            let est_in = estimate_tokens(&req);
            let est = est_in + u64::from(req.params.max_tokens);
            // The worst case (the whole max_tokens) is held against
            // --max-cost while the attempt is out; the reply's usage settles it.
            let mut held = self.reserve(self.price_micros(&crate::provider::Usage::plain(
                est_in,
                u64::from(req.params.max_tokens),
            )))?;
            self.wait_turn(est).await?;
            held.sending();
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = self.provider.complete(&req).await;
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            let reply = match result {
                // Nothing was sent or spent: the batch driver submits it.
                Err(ProviderError::Queued) => {
                    held.refund();
                    return Err(ItemError::Aborted(AbortReason::Batched));
                }
                // A failed attempt is not billed.
                Err(e) => {
                    held.spend(0);
                    self.retry_or_fail(&e, &mut attempt).await?;
                    continue;
                }
                Ok(reply) => reply,
            };
            let c = self.account(reply, est_in, est, held);
            match self.judge_reply(&c, widened, req.params.max_tokens)? {
                Fate::Keep => {}
                Fate::Widen => {
                    // One more try with room to finish; the reply is
                    // still journaled under the original request.
                    widened = true;
                    let mut wider = req.into_owned();
                    wider.params.max_tokens = wider.params.max_tokens.saturating_mul(2);
                    req = std::borrow::Cow::Owned(wider);
                    continue;
                }
                Fate::Empty => {
                    let empty = ProviderError::Malformed {
                        url: self.provider.endpoint(),
                        reason: "empty reply".into(),
                    };
                    self.retry_or_fail(&empty, &mut attempt).await?;
                    continue;
                }
            }
            if let Err(e) = self.journal.record(&key, prompt_id, &c) {
                return Err(ItemError::Stop(format!(
                    "cannot write the journal {}: {e}",
                    self.journal.path().display()
                )));
            }
            self.settle(true);
            return Ok(c);
        }
    }

    /// Counts a reply: its tokens (from `usage`, else estimated) into the
    /// stats and the limiter, its cost against the reservation `held`.
    fn account(&self, reply: Reply, est_in: u64, est: u64, held: Reservation) -> Completion {
        let (tin, tout) = usage_or_estimate(&reply.completion, est_in);
        // Reported usage is priced part by part: cache reads at the cached
        // price, so --max-cost and the manifest see what the bill says.
        let usage = reply
            .completion
            .usage
            .unwrap_or(crate::provider::Usage::plain(tin, tout));
        held.spend(self.price_micros(&usage).unwrap_or(0));
        self.limiter.learn(&reply.rate);
        self.limiter.correct(est, tin + tout);
        self.stats.tokens_in.fetch_add(tin, Ordering::Relaxed);
        self.stats.tokens_out.fetch_add(tout, Ordering::Relaxed);
        if let Some(u) = &reply.completion.usage {
            self.stats.count_cache(u);
        }
        reply.completion
    }

    /// What becomes of a reply: kept, tried again with twice `max_tokens`
    /// (cut off the first time), retried like a failure (empty), or the
    /// prompt rejected (cut off again, or filtered).
    fn judge_reply(
        &self,
        c: &Completion,
        widened: bool,
        max_tokens: u32,
    ) -> Result<Fate, ItemError> {
        let reject = |why: String| {
            // The endpoint answered: not a failure for the breaker.
            self.settle(true);
            Err(ItemError::Reject(why))
        };
        match &c.finish {
            FinishReason::Length if self.cfg.keep_truncated => {}
            FinishReason::Length if !widened => return Ok(Fate::Widen),
            FinishReason::Length => {
                return reject(format!(
                    "reply cut off by the token limit (max_tokens {max_tokens})"
                ))
            }
            FinishReason::Filtered(why) => {
                return reject(format!(
                    "the endpoint's content filter blocked the reply ({why})"
                ))
            }
            _ => {}
        }
        Ok(if c.text.trim().is_empty() {
            Fate::Empty
        } else {
            Fate::Keep
        })
    }

    /// A reply recorded for `key`: by an earlier run (counted as cached) or
    /// in an earlier pass of this process (a batch run's stage).
    fn journaled(&self, key: &str) -> Option<Completion> {
        if let Some(c) = self.journal.get(key) {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return Some(c.clone());
        }
        self.journal.recorded(key)
    }

    /// The price of a reply's usage in millionths of a USD (`None` when
    /// the price is unknown).
    fn price_micros(&self, usage: &crate::provider::Usage) -> Option<u64> {
        self.cfg
            .price
            .as_ref()
            .map(|p| crate::cost::to_micros(p.cost_usage(usage)))
    }

    /// After failed attempt number `attempt` (0-based): stop the run, give
    /// up on the item, or wait out the backoff (or `Retry-After`) and count
    /// the retry, so the caller tries again.
    async fn retry_or_fail(&self, err: &ProviderError, attempt: &mut u32) -> Result<(), ItemError> {
        match retry::classify(err) {
            Verdict::StopRun => Err(ItemError::Stop(self.stop_message(err))),
            Verdict::GiveUp => {
                self.settle(false);
                Err(ItemError::Reject(err.to_string()))
            }
            Verdict::Retry { after, throttled } => {
                if let ProviderError::Status { rate, .. } = err {
                    self.limiter.learn(rate);
                }
                if *attempt >= self.cfg.max_retries {
                    self.settle(false);
                    return Err(ItemError::Reject(format!(
                        "gave up after {} attempts: {err}",
                        *attempt + 1
                    )));
                }
                let backoff = self.cfg.backoff.delay(*attempt, &mut rand::rng());
                let wait = after.unwrap_or(backoff);
                if throttled {
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    // Everyone waits, not just this request.
                    self.limiter.pause(wait);
                }
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                *attempt += 1;
                self.sleep(wait).await
            }
        }
    }
}
