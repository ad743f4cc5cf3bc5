//! A fast, deterministic fake language-model endpoint for tests and benchmarks.
//!
//! [`FakeServer`] speaks the OpenAI `chat/completions` and Hugging Face TGI
//! `generate` wire formats on `127.0.0.1`, answers with text derived from a
//! hash of the request (so a run is reproducible and every stage is
//! recognisable: `Critique: …`, `Revision: …` or a plain answer), and can be
//! made to behave like a real, imperfect server: fixed latency with jitter, a
//! concurrency capacity beyond which requests queue, a requests-per-minute
//! limit that answers 429 with `Retry-After`, and faults (429, 500, 503,
//! dropped connections, malformed or empty bodies, truncated replies, hangs)
//! drawn from a seeded RNG. Counters in [`Stats`] let tests check what the
//! client actually did. With every knob at its default it is a plain server
//! whose own overhead is small next to the client under measurement.
//!
//! It serves OpenAI's text completion (`POST /v1/completions`) as a base
//! model would answer it (see the `completions` module), and Anthropic's Messages API (`POST /v1/messages`) with the
//! same answers, and can behave like the providers' prompt caches
//! ([`FakeConfig::cache_min_tokens`]): on the OpenAI route a request whose
//! leading messages were seen before (at least the minimum) reports them as
//! `usage.prompt_tokens_details.cached_tokens`, as OpenAI's automatic cache
//! does; on the Messages route (live and batched) only prefixes that end
//! at a `cache_control` block are written and read, reported as
//! `cache_creation_input_tokens` / `cache_read_input_tokens`, as
//! Anthropic's does.

mod batch;
mod completions;
pub mod lcg;
pub mod process;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Request bodies above this are refused; real prompts are far smaller.
const MAX_BODY: usize = 16 << 20;
/// How long [`FakeServer::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Behaviour of a [`FakeServer`]. `FakeConfig::default()` is a plain, fast,
/// fault-free server on an ephemeral port.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Time each completion takes once it holds a capacity slot.
    pub latency: Duration,
    /// Extra latency drawn uniformly from `0..=jitter` per request.
    pub jitter: Duration,
    /// Completions processed at once (a GPU server's batch limit); the rest
    /// wait in a queue. `None` = unlimited.
    pub capacity: Option<usize>,
    /// Requests per minute accepted on the completion routes, as a token
    /// bucket; over the limit the reply is 429 with `Retry-After`.
    pub rpm_limit: Option<u32>,
    /// Bucket size of the rpm limit; `None` = one second's worth, which is
    /// how OpenAI documents its own enforcement.
    pub rpm_burst: Option<u32>,
    /// Probability of an injected 429 (answered at once, before queueing).
    pub rate_429: f64,
    /// Probability of a 500 after the latency.
    pub rate_500: f64,
    /// Probability of a 503 (answered at once, like an overloaded gateway).
    pub rate_503: f64,
    /// Probability of closing the connection without any response.
    pub rate_reset: f64,
    /// Probability of a 200 whose body is not valid JSON or not the shape.
    pub rate_malformed: f64,
    /// Probability of never answering (until `hang_for` or shutdown).
    pub rate_hang: f64,
    /// Probability of a 200 with empty content.
    pub rate_empty: f64,
    /// Probability of a reply cut short with `finish_reason: "length"`.
    pub rate_length: f64,
    /// `Retry-After` sent with injected 429s.
    pub fault_retry_after: Duration,
    /// How long a hanging request holds its connection before it is dropped.
    pub hang_for: Duration,
    /// When set, completion routes need `Authorization: Bearer <key>`.
    pub require_key: Option<String>,
    /// Seed of the fault and jitter RNG.
    pub seed: u64,
    /// Answer `/generate` in the Inference-API list form `[{generated_text}]`.
    pub tgi_list: bool,
    /// Model id listed by `/v1/models` (and Gemini's `/v1beta/models`).
    pub model: String,
    /// Keep the last N completion request bodies for [`FakeServer::recent_requests`].
    pub record_last: usize,
    /// Time from a batch's creation until it ends (OpenAI Batches and
    /// Anthropic Message Batches).
    pub batch_delay: Duration,
    /// Batch items whose `custom_id` hash is a multiple of N come back
    /// errored (for their first `batch_fault_times` submissions).
    pub batch_fail_every: Option<u64>,
    /// Batch items whose `custom_id` hash is a multiple of N are left
    /// unprocessed: the batch ends `expired` (OpenAI) or the item `expired`.
    pub batch_expire_every: Option<u64>,
    /// Submissions of a faulty item that fail before it is answered.
    pub batch_fault_times: u32,
    /// Behave like a provider's prompt cache: prefixes of at least this
    /// many tokens are remembered and reported as cached when repeated.
    /// `None` (the default): no cache, and replies carry no cache fields.
    pub cache_min_tokens: Option<u64>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            port: 0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            capacity: None,
            rpm_limit: None,
            rpm_burst: None,
            rate_429: 0.0,
            rate_500: 0.0,
            rate_503: 0.0,
            rate_reset: 0.0,
            rate_malformed: 0.0,
            rate_hang: 0.0,
            rate_empty: 0.0,
            rate_length: 0.0,
            fault_retry_after: Duration::from_secs(1),
            hang_for: Duration::from_secs(600),
            require_key: None,
            seed: 0,
            tgi_list: false,
            model: "fake-model".to_owned(),
            record_last: 0,
            batch_delay: Duration::ZERO,
            batch_fail_every: None,
            batch_expire_every: None,
            batch_fault_times: 1,
            cache_min_tokens: None,
        }
    }
}

/// Why a [`FakeServer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("invalid fake server config: {0}")]
    Config(String),
    #[error("cannot bind 127.0.0.1:{port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Declares the atomic counters and their plain snapshot from one list, so
/// the two can never disagree.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        struct Counters { $($name: AtomicU64),* }

        /// A snapshot of the server's counters (also served as `GET /stats`).
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Stats { $($(#[$doc])* pub $name: u64),* }

        impl Counters {
            fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Relaxed)),* }
            }
        }
    };
}

counters! {
    /// Every HTTP request received, on any path.
    requests,
    /// `POST /v1/chat/completions` and `/chat/completions`.
    chat_requests,
    /// `POST /v1/completions` and `/completions` (text completion).
    completion_requests,
    /// `POST /generate` and `POST /models/<id>`.
    generate_requests,
    /// `GET /v1/models` and `GET /v1beta/models`.
    models_requests,
    /// `GET /stats`.
    stats_requests,
    /// Unknown paths or methods (404).
    not_found,
    /// Completions answered 200 with real content (including `length`).
    ok,
    /// 429 because the rpm limit was exceeded.
    rate_limited,
    /// 429 injected by `rate_429`.
    injected_429,
    /// 500 injected.
    status_500,
    /// 503 injected.
    status_503,
    /// Connections closed without a response.
    resets,
    /// 200 with a malformed body.
    malformed,
    /// Requests left hanging.
    hangs,
    /// 200 with empty content.
    empty,
    /// Replies with `finish_reason: "length"` (injected or from `max_tokens`).
    length,
    /// 401 for a missing or wrong key.
    unauthorized,
    /// 400 for a body that does not parse.
    bad_request,
    /// Requests received and not yet answered, now.
    in_flight,
    /// Highest `in_flight` seen.
    max_in_flight,
    /// Completions holding a capacity slot, now.
    active,
    /// Highest `active` seen; never above `capacity`.
    max_active,
    /// TCP connections accepted (low when clients keep connections alive).
    connections,
    /// Prompt tokens of answered completions (about 4 characters a token).
    prompt_tokens,
    /// Completion tokens of answered completions.
    completion_tokens,
    /// Batches created (`POST /v1/batches`, `POST /v1/messages/batches`).
    batches_created,
    /// Requests submitted in batches (resubmissions included).
    batch_items,
    /// Files uploaded for batches (`POST /v1/files`).
    batch_files,
    /// Polls of a batch's status.
    batch_polls,
    /// `POST /v1/messages` (Anthropic Messages API).
    messages_requests,
    /// Prompt tokens reported as read from the prompt cache.
    cached_tokens,
    /// Prompt tokens reported as written to the prompt cache (Anthropic).
    cache_write_tokens,
    /// Requests that carried `prompt_cache_key`.
    prompt_cache_keys,
    /// Requests that carried at least one `cache_control` block.
    cache_control_requests,
}

/// A completion request as received, kept when `record_last > 0`.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub body: Bytes,
}

/// A running fake endpoint. Dropping it stops accepting and ends hanging
/// requests; [`FakeServer::shutdown`] also waits for connections to close.
pub struct FakeServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeServer {
    /// Binds 127.0.0.1 and starts serving on the current tokio runtime.
    pub async fn start(config: FakeConfig) -> Result<FakeServer, FakeError> {
        validate(&config)?;
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|source| FakeError::Bind {
                port: config.port,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| FakeError::Bind {
            port: config.port,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State::new(config, shutdown_rx.clone()));
        let task = tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        Ok(FakeServer {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }

    /// The last `record_last` completion requests, oldest first.
    pub fn recent_requests(&self) -> Vec<RecordedRequest> {
        match &self.state.recent {
            Some(recent) => lock(recent).iter().cloned().collect(),
            None => Vec::new(),
        }
    }

    /// Stops accepting, lets in-flight requests finish (hangs end at once),
    /// and waits up to a few seconds for connections to close.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            // A panic in the accept loop has nothing left to clean up.
            let _ = task.await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

fn validate(c: &FakeConfig) -> Result<(), FakeError> {
    let rates = [
        ("rate_429", c.rate_429),
        ("rate_500", c.rate_500),
        ("rate_503", c.rate_503),
        ("rate_reset", c.rate_reset),
        ("rate_malformed", c.rate_malformed),
        ("rate_hang", c.rate_hang),
        ("rate_empty", c.rate_empty),
        ("rate_length", c.rate_length),
    ];
    for (name, r) in rates {
        if !(0.0..=1.0).contains(&r) {
            return Err(FakeError::Config(format!("{name} = {r} is not in 0..=1")));
        }
    }
    let sum: f64 = rates.iter().map(|(_, r)| r).sum();
    if sum > 1.0 + 1e-9 {
        return Err(FakeError::Config(format!(
            "fault rates add up to {sum}, more than 1"
        )));
    }
    if c.batch_fail_every == Some(0) || c.batch_expire_every == Some(0) {
        return Err(FakeError::Config(
            "batch_fail_every and batch_expire_every must be at least 1".into(),
        ));
    }
    if c.capacity == Some(0) || c.rpm_limit == Some(0) || c.rpm_burst == Some(0) {
        return Err(FakeError::Config(
            "capacity, rpm_limit and rpm_burst must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Everything a request handler reads, shared by all connections.
struct State {
    config: FakeConfig,
    counters: Counters,
    capacity: Option<Semaphore>,
    limiter: Option<RpmLimiter>,
    /// Only locked when a fault rate or jitter is set, so the default server
    /// has no shared lock on its hot path.
    rng: Option<Mutex<ChaCha8Rng>>,
    recent: Option<Mutex<VecDeque<RecordedRequest>>>,
    expected_auth: Option<String>,
    shutdown: watch::Receiver<bool>,
    batches: batch::Store,
    /// Digests of the cached prefixes (see [`FakeConfig::cache_min_tokens`]).
    prompt_cache: Mutex<std::collections::HashSet<u64>>,
}

impl State {
    fn new(config: FakeConfig, shutdown: watch::Receiver<bool>) -> Self {
        let c = &config;
        let any_fault = [
            c.rate_429,
            c.rate_500,
            c.rate_503,
            c.rate_reset,
            c.rate_malformed,
            c.rate_hang,
            c.rate_empty,
            c.rate_length,
        ]
        .iter()
        .any(|r| *r > 0.0);
        let rng = (any_fault || !c.jitter.is_zero())
            .then(|| Mutex::new(ChaCha8Rng::seed_from_u64(c.seed)));
        let limiter = c.rpm_limit.map(|rpm| RpmLimiter::new(rpm, c.rpm_burst));
        let recent = (c.record_last > 0).then(|| Mutex::new(VecDeque::new()));
        Self {
            capacity: c.capacity.map(Semaphore::new),
            expected_auth: c.require_key.as_ref().map(|k| format!("Bearer {k}")),
            limiter,
            rng,
            recent,
            counters: Counters::default(),
            shutdown,
            batches: batch::Store::default(),
            prompt_cache: Mutex::new(Default::default()),
            config,
        }
    }

    /// One draw decides the request's fault, a second its jitter, so a given
    /// seed yields the same sequence of outcomes run after run.
    fn draw(&self) -> (Fault, Duration) {
        let Some(rng) = &self.rng else {
            return (Fault::None, Duration::ZERO);
        };
        let (r, j): (f64, f64) = {
            let mut rng = lock(rng);
            (rng.random(), rng.random())
        };
        let c = &self.config;
        let table = [
            (c.rate_429, Fault::TooMany),
            (c.rate_503, Fault::Unavailable),
            (c.rate_500, Fault::Internal),
            (c.rate_reset, Fault::Reset),
            (c.rate_malformed, Fault::Malformed),
            (c.rate_hang, Fault::Hang),
            (c.rate_empty, Fault::Empty),
            (c.rate_length, Fault::Length),
        ];
        let mut acc = 0.0;
        let fault = table
            .into_iter()
            .find(|(p, _)| {
                acc += p;
                r < acc
            })
            .map_or(Fault::None, |(_, f)| f);
        (fault, c.jitter.mul_f64(j))
    }

    /// The prompt cache: `points` are the places a cached prefix may end,
    /// each as (tokens up to there, digest of the prefix). Prefixes of at
    /// least the minimum are remembered; returns the tokens of the longest
    /// one seen before (read) and, past it, up to the last point (written),
    /// and adds them to the counters (writes only when `writes` counts
    /// them, as Anthropic's bill does).
    fn cache(&self, points: &[(u64, u64)], writes: bool) -> (u64, u64) {
        let Some(min) = self.config.cache_min_tokens else {
            return (0, 0);
        };
        let (mut read, mut last) = (0, 0);
        {
            let mut seen = lock(&self.prompt_cache);
            for &(tokens, digest) in points.iter().filter(|p| p.0 >= min) {
                if !seen.insert(digest) {
                    read = read.max(tokens);
                }
                last = last.max(tokens);
            }
        }
        let write = if writes { last.saturating_sub(read) } else { 0 };
        let c = &self.counters;
        c.cached_tokens.fetch_add(read, Relaxed);
        c.cache_write_tokens.fetch_add(write, Relaxed);
        (read, write)
    }

    fn record(&self, path: &str, body: &Bytes) {
        if let Some(recent) = &self.recent {
            let mut recent = lock(recent);
            if recent.len() == self.config.record_last {
                recent.pop_front();
            }
            recent.push_back(RecordedRequest {
                path: path.to_owned(),
                body: body.clone(),
            });
        }
    }
}

/// A poisoned lock only means another handler panicked mid-update; the
/// data (an RNG, a bucket, a log) is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    TooMany,
    Unavailable,
    Internal,
    Reset,
    Malformed,
    Hang,
    Empty,
    Length,
}

/// Token bucket refilled continuously at `rpm / 60` per second.
struct RpmLimiter {
    limit: u32,
    burst: f64,
    per_sec: f64,
    bucket: Mutex<(f64, Instant)>,
}

/// What the limiter said about one request; becomes `x-ratelimit-*` headers.
struct RateInfo {
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset: Duration,
    retry_after: Duration,
}

impl RpmLimiter {
    fn new(rpm: u32, burst: Option<u32>) -> Self {
        let burst = f64::from(burst.unwrap_or(rpm.div_ceil(60)));
        Self {
            limit: rpm,
            burst,
            per_sec: f64::from(rpm) / 60.0,
            bucket: Mutex::new((burst, Instant::now())),
        }
    }

    fn take(&self) -> RateInfo {
        let now = Instant::now();
        let mut b = lock(&self.bucket);
        let tokens = (b.0 + now.duration_since(b.1).as_secs_f64() * self.per_sec).min(self.burst);
        let allowed = tokens >= 1.0;
        let tokens = if allowed { tokens - 1.0 } else { tokens };
        *b = (tokens, now);
        RateInfo {
            allowed,
            limit: self.limit,
            remaining: tokens as u32,
            reset: Duration::from_secs_f64((self.burst - tokens) / self.per_sec),
            retry_after: Duration::from_secs_f64((1.0 - tokens).max(0.0) / self.per_sec),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    state.counters.connections.fetch_add(1, Relaxed);
                    // Replies are small; waiting for Nagle would add latency.
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(stream, state.clone(), shutdown.clone()));
                    while conns.try_join_next().is_some() {}
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Connection errors (client gone, injected resets) end only this connection.
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once shutdown is signalled (or the server is gone); the watch
/// guard is dropped inside so callers' futures stay `Send`.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Returned by the handler to make hyper close the connection without
/// writing a response: the client sees a reset, as with a crashed worker.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

type Reply = Result<Response<Full<Bytes>>, DropConnection>;

/// Keeps a gauge and its high-water mark up to date for a scope.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(now: &'a AtomicU64, max: &AtomicU64) -> Self {
        let n = now.fetch_add(1, Relaxed) + 1;
        max.fetch_max(n, Relaxed);
        Gauge(now)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Tgi {
        list: bool,
    },
    /// Anthropic's Messages API.
    Messages,
    /// OpenAI's text completion (`/v1/completions`).
    Text,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Reply {
    let c = &state.counters;
    c.requests.fetch_add(1, Relaxed);
    let _in_flight = Gauge::enter(&c.in_flight, &c.max_in_flight);
    let path = req.uri().path();
    let api = match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => {
            c.chat_requests.fetch_add(1, Relaxed);
            Api::Chat
        }
        (&Method::POST, "/v1/messages") => {
            c.messages_requests.fetch_add(1, Relaxed);
            Api::Messages
        }
        (&Method::POST, "/v1/completions" | "/completions") => {
            c.completion_requests.fetch_add(1, Relaxed);
            Api::Text
        }
        (&Method::POST, "/generate") => {
            c.generate_requests.fetch_add(1, Relaxed);
            Api::Tgi {
                list: state.config.tgi_list,
            }
        }
        // The serverless Inference API posts to the model's own URL.
        (&Method::POST, p) if p.starts_with("/models/") => {
            c.generate_requests.fetch_add(1, Relaxed);
            Api::Tgi { list: true }
        }
        (&Method::GET, "/v1/models" | "/models") => {
            c.models_requests.fetch_add(1, Relaxed);
            return Ok(json(StatusCode::OK, models_body(&state.config.model)));
        }
        // Gemini's model list, for clients that list through it.
        (&Method::GET, "/v1beta/models") => {
            c.models_requests.fetch_add(1, Relaxed);
            return Ok(json(
                StatusCode::OK,
                gemini_models_body(&state.config.model),
            ));
        }
        (_, p) if batch::is_batch_route(p) => return batch::handle(&state, req).await,
        (&Method::GET, "/stats") => {
            c.stats_requests.fetch_add(1, Relaxed);
            let body = serde_json::to_vec(&c.snapshot()).unwrap_or_default();
            return Ok(json(StatusCode::OK, body));
        }
        _ => {
            c.not_found.fetch_add(1, Relaxed);
            return Ok(error(
                Api::Chat,
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ));
        }
    };
    complete(&state, api, req).await
}

async fn complete(state: &State, api: Api, req: Request<Incoming>) -> Reply {
    let c = &state.counters;
    let (parts, body) = req.into_parts();
    // Read the body first even when refusing, so the connection stays reusable.
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    state.record(parts.uri.path(), &body);

    let refuse = |why: Refusal, detail: Option<&str>| {
        let (counter, status, code, message) = why.describe(c);
        counter.fetch_add(1, Relaxed);
        let mut resp = error(api, status, code, detail.unwrap_or(message));
        if let Refusal::RateLimited(wait) | Refusal::Injected429(wait) = why {
            set_retry_after(&mut resp, wait);
        }
        resp
    };
    if let Some(expected) = &state.expected_auth {
        // Anthropic sends the bare key in `x-api-key`.
        let given = match api {
            Api::Messages => parts
                .headers
                .get("x-api-key")
                .map(|k| [b"Bearer ".as_slice(), k.as_bytes()].concat()),
            _ => parts
                .headers
                .get(AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec()),
        };
        if given.as_deref() != Some(expected.as_bytes()) {
            return Ok(refuse(Refusal::Unauthorized, None));
        }
    }
    // 401 goes out without rate headers; everything past here carries them.
    let rate = state.limiter.as_ref().map(RpmLimiter::take);
    let rate = rate.as_ref();
    if let Some(info) = rate.filter(|i| !i.allowed) {
        let resp = refuse(Refusal::RateLimited(info.retry_after), None);
        return Ok(with_rate(resp, rate));
    }
    let job = match parse(api, &body) {
        Ok(job) => job,
        Err(msg) => return Ok(with_rate(refuse(Refusal::BadRequest, Some(&msg)), rate)),
    };
    let (fault, jitter) = state.draw();
    // Gateways turn these away before the model sees the request.
    match fault {
        Fault::TooMany => {
            let resp = refuse(Refusal::Injected429(state.config.fault_retry_after), None);
            return Ok(with_rate(resp, rate));
        }
        Fault::Unavailable => return Ok(with_rate(refuse(Refusal::Unavailable, None), rate)),
        _ => {}
    }

    {
        // The permit and the gauge cover exactly the simulated compute.
        let _permit = match &state.capacity {
            Some(sem) => Some(sem.acquire().await.map_err(|_| DropConnection)?),
            None => None,
        };
        let _active = Gauge::enter(&c.active, &c.max_active);
        let delay = state.config.latency + jitter;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    let body = match fault {
        Fault::Internal => return Ok(with_rate(refuse(Refusal::Internal, None), rate)),
        Fault::Reset => {
            c.resets.fetch_add(1, Relaxed);
            return Err(DropConnection);
        }
        Fault::Hang => {
            // Holds the connection, not a capacity slot: a stuck request
            // should not also starve everyone else for ten minutes.
            c.hangs.fetch_add(1, Relaxed);
            let mut stop = state.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(state.config.hang_for) => {}
                _ = stopped(&mut stop) => {}
            }
            return Err(DropConnection);
        }
        Fault::Malformed => {
            let n = c.malformed.fetch_add(1, Relaxed);
            malformed_body(api, n)
        }
        _ => {
            let out = job.run(state, fault);
            c.prompt_tokens.fetch_add(out.prompt_tokens, Relaxed);
            c.completion_tokens
                .fetch_add(out.completion_tokens, Relaxed);
            if fault == Fault::Empty {
                c.empty.fetch_add(1, Relaxed);
            } else {
                c.ok.fetch_add(1, Relaxed);
            }
            if out.truncated {
                c.length.fetch_add(1, Relaxed);
            }
            out.body
        }
    };
    Ok(with_rate(json(StatusCode::OK, body), rate))
}

/// Error replies the server gives, with the counter each one bumps.
#[derive(Clone, Copy)]
enum Refusal {
    Unauthorized,
    RateLimited(Duration),
    BadRequest,
    Injected429(Duration),
    Unavailable,
    Internal,
}

impl Refusal {
    fn describe(self, c: &Counters) -> (&AtomicU64, StatusCode, &'static str, &'static str) {
        match self {
            Refusal::Unauthorized => (
                &c.unauthorized,
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Incorrect API key provided.",
            ),
            Refusal::RateLimited(_) => (
                &c.rate_limited,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Rate limit reached for requests per minute.",
            ),
            Refusal::BadRequest => (
                &c.bad_request,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Invalid request.",
            ),
            Refusal::Injected429(_) => (
                &c.injected_429,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Rate limit reached (injected).",
            ),
            Refusal::Unavailable => (
                &c.status_503,
                StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                "The server is overloaded, try again later.",
            ),
            Refusal::Internal => (
                &c.status_500,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The server had an error while processing your request.",
            ),
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// OpenAI-style `{"error":{…}}` on chat routes, TGI-style `{"error","error_type"}` otherwise.
fn error(api: Api, status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = match api {
        Api::Chat | Api::Text => serde_json::json!({"error": {
            "message": message, "type": code, "param": null, "code": code
        }}),
        Api::Tgi { .. } => serde_json::json!({"error": message, "error_type": code}),
        Api::Messages => serde_json::json!({"type": "error", "error": {
            "type": code, "message": message
        }}),
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

fn set_retry_after(resp: &mut Response<Full<Bytes>>, wait: Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let h = resp.headers_mut();
    h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    h.insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
}

fn with_rate(mut resp: Response<Full<Bytes>>, rate: Option<&RateInfo>) -> Response<Full<Bytes>> {
    if let Some(r) = rate {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit-requests", HeaderValue::from(r.limit));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(r.remaining),
        );
        if let Ok(v) = HeaderValue::from_str(&go_duration(r.reset)) {
            h.insert("x-ratelimit-reset-requests", v);
        }
    }
    resp
}

/// OpenAI writes reset times the way Go prints durations: `250ms`, `1.5s`, `2m3s`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, s) = (ms / 60_000, (ms % 60_000) as f64 / 1000.0);
    if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Alternates between broken JSON and valid JSON of the wrong shape, the
/// two ways proxies and overloaded servers garble replies.
fn malformed_body(api: Api, n: u64) -> Vec<u8> {
    let text: &[u8] = match (n % 2, api) {
        (0, Api::Chat) => br#"{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"cut of"#,
        (0, Api::Tgi { .. }) => br#"{"generated_text":"cut of"#,
        _ => br#"{"status":"ok","result":null}"#,
    };
    text.to_vec()
}

fn models_body(model: &str) -> Vec<u8> {
    let body = serde_json::json!({"object": "list", "data": [
        {"id": model, "object": "model", "created": 0, "owned_by": "cai-fake"}
    ]});
    serde_json::to_vec(&body).unwrap_or_default()
}

fn gemini_models_body(model: &str) -> Vec<u8> {
    let body = serde_json::json!({"models": [
        {"name": format!("models/{model}"), "displayName": model}
    ]});
    serde_json::to_vec(&body).unwrap_or_default()
}

// ---- request parsing -------------------------------------------------------

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u32>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// OpenAI accepts a string or a list of typed parts.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: String,
}

impl Content {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(t) => t.into(),
            Content::Parts(p) => p.iter().map(|p| p.text.as_str()).collect::<String>().into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn list(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct TgiBody {
    inputs: String,
    #[serde(default)]
    parameters: TgiParams,
}

#[derive(Default, Deserialize)]
struct TgiParams {
    max_new_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    return_full_text: bool,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    details: bool,
}

/// A parsed completion request, ready to be answered.
enum Job {
    Chat(ChatBody),
    Tgi(TgiBody, bool),
    Messages(serde_json::Value),
    Text(completions::CompletionBody),
}

fn parse(api: Api, body: &[u8]) -> Result<Job, String> {
    let (temperature, top_p, job) = match api {
        Api::Chat => {
            let b: ChatBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            if b.messages.is_empty() {
                return Err("'messages' must not be empty".into());
            }
            if !(1..=128).contains(&b.n.unwrap_or(1)) || b.top_logprobs.unwrap_or(0) > 20 {
                return Err("'n' must be 1..=128 and 'top_logprobs' at most 20".into());
            }
            (b.temperature, b.top_p, Job::Chat(b))
        }
        Api::Tgi { list } => {
            let b: TgiBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            (
                b.parameters.temperature,
                b.parameters.top_p,
                Job::Tgi(b, list),
            )
        }
        Api::Text => {
            let b: completions::CompletionBody =
                serde_json::from_slice(body).map_err(|e| e.to_string())?;
            b.check()?;
            (b.temperature, b.top_p, Job::Text(b))
        }
        Api::Messages => {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            check_messages(&v)?;
            (
                v["temperature"].as_f64(),
                v["top_p"].as_f64(),
                Job::Messages(v),
            )
        }
    };
    // Real servers refuse these; a client that sends them has a bug to see.
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err("'temperature' must be in 0..=2".into());
    }
    if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err("'top_p' must be in 0..=1".into());
    }
    Ok(job)
}

// ---- answering -------------------------------------------------------------

/// A serialized reply and what it cost.
struct Output {
    body: Vec<u8>,
    prompt_tokens: u64,
    completion_tokens: u64,
    truncated: bool,
}

impl Job {
    fn run(self, state: &State, fault: Fault) -> Output {
        match self {
            Job::Chat(b) => answer_chat(b, state, fault, true),
            Job::Tgi(b, list) => answer_tgi(b, list, fault),
            Job::Messages(v) => answer_messages(&v, state, fault),
            Job::Text(b) => completions::answer(b, fault),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Initial,
    Critique,
    Revision,
    /// A multiple-choice judge question (`Options:` then `(A) …` and
    /// `(B) …`): answered `(A)` or `(B)`, after a short chain of thought
    /// when the question asks to think step by step.
    Judge {
        cot: bool,
    },
}

const CRITIQUE: &str = "Critique: ";
const REVISION: &str = "Revision: ";

/// The stage asked for. A request naming "revis" is a revision (revision
/// requests often refer to "the critique", never the other way round); one
/// naming "critique" a critique. Real constitutions use neither word, so
/// otherwise the stage follows from the fake's own last reply: after a
/// critique comes a revision, after an answer or a revision a critique.
fn stage_of(request: &str, last_reply: Option<&str>) -> Stage {
    if request.contains("\nOptions:\n(A) ") && request.contains("\n(B) ") {
        Stage::Judge {
            cot: contains_ci(request, "step by step, then"),
        }
    } else if contains_ci(request, "revis") {
        Stage::Revision
    } else if contains_ci(request, "critique") {
        Stage::Critique
    } else {
        match last_reply {
            Some(r) if r.starts_with(CRITIQUE) => Stage::Revision,
            Some(_) => Stage::Critique,
            None => Stage::Initial,
        }
    }
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Our replies end with ` (ref xxxxxxxx)`; returns where such a marker
/// starts, searching from the end of `text`.
fn last_marker(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut end = b.len();
    while let Some(i) = text[..end].rfind("(ref ") {
        let tail = &b[i + 5..];
        if tail.len() > 8 && tail[..8].iter().all(u8::is_ascii_hexdigit) && tail[8] == b')' {
            return Some(i);
        }
        end = i;
    }
    None
}

/// FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // A separator so ("ab","c") and ("a","bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        self
    }
}

/// Mixes bits so consecutive word picks look independent.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[rustfmt::skip]
const WORDS: [&str; 64] = [
    "the", "answer", "is", "clear", "a", "careful", "reply", "should", "be", "honest", "and",
    "helpful", "while", "staying", "safe", "for", "everyone", "involved", "it", "explains", "each",
    "step", "with", "plain", "words", "avoids", "harm", "gives", "useful", "detail", "about",
    "risks", "this", "response", "could", "name", "sources", "more", "directly", "so", "readers",
    "can", "check", "claims", "kindly", "without", "guessing", "here", "are", "some", "practical",
    "points", "to", "consider", "first", "then", "act", "calmly", "on", "good", "advice", "only",
    "when", "needed",
];

/// Roughly four characters a token, the usual rule of thumb.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Deterministic text for `hash` at `stage`: a few words and a short hash.
fn compose(stage: Stage, hash: u64) -> String {
    let mut s = String::with_capacity(96);
    match stage {
        Stage::Judge { cot: false } => return judge_choice(hash).to_string(),
        Stage::Judge { cot: true } => {
            return format!(
                "Both answers {} {}, so the answer is: {}",
                WORDS[(splitmix(hash) & 63) as usize],
                WORDS[(splitmix(hash ^ 1) & 63) as usize],
                judge_choice(hash)
            )
        }
        _ => {}
    }
    s.push_str(match stage {
        Stage::Critique => CRITIQUE,
        Stage::Revision => REVISION,
        _ => "",
    });
    let mut x = hash;
    for i in 0..6 + hash % 5 {
        x = splitmix(x);
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(x & 63) as usize]);
    }
    let _ = write!(s, " (ref {:08x})", hash as u32);
    s
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Natural,
    Stop,
    Length,
}

/// Cuts `text` at the first stop sequence, then to `max_tokens` (or to half
/// its length when a `length` fault is injected), at a word boundary.
fn limit(text: &mut String, stop: &[String], max_tokens: Option<u32>, force: bool) -> End {
    let mut end = End::Natural;
    if let Some(at) = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        text.truncate(at);
        end = End::Stop;
    }
    let budget = match (max_tokens, force) {
        (_, true) => tokens(text) / 2,
        (Some(m), false) => u64::from(m),
        (None, false) => return end,
    };
    if tokens(text) <= budget {
        return end;
    }
    let mut keep = 0;
    for (i, _) in text.match_indices(' ') {
        if tokens(&text[..i]) > budget {
            break;
        }
        keep = i;
    }
    text.truncate(keep);
    End::Length
}

/// The reply text for one choice, after faults and limits.
fn reply_text(
    stage: Stage,
    hash: u64,
    fault: Fault,
    stop: &[String],
    max_tokens: Option<u32>,
) -> (String, End) {
    if fault == Fault::Empty {
        return (String::new(), End::Natural);
    }
    let mut text = compose(stage, hash);
    let end = limit(&mut text, stop, max_tokens, fault == Fault::Length);
    (text, end)
}

#[derive(Serialize)]
struct ChatResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    finish_reason: &'static str,
    logprobs: Option<Logprobs>,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct Logprobs {
    content: Vec<TokenLogprob>,
}

#[derive(Serialize)]
struct TokenLogprob {
    token: String,
    logprob: f64,
    bytes: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<TokenLogprob>>,
}

/// The verdict for a judge question with hash `hash`.
fn judge_choice(hash: u64) -> &'static str {
    if splitmix(hash ^ 0x6a75_6467).is_multiple_of(2) {
        "(A)"
    } else {
        "(B)"
    }
}

/// Log-probabilities of a verdict: the first token is the option letter,
/// with both letters among the alternatives (P of the chosen one in
/// 0.55..0.95), as a real judge's first token looks.
fn judge_logprobs(text: &str, hash: u64, top: u32) -> Logprobs {
    let chosen = text.trim_start_matches('(').chars().next().unwrap_or('A');
    let other = if chosen == 'A' { 'B' } else { 'A' };
    let p = 0.55 + (splitmix(hash ^ 0x70) % 400) as f64 / 1000.0;
    let entry = |token: String, logprob: f64, top: Option<Vec<TokenLogprob>>| TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob,
        top_logprobs: top,
    };
    let alts = [(chosen, p), (other, 1.0 - p)]
        .into_iter()
        .take(top.max(1) as usize)
        .map(|(c, q)| entry(format!("({c}"), q.ln(), None))
        .collect();
    Logprobs {
        content: vec![
            entry(format!("({chosen}"), p.ln(), Some(alts)),
            entry(")".into(), 0.0, Some(vec![entry(")".into(), 0.0, None)])),
        ],
    }
}

/// Fake but stable log-probabilities, one per word, alternatives from `WORDS`.
fn logprobs(text: &str, hash: u64, top: u32) -> Logprobs {
    let entry = |token: &str, x: u64, top: Option<Vec<TokenLogprob>>| TokenLogprob {
        token: token.to_owned(),
        logprob: -((x % 4000) as f64) / 1000.0,
        bytes: token.as_bytes().to_vec(),
        top_logprobs: top,
    };
    let content = text
        .split(' ')
        .enumerate()
        .map(|(i, word)| {
            let x = splitmix(hash ^ i as u64);
            let alts = (0..u64::from(top))
                .map(|k| entry(WORDS[((x >> k) & 63) as usize], splitmix(x + k), None))
                .collect();
            entry(word, x, Some(alts))
        })
        .collect();
    Logprobs { content }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers a chat body. `auto_cache`: behave like OpenAI's automatic
/// prompt cache (when the cache is on); the Messages route does its own.
fn answer_chat(b: ChatBody, state: &State, fault: Fault, auto_cache: bool) -> Output {
    let mut h = Fnv::new().add(b.model.as_bytes());
    let mut prefix = Fnv::new().add(b.model.as_bytes());
    let mut points = Vec::with_capacity(b.messages.len());
    let mut prompt_tokens = 0;
    for m in &b.messages {
        let text = m.content.as_ref().map(Content::text).unwrap_or_default();
        prompt_tokens += tokens(&text) + 4;
        h = h.add(m.role.as_bytes()).add(text.as_bytes());
        prefix = prefix.add(m.role.as_bytes()).add(text.as_bytes());
        points.push((prompt_tokens, prefix.0));
    }
    if b.prompt_cache_key.is_some() {
        state.counters.prompt_cache_keys.fetch_add(1, Relaxed);
    }
    let cache_on = auto_cache && state.config.cache_min_tokens.is_some();
    let cached = if cache_on {
        state.cache(&points, false).0
    } else {
        0
    };
    if let Some(seed) = b.seed {
        h = h.add(&seed.to_le_bytes());
    }
    let last_user = b.messages.iter().rposition(|m| m.role == "user");
    let request = last_user
        .and_then(|i| b.messages[i].content.as_ref())
        .map(Content::text)
        .unwrap_or_default();
    let reply_texts: Vec<_> = b.messages[..last_user.unwrap_or(0)]
        .iter()
        .rev()
        .filter(|m| m.role == "assistant")
        .filter_map(|m| m.content.as_ref().map(Content::text))
        .collect();
    // Only our own replies tell the stage; few-shot examples do not.
    let last_reply = reply_texts.iter().find(|t| last_marker(t).is_some());
    let stage = stage_of(&request, last_reply.map(|t| t.as_ref()));

    let stop = b.stop.map(Stop::list).unwrap_or_default();
    let mut completion_tokens = 0;
    let mut truncated = false;
    let choices = (0..b.n.unwrap_or(1))
        .map(|index| {
            let hash = h.add(&index.to_le_bytes()).0;
            let (text, end) = reply_text(stage, hash, fault, &stop, b.max_tokens);
            let cut = end == End::Length;
            truncated |= cut;
            completion_tokens += tokens(&text);
            ChatChoice {
                index,
                logprobs: b.logprobs.then(|| {
                    let top = b.top_logprobs.unwrap_or(0);
                    match stage {
                        Stage::Judge { cot: false } => judge_logprobs(&text, hash, top),
                        _ => logprobs(&text, hash, top),
                    }
                }),
                message: AssistantMessage {
                    role: "assistant",
                    content: text,
                },
                finish_reason: if cut { "length" } else { "stop" },
            }
        })
        .collect();
    let resp = ChatResponse {
        id: format!("chatcmpl-fake{:x}", state.counters.requests.load(Relaxed)),
        object: "chat.completion",
        created: now_secs(),
        model: if b.model.is_empty() {
            &state.config.model
        } else {
            &b.model
        },
        choices,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: cache_on.then_some(PromptTokensDetails {
                cached_tokens: cached,
            }),
        },
    };
    Output {
        body: serde_json::to_vec(&resp).unwrap_or_default(),
        prompt_tokens,
        completion_tokens,
        truncated,
    }
}

// ---- Anthropic Messages ----------------------------------------------------

/// What the Messages API checks before answering.
fn check_messages(v: &serde_json::Value) -> Result<(), String> {
    if !v["max_tokens"].is_u64() {
        return Err("max_tokens: Field required".into());
    }
    match v["messages"].as_array() {
        Some(m) if !m.is_empty() => {}
        _ => return Err("messages: at least one message is required".into()),
    }
    let marks = blocks(v).iter().filter(|b| b.2).count();
    if marks > 4 {
        return Err(format!(
            "A maximum of 4 blocks with cache_control may be provided. Found {marks}."
        ));
    }
    Ok(())
}

/// Every text block of a Messages request in order, system first, as
/// (role, text, carries `cache_control`); a string content is one block.
fn blocks(v: &serde_json::Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let mut push = |role: &str, content: &serde_json::Value| match content {
        serde_json::Value::String(t) => out.push((role.to_owned(), t.clone(), false)),
        serde_json::Value::Array(parts) => {
            for p in parts {
                out.push((
                    role.to_owned(),
                    p["text"].as_str().unwrap_or_default().to_owned(),
                    p.get("cache_control").is_some_and(|c| !c.is_null()),
                ));
            }
        }
        _ => {}
    };
    push("system", &v["system"]);
    for m in v["messages"].as_array().into_iter().flatten() {
        push(m["role"].as_str().unwrap_or("user"), &m["content"]);
    }
    out
}

/// The Messages request as a chat body (one message per block) and the
/// places its cache breakpoints end, as [`State::cache`] takes them.
fn messages_as_chat(v: &serde_json::Value) -> (serde_json::Value, Vec<(u64, u64)>) {
    let mut prefix = Fnv::new().add(v["model"].as_str().unwrap_or_default().as_bytes());
    let mut sum = 0;
    let mut points = Vec::new();
    let mut messages = Vec::new();
    for (role, text, mark) in blocks(v) {
        sum += tokens(&text) + 4;
        prefix = prefix.add(role.as_bytes()).add(text.as_bytes());
        if mark {
            points.push((sum, prefix.0));
        }
        messages.push(serde_json::json!({"role": role, "content": text}));
    }
    let mut b = serde_json::json!({
        "model": v["model"], "messages": messages, "max_tokens": v["max_tokens"],
    });
    if let Some(t) = v.get("temperature") {
        b["temperature"] = t.clone();
    }
    if let Some(stop) = v.get("stop_sequences") {
        b["stop"] = stop.clone();
    }
    (b, points)
}

/// A Message for a Messages request, with Anthropic's usage: the prompt
/// split into cache reads, cache writes and the rest.
pub(crate) fn message_reply(
    v: &serde_json::Value,
    state: &State,
    fault: Fault,
) -> Result<(serde_json::Value, Output), String> {
    let (chat, points) = messages_as_chat(v);
    if !points.is_empty() {
        state.counters.cache_control_requests.fetch_add(1, Relaxed);
    }
    let (read, write) = state.cache(&points, true);
    let body: ChatBody = serde_json::from_value(chat).map_err(|e| e.to_string())?;
    let out = answer_chat(body, state, fault, false);
    let chat: serde_json::Value = serde_json::from_slice(&out.body).map_err(|e| e.to_string())?;
    let text = chat["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    let stop = if chat["choices"][0]["finish_reason"] == "length" {
        "max_tokens"
    } else {
        "end_turn"
    };
    let mut usage = serde_json::json!({
        "input_tokens": out.prompt_tokens.saturating_sub(read + write),
        "output_tokens": out.completion_tokens,
    });
    if state.config.cache_min_tokens.is_some() {
        usage["cache_creation_input_tokens"] = write.into();
        usage["cache_read_input_tokens"] = read.into();
    }
    let msg = serde_json::json!({
        "id": format!("msg_{}", chat["id"].as_str().unwrap_or_default()),
        "type": "message", "role": "assistant", "model": chat["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop, "stop_sequence": null,
        "usage": usage,
    });
    Ok((msg, out))
}

fn answer_messages(v: &serde_json::Value, state: &State, fault: Fault) -> Output {
    match message_reply(v, state, fault) {
        Ok((msg, out)) => Output {
            body: serde_json::to_vec(&msg).unwrap_or_default(),
            ..out
        },
        // The body was checked in `parse`; a reply that cannot be built
        // is this fake's bug, shown as a malformed body.
        Err(e) => Output {
            body: e.into_bytes(),
            prompt_tokens: 0,
            completion_tokens: 0,
            truncated: false,
        },
    }
}

#[derive(Serialize)]
struct TgiResponse {
    generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<TgiDetails>,
}

#[derive(Serialize)]
struct TgiDetails {
    finish_reason: &'static str,
    generated_tokens: u64,
    seed: Option<u64>,
}

fn answer_tgi(b: TgiBody, list: bool, fault: Fault) -> Output {
    let p = b.parameters;
    let mut h = Fnv::new().add(b.inputs.as_bytes());
    if let Some(seed) = p.seed {
        h = h.add(&seed.to_le_bytes());
    }
    // The prompt is one flat string: the newest turn is what follows our
    // last reply, and that reply is the text just before its marker.
    let (request, last_reply) = match last_marker(&b.inputs) {
        Some(at) => {
            let before = &b.inputs[at.saturating_sub(160)..at];
            let reply = if before.contains(CRITIQUE) {
                CRITIQUE
            } else {
                ""
            };
            (&b.inputs[at..], Some(reply))
        }
        None => (b.inputs.as_str(), None),
    };
    let stage = stage_of(request, last_reply);
    let (text, end) = reply_text(stage, h.0, fault, &p.stop, p.max_new_tokens);
    let prompt_tokens = tokens(&b.inputs);
    let completion_tokens = tokens(&text);
    let details = p.details.then_some(TgiDetails {
        finish_reason: match end {
            End::Length => "length",
            End::Stop => "stop_sequence",
            End::Natural => "eos_token",
        },
        generated_tokens: completion_tokens,
        seed: p.seed,
    });
    let generated_text = if p.return_full_text {
        b.inputs + &text
    } else {
        text
    };
    let one = TgiResponse {
        generated_text,
        details,
    };
    let body = if list {
        serde_json::to_vec(&[one])
    } else {
        serde_json::to_vec(&one)
    };
    Output {
        body: body.unwrap_or_default(),
        prompt_tokens,
        completion_tokens,
        truncated: end == End::Length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_words_win_over_history() {
        assert_eq!(stage_of("Please CRITIQUE this", None), Stage::Critique);
        assert_eq!(
            stage_of("Revise it given the critique", None),
            Stage::Revision
        );
        assert_eq!(stage_of("What is 2+2?", None), Stage::Initial);
        assert_eq!(
            stage_of("Point out harms", Some("four (ref 0000abcd)")),
            Stage::Critique
        );
        assert_eq!(
            stage_of("Rewrite it", Some("Critique: bad (ref 0000abcd)")),
            Stage::Revision
        );
    }

    #[test]
    fn limit_cuts_at_words_and_stops() {
        let mut t = "one two three four five six seven eight".to_owned();
        assert_eq!(limit(&mut t, &[], Some(3), false), End::Length);
        assert!(tokens(&t) <= 3 && !t.ends_with(' '), "{t:?}");
        let mut t = "alpha beta gamma".to_owned();
        assert_eq!(limit(&mut t, &["beta".into()], Some(100), false), End::Stop);
        assert_eq!(t, "alpha ");
    }

    #[test]
    fn marker_is_found_only_when_well_formed() {
        assert_eq!(last_marker("x (ref 0123abcd) y"), Some(2));
        assert_eq!(last_marker("x (ref nothex!!)"), None);
    }

    #[test]
    fn go_durations_read_like_openai() {
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(123)), "2m3s");
    }
}
