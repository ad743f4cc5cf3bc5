//! The batch APIs: OpenAI's Files + Batches and Anthropic's Message Batches.
//!
//! A batch is answered with the same deterministic replies as the live
//! routes, all at once when its processing delay (`batch_delay`) has passed
//! and it is next polled. Per-item faults are chosen by a hash of the
//! `custom_id`, so a test knows which items they hit whatever the order of
//! the lines: an item with `hash % batch_fail_every == 0` comes back
//! errored, one with `hash % batch_expire_every == 0` unprocessed (the
//! batch then ends `expired`), each for its first `batch_fault_times`
//! submissions.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::{error, json, lock, now_secs, parse, Api, Fault, Fnv, State};

/// Batch inputs above this are refused (Anthropic's limit; OpenAI's is 200 MB).
const MAX_BATCH_BODY: usize = 256 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    OpenAi,
    Anthropic,
}

struct Batch {
    kind: Kind,
    created: Instant,
    created_unix: u64,
    input_file_id: Option<String>,
    /// `(custom_id, request body)` in input order.
    items: Vec<(String, Value)>,
    /// `(custom_id, submission number)` fault decisions, fixed at creation.
    submission: Vec<u32>,
    ended: Option<Ended>,
}

struct Ended {
    status: &'static str,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// Anthropic's results JSONL.
    results: Vec<u8>,
    succeeded: u64,
    errored: u64,
    expired: u64,
}

/// Uploaded files, batches, and how often each `custom_id` was submitted.
#[derive(Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    files: HashMap<String, Vec<u8>>,
    batches: HashMap<String, Batch>,
    submissions: HashMap<String, u32>,
}

impl Inner {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:06}", self.next)
    }
}

/// Is `path` a batch route?
pub(crate) fn is_batch_route(path: &str) -> bool {
    path.starts_with("/v1/files")
        || path.starts_with("/v1/batches")
        || path.starts_with("/v1/messages/batches")
}

pub(crate) async fn handle(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, super::DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BATCH_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(super::DropConnection),
    };
    if let Some(expected) = &state.expected_auth {
        let bearer = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let key = parts
            .headers
            .get("x-api-key")
            .map(|v| format!("Bearer {}", String::from_utf8_lossy(v.as_bytes())));
        if bearer != Some(expected.as_bytes()) && key.as_deref() != Some(expected.as_str()) {
            state.counters.unauthorized.fetch_add(1, Relaxed);
            return Ok(error(
                Api::Chat,
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Incorrect API key provided.",
            ));
        }
    }
    let path = parts.uri.path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let bad = |m: &str| {
        Ok(error(
            Api::Chat,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            m,
        ))
    };
    let missing = || {
        Ok(error(
            Api::Chat,
            StatusCode::NOT_FOUND,
            "not_found",
            "no such batch or file",
        ))
    };
    match (&parts.method, segs.as_slice()) {
        (&Method::POST, ["v1", "files"]) => {
            let ctype = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match upload(state, ctype, &body) {
                Ok(v) => Ok(json(StatusCode::OK, v.to_string().into_bytes())),
                Err(m) => bad(&m),
            }
        }
        (&Method::GET, ["v1", "files", id, "content"]) => {
            let inner = lock(&state.batches.inner);
            match inner.files.get(*id) {
                Some(content) => {
                    let mut r = Response::new(Full::new(Bytes::from(content.clone())));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/jsonl"),
                    );
                    Ok(r)
                }
                None => missing(),
            }
        }
        (&Method::POST, ["v1", "batches"]) => match create_openai(state, &body) {
            Ok(v) => Ok(json(StatusCode::OK, v.to_string().into_bytes())),
            Err(m) => bad(&m),
        },
        (&Method::GET, ["v1", "batches", id]) => {
            state.counters.batch_polls.fetch_add(1, Relaxed);
            match object(state, id, &host) {
                Some(v) => Ok(json(StatusCode::OK, v.to_string().into_bytes())),
                None => missing(),
            }
        }
        (&Method::POST, ["v1", "messages", "batches"]) => match create_anthropic(state, &body) {
            Ok(v) => Ok(json(StatusCode::OK, v.to_string().into_bytes())),
            Err(m) => bad(&m),
        },
        (&Method::GET, ["v1", "messages", "batches", id]) => {
            state.counters.batch_polls.fetch_add(1, Relaxed);
            match object(state, id, &host) {
                Some(v) => Ok(json(StatusCode::OK, v.to_string().into_bytes())),
                None => missing(),
            }
        }
        (&Method::GET, ["v1", "messages", "batches", id, "results"]) => {
            let inner = lock(&state.batches.inner);
            match inner.batches.get(*id).and_then(|b| b.ended.as_ref()) {
                Some(e) => Ok(json(StatusCode::OK, e.results.clone())),
                None => missing(),
            }
        }
        _ => {
            state.counters.not_found.fetch_add(1, Relaxed);
            missing()
        }
    }
}

/// `POST /v1/files`: a `multipart/form-data` body with `purpose` and `file`.
fn upload(state: &State, ctype: &str, body: &[u8]) -> Result<Value, String> {
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("expected multipart/form-data with a boundary")?;
    let delim = format!("--{boundary}");
    let text = body;
    let mut purpose = None;
    let mut file = None;
    let mut filename = String::from("input.jsonl");
    for part in split_bytes(text, delim.as_bytes()) {
        let Some(head_end) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]);
        let mut content = &part[head_end + 4..];
        if content.ends_with(b"\r\n") {
            content = &content[..content.len() - 2];
        }
        if head.contains("name=\"purpose\"") {
            purpose = Some(String::from_utf8_lossy(content).trim().to_string());
        } else if head.contains("name=\"file\"") {
            if let Some(f) = head
                .split("filename=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            {
                filename = f.to_string();
            }
            file = Some(content.to_vec());
        }
    }
    let purpose = purpose.ok_or("missing the `purpose` field")?;
    let file = file.ok_or("missing the `file` field")?;
    if purpose != "batch" {
        return Err(format!(
            "this fake keeps files of purpose `batch` only, not `{purpose}`"
        ));
    }
    state.counters.batch_files.fetch_add(1, Relaxed);
    let mut inner = lock(&state.batches.inner);
    let id = inner.id("file-");
    let bytes = file.len();
    inner.files.insert(id.clone(), file);
    Ok(json!({
        "id": id, "object": "file", "bytes": bytes, "created_at": now_secs(),
        "filename": filename, "purpose": "batch",
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes<'a>(mut hay: &'a [u8], delim: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(hay, delim) {
        out.push(&hay[..i]);
        hay = &hay[i + delim.len()..];
    }
    out.push(hay);
    out
}

fn create_openai(state: &State, body: &[u8]) -> Result<Value, String> {
    let req: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if req["endpoint"] != "/v1/chat/completions" {
        return Err("this fake batches `/v1/chat/completions` only".into());
    }
    if req["completion_window"] != "24h" {
        return Err("completion_window must be `24h`".into());
    }
    let file_id = req["input_file_id"]
        .as_str()
        .ok_or("missing input_file_id")?
        .to_string();
    let content = lock(&state.batches.inner)
        .files
        .get(&file_id)
        .cloned()
        .ok_or_else(|| format!("no file `{file_id}`"))?;
    let mut items = Vec::new();
    for (i, line) in String::from_utf8_lossy(&content).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let id = v["custom_id"]
            .as_str()
            .ok_or(format!("line {}: no custom_id", i + 1))?;
        if v["url"] != "/v1/chat/completions" || v["method"] != "POST" {
            return Err(format!(
                "line {}: method/url must be POST /v1/chat/completions",
                i + 1
            ));
        }
        items.push((id.to_string(), v["body"].clone()));
    }
    let id = insert(state, Kind::OpenAi, Some(file_id), items)?;
    Ok(object(state, &id, "").unwrap_or_default())
}

fn create_anthropic(state: &State, body: &[u8]) -> Result<Value, String> {
    let req: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let requests = req["requests"].as_array().ok_or("missing `requests`")?;
    let mut items = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let id = r["custom_id"]
            .as_str()
            .ok_or(format!("requests[{i}]: no custom_id"))?;
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "requests[{i}].custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$"
            ));
        }
        if !r["params"]["max_tokens"].is_u64() {
            return Err(format!("requests[{i}].params.max_tokens: required"));
        }
        items.push((id.to_string(), r["params"].clone()));
    }
    let id = insert(state, Kind::Anthropic, None, items)?;
    Ok(object(state, &id, "").unwrap_or_default())
}

fn insert(
    state: &State,
    kind: Kind,
    input_file_id: Option<String>,
    items: Vec<(String, Value)>,
) -> Result<String, String> {
    if items.is_empty() {
        return Err("a batch needs at least one request".into());
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = items.iter().find(|(id, _)| !seen.insert(id.clone())) {
        return Err(format!("custom_id `{dup}` appears twice"));
    }
    let c = &state.counters;
    c.batches_created.fetch_add(1, Relaxed);
    c.batch_items.fetch_add(items.len() as u64, Relaxed);
    let mut inner = lock(&state.batches.inner);
    let submission = items
        .iter()
        .map(|(id, _)| {
            let n = inner.submissions.entry(id.clone()).or_insert(0);
            *n += 1;
            *n
        })
        .collect();
    let id = inner.id(if kind == Kind::OpenAi {
        "batch_"
    } else {
        "msgbatch_"
    });
    inner.batches.insert(
        id.clone(),
        Batch {
            kind,
            created: Instant::now(),
            created_unix: now_secs(),
            input_file_id,
            items,
            submission,
            ended: None,
        },
    );
    Ok(id)
}

/// What happens to one item.
#[derive(PartialEq)]
enum Fate {
    Answer,
    Fail,
    Expire,
}

fn fate(state: &State, custom_id: &str, submission: u32) -> Fate {
    let c = &state.config;
    if submission > c.batch_fault_times {
        return Fate::Answer;
    }
    let h = Fnv::new().add(custom_id.as_bytes()).0;
    if c.batch_expire_every.is_some_and(|n| h.is_multiple_of(n)) {
        Fate::Expire
    } else if c
        .batch_fail_every
        .is_some_and(|n| (h / 7).is_multiple_of(n))
    {
        Fate::Fail
    } else {
        Fate::Answer
    }
}

/// A completion for one OpenAI body, as the live route would answer it.
fn answer(state: &State, body: &Value) -> Result<Value, String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let job = parse(Api::Chat, &bytes)?;
    let out = job.run(state, Fault::None);
    serde_json::from_slice(&out.body).map_err(|e| e.to_string())
}

/// Ends a batch whose delay has passed: answers every item.
fn finish(state: &State, inner: &mut Inner, id: &str) {
    let Some(b) = inner.batches.get(id) else {
        return;
    };
    if b.ended.is_some() || b.created.elapsed() < state.config.batch_delay {
        return;
    }
    let kind = b.kind;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut results = Vec::new();
    let (mut succeeded, mut errored, mut expired) = (0, 0, 0);
    for (n, ((custom_id, body), submission)) in b.items.iter().zip(&b.submission).enumerate() {
        let fate = fate(state, custom_id, *submission);
        let req_id = format!("{id}_req_{n}");
        let reply = match (&fate, kind) {
            (Fate::Answer, Kind::OpenAi) => answer(state, body),
            (Fate::Answer, Kind::Anthropic) => {
                super::message_reply(body, state, Fault::None).map(|(m, _)| m)
            }
            _ => Err(String::new()),
        };
        match (fate, reply, kind) {
            (Fate::Answer, Ok(v), Kind::OpenAi) => {
                succeeded += 1;
                out.push(json!({"id": req_id, "custom_id": custom_id, "response": {"status_code": 200, "request_id": req_id, "body": v}, "error": null}));
            }
            (Fate::Answer, Ok(v), Kind::Anthropic) => {
                succeeded += 1;
                results.push(
                    json!({"custom_id": custom_id, "result": {"type": "succeeded", "message": v}}),
                );
            }
            (Fate::Expire, _, Kind::OpenAi) => {
                expired += 1;
                errors.push(json!({"id": req_id, "custom_id": custom_id, "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}));
            }
            (Fate::Expire, _, Kind::Anthropic) => {
                expired += 1;
                results.push(json!({"custom_id": custom_id, "result": {"type": "expired"}}));
            }
            (_, reply, Kind::OpenAi) => {
                errored += 1;
                let msg = reply.err().filter(|e| !e.is_empty()).unwrap_or(
                    "The server had an error processing your request (injected).".into(),
                );
                errors.push(json!({"id": req_id, "custom_id": custom_id, "response": {"status_code": 500, "request_id": req_id, "body": {"error": {"message": msg, "type": "server_error"}}}, "error": null}));
            }
            (_, reply, Kind::Anthropic) => {
                errored += 1;
                let msg = reply
                    .err()
                    .filter(|e| !e.is_empty())
                    .unwrap_or("Internal server error (injected).".into());
                results.push(json!({"custom_id": custom_id, "result": {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": msg}}}}));
            }
        }
    }
    let jsonl = |v: Vec<Value>| -> Vec<u8> {
        v.iter()
            .flat_map(|l| {
                let mut s = l.to_string().into_bytes();
                s.push(b'\n');
                s
            })
            .collect()
    };
    let output_file_id = (!out.is_empty()).then(|| {
        let fid = inner.id("file-");
        inner.files.insert(fid.clone(), jsonl(out));
        fid
    });
    let error_file_id = (!errors.is_empty()).then(|| {
        let fid = inner.id("file-");
        inner.files.insert(fid.clone(), jsonl(errors));
        fid
    });
    let status = match kind {
        Kind::OpenAi if expired > 0 => "expired",
        Kind::OpenAi => "completed",
        Kind::Anthropic => "ended",
    };
    if let Some(b) = inner.batches.get_mut(id) {
        b.ended = Some(Ended {
            status,
            output_file_id,
            error_file_id,
            results: jsonl(results),
            succeeded,
            errored,
            expired,
        });
    }
}

/// The batch object as the service shows it (ending it first if due).
fn object(state: &State, id: &str, host: &str) -> Option<Value> {
    let mut inner = lock(&state.batches.inner);
    finish(state, &mut inner, id);
    let b = inner.batches.get(id)?;
    let total = b.items.len() as u64;
    Some(match b.kind {
        Kind::OpenAi => {
            let (status, out, err, completed, failed) = match &b.ended {
                Some(e) => (
                    e.status,
                    e.output_file_id.clone(),
                    e.error_file_id.clone(),
                    e.succeeded,
                    e.errored + e.expired,
                ),
                None => ("in_progress", None, None, 0, 0),
            };
            json!({
                "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
                "input_file_id": b.input_file_id, "completion_window": "24h", "status": status,
                "output_file_id": out, "error_file_id": err, "created_at": b.created_unix,
                "request_counts": {"total": total, "completed": completed, "failed": failed},
                "metadata": null,
            })
        }
        Kind::Anthropic => {
            let (status, counts, url) = match &b.ended {
                Some(e) => (
                    "ended",
                    json!({"processing": 0, "succeeded": e.succeeded, "errored": e.errored, "canceled": 0, "expired": e.expired}),
                    Some(format!("http://{host}/v1/messages/batches/{id}/results")),
                ),
                None => (
                    "in_progress",
                    json!({"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}),
                    None,
                ),
            };
            json!({
                "id": id, "type": "message_batch", "processing_status": status,
                "request_counts": counts, "ended_at": null, "created_at": b.created_unix.to_string(),
                "expires_at": null, "cancel_initiated_at": null, "results_url": url,
            })
        }
    })
}
