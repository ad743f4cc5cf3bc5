//! `cai serve`: an OpenAI-compatible server in front of any endpoint `cai`
//! supports, that spends extra upstream calls per request to answer better.
//!
//! A request picks an approach ([`approach`]) by a model-name prefix
//! (`bon-my-model`), an `approach` body field, or the server's default.
//! All upstream calls of all requests go through one [`Engine`] — rate and
//! token limits, retries with back-off, the error-rate breaker — with no
//! journal (nothing is resumed). Each request's calls are recorded
//! ([`record`]) for its `usage` and its `--log-requests` line.
//!
//! Decisions worth knowing:
//! * In front of an OpenAI-compatible server the client's body stays JSON
//!   ([`upstream`]): the pass-through `none` forwards it with only `model`
//!   rewritten, and the other approaches' calls carry every field they do
//!   not set themselves. The model a client names (after its approach
//!   prefix) is the upstream model. A request with tools, a structured
//!   `response_format` or non-text content is passed through (`none`) with
//!   a `cai.note`. In front of another backend (the embedded model) calls
//!   are typed and go to its one model.
//! * `n > 1` is forwarded as sent on `none`; other approaches run n times
//!   concurrently, with seeds offset by the choice index.
//! * When the breaker trips (more than half of the last 50 upstream calls
//!   failed after retries), requests get 503 with `Retry-After` for
//!   [`BREAKER_COOLDOWN`]; then a fresh engine tries again.

pub mod api;
pub mod approach;
pub mod error;
mod http;
mod passthrough;
pub mod record;
mod request;
mod stream;
pub mod upstream;

use std::future::IntoFuture;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::cli::ServeArgs;
use crate::config::serve::{ModelPolicy, ServeConfig, UpstreamConfig};
use crate::engine::{AbortReason, Engine, EngineConfig, Journal, StopSignal};
use crate::error::RunError;
use crate::feedback::judge::{Judge, JudgeOptions};
use crate::input::Constitution;
use crate::provider::{GenParams, Provider};
use crate::template::Templates;

use approach::Plan;
use upstream::Forward;

/// How long a tripped breaker keeps requests away from the upstream.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// Everything requests share.
pub struct Shared {
    provider: Arc<dyn Provider>,
    /// The OpenAI-compatible upstream that takes forwarded bodies; `None`
    /// in front of another backend.
    pub forward: Option<Arc<Forward>>,
    /// Which models clients may name (forwarding only).
    pub models: Option<ModelPolicy>,
    /// `--forward-client-key`.
    pub forward_client_key: bool,
    engine_cfg: EngineConfig,
    engine: RwLock<EngineSlot>,
    pub constitution: Constitution,
    pub templates: Templates,
    /// Judge settings and templates; its endpoint is the current engine.
    pub judge: Judge,
    pub system_prompt: Option<String>,
    pub default_plan: Plan,
    pub best_of_n: u32,
    /// The search approaches' settings (`--mcts-depth`, …).
    pub knobs: approach::Knobs,
    /// `--return-full-response`.
    pub return_full_response: bool,
    pub defaults: GenParams,
    pub seed: u64,
    /// Whether the upstream honours `n` ([`approach::N_UNKNOWN`] until seen).
    pub n_support: AtomicU8,
    pub log: Option<Mutex<std::fs::File>>,
    /// SHA-256 of the key clients must send.
    pub auth: Option<[u8; 32]>,
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub max_body: usize,
    pub max_messages: usize,
    /// `--examples` and `--num-examples`: placed before the last user turn.
    pub examples: Option<(Arc<crate::feedback::examples::Retriever>, usize)>,
}

struct EngineSlot {
    engine: Arc<Engine>,
    stop: StopSignal,
    tripped: Option<Instant>,
}

impl Shared {
    fn new_engine(&self) -> EngineSlot {
        let stop = StopSignal::default();
        EngineSlot {
            engine: Arc::new(Engine::new(
                self.provider.clone(),
                Journal::disabled(),
                self.engine_cfg.clone(),
                stop.clone(),
            )),
            stop,
            tripped: None,
        }
    }

    /// The engine for a new request: a fresh one once a tripped breaker
    /// has cooled down.
    pub fn engine(&self) -> Arc<Engine> {
        {
            let slot = self.engine.read().unwrap_or_else(|e| e.into_inner());
            if slot.stop.reason() != Some(AbortReason::ErrorRate) {
                return slot.engine.clone();
            }
        }
        let mut slot = self.engine.write().unwrap_or_else(|e| e.into_inner());
        match slot.tripped {
            None => slot.tripped = Some(Instant::now()),
            Some(t) if t.elapsed() >= BREAKER_COOLDOWN => {
                eprintln!("cai serve: breaker cooled down; sending upstream again");
                *slot = self.new_engine();
            }
            Some(_) => {}
        }
        slot.engine.clone()
    }
}

/// `cai serve`: runs until Ctrl-C or SIGTERM, then exits 0.
pub fn run(args: &ServeArgs) -> Result<u8, RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Usage(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(serve(args))
}

async fn serve(args: &ServeArgs) -> Result<u8, RunError> {
    let cfg = ServeConfig::from_args(args)?;
    let (provider, forward) = connect(&cfg.upstream, cfg.max_inflight).await?;
    // A base model behind the proxy answers in the plain format (a typed
    // upstream: config/serve.rs sends raw-text upstreams no bodies).
    let provider = crate::provider::plain::with_format(provider, cfg.inference.format);
    let grace = cfg.grace;
    let addr = cfg.addr.clone();
    let shared = Arc::new(Shared::new(cfg, provider, forward)?);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| RunError::Usage(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| RunError::Usage(format!("cannot listen on {addr}: {e}")))?;
    eprintln!(
        "cai serve: listening on http://{local}/v1 (upstream {} {} at {}; default approach {})",
        shared.provider.name(),
        shared.provider.model(),
        shared.provider.endpoint(),
        shared.default_plan.slug()
    );
    run_until_signal(listener, http::router(shared), grace).await
}

/// The upstream the config names: an OpenAI-compatible root that takes
/// forwarded bodies, or a provider (the embedded model is fetched first
/// when it is not cached).
async fn connect(
    up: &UpstreamConfig,
    max_inflight: usize,
) -> Result<(Arc<dyn Provider>, Option<Arc<Forward>>), RunError> {
    match up {
        UpstreamConfig::Forward(f) => {
            let client = crate::provider::build::http_client(f.timeout, max_inflight)
                .map_err(crate::config::ConfigError::from)?;
            let forward = Arc::new(Forward::new(
                client,
                f.bases.clone(),
                f.models.default.clone().unwrap_or_default(),
                f.key.clone(),
                f.key_var.clone(),
                f.limit,
                f.name,
            ));
            let provider: Arc<dyn Provider> = forward.clone();
            Ok((provider, Some(forward)))
        }
        UpstreamConfig::Typed(endpoint) => {
            let plan = crate::config::plan(endpoint, max_inflight)?;
            let provider =
                crate::provider::build::open(&plan, false, |m| eprintln!("cai serve: {m}"))
                    .await
                    .map_err(crate::config::ConfigError::from)?;
            if let Some(n) = &plan.note {
                eprintln!("cai serve: {n}");
            }
            Ok((provider, None))
        }
    }
}

/// Serves until Ctrl-C or SIGTERM, then gives in-flight requests `grace`.
async fn run_until_signal(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    grace: Duration,
) -> Result<u8, RunError> {
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        eprintln!(
            "cai serve: stopping: no new connections; in-flight requests have {}s to finish",
            grace.as_secs_f64()
        );
        let _ = signalled_tx.send(true);
    });
    let deadline = async move {
        while !*signalled.borrow_and_update() {
            if signalled.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server.into_future() => {
            r.map_err(|e| RunError::Usage(format!("server failed: {e}")))?;
            eprintln!("cai serve: stopped");
        }
        () = deadline => eprintln!("cai serve: grace period over; stopping with requests still open"),
    }
    Ok(0)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Shared {
    /// The state requests share, from the checked config and the upstream;
    /// opens the request log.
    fn new(
        cfg: ServeConfig,
        provider: Arc<dyn Provider>,
        forward: Option<Arc<Forward>>,
    ) -> Result<Shared, RunError> {
        let log = match &cfg.log_requests {
            None => None,
            Some(path) => Some(Mutex::new(open_log(path).map_err(|e| {
                RunError::Usage(format!(
                    "--log-requests: cannot open {}: {e}",
                    path.display()
                ))
            })?)),
        };
        let (models, forward_client_key) = match &cfg.upstream {
            UpstreamConfig::Forward(f) => (Some(f.models.clone()), f.forward_client_key),
            UpstreamConfig::Typed(_) => (None, false),
        };
        let provider: Arc<dyn Provider> = Arc::new(record::Recording(provider));
        let judge = Judge::new(
            Vec::new(),
            cfg.judge_templates,
            Some(&cfg.constitution),
            JudgeOptions {
                samples: 1,
                cot: false,
                tie_margin: 0.05,
                seed: cfg.seed,
                cot_max_tokens: cfg.defaults.max_tokens,
            },
        );
        let stop = StopSignal::default();
        let engine = Arc::new(Engine::new(
            provider.clone(),
            Journal::disabled(),
            cfg.engine.clone(),
            stop.clone(),
        ));
        Ok(Shared {
            engine: RwLock::new(EngineSlot {
                engine,
                stop,
                tripped: None,
            }),
            provider,
            forward,
            models,
            forward_client_key,
            engine_cfg: cfg.engine,
            constitution: cfg.constitution,
            templates: cfg.templates,
            judge,
            system_prompt: cfg.system_prompt,
            default_plan: cfg.default_plan,
            best_of_n: cfg.best_of_n,
            knobs: cfg.knobs,
            return_full_response: cfg.return_full_response,
            defaults: cfg.defaults,
            seed: cfg.seed,
            n_support: AtomicU8::new(approach::N_UNKNOWN),
            log,
            auth: cfg.auth,
            inflight: Arc::new(tokio::sync::Semaphore::new(cfg.max_inflight)),
            max_body: cfg.max_body,
            max_messages: cfg.max_messages,
            examples: cfg.inference.examples,
        })
    }
}

fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
