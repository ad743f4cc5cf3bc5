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
//! * The upstream model is the one the server was started with; the model a
//!   client names (after its approach prefix) is echoed back, not forwarded.
//! * `n > 1` runs the whole approach n times concurrently, with seeds
//!   offset by the choice index.
//! * When the breaker trips (more than half of the last 50 upstream calls
//!   failed after retries), requests get 503 with `Retry-After` for
//!   [`BREAKER_COOLDOWN`]; then a fresh engine tries again.

pub mod api;
pub mod approach;
pub mod error;
mod http;
pub mod record;
mod request;
mod stream;

use std::future::IntoFuture;
use std::path::Path;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::cli::ServeArgs;
use crate::engine::{AbortReason, Engine, EngineConfig, Journal, StopSignal};
use crate::error::RunError;
use crate::feedback::judge::{Judge, JudgeOptions};
use crate::input::Constitution;
use crate::provider::{GenParams, Provider};
use crate::template::Templates;

use approach::Plan;

/// How long a tripped breaker keeps requests away from the upstream.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// The default constitution when `--constitution` is not given.
const DEFAULT_CONSTITUTION: &str = include_str!("../../principles/harmless.json");

/// Everything requests share.
pub struct Shared {
    provider: Arc<dyn Provider>,
    engine_cfg: EngineConfig,
    engine: RwLock<EngineSlot>,
    pub constitution: Constitution,
    pub templates: Templates,
    /// Judge settings and templates; its endpoint is the current engine.
    pub judge: Judge,
    pub system_prompt: Option<String>,
    pub default_plan: Plan,
    pub best_of_n: u32,
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
    let shared = Arc::new(setup(args).await?);
    let addr = format!("{}:{}", args.host, args.port);
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
    let grace = Duration::from_secs_f64(args.grace);
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let app = http::router(shared.clone());
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

/// Checks the arguments and builds the shared state; nothing is sent.
async fn setup(args: &ServeArgs) -> Result<Shared, RunError> {
    let usage = RunError::Usage;
    if args.max_inflight == 0 {
        return Err(usage("--max-inflight must be at least 1".into()));
    }
    if args.best_of_n == 0 || args.best_of_n > 16 {
        return Err(usage(format!(
            "--best-of-n {} must be within 1..=16",
            args.best_of_n
        )));
    }
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        return Err(usage(format!(
            "--grace {} must be a number of seconds",
            args.grace
        )));
    }
    let default_plan = Plan::parse(&args.approach)
        .map_err(|bad| usage(format!("--approach: {}", approach::unknown(&bad))))?;
    let auth = match &args.auth_key_env {
        None => None,
        Some(var) => {
            if !crate::config::is_var_name(var) {
                return Err(usage(format!(
                    "--auth-key-env `{var}` is not an environment variable name (the key itself never goes on the command line)"
                )));
            }
            let key = std::env::var(var).map_err(|_| {
                usage(format!(
                    "--auth-key-env {var}: ${var} is not set (or not UTF-8)"
                ))
            })?;
            if key.is_empty() {
                return Err(usage(format!("--auth-key-env {var}: ${var} is empty")));
            }
            Some(http::digest(key.as_bytes()))
        }
    };
    let defaults = crate::config::gen_params(&args.sampling)?;
    let constitution = match &args.constitution {
        Some(p) => Constitution::load(p)?,
        None => Constitution::parse(Path::new("principles/harmless.json"), DEFAULT_CONSTITUTION)?,
    };
    let templates = Templates::load(args.templates.as_deref()).map_err(RunError::Template)?;
    let judge_templates = Templates::load(args.templates.as_deref()).map_err(RunError::Template)?;
    let system_prompt = match &args.system_prompt {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                usage(format!(
                    "--system-prompt {}: cannot read it: {e}",
                    p.display()
                ))
            })?;
            if text.trim().is_empty() {
                return Err(usage(format!(
                    "--system-prompt {}: the file is empty",
                    p.display()
                )));
            }
            Some(text.trim_end().to_string())
        }
    };
    let log = match &args.log_requests {
        None => None,
        Some(dir) => {
            let path = dir.join("requests.jsonl");
            let open = || {
                std::fs::create_dir_all(dir)?;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            };
            Some(Mutex::new(open().map_err(|e| {
                usage(format!(
                    "--log-requests: cannot open {}: {e}",
                    path.display()
                ))
            })?))
        }
    };
    let plan = crate::config::plan(&args.endpoint, args.max_inflight)?;
    let provider = crate::provider::build::open(&plan, false, |m| eprintln!("cai serve: {m}"))
        .await
        .map_err(crate::config::ConfigError::from)?;
    if let Some(n) = &plan.note {
        eprintln!("cai serve: {n}");
    }
    let provider: Arc<dyn Provider> = Arc::new(record::Recording(provider));
    let engine_cfg = EngineConfig {
        rpm: args.rpm,
        tpm: args.tpm,
        max_retries: args.max_retries,
        keep_truncated: true,
        ..EngineConfig::default()
    };
    let seed = args.sampling.seed.unwrap_or(0);
    let judge = Judge::new(
        Vec::new(),
        judge_templates,
        Some(&constitution),
        JudgeOptions {
            samples: 1,
            cot: false,
            tie_margin: 0.05,
            seed,
            cot_max_tokens: defaults.max_tokens,
        },
    );
    let stop = StopSignal::default();
    let engine = Arc::new(Engine::new(
        provider.clone(),
        Journal::disabled(),
        engine_cfg.clone(),
        stop.clone(),
    ));
    Ok(Shared {
        provider,
        engine_cfg,
        engine: RwLock::new(EngineSlot {
            engine,
            stop,
            tripped: None,
        }),
        constitution,
        templates,
        judge,
        system_prompt,
        default_plan,
        best_of_n: args.best_of_n,
        defaults,
        seed,
        n_support: AtomicU8::new(approach::N_UNKNOWN),
        log,
        auth,
        inflight: Arc::new(tokio::sync::Semaphore::new(args.max_inflight)),
        max_body: args.max_body_bytes,
        max_messages: args.max_messages,
    })
}
