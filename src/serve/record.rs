//! Every upstream attempt a request causes, recorded for its `usage`, its
//! `--log-requests` line and its error status.
//!
//! The engine is shared by all requests, so the record cannot live in it:
//! [`Recording`] wraps the provider and appends each attempt to the
//! [`Recorder`] of the request being served, found through a task-local.
//! A request's calls run concurrently as futures of its own task, never as
//! spawned tasks, so they all see the same recorder.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Serialize;

use crate::provider::{
    estimated_text_tokens, ChatRequest, EventStream, Provider, ProviderError, Reply, StreamEvent,
    Usage,
};

use super::api::ApiUsage;

tokio::task_local! {
    static RECORDER: Arc<Recorder>;
}

/// One upstream attempt.
#[derive(Clone, Debug, Serialize)]
pub struct CallRecord {
    /// Milliseconds after the request arrived.
    pub start_ms: f64,
    pub latency_ms: f64,
    pub stream: bool,
    /// The conversation sent, as sent (with `--log-requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<serde_json::Value>,
    /// Absent when the call left it to the upstream (a forwarded body
    /// without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// The upstream attempts of one request.
pub struct Recorder {
    t0: Instant,
    /// Keep messages and replies (for `--log-requests`), not just counts.
    verbose: bool,
    calls: Mutex<Vec<CallRecord>>,
}

impl Recorder {
    pub fn new(verbose: bool) -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            verbose,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Runs `fut` with this recorder receiving its upstream attempts.
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, fut: F) -> F::Output {
        RECORDER.scope(self.clone(), fut).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<CallRecord>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&self, req: &ChatRequest, stream: bool) -> (usize, Instant) {
        self.push(
            stream,
            || serde_json::to_value(&req.messages).unwrap_or_default(),
            Some(req.params.max_tokens),
            Some(req.params.temperature),
        )
    }

    /// A forwarded call of the client's `body` begins.
    pub fn start_forwarded(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
        stream: bool,
    ) -> (usize, Instant) {
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(serde_json::Value::as_u64))
            .map(|n| n.min(u64::from(u32::MAX)) as u32);
        let temperature = body
            .get("temperature")
            .and_then(serde_json::Value::as_f64)
            .map(|t| t as f32);
        self.push(
            stream,
            || body.get("messages").cloned().unwrap_or_default(),
            max_tokens,
            temperature,
        )
    }

    /// A forwarded call ended: its usage (estimated from `text` when the
    /// upstream reported none), its text for the log, or its error.
    pub fn end_forwarded(
        &self,
        i: usize,
        t: Instant,
        prompt_estimate: u64,
        text: &str,
        usage: Option<Usage>,
        error: Option<&ProviderError>,
    ) {
        let verbose = self.verbose;
        self.update(i, |r| {
            r.latency_ms = ms(t.elapsed());
            r.usage =
                Some(usage.unwrap_or(Usage::plain(prompt_estimate, estimated_text_tokens(text))));
            if let Some(e) = error {
                r.error = Some(e.to_string());
                if let ProviderError::Status { status, .. } = e {
                    r.status = Some(*status);
                }
            }
            if verbose {
                r.reply = Some(text.to_string());
            }
        });
    }

    /// A forwarded call failed before it produced a reply.
    pub fn fail_forwarded(&self, i: usize, t: Instant, e: &ProviderError) {
        self.fail(i, t, e);
    }

    fn push(
        &self,
        stream: bool,
        messages: impl FnOnce() -> serde_json::Value,
        max_tokens: Option<u32>,
        temperature: Option<f32>,
    ) -> (usize, Instant) {
        let now = Instant::now();
        let rec = CallRecord {
            start_ms: ms(now - self.t0),
            latency_ms: 0.0,
            stream,
            messages: self.verbose.then(messages),
            max_tokens,
            temperature,
            reply: None,
            usage: None,
            error: None,
            status: None,
        };
        let mut calls = self.lock();
        calls.push(rec);
        (calls.len() - 1, now)
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut CallRecord)) {
        if let Some(r) = self.lock().get_mut(i) {
            f(r);
        }
    }

    fn fail(&self, i: usize, t: Instant, e: &ProviderError) {
        self.update(i, |r| {
            r.latency_ms = ms(t.elapsed());
            r.error = Some(e.to_string());
            if let ProviderError::Status { status, .. } = e {
                r.status = Some(*status);
            }
        });
    }

    /// Attempts so far.
    pub fn count(&self) -> u64 {
        self.lock().len() as u64
    }

    /// The HTTP status of the most recent failed attempt, if it had one.
    pub fn last_status(&self) -> Option<u16> {
        self.lock()
            .iter()
            .rev()
            .find(|r| r.error.is_some())
            .and_then(|r| r.status)
    }

    /// Sum over every attempt that returned a reply. A reply without
    /// `usage` is counted as the engine counts it: about four characters
    /// a token.
    pub fn usage(&self) -> ApiUsage {
        let mut u = ApiUsage::default();
        for r in self.lock().iter() {
            if let Some(x) = r.usage {
                u.prompt_tokens += x.prompt_tokens;
                u.completion_tokens += x.completion_tokens;
                if x.cached_tokens > 0 {
                    u.prompt_tokens_details
                        .get_or_insert_with(Default::default)
                        .cached_tokens += x.cached_tokens;
                }
            }
        }
        u.total_tokens = u.prompt_tokens + u.completion_tokens;
        u
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().clone()
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn current() -> Option<Arc<Recorder>> {
    RECORDER.try_with(Arc::clone).ok()
}

/// Rough usage of a reply the endpoint reported none for.
fn estimated(req: &ChatRequest, text: &str) -> Usage {
    Usage::plain(
        crate::engine::estimate_tokens(req),
        estimated_text_tokens(text),
    )
}

/// A provider that reports each attempt to the current request's recorder.
pub struct Recording(pub Arc<dyn Provider>);

#[async_trait]
impl Provider for Recording {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn model(&self) -> &str {
        self.0.model()
    }
    fn endpoint(&self) -> String {
        self.0.endpoint()
    }
    fn key_var(&self) -> Option<&str> {
        self.0.key_var()
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let Some(rec) = current() else {
            return self.0.complete(req).await;
        };
        let (i, t) = rec.start(req, false);
        let result = self.0.complete(req).await;
        match &result {
            Ok(reply) => {
                let c = &reply.completion;
                let usage = c.usage.unwrap_or_else(|| estimated(req, &c.text));
                let verbose = rec.verbose;
                rec.update(i, |r| {
                    r.latency_ms = ms(t.elapsed());
                    r.usage = Some(usage);
                    if verbose {
                        let mut text = c.text.clone();
                        for more in &c.more {
                            text.push_str("\n\u{1e}");
                            text.push_str(more);
                        }
                        r.reply = Some(text);
                    }
                });
            }
            Err(e) => rec.fail(i, t, e),
        }
        result
    }

    async fn stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let Some(rec) = current() else {
            return self.0.stream(req).await;
        };
        let (i, t) = rec.start(req, true);
        let events = match self.0.stream(req).await {
            Ok(s) => s,
            Err(e) => {
                rec.fail(i, t, &e);
                return Err(e);
            }
        };
        // Text is kept only to estimate usage when the stream reports none
        // (and for the log); it is at most one reply.
        let prompt_estimate = crate::engine::estimate_tokens(req);
        let verbose = rec.verbose;
        let finish = move |text: &str, usage: Option<Usage>, error: Option<String>| {
            rec.update(i, |r| {
                r.latency_ms = ms(t.elapsed());
                r.usage = Some(
                    usage.unwrap_or(Usage::plain(prompt_estimate, estimated_text_tokens(text))),
                );
                r.error = error;
                if verbose {
                    r.reply = Some(text.to_string());
                }
            });
        };
        let tap = Tap {
            events,
            text: String::new(),
            usage: None,
            done: false,
            finish: Box::new(finish),
        };
        Ok(Box::pin(futures::stream::unfold(tap, |mut s| async move {
            if s.done {
                return None;
            }
            match s.events.next().await {
                Some(Ok(ev)) => {
                    match &ev {
                        StreamEvent::Delta(d) => s.text.push_str(d),
                        StreamEvent::Usage(u) => s.usage = Some(*u),
                        StreamEvent::Finish(_) => {}
                    }
                    Some((Ok(ev), s))
                }
                Some(Err(e)) => {
                    (s.finish)(&s.text, s.usage, Some(e.to_string()));
                    s.done = true;
                    Some((Err(e), s))
                }
                None => {
                    (s.finish)(&s.text, s.usage, None);
                    None
                }
            }
        })))
    }
}

type Finish = Box<dyn FnMut(&str, Option<Usage>, Option<String>) + Send>;

/// A streamed reply on its way to the client, with what the record needs.
struct Tap {
    events: EventStream,
    text: String,
    usage: Option<Usage>,
    done: bool,
    finish: Finish,
}

/// The HTTP status of the current request's most recent failed attempt.
pub fn last_status() -> Option<u16> {
    current().and_then(|r| r.last_status())
}

/// Whether the current request's most recent attempt failed (an upstream
/// error, as opposed to a reply the caller did not like).
pub fn last_failed() -> bool {
    current().is_some_and(|r| r.lock().last().is_some_and(|c| c.error.is_some()))
}
