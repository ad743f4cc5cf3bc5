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

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::api;
use super::approach::{self, Plan};
use super::error::ApiError;
use super::record::Recorder;
use super::request::{write_log, Prepared};
use super::upstream::{Route, SentParams};
use super::Shared;
use crate::provider::{GenParams, Message};

/// All request headers together may not be larger than this.
const MAX_HEADER_BYTES: usize = 64 << 10;
/// Most choices per request.
const MAX_N: u32 = 16;
/// Most pipelines run side by side (`a|b|…`).
const MAX_PIPELINES: usize = 4;

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
        let given = bearer(req.headers()).map(|k| digest(k.as_bytes()));
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

/// `GET /v1/models`: in front of an OpenAI-compatible server, its own list
/// (the models this server accepts of it), else the models this server
/// accepts; each model once more behind each approach slug.
async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Json<Value> {
    let created = api::now_secs();
    let entry = |id: &str| serde_json::json!({"id": id, "object": "model", "created": created, "owned_by": "cai"});
    let mut data: Vec<Value> = match (&shared.forward, &shared.models) {
        (Some(forward), Some(policy)) => {
            let key = shared
                .forward_client_key
                .then(|| bearer(&headers))
                .flatten()
                .map(|k| SecretString::from(k.to_string()));
            match forward.list_models(key.as_ref()).await {
                Some(list) => list
                    .into_iter()
                    .filter(|m| m["id"].as_str().is_some_and(|id| policy.accepts(id)))
                    .collect(),
                None => policy
                    .accepted
                    .iter()
                    .flatten()
                    .chain(policy.default.iter())
                    .fold(Vec::<&String>::new(), |mut seen, m| {
                        if !seen.contains(&m) {
                            seen.push(m);
                        }
                        seen
                    })
                    .into_iter()
                    .map(|m| entry(m))
                    .collect(),
            }
        }
        _ => vec![entry(shared.provider.model())],
    };
    let mut slugged = Vec::with_capacity(data.len() * approach::KNOWN.len());
    for m in &data {
        let Some(id) = m["id"].as_str() else { continue };
        for slug in approach::KNOWN {
            let mut e = m.clone();
            e["id"] = Value::String(format!("{slug}-{id}"));
            slugged.push(e);
        }
    }
    data.extend(slugged);
    Json(serde_json::json!({"object": "list", "data": data}))
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

/// Reads and checks a request: the body stays JSON (what `none` forwards),
/// the fields the proxy reads are checked, and the approach, the model and
/// the parameters of typed calls are settled. Long because each field is
/// checked in turn with the OpenAI-shaped error a client expects for it.
fn prepare(
    shared: &Shared,
    id: String,
    raw: &[u8],
    client_key: Option<SecretString>,
) -> Result<Prepared, ApiError> {
    let (mut body, proxy, fields) = parse_body(raw)?;
    check_messages(shared, &body)?;
    let (mut plan, named) = plan_and_model(shared, fields.model.as_deref().unwrap_or(""))?;
    // The body's field, else a tag in the conversation, else the model's prefix.
    let tagged = take_tag(&mut body);
    if let Some((a, field)) = proxy
        .approach
        .as_deref()
        .map(|a| (a, "approach"))
        .or(proxy
            .optillm_approach
            .as_deref()
            .map(|a| (a, "optillm_approach")))
        .or(tagged.as_ref().map(|(a, path)| (a.as_str(), path.as_str())))
    {
        plan = Plan::parse(a).map_err(|bad| {
            ApiError::invalid(approach::unknown(&bad.0), Some(field.into()))
                .code("unknown_approach")
        })?;
    }
    if plan.0.len() > MAX_PIPELINES {
        return Err(ApiError::invalid(
            format!(
                "approach: {} pipelines joined by |; at most {MAX_PIPELINES} are accepted",
                plan.0.len()
            ),
            Some("approach".into()),
        ));
    }
    let model = upstream_model(shared, named)?;
    let (n, best_of_n) = counts(shared, &fields, &proxy, &mut plan)?;
    let knobs = proxy.knobs(shared.knobs);
    knobs
        .check()
        .map_err(|bad| ApiError::invalid(bad.to_string(), Some(bad.field.into())))?;
    let note = fall_back(shared, &body, &mut plan);
    if plan.steps().any(|s| *s == approach::Step::Z3) && approach::z3::find().is_none() {
        return Err(
            ApiError::invalid(approach::z3::MISSING, Some("approach".into()))
                .code("solver_missing"),
        );
    }
    let params = params(shared, &fields, &plan)?;
    if let Some(sys) = &shared.system_prompt {
        prepend_system(&mut body, sys);
    }
    if let Some((bank, k)) = &shared.examples {
        place_examples(&mut body, bank, *k);
    }
    body.insert("model".into(), Value::String(model.clone()));
    let passthrough = shared.forward.is_some() && plan.is_passthrough();
    let messages = if passthrough {
        Vec::new()
    } else {
        typed_messages(&body)?
    };
    let route = Arc::new(Route {
        model: model.clone(),
        extras: body
            .iter()
            .filter(|(k, _)| !api::TYPED_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        base: params.clone(),
        sent: SentParams {
            temperature: fields.temperature.is_some(),
            top_p: fields.top_p.is_some(),
            max_completion_tokens: fields.max_completion_tokens.is_some(),
        },
        key: client_key,
    });
    Ok(Prepared {
        id,
        model,
        plan,
        passthrough,
        body,
        messages,
        params,
        route,
        note,
        n,
        stream: fields.stream,
        include_usage: fields.stream_options.is_some_and(|o| o.include_usage),
        best_of_n,
        knobs,
        full_response: proxy
            .return_full_response
            .unwrap_or(shared.return_full_response),
    })
}

/// The body as JSON without the proxy's own fields, those fields, and the
/// typed view of the rest.
fn parse_body(
    raw: &[u8],
) -> Result<(Map<String, Value>, api::ProxyFields, api::ChatFields), ApiError> {
    let not_a_request = |e: &dyn std::fmt::Display| {
        ApiError::invalid(
            format!("request body is not a valid chat completion request: {e}"),
            None,
        )
    };
    let mut body: Map<String, Value> =
        serde_json::from_slice(raw).map_err(|e| not_a_request(&e))?;
    let mut own = Map::new();
    for name in api::ProxyFields::NAMES {
        if let Some(v) = body.remove(name) {
            own.insert(name.to_string(), v);
        }
    }
    let proxy: api::ProxyFields =
        serde_json::from_value(Value::Object(own)).map_err(|e| not_a_request(&e))?;
    // Read through a `Value` that owns the map, so the body is not copied.
    let body_value = Value::Object(body);
    let fields = api::ChatFields::deserialize(&body_value).map_err(|e| not_a_request(&e))?;
    let Value::Object(body) = body_value else {
        return Err(not_a_request(&"not a JSON object"));
    };
    Ok((body, proxy, fields))
}

/// `messages` is a list of 1..=`--max-messages` entries.
fn check_messages(shared: &Shared, body: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(Value::Array(list)) = body.get("messages") else {
        return Err(ApiError::invalid(
            "messages: a list of messages is required",
            Some("messages".into()),
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
            Some("messages".into()),
        ));
    }
    if list.len() > shared.max_messages {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "messages: {} messages; at most {} are accepted (raise it with --max-messages)",
                list.len(),
                shared.max_messages
            ),
        )
        .code("too_many_messages"));
    }
    Ok(())
}

/// `n`, `best_of_n` and `cai_rounds` checked; the rounds set on `plan`.
fn counts(
    shared: &Shared,
    fields: &api::ChatFields,
    proxy: &api::ProxyFields,
    plan: &mut Plan,
) -> Result<(u32, u32), ApiError> {
    let n = fields.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            format!("n: {n} is outside 1..={MAX_N}"),
            Some("n".into()),
        ));
    }
    let best_of_n = proxy.best_of_n.unwrap_or(shared.best_of_n);
    if !(1..=MAX_N).contains(&best_of_n) {
        return Err(ApiError::invalid(
            format!("best_of_n: {best_of_n} is outside 1..={MAX_N}"),
            Some("best_of_n".into()),
        ));
    }
    if let Some(r) = proxy.cai_rounds {
        if !(1..=8).contains(&r) {
            return Err(ApiError::invalid(
                format!("cai_rounds: {r} is outside 1..=8"),
                Some("cai_rounds".into()),
            ));
        }
        for step in plan.0.iter_mut().flatten() {
            if let approach::Step::Cai { rounds } = step {
                *rounds = r;
            }
        }
    }
    Ok((n, best_of_n))
}

/// What the client must be told instead of a silent drop: an approach
/// that cannot carry the request falls back to `none` (forwarding); the
/// fields a typed backend does not take are named.
fn fall_back(shared: &Shared, body: &Map<String, Value>, plan: &mut Plan) -> Option<String> {
    if shared.forward.is_none() {
        let ignored: Vec<&str> = body
            .keys()
            .map(String::as_str)
            .filter(|k| !api::TYPED_FIELDS.contains(k))
            .collect();
        return (!ignored.is_empty()).then(|| {
            format!(
                "not sent to this upstream (it takes typed requests, not OpenAI bodies): {}",
                ignored.join(", ")
            )
        });
    }
    if plan.is_passthrough() {
        return None;
    }
    let why = api::pass_through_only(body)?;
    let note = format!(
        "approach {} answered as none (passed through unchanged): {why}, which its rewritten prompts cannot carry",
        plan.slug()
    );
    *plan = Plan::single(approach::Step::None);
    Some(note)
}

/// The tag that names an approach inside the conversation.
const TAG_OPEN: &str = "<optillm_approach>";
const TAG_CLOSE: &str = "</optillm_approach>";

/// Takes the first `<optillm_approach>name</optillm_approach>` out of a
/// system or user message (text content or a text part), so the upstream
/// never sees it; returns the name and the JSON path it came from.
fn take_tag(body: &mut Map<String, Value>) -> Option<(String, String)> {
    let messages = body.get_mut("messages")?.as_array_mut()?;
    for (i, m) in messages.iter_mut().enumerate() {
        if !matches!(
            m.get("role").and_then(Value::as_str),
            Some("system" | "developer" | "user")
        ) {
            continue;
        }
        let Some(content) = m.get_mut("content") else {
            continue;
        };
        if let Value::String(text) = content {
            if let Some(name) = cut_tag(text) {
                return Some((name, format!("messages[{i}].content")));
            }
        } else if let Value::Array(parts) = content {
            for (j, part) in parts.iter_mut().enumerate() {
                if let Some(Value::String(text)) = part.get_mut("text") {
                    if let Some(name) = cut_tag(text) {
                        return Some((name, format!("messages[{i}].content[{j}].text")));
                    }
                }
            }
        }
    }
    None
}

/// Removes the tag from `text` (and the space it leaves), returning its name.
fn cut_tag(text: &mut String) -> Option<String> {
    let start = text.find(TAG_OPEN)?;
    let inner = start + TAG_OPEN.len();
    let end = inner + text[inner..].find(TAG_CLOSE)?;
    let name = text[inner..end].trim().to_string();
    let rest = format!(
        "{}{}",
        text[..start].trim_end(),
        if text[..start].trim().is_empty() {
            text[end + TAG_CLOSE.len()..].trim_start().to_string()
        } else {
            text[end + TAG_CLOSE.len()..].to_string()
        }
    );
    *text = rest.trim().to_string();
    Some(name)
}

/// The approach a model name selects, and the model it names (`None`
/// when it names only an approach, or nothing).
fn plan_and_model<'a>(shared: &Shared, name: &'a str) -> Result<(Plan, Option<&'a str>), ApiError> {
    match approach::split_model(name) {
        Ok(Some((plan, rest))) => Ok((plan, Some(rest))),
        Ok(None) if name.is_empty() => Ok((shared.default_plan.clone(), None)),
        // `bon` alone: the approach, with the default model.
        Ok(None) => match Plan::parse(name) {
            Ok(plan) => Ok((plan, None)),
            Err(_) => Ok((shared.default_plan.clone(), Some(name))),
        },
        Err(bad) => Err(
            ApiError::invalid(approach::unknown(&bad.0), Some("model".into()))
                .code("unknown_approach"),
        ),
    }
}

/// The model calls go to: the client's when forwarding (if this server
/// accepts it), else the backend's own one, echoed as the client named it.
fn upstream_model(shared: &Shared, named: Option<&str>) -> Result<String, ApiError> {
    let Some(policy) = &shared.models else {
        return Ok(named.map_or_else(|| shared.provider.model().to_string(), str::to_string));
    };
    let Some(model) = named.map(str::to_string).or_else(|| policy.default.clone()) else {
        return Err(ApiError::invalid(
            "model: name a model (this server was started without a default --model)",
            Some("model".into()),
        ));
    };
    if !policy.accepts(&model) {
        let listed = policy.accepted.as_deref().unwrap_or_default().join(", ");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{model}` is not served here (this server accepts: {listed}; start it with --models A,B or --allow-any-model to accept others)"
            ),
        )
        .code("model_not_found"));
    }
    Ok(model)
}

/// The parameters of typed calls: the client's, or the server's defaults
/// where it sent none (left out upstream unless an approach chose them).
fn params(shared: &Shared, f: &api::ChatFields, plan: &Plan) -> Result<GenParams, ApiError> {
    let d = &shared.defaults;
    let max_tokens = f
        .max_completion_tokens
        .or(f.max_tokens)
        .unwrap_or(d.max_tokens);
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens must be at least 1",
            Some("max_tokens".into()),
        ));
    }
    let temperature = f.temperature.unwrap_or(d.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature {temperature} is outside [0, 2]"),
            Some("temperature".into()),
        ));
    }
    let top_p = f.top_p.unwrap_or(d.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p {top_p} is outside (0, 1]"),
            Some("top_p".into()),
        ));
    }
    if f.top_logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::invalid(
            "top_logprobs must be at most 20",
            Some("top_logprobs".into()),
        ));
    }
    // First-token candidates (what the providers report) for the plain
    // pass-through; other approaches' answers come from several calls.
    let top_logprobs = (f.logprobs == Some(true) && plan.is_passthrough() && !f.stream)
        .then_some(f.top_logprobs)
        .flatten()
        .filter(|&k| k > 0);
    // A seed the client did not send is not added upstream; the embedded
    // model, which always samples with one, keeps the server's.
    let seed = match shared.forward {
        Some(_) => f.seed,
        None => f.seed.or(d.seed),
    };
    Ok(GenParams {
        max_tokens,
        temperature,
        top_p,
        seed,
        stop: f
            .stop
            .as_ref()
            .map(|s| match s {
                api::Stop::One(x) => vec![x.clone()],
                api::Stop::Many(v) => v.clone(),
            })
            .unwrap_or_default(),
        top_logprobs,
        n: None,
    })
}

/// `--system-prompt` before the conversation: merged into a leading
/// system message whose content is text, else a message of its own.
fn prepend_system(body: &mut Map<String, Value>, sys: &str) {
    let Some(Value::Array(messages)) = body.get_mut("messages") else {
        return;
    };
    if let Some(first) = messages.first_mut() {
        let is_system = matches!(
            first.get("role").and_then(Value::as_str),
            Some("system" | "developer")
        );
        if let (true, Some(Value::String(text))) = (is_system, first.get_mut("content")) {
            *text = format!("{sys}\n\n{text}");
            return;
        }
    }
    messages.insert(0, serde_json::json!({"role": "system", "content": sys}));
}

/// `--examples`: the `k` best matches for the last user turn, placed just
/// before it as user/assistant turns (best first), in the body every
/// approach and the forwarded request are built from.
fn place_examples(
    body: &mut Map<String, Value>,
    bank: &crate::feedback::examples::Retriever,
    k: usize,
) {
    let Some(Value::Array(messages)) = body.get_mut("messages") else {
        return;
    };
    let Some(at) = messages
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return;
    };
    let query = match messages[at].get("content") {
        Some(Value::String(s)) => s.clone(),
        // Content parts: the text ones stand for the query.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return,
    };
    let turns = bank
        .turns(&query, k)
        .into_iter()
        .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content}));
    messages.splice(at..at, turns);
}

/// The conversation as the approaches take it (text turns).
fn typed_messages(body: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            api::InMessage::deserialize(m)
                .map_err(|e| {
                    ApiError::invalid(
                        format!("messages[{i}]: {e}"),
                        Some(format!("messages[{i}]")),
                    )
                })?
                .into_message(i)
        })
        .collect()
}

/// The key the client sent (`Authorization: Bearer …`), when any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// `POST /v1/chat/completions`: the in-flight permit, the body, the client's
/// key, parsing and routing, then the approach, streamed or not. Long because
/// each early exit is a different OpenAI-shaped error the client must get.
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
    let client_key = shared
        .forward_client_key
        .then(|| bearer(&parts.headers))
        .flatten()
        .map(|k| SecretString::from(k.to_string()));
    let mut prepared = match prepare(&shared, id, &raw, client_key) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let recorder = Recorder::new(shared.log.is_some());
    if prepared.passthrough {
        return super::passthrough::respond(shared, prepared, recorder, permit, started).await;
    }
    if prepared.stream {
        return super::stream::respond(shared, prepared, recorder, permit, started).await;
    }
    let engine = shared.engine();
    let runs = prepared.choices().into_iter().map(|(pipe, i)| {
        let ctx = prepared.ctx(&shared, &engine, i);
        let steps = &prepared.plan.0[pipe];
        let messages = &prepared.messages;
        async move { approach::run(&ctx, steps, messages).await }
    });
    let results = recorder
        .scope(prepared.route.clone().scope(join_all(runs)))
        .await;
    drop(permit);
    prepared.add_notes(
        results
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(|a| a.note.as_deref())),
    );
    let mut choices = Vec::with_capacity(results.len());
    let mut failure = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(a) => choices.push(api::Choice {
                index: i as u32,
                message: api::OutMessage {
                    role: "assistant",
                    content: a.content(prepared.full_response).to_string(),
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
            note: prepared.note.clone(),
        },
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_approach_tag_is_cut_out_with_the_space_it_leaves() {
        let cut = |s: &str| {
            let mut t = s.to_string();
            let name = cut_tag(&mut t);
            (name, t)
        };
        let tag = |n: &str| format!("{TAG_OPEN}{n}{TAG_CLOSE}");
        assert_eq!(
            cut(&format!("Be brief. {}", tag("mcts"))),
            (Some("mcts".into()), "Be brief.".into())
        );
        assert_eq!(
            cut(&format!("{} What is 6 x 7?", tag(" bon|moa "))),
            (Some("bon|moa".into()), "What is 6 x 7?".into())
        );
        assert_eq!(
            cut(&format!("Line one\n{}\nLine two", tag("re2"))),
            (Some("re2".into()), "Line one\nLine two".into())
        );
        assert_eq!(cut("no tag here"), (None, "no tag here".into()));
        assert_eq!(cut(&format!("{TAG_OPEN}unclosed")).0, None);
    }

    #[test]
    fn a_message_without_content_does_not_hide_a_later_tag() {
        let mut body: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "messages": [
                {"role": "user"},
                {"role": "user", "content": [{"type": "text", "text": "<optillm_approach>z3</optillm_approach> Solve it"}]}
            ]
        }))
        .unwrap();
        let (name, path) = take_tag(&mut body).unwrap();
        assert_eq!(
            (name.as_str(), path.as_str()),
            ("z3", "messages[1].content[0].text")
        );
        assert_eq!(body["messages"][1]["content"][0]["text"], "Solve it");
    }
}
