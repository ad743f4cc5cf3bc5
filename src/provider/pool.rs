//! A pool of endpoints serving the same model (vLLM or TGI replicas) behind
//! one [`Provider`].
//!
//! Each request goes to the member with the lowest expected wait: its
//! outstanding requests (plus this one) times its smoothed latency, divided
//! by its weight. Latency is what the pool learns of a member's capacity:
//! a replica that answers twice as slowly is given about half the work, and
//! between equal replicas this is least-outstanding-requests. (Finagle and
//! Linkerd balance the same way, "peak EWMA".)
//!
//! Health: a member whose requests fail [`EJECT_AFTER`] times in a row
//! (connection errors, timeouts, 5xx, 429, malformed replies) is ejected for
//! a cool-down that doubles on every repeat (up to [`MAX_COOLDOWN`]); after
//! it, one probe request is let through (half-open) and its success brings
//! the member back. A request that fails that way on one member is tried at
//! once on another healthy one before the error reaches the engine (whose
//! retry, backoff and journal then apply as for a single endpoint). Errors
//! that no other replica would answer differently (400, 401, 403, 404, a
//! prompt too long) are returned as they are.
//!
//! Per-member counters ([`Pool::endpoint_stats`]) go into the manifest.
//!
//! These rules live in [`Balancer`], which knows members only by index and
//! weight: [`Pool`] puts typed [`Provider`]s behind it, and `cai serve`'s
//! pass-through (`crate::serve::upstream::Forward`) the raw API roots it
//! forwards client bodies to, so both balance, eject and retry alike.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{ChatRequest, Provider, ProviderError, Reply};

/// Consecutive failures that eject a member.
pub const EJECT_AFTER: u32 = 3;
/// First cool-down of an ejected member.
pub const FIRST_COOLDOWN: Duration = Duration::from_secs(2);
/// Longest cool-down.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(60);
/// Latency assumed for a member before its first reply.
const PRIOR_LATENCY_S: f64 = 0.5;
/// Weight of the newest latency in the moving average.
const EWMA_ALPHA: f64 = 0.2;

/// One endpoint of a pool.
pub struct Member {
    pub provider: Arc<dyn Provider>,
    pub weight: f64,
}

#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    /// Ejected until then; `None` = healthy.
    ejected_until: Option<Instant>,
    cooldown: Duration,
    /// A half-open probe is in flight.
    probing: bool,
    /// Smoothed latency in seconds (`None` before the first reply).
    latency_s: Option<f64>,
}

/// What a [`Balancer`] keeps of one member.
struct Slot {
    weight: f64,
    outstanding: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    latency_micros: AtomicU64,
    health: Mutex<Health>,
}

/// How a request on a member ended, as the member's health sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered.
    Ok,
    /// Failed in a way another member might not (see the module docs):
    /// counts towards ejection, and the request is tried elsewhere.
    MemberFault,
    /// Failed through the request's own fault (400, 401, a prompt too
    /// long): the member stays as healthy as it was.
    RequestFault,
}

impl Outcome {
    /// The outcome of a finished request.
    pub fn of<T>(result: &Result<T, ProviderError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) if try_elsewhere(e) => Outcome::MemberFault,
            Err(_) => Outcome::RequestFault,
        }
    }
}

/// Member choice and health of N interchangeable endpoints: the rules of
/// the module docs, kept apart from what a member is, so the typed
/// [`Pool`] and `cai serve`'s pass-through (which forwards raw bodies to
/// several API roots) balance, eject and retry alike. Members are known
/// by their index.
pub struct Balancer {
    slots: Vec<Slot>,
}

impl Balancer {
    /// Members with these weights (each finite and positive).
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Balancer {
        let slots = weights
            .into_iter()
            .map(|weight| Slot {
                weight,
                outstanding: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                ejections: AtomicU64::new(0),
                latency_micros: AtomicU64::new(0),
                health: Mutex::new(Health {
                    cooldown: FIRST_COOLDOWN,
                    ..Health::default()
                }),
            })
            .collect();
        Balancer { slots }
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The counters of member `i`, shown under `url`.
    pub fn stats(&self, i: usize, url: &str) -> EndpointStats {
        let s = &self.slots[i];
        let h = s.health.lock().unwrap_or_else(|p| p.into_inner());
        let requests = s.requests.load(Ordering::Relaxed);
        let failures = s.failures.load(Ordering::Relaxed);
        let ok = requests.saturating_sub(failures).max(1);
        EndpointStats {
            url: url.to_string(),
            weight: s.weight,
            requests,
            failures,
            ejections: s.ejections.load(Ordering::Relaxed),
            mean_latency_ms: s.latency_micros.load(Ordering::Relaxed) as f64 / ok as f64 / 1000.0,
            state: match (h.ejected_until, h.probing) {
                (_, true) => "probing",
                (Some(_), false) => "ejected",
                (None, false) => "healthy",
            }
            .into(),
        }
    }

    /// The member to send to now, skipping `tried`; marks a half-open
    /// probe. When every member is ejected, the one back soonest.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let mut best: Option<(f64, usize, bool)> = None;
        let mut soonest: Option<(Instant, usize)> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if tried.contains(&i) {
                continue;
            }
            let h = s.health.lock().unwrap_or_else(|p| p.into_inner());
            let probe = match h.ejected_until {
                Some(until) if until > now || h.probing => {
                    if soonest.is_none_or(|(t, _)| until < t) {
                        soonest = Some((until, i));
                    }
                    continue;
                }
                Some(_) => true,
                None => false,
            };
            let load = s.outstanding.load(Ordering::Relaxed) as f64 + 1.0;
            let score = load * h.latency_s.unwrap_or(PRIOR_LATENCY_S) / s.weight;
            if best.is_none_or(|(b, _, _)| score < b) {
                best = Some((score, i, probe));
            }
        }
        match best {
            Some((_, i, probe)) => {
                if probe {
                    let mut h = self.slots[i]
                        .health
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    h.probing = true;
                }
                Some(i)
            }
            None => soonest.map(|(_, i)| i),
        }
    }

    /// Records how a request on member `i` ended and how long it took; ends
    /// a half-open probe.
    pub fn finish(&self, i: usize, outcome: Outcome, elapsed: Duration) {
        let s = &self.slots[i];
        s.requests.fetch_add(1, Ordering::Relaxed);
        let mut h = s.health.lock().unwrap_or_else(|p| p.into_inner());
        h.probing = false;
        match outcome {
            Outcome::Ok => {
                let secs = elapsed.as_secs_f64();
                s.latency_micros
                    .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
                h.latency_s = Some(match h.latency_s {
                    Some(l) => l + EWMA_ALPHA * (secs - l),
                    None => secs,
                });
                h.consecutive_failures = 0;
                if h.ejected_until.take().is_some() {
                    h.cooldown = FIRST_COOLDOWN;
                }
            }
            Outcome::MemberFault => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                h.consecutive_failures += 1;
                let was_ejected = h.ejected_until.is_some();
                if was_ejected || h.consecutive_failures >= EJECT_AFTER {
                    if was_ejected {
                        h.cooldown = (h.cooldown * 2).min(MAX_COOLDOWN);
                    }
                    h.ejected_until = Some(Instant::now() + h.cooldown);
                    s.ejections.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The request's fault, not the member's.
            Outcome::RequestFault => {}
        }
    }

    /// Runs one request: `call(i)` on the member [`Balancer::pick`]
    /// chooses, and, while it fails in a way another member might not,
    /// on the next untried one; the first other answer, or the last such
    /// error. Outstanding counts and health are kept as it goes.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut tried: Vec<usize> = Vec::with_capacity(2);
        let mut last: Option<ProviderError> = None;
        while let Some(i) = self.pick(&tried) {
            tried.push(i);
            let slot = &self.slots[i];
            let mut guard = InFlight {
                slot,
                recorded: false,
            };
            slot.outstanding.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = call(i).await;
            let outcome = Outcome::of(&result);
            self.finish(i, outcome, started.elapsed());
            guard.recorded = true;
            drop(guard);
            match result {
                Err(e) if outcome == Outcome::MemberFault => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ProviderError::Fatal("an empty endpoint pool".into())))
    }
}

/// Counters of one pool member, as the manifest shows them (and the
/// report reads them back; a field an older run did not write reads as its
/// default).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EndpointStats {
    pub url: String,
    pub weight: f64,
    pub requests: u64,
    pub failures: u64,
    pub ejections: u64,
    /// Mean latency of its successful requests, milliseconds.
    pub mean_latency_ms: f64,
    /// `healthy`, `ejected` or `probing`.
    pub state: String,
}

/// N providers of one model behind one [`Provider`].
pub struct Pool {
    members: Vec<Member>,
    urls: Vec<String>,
    balancer: Balancer,
    name: String,
    model: String,
}

/// Whether another replica might answer this request.
fn try_elsewhere(e: &ProviderError) -> bool {
    match e {
        ProviderError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
        ProviderError::Transport { .. }
        | ProviderError::Timeout { .. }
        | ProviderError::Malformed { .. }
        | ProviderError::Oversized { .. } => true,
        ProviderError::Unprocessable(_) | ProviderError::Fatal(_) | ProviderError::Queued => false,
    }
}

impl Pool {
    /// A pool over `members` (at least one; all serve the same model).
    pub fn new(members: Vec<Member>) -> Pool {
        let name = members
            .first()
            .map_or("pool".to_string(), |m| m.provider.name().to_string());
        let model = members
            .first()
            .map_or(String::new(), |m| m.provider.model().to_string());
        let urls = members.iter().map(|m| m.provider.endpoint()).collect();
        let balancer = Balancer::new(members.iter().map(|m| m.weight));
        Pool {
            members,
            urls,
            balancer,
            name,
            model,
        }
    }

    /// Per-member counters.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        self.urls
            .iter()
            .enumerate()
            .map(|(i, url)| self.balancer.stats(i, url))
            .collect()
    }
}

/// One request on a member: gives its outstanding slot back even when the
/// request is dropped mid-flight (a stopped run), and then also ends a
/// half-open probe that will never report.
struct InFlight<'a> {
    slot: &'a Slot,
    recorded: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.slot.outstanding.fetch_sub(1, Ordering::Relaxed);
        if !self.recorded {
            let mut h = self.slot.health.lock().unwrap_or_else(|p| p.into_inner());
            h.probing = false;
        }
    }
}

#[async_trait]
impl Provider for Pool {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn endpoint(&self) -> String {
        self.urls.join(" ")
    }

    fn key_var(&self) -> Option<&str> {
        self.members.first().and_then(|m| m.provider.key_var())
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        match self.members.first() {
            Some(m) => m.provider.preview(req),
            None => Err(ProviderError::Fatal("an empty endpoint pool".into())),
        }
    }

    fn endpoint_stats(&self) -> Vec<EndpointStats> {
        Pool::endpoint_stats(self)
    }

    /// Every replica serves the same model: the first one's list stands
    /// for all.
    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        match self.members.first() {
            Some(m) => m.provider.list_models().await,
            None => Err(ProviderError::Fatal("an empty endpoint pool".into())),
        }
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        self.attempt(req, None).await
    }

    async fn complete_text(&self, prompt: &str, req: &ChatRequest) -> Result<Reply, ProviderError> {
        self.attempt(req, Some(prompt)).await
    }
}

impl Pool {
    /// One request on the least loaded member, and on another when that
    /// one fails in a way another may not: a conversation, or with
    /// `prompt` that raw text ([`Provider::complete_text`]).
    async fn attempt(
        &self,
        req: &ChatRequest,
        prompt: Option<&str>,
    ) -> Result<Reply, ProviderError> {
        self.balancer
            .run(|i| {
                let provider = &self.members[i].provider;
                async move {
                    match prompt {
                        Some(p) => provider.complete_text(p, req).await,
                        None => provider.complete(req).await,
                    }
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> ProviderError {
        ProviderError::Status {
            status,
            url: "http://127.0.0.1:1/v1".into(),
            body: String::new(),
            retry_after: None,
            rate: Box::default(),
        }
    }

    /// Which member each of `n` requests held at once goes to.
    fn spread(b: &Balancer, n: usize) -> Vec<usize> {
        let mut counts = vec![0; b.len()];
        for _ in 0..n {
            let i = b.pick(&[]).unwrap();
            b.slots[i].outstanding.fetch_add(1, Ordering::Relaxed);
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn outstanding_requests_are_shared_by_weight() {
        assert_eq!(spread(&Balancer::new([3.0, 1.0]), 8), vec![6, 2]);
        assert_eq!(spread(&Balancer::new([1.0, 1.0]), 8), vec![4, 4]);
    }

    #[test]
    fn a_slower_member_gets_less_work() {
        let b = Balancer::new([1.0, 1.0]);
        b.finish(0, Outcome::Ok, Duration::from_millis(10));
        b.finish(1, Outcome::Ok, Duration::from_millis(40));
        assert_eq!(spread(&b, 10), vec![8, 2]);
    }

    #[test]
    fn repeated_member_faults_eject_and_a_probe_brings_it_back() {
        let b = Balancer::new([100.0, 1.0]);
        for _ in 0..EJECT_AFTER - 1 {
            b.finish(0, Outcome::MemberFault, Duration::ZERO);
            assert_eq!(b.pick(&[]), Some(0), "not yet ejected");
        }
        // The request's own faults do not count.
        b.finish(0, Outcome::RequestFault, Duration::ZERO);
        assert_eq!(b.pick(&[]), Some(0));
        b.finish(0, Outcome::MemberFault, Duration::ZERO);
        assert_eq!(b.pick(&[]), Some(1), "ejected");
        assert_eq!(b.stats(0, "a").state, "ejected");
        // Every member ejected or tried: the one back soonest.
        assert_eq!(b.pick(&[1]), Some(0));

        // The cool-down over: one probe, and its success heals.
        b.slots[0].health.lock().unwrap().ejected_until = Some(Instant::now());
        assert_eq!(b.pick(&[]), Some(0));
        assert_eq!(b.stats(0, "a").state, "probing");
        assert_eq!(b.pick(&[]), Some(1), "one probe at a time");
        b.finish(0, Outcome::Ok, Duration::from_millis(1));
        assert_eq!(b.stats(0, "a").state, "healthy");
        assert_eq!(b.stats(0, "a").ejections, 1);
    }

    #[test]
    fn a_failed_probe_doubles_the_cool_down() {
        let b = Balancer::new([1.0]);
        for _ in 0..EJECT_AFTER {
            b.finish(0, Outcome::MemberFault, Duration::ZERO);
        }
        b.slots[0].health.lock().unwrap().ejected_until = Some(Instant::now());
        assert_eq!(b.pick(&[]), Some(0));
        b.finish(0, Outcome::MemberFault, Duration::ZERO);
        let h = b.slots[0].health.lock().unwrap();
        assert_eq!(h.cooldown, FIRST_COOLDOWN * 2);
        assert!(h.ejected_until.is_some_and(|t| t > Instant::now()));
    }

    #[tokio::test]
    async fn run_tries_another_member_only_for_member_faults() {
        let b = Balancer::new([10.0, 1.0]);
        let mut calls = Vec::new();
        let r = b
            .run(|i| {
                calls.push(i);
                async move {
                    if i == 0 {
                        Err(status(503))
                    } else {
                        Ok(i)
                    }
                }
            })
            .await;
        assert_eq!((r.ok(), calls), (Some(1), vec![0, 1]));

        let b = Balancer::new([10.0, 1.0]);
        let mut calls = Vec::new();
        let r: Result<usize, _> = b
            .run(|i| {
                calls.push(i);
                async move { Err(status(400)) }
            })
            .await;
        assert!(matches!(r, Err(ProviderError::Status { status: 400, .. })));
        assert_eq!(calls, vec![0], "a bad request is not sent elsewhere");
        assert_eq!(b.slots[0].outstanding.load(Ordering::Relaxed), 0);
    }
}
