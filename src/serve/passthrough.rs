//! `none` in front of an OpenAI-compatible server: the client's body goes
//! upstream with only `model` rewritten (and the proxy's own fields taken
//! out), and the upstream's reply comes back as it was sent — tool calls,
//! refusals, logprobs, `n` choices and fields unknown here included. A
//! non-streamed reply gains a `cai` field; a streamed one is relayed byte
//! for byte (OpenAI's `delta.tool_calls` chunks arrive as the upstream
//! wrote them), and its events are only read on the side for the usage
//! and the log.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::api;
use super::error::ApiError;
use super::record::Recorder;
use super::request::{write_log, Prepared};
use super::upstream::WireUsage;
use super::Shared;
use crate::provider::{ProviderError, Usage};

/// A stream event longer than this is relayed but not read for usage.
const MAX_EVENT: usize = 1 << 20;

/// A request no approach touches: forwarded as sent to the upstream, its
/// reply (or stream) relayed, usage counted. Long because the streamed and
/// the whole-reply paths share the accounting and the recorder.
pub async fn respond(
    shared: Arc<Shared>,
    p: Prepared,
    recorder: Arc<Recorder>,
    permit: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
) -> Response {
    let Some(forward) = shared.forward.clone() else {
        let e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "pass-through without an OpenAI-compatible upstream",
        );
        return e.into_response();
    };
    let body = serde_json::to_vec(&p.body).unwrap_or_default();
    // Counted as the engine counts typed requests.
    let estimate = crate::provider::estimated_text_tokens(&body);
    let engine = shared.engine();
    let key = p.route.key.clone();
    if p.stream {
        let opened = engine
            .send(estimate, || {
                let (i, t) = recorder.start_forwarded(&p.body, true);
                let (forward, body, key, recorder) = (&forward, &body, &key, &recorder);
                async move {
                    let r = forward.open(body, key.as_ref()).await;
                    if let Err(e) = &r {
                        recorder.fail_forwarded(i, t, e);
                    }
                    r.map(|sent| crate::engine::Sent {
                        value: (sent.value, i, t),
                        usage: None,
                        rate: sent.rate,
                    })
                }
            })
            .await;
        return match opened {
            Ok((resp, i, t)) => relay(shared, p, recorder, permit, started, resp, (i, t, estimate)),
            Err(e) => fail(&shared, &p, &recorder, e, started),
        };
    }
    let bound = forward.bound(p.params.max_tokens, p.n);
    let result = engine
        .send(estimate, || {
            let (i, t) = recorder.start_forwarded(&p.body, false);
            let (forward, body, key, recorder, bound) = (&forward, &body, &key, &recorder, &bound);
            async move {
                let r = forward.post(body, key.as_ref(), bound).await;
                match &r {
                    Ok(sent) => recorder.end_forwarded(
                        i,
                        t,
                        estimate,
                        &reply_text(&sent.value),
                        sent.usage,
                        None,
                    ),
                    Err(e) => recorder.fail_forwarded(i, t, e),
                }
                r
            }
        })
        .await;
    drop(permit);
    let mut reply = match result {
        Ok(v) => v,
        Err(e) => return fail(&shared, &p, &recorder, e, started),
    };
    write_log(&shared, &p, &recorder, StatusCode::OK, None, started);
    if let Value::Object(m) = &mut reply {
        let info = api::CaiInfo {
            approach: p.plan.slug(),
            upstream_calls: recorder.count(),
            note: p.note.clone(),
        };
        m.insert("cai".into(), serde_json::to_value(info).unwrap_or_default());
    }
    with_note(Json(reply).into_response(), p.note.as_deref())
}

fn fail(
    shared: &Shared,
    p: &Prepared,
    recorder: &Recorder,
    e: crate::engine::ItemError,
    started: Instant,
) -> Response {
    let err = ApiError::upstream(e, recorder.last_status());
    write_log(shared, p, recorder, err.status, Some(&err), started);
    err.into_response()
}

/// `x-cai-note`, so a streamed reply's client can see it too.
fn with_note(mut resp: Response, note: Option<&str>) -> Response {
    if let Some(v) = note.and_then(|n| HeaderValue::from_str(n).ok()) {
        resp.headers_mut().insert("x-cai-note", v);
    }
    resp
}

/// The text of every choice of a reply, for the usage estimate and the log.
fn reply_text(reply: &Value) -> String {
    let mut out = String::new();
    for c in reply["choices"].as_array().into_iter().flatten() {
        let m = &c["message"];
        if let Some(t) = m["content"].as_str() {
            out.push_str(t);
        }
        if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
            out.push_str(&calls.to_string());
        }
    }
    out
}

/// Relays the upstream's event stream as it arrives.
fn relay(
    shared: Arc<Shared>,
    p: Prepared,
    recorder: Arc<Recorder>,
    permit: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
    resp: reqwest::Response,
    (call, t, prompt_estimate): (usize, Instant, u64),
) -> Response {
    let note = p.note.clone();
    let tap = Tap {
        shared,
        p,
        recorder,
        started,
        call,
        t,
        prompt_estimate,
        buf: Vec::new(),
        text: String::new(),
        usage: None,
        error: None,
        done: false,
        _permit: permit,
    };
    let body = futures::stream::unfold((resp, tap), |(mut resp, mut tap)| async move {
        if tap.done {
            return None;
        }
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                tap.read(&chunk);
                Some((Ok::<Bytes, std::convert::Infallible>(chunk), (resp, tap)))
            }
            Err(e) => {
                let err = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("upstream stream failed: {e}"),
                );
                let event = Bytes::from(format!("data: {}\n\n", err.body()));
                tap.error = Some(ProviderError::Transport {
                    url: "upstream stream".into(),
                    reason: e.to_string(),
                });
                tap.finish();
                Some((Ok(event), (resp, tap)))
            }
            Ok(None) => {
                tap.finish();
                None
            }
        }
    });
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    with_note(resp, note.as_deref())
}

/// Reads the relayed events on the side: text (for the estimate and the
/// log) and usage; records the call and writes the log line once, when
/// the stream ends or the client leaves.
struct Tap {
    shared: Arc<Shared>,
    p: Prepared,
    recorder: Arc<Recorder>,
    started: Instant,
    call: usize,
    t: Instant,
    prompt_estimate: u64,
    buf: Vec<u8>,
    text: String,
    usage: Option<Usage>,
    error: Option<ProviderError>,
    done: bool,
    /// Held until the relay ends: it counts against `--max-inflight`.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
}

#[derive(Deserialize, Default)]
struct ChunkDelta {
    content: Option<String>,
    tool_calls: Option<Value>,
}

impl Tap {
    fn read(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            self.event(&event);
        }
        if self.buf.len() > MAX_EVENT {
            self.buf.clear();
        }
    }

    fn event(&mut self, event: &[u8]) {
        let text = String::from_utf8_lossy(event);
        for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
            let Ok(chunk) = serde_json::from_str::<Chunk>(data.trim()) else {
                continue;
            };
            for c in chunk.choices {
                if let Some(t) = c.delta.content {
                    self.text.push_str(&t);
                }
                if let Some(calls) = c.delta.tool_calls {
                    self.text.push_str(&calls.to_string());
                }
            }
            if let Some(u) = chunk.usage {
                self.usage = Some(Usage::from(u));
            }
        }
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.recorder.end_forwarded(
            self.call,
            self.t,
            self.prompt_estimate,
            &self.text,
            self.usage,
            self.error.as_ref(),
        );
        let failure = self.error.as_ref().map(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("upstream stream failed: {e}"),
            )
        });
        let status = failure.as_ref().map_or(StatusCode::OK, |e| e.status);
        write_log(
            &self.shared,
            &self.p,
            &self.recorder,
            status,
            failure.as_ref(),
            self.started,
        );
    }
}

impl Drop for Tap {
    /// A client that leaves mid-stream still gets its log line.
    fn drop(&mut self) {
        self.finish();
    }
}
