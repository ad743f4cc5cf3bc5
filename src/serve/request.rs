//! One checked request as the approaches take it, and its line in the
//! `--log-requests` file. Used by the plain (`http`) and the streamed
//! (`stream`) reply alike.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::api;
use super::approach::{Ctx, Plan};
use super::error::ApiError;
use super::record::{CallRecord, Recorder};
use super::upstream::Route;
use super::Shared;
use crate::provider::{GenParams, Message};

/// A request, checked and turned into what the approaches take.
pub struct Prepared {
    pub id: String,
    /// The model calls go to (the client's, after its approach prefix).
    pub model: String,
    pub plan: Plan,
    /// Forwarded as it came (`none` in front of an OpenAI-compatible
    /// server): `body` goes upstream, the reply comes back.
    pub passthrough: bool,
    /// The client's body with `model` rewritten and the proxy's own fields
    /// (`approach`, `best_of_n`, …) taken out.
    pub body: serde_json::Map<String, serde_json::Value>,
    /// The conversation as typed calls take it (empty when passed through).
    pub messages: Vec<Message>,
    /// Parameters of typed calls (the client's, else the server's defaults).
    pub params: GenParams,
    /// What every upstream call of this request carries.
    pub route: Arc<Route>,
    /// Said to the client in `cai.note` (and the `x-cai-note` header).
    pub note: Option<String>,
    pub n: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub best_of_n: u32,
    /// The search approaches' settings for this request.
    pub knobs: super::approach::Knobs,
    /// `return_full_response`: the reasoning in the content.
    pub full_response: bool,
}

impl Prepared {
    /// The context of choice `i` (its own seed, so n choices differ).
    pub fn ctx(&self, shared: &Arc<Shared>, engine: &Arc<crate::engine::Engine>, i: u32) -> Ctx {
        let mut params = self.params.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(u64::from(i)));
        Ctx {
            engine: engine.clone(),
            shared: shared.clone(),
            params,
            seed: self
                .params
                .seed
                .unwrap_or(shared.seed)
                .wrapping_add(u64::from(i)),
            key: conversation_key(&self.messages),
            best_of_n: self.best_of_n,
            knobs: self.knobs,
        }
    }

    /// Every choice of the reply: (pipeline, index within it), pipeline
    /// by pipeline, so `a|b` with `n: 2` answers a, a, b, b.
    pub fn choices(&self) -> Vec<(usize, u32)> {
        (0..self.plan.0.len())
            .flat_map(|p| (0..self.n).map(move |i| (p, i)))
            .collect()
    }

    /// Adds the approaches' own notes (a solver that failed, …) to the
    /// request's note.
    pub fn add_notes<'a>(&mut self, notes: impl Iterator<Item = &'a str>) {
        let mut all: Vec<String> = self.note.take().into_iter().collect();
        for n in notes {
            if !all.iter().any(|a| a == n) {
                all.push(n.to_string());
            }
        }
        self.note = (!all.is_empty()).then(|| all.join("; "));
    }
}

/// Names a conversation for principle choices: the same conversation gets
/// the same principles (for a given seed), whoever sends it.
fn conversation_key(messages: &[Message]) -> String {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m.role.as_str().as_bytes());
        h.update((m.content.len() as u64).to_le_bytes());
        h.update(m.content.as_bytes());
    }
    crate::digest::hex(&h.finalize()[..8])
}

#[derive(Serialize)]
struct LogLine<'a> {
    request_id: &'a str,
    time: u64,
    model: &'a str,
    approach: String,
    stream: bool,
    n: u32,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    latency_ms: f64,
    usage: api::ApiUsage,
    upstream_calls: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    /// The conversation as the client sent it.
    messages: Option<&'a serde_json::Value>,
    calls: Vec<CallRecord>,
}

/// Appends the request's line to `--log-requests` (never a header, so
/// never a key).
pub fn write_log(
    shared: &Shared,
    p: &Prepared,
    recorder: &Recorder,
    status: StatusCode,
    error: Option<&ApiError>,
    started: std::time::Instant,
) {
    let Some(log) = &shared.log else { return };
    let line = LogLine {
        request_id: &p.id,
        time: api::now_secs(),
        model: &p.model,
        approach: p.plan.slug(),
        stream: p.stream,
        n: p.n,
        status: status.as_u16(),
        error: error.map(|e| e.message.as_str()),
        latency_ms: (started.elapsed().as_secs_f64() * 1e5).round() / 100.0,
        usage: recorder.usage(),
        upstream_calls: recorder.count(),
        note: p.note.as_deref(),
        messages: p.body.get("messages"),
        calls: recorder.calls(),
    };
    let Ok(mut bytes) = serde_json::to_vec(&line) else {
        return;
    };
    bytes.push(b'\n');
    let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = std::io::Write::write_all(&mut *f, &bytes) {
        eprintln!("cai serve: cannot write the request log: {e}");
    }
}
