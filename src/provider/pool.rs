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

struct Slot {
    member: Member,
    url: String,
    outstanding: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    latency_micros: AtomicU64,
    health: Mutex<Health>,
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
    slots: Vec<Slot>,
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
        let slots = members
            .into_iter()
            .map(|member| Slot {
                url: member.provider.endpoint(),
                member,
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
        Pool { slots, name, model }
    }

    /// Per-member counters.
    pub fn endpoint_stats(&self) -> Vec<EndpointStats> {
        self.slots
            .iter()
            .map(|s| {
                let h = s.health.lock().unwrap_or_else(|p| p.into_inner());
                let requests = s.requests.load(Ordering::Relaxed);
                let failures = s.failures.load(Ordering::Relaxed);
                let ok = requests.saturating_sub(failures).max(1);
                EndpointStats {
                    url: s.url.clone(),
                    weight: s.member.weight,
                    requests,
                    failures,
                    ejections: s.ejections.load(Ordering::Relaxed),
                    mean_latency_ms: s.latency_micros.load(Ordering::Relaxed) as f64
                        / ok as f64
                        / 1000.0,
                    state: match (h.ejected_until, h.probing) {
                        (_, true) => "probing",
                        (Some(_), false) => "ejected",
                        (None, false) => "healthy",
                    }
                    .into(),
                }
            })
            .collect()
    }

    /// The member to send to now, skipping `tried`; marks a half-open
    /// probe. When every member is ejected, the one back soonest.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
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
            let score = load * h.latency_s.unwrap_or(PRIOR_LATENCY_S) / s.member.weight;
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

    fn record(&self, i: usize, elapsed: Duration, result: &Result<Reply, ProviderError>) {
        let s = &self.slots[i];
        s.requests.fetch_add(1, Ordering::Relaxed);
        let mut h = s.health.lock().unwrap_or_else(|p| p.into_inner());
        h.probing = false;
        match result {
            Ok(_) => {
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
            Err(e) if try_elsewhere(e) => {
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
            Err(_) => {}
        }
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
        self.slots
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn key_var(&self) -> Option<&str> {
        self.slots.first().and_then(|s| s.member.provider.key_var())
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        match self.slots.first() {
            Some(s) => s.member.provider.preview(req),
            None => Err(ProviderError::Fatal("an empty endpoint pool".into())),
        }
    }

    fn endpoint_stats(&self) -> Vec<EndpointStats> {
        Pool::endpoint_stats(self)
    }

    /// Every replica serves the same model: the first one's list stands
    /// for all.
    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        match self.slots.first() {
            Some(s) => s.member.provider.list_models().await,
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
            let result = match prompt {
                Some(p) => slot.member.provider.complete_text(p, req).await,
                None => slot.member.provider.complete(req).await,
            };
            self.record(i, started.elapsed(), &result);
            guard.recorded = true;
            drop(guard);
            match result {
                Err(e) if try_elsewhere(&e) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ProviderError::Fatal("an empty endpoint pool".into())))
    }
}
