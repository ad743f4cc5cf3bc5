//! Routes, request checks and the non-streamed reply.
//!
//! Checks run before any work, cheapest first: header size (431), the
//! client's key (401), the in-flight limit (429 + `Retry-After`), the body
//! size — refused from `Content-Length` before a byte of the body is read,
//! or as soon as a chunked body passes the bound (413) — then the JSON and
//! its fields (400, naming the field), the number of messages (413).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::join_all;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::api::{self, ChatCompletionRequest};
use super::approach::{self, Plan};
use super::error::ApiError;
use super::record::Recorder;
use super::request::{write_log, Prepared};
use super::Shared;
use crate::provider::{GenParams, Message, Role};

/// All request headers together may not be larger than this.
const MAX_HEADER_BYTES: usize = 64 << 10;
/// Most choices per request.
const MAX_N: u32 = 16;

pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .layer(middleware::from_fn_with_state(shared.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn(request_id))
        .with_state(shared)
}

pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal digests, compared in time independent of where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's id (the client's `x-request-id` when it is a sane one),
/// echoed in the reply; also bounds the headers.
async fn request_id(mut req: Request, next: Next) -> Response {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_id);
    let mut resp = if header_bytes > MAX_HEADER_BYTES {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            format!("request headers total {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        )
        .into_response()
    } else {
        req.extensions_mut().insert(RequestId(id.clone()));
        next.run(req).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[derive(Clone)]
struct RequestId(String);

fn new_id() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{:024x}", n >> 32)
}

async fn auth(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(want) = &shared.auth {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|k| digest(k.trim().as_bytes()));
        if !given.is_some_and(|g| same_digest(&g, want)) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or wrong API key: send `Authorization: Bearer <key>` with the key this server was started with",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no route {} {}; this server offers POST /v1/chat/completions, GET /v1/models and GET /health",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn models(State(shared): State<Arc<Shared>>) -> Json<api::ModelList> {
    let model = shared.provider.model().to_string();
    let created = api::now_secs();
    let entry = |id: String| api::ModelEntry {
        id,
        object: "model",
        created,
        owned_by: "cai",
    };
    let mut data = vec![entry(model.clone())];
    data.extend(
        approach::KNOWN
            .iter()
            .map(|slug| entry(format!("{slug}-{model}"))),
    );
    Json(api::ModelList {
        object: "list",
        data,
    })
}

/// Reads the body with a bound, refusing it as early as possible.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than {limit} bytes (raise it with --max-body-bytes)"),
        )
        .code("request_too_large")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::invalid(
            format!("cannot read the request body: {e}"),
            None,
        )),
    }
}

fn prepare(shared: &Shared, id: String, raw: &[u8]) -> Result<Prepared, ApiError> {
    let req: ChatCompletionRequest = serde_json::from_slice(raw).map_err(|e| {
        ApiError::invalid(
            format!("request body is not a valid chat completion request: {e}"),
            None,
        )
    })?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
            Some("messages".into()),
        ));
    }
    if req.messages.len() > shared.max_messages {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "messages: {} messages; at most {} are accepted (raise it with --max-messages)",
                req.messages.len(),
                shared.max_messages
            ),
        )
        .code("too_many_messages"));
    }
    let (mut plan, model) = match approach::split_model(&req.model) {
        Ok(Some((plan, rest))) => (plan, rest.to_string()),
        Ok(None) => (shared.default_plan.clone(), req.model.clone()),
        Err(bad) => {
            return Err(
                ApiError::invalid(approach::unknown(&bad), Some("model".into()))
                    .code("unknown_approach"),
            )
        }
    };
    if let Some(a) = req.approach.as_deref().or(req.optillm_approach.as_deref()) {
        plan = Plan::parse(a).map_err(|bad| {
            ApiError::invalid(approach::unknown(&bad), Some("approach".into()))
                .code("unknown_approach")
        })?;
    }
    let n = req.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            format!("n: {n} is outside 1..={MAX_N}"),
            Some("n".into()),
        ));
    }
    let best_of_n = req.best_of_n.unwrap_or(shared.best_of_n);
    if !(1..=MAX_N).contains(&best_of_n) {
        return Err(ApiError::invalid(
            format!("best_of_n: {best_of_n} is outside 1..={MAX_N}"),
            Some("best_of_n".into()),
        ));
    }
    if let Some(r) = req.cai_rounds {
        if !(1..=8).contains(&r) {
            return Err(ApiError::invalid(
                format!("cai_rounds: {r} is outside 1..=8"),
                Some("cai_rounds".into()),
            ));
        }
        for step in &mut plan.0 {
            if let approach::Step::Cai { rounds } = step {
                *rounds = r;
            }
        }
    }
    let d = &shared.defaults;
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(d.max_tokens);
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens must be at least 1",
            Some("max_tokens".into()),
        ));
    }
    let temperature = req.temperature.unwrap_or(d.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature {temperature} is outside [0, 2]"),
            Some("temperature".into()),
        ));
    }
    let top_p = req.top_p.unwrap_or(d.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p {top_p} is outside (0, 1]"),
            Some("top_p".into()),
        ));
    }
    if req.top_logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::invalid(
            "top_logprobs must be at most 20",
            Some("top_logprobs".into()),
        ));
    }
    // First-token candidates (what the providers report) for the plain
    // pass-through; other approaches' answers come from several calls.
    let top_logprobs = (req.logprobs == Some(true) && plan.is_passthrough() && !req.stream)
        .then_some(req.top_logprobs)
        .flatten()
        .filter(|&k| k > 0);
    let params = GenParams {
        max_tokens,
        temperature,
        top_p,
        seed: req.seed.or(d.seed),
        stop: req.stop.map(api::Stop::into_vec).unwrap_or_default(),
        top_logprobs,
        n: None,
    };
    let mut messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.into_message(i))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(sys) = &shared.system_prompt {
        match messages.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = format!("{sys}\n\n{}", first.content);
            }
            _ => messages.insert(0, Message::system(sys.clone())),
        }
    }
    Ok(Prepared {
        id,
        model,
        plan,
        messages,
        params,
        n,
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        best_of_n,
    })
}

async fn chat(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(new_id, |r| r.0.clone());
    let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too many requests in flight on this server (--max-inflight); retry shortly",
        )
        .code("server_busy")
        .retry_after(1)
        .into_response();
    };
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let raw = match read_body(body, &parts.headers, shared.max_body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let prepared = match prepare(&shared, id, &raw) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let recorder = Recorder::new(shared.log.is_some());
    if prepared.stream {
        return super::stream::respond(shared, prepared, recorder, permit, started).await;
    }
    let engine = shared.engine();
    let runs = (0..prepared.n).map(|i| {
        let ctx = prepared.ctx(&shared, &engine, i);
        let plan = &prepared.plan;
        let messages = &prepared.messages;
        async move { approach::run(&ctx, plan, messages).await }
    });
    let results = recorder.scope(join_all(runs)).await;
    drop(permit);
    let mut choices = Vec::with_capacity(results.len());
    let mut failure = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(a) => choices.push(api::Choice {
                index: i as u32,
                message: api::OutMessage {
                    role: "assistant",
                    content: a.text,
                },
                finish_reason: api::finish_str(&a.finish),
                logprobs: a
                    .logprobs
                    .filter(|_| prepared.params.top_logprobs.is_some())
                    .and_then(api::ChoiceLogprobs::first_token),
            }),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let usage = recorder.usage();
    let status = failure.as_ref().map_or(StatusCode::OK, |e| e.status);
    write_log(
        &shared,
        &prepared,
        &recorder,
        status,
        failure.as_ref(),
        started,
    );
    if let Some(e) = failure {
        return e.into_response();
    }
    Json(api::ChatCompletion {
        id: format!("chatcmpl-{}", prepared.id),
        object: "chat.completion",
        created: api::now_secs(),
        model: prepared.model.clone(),
        choices,
        usage,
        cai: api::CaiInfo {
            approach: prepared.plan.slug(),
            upstream_calls: recorder.count(),
        },
    })
    .into_response()
}
