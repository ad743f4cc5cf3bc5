//! Command-line arguments (clap derive) and nothing else: turning them into
//! a validated configuration is [`crate::config`]'s job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::input::ShardArg;
pub use crate::provider::registry::ProviderKind;

#[derive(Debug, Parser)]
#[command(
    name = "cai",
    version = crate::VERSION,
    about = "Constitutional AI data generation: prompts + constitution → critique/revision loops → SFT and preference datasets",
    after_help = "Exit codes: 0 done; 1 finished with some rows rejected (see rejects.jsonl); 2 bad usage or bad input (nothing sent) or an endpoint that refuses every request; 3 aborted (budget, error rate or signal; run the same command again to resume)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Diagnostic log records on stderr from this level up (default: warn).
    /// Without it, RUST_LOG (tracing's filter syntax) is read when set.
    #[arg(long, global = true, value_enum)]
    pub log_level: Option<LogLevel>,
}

/// `--log-level`: the least severe log record shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the critique→revision loop over every prompt and write the datasets.
    #[command(
        allow_negative_numbers = true,
        after_help = "Examples:\n  cai generate --prompts prompts/harmless_sample.csv --constitution principles/harmless.json --out output/demo\n  cai generate --provider openai --base-url http://127.0.0.1:8000/v1 --model my-model --prompts p.csv --constitution c.json --out run1 --rounds 2\n  cai generate --provider hf --base-url http://127.0.0.1:8080 --chat-template zephyr --prompts p.csv --constitution c.json --out run2\n  GROQ_API_KEY=... cai generate --provider groq --model llama-3.1-8b-instant --prompts p.csv --constitution c.json --out run3\n  cai generate --provider anthropic --prompts p.csv --constitution c.json --out run4 --dry-run\n  cai generate --provider gemini --model gemini-2.5-flash --prompts p.csv --constitution c.json --out run5 --max-cost 5\n\nSettings also come from cai.toml and the environment (CAI_MODEL, ...); see `cai config show --help`.\n\nRunning the same command again on the same --out resumes: finished rows are kept and finished requests are not sent again."
    )]
    Generate(Box<GenerateArgs>),
    /// Check prompts, constitution and templates; send nothing.
    #[command(
        allow_negative_numbers = true,
        after_help = "Example:\n  cai validate --prompts prompts/stem_sample.csv --constitution principles/helpful_tutor.json"
    )]
    Validate(ValidateArgs),
    /// The embedded local model: fetch it, list the cache, print its path.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Print the exact first-stage requests, without sending them.
    #[command(
        allow_negative_numbers = true,
        after_help = "Example:\n  cai render --prompts prompts/harmless_sample.csv --constitution principles/harmless.json --limit 2 --provider openai"
    )]
    Render(Box<RenderArgs>),
    /// Show the effective configuration and where each value came from.
    #[command(
        after_help = "Examples:\n  cai config show\n  cai config show --provider groq --model llama-3.1-8b-instant\n\nPrecedence: cai.toml (./cai.toml, else $XDG_CONFIG_HOME/cai/cai.toml or ~/.config/cai/cai.toml) < .env (keys only; never overrides the environment) < environment (CAI_MODEL, CAI_MAX_TOKENS, ...) < flags. Key values are never shown, only ***."
    )]
    Config(ConfigArgs),
    /// List the models an endpoint serves (its model-list API).
    #[command(
        after_help = "Examples:\n  cai models --provider groq\n  cai models --provider anthropic\n  cai models --provider vllm --base-url http://127.0.0.1:8000/v1"
    )]
    Models(Box<ModelsArgs>),
    /// Print a shell completion script to stdout.
    #[command(
        after_help = "Examples:\n  cai completions bash > ~/.local/share/bash-completion/completions/cai\n  cai completions zsh > ~/.zfunc/_cai\n  cai completions fish > ~/.config/fish/completions/cai.fish\n  cai completions powershell >> $PROFILE"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout.
    #[command(after_help = "Example:\n  cai man > cai.1 && man ./cai.1")]
    Man,
    /// Label existing answer pairs with the AI-feedback judge (soft labels, bias report).
    #[command(
        allow_negative_numbers = true,
        after_help = "Examples:\n  cai label --pairs arena.csv --out labels1 --provider openai --base-url http://127.0.0.1:8000/v1 --model judge-model\n  cai label --pairs pairs.jsonl --constitution principles/harmless.json --out labels2 --judge openai:model-a@http://127.0.0.1:8000/v1 --judge openai:model-b@http://127.0.0.1:8001/v1 --ties drop\n  cai label --pairs labelled.csv --out cal --judge openai:model-a@http://127.0.0.1:8000/v1 --calibrate\n  cai label --pairs test.csv --out test --judge openai:model-a@http://127.0.0.1:8000/v1 --calibration cal/calibration.json --format arena\n\nInput columns: prompt,response_a,response_b; optional id, model_a, model_b and the human labels winner_model_a,winner_model_b,winner_tie. Running the same command again on the same --out resumes."
    )]
    Label(Box<LabelArgs>),
    /// Write one self-contained HTML page for a run directory (opens offline).
    #[command(
        after_help = "Examples:\n  cai report output/demo\n  cai report output/demo --out demo.html --open\n\nWorks for generate, label, optimize and merged run directories; the page loads nothing from the network."
    )]
    Report(ReportArgs),
    /// An OpenAI-compatible server that answers each request with an approach (cai, bon, moa, ...) over the endpoint.
    #[command(
        after_help = "Examples:\n  cai serve --port 8000\n  cai serve --provider openai --base-url http://127.0.0.1:8080/v1 --model my-model --approach cai --constitution principles/harmless.json\n  curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' -d '{\"model\": \"bon-my-model\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'\n\nApproaches, chosen per request by a model prefix (`moa-my-model`, `cai&bon-my-model`), by \"approach\" in the body, or by --approach: none, cai (cai2, cai3: rounds), bon (bon5: N), moa, self_consistency, rto, cot_reflection."
    )]
    Serve(Box<ServeArgs>),
    /// Join the run directories of finished shards (or refresh one run) into one dataset.
    #[command(
        after_help = "Examples:\n  cai merge shards/run-* --out dataset\n  cai merge shards/run-1 shards/run-3 --out partial --partial\n  cai merge run --out dataset   # one run refreshed over an edited prompts file: current rows only\n\nEvery output file of every shard is joined (CSV headers once) from its commit log. The shards must share one fingerprint (.cai/run.json), be disjoint, and together cover the prompts file their manifests name; what is missing is named. A row whose prompt text has changed since it was written, or whose prompt is no longer in the file, is left out."
    )]
    Merge(MergeArgs),
    /// Search a system prompt (and in-context example answers) that aligns the base model, scored by an evaluator model (DRPO); `optimize eval` compares prompts.
    #[command(
        allow_negative_numbers = true,
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  cai optimize --queries prompts/optimize_sample.csv --out opt1 --depth 3\n  cai optimize --queries q.csv --out opt2 --provider openai --base-url http://127.0.0.1:8000/v1 --model base --evaluator openai:judge@http://127.0.0.1:8001/v1 --optimizer openai:judge@http://127.0.0.1:8001/v1\n  cai optimize eval --queries held_out.csv --out eval1 --prompt plain.txt --prompt opt1/system_prompt.txt\n\nRunning the same command again on the same --out resumes a stopped search (finished requests are replayed from the journal, not sent again) and prints a finished one without sending anything; --retry-dropped re-asks what was dropped. Reference: docs/optimize-drpo.md."
    )]
    Optimize(Box<OptimizeArgs>),
}

/// `cai report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directory of `cai generate`, `label`, `optimize` or `merge`.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to write the page (default: DIR/report.html).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Open the page in the default browser afterwards.
    #[arg(long)]
    pub open: bool,
}

/// `cai serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, value_name = "N", default_value_t = 8000)]
    pub port: u16,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Defaults for requests that do not set them.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Constitution JSON for the `cai` approach and the judge (default: the built-in harmless principles).
    #[arg(long, visible_alias = "principles", value_name = "FILE")]
    pub constitution: Option<PathBuf>,
    /// Directory of template overrides (critique.jinja, revision.jinja, judge.jinja).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// A system message put before every conversation (file holding its text).
    #[arg(long, value_name = "FILE")]
    pub system_prompt: Option<PathBuf>,
    #[command(flatten)]
    pub inference: InferenceArgs,
    /// Approach for requests whose model name and body name none (`none`, `cai`, `bon`, ..., or a pipeline `cai&bon`).
    #[arg(long, value_name = "SLUG", default_value = "none")]
    pub approach: String,
    /// Candidates of `bon` and `moa`, samples of `self_consistency`, children of an `mcts` expansion, unless the request says otherwise.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub best_of_n: u32,
    /// `mcts`: simulations (each selects, expands and scores once).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub mcts_simulations: u32,
    /// `mcts`: UCT exploration weight.
    #[arg(long, value_name = "C", default_value_t = 0.2)]
    pub mcts_exploration: f64,
    /// `mcts`: levels of the tree (the last level is the complete answer).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub mcts_depth: u32,
    /// `pvg`: rounds of the prover–verifier game.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub pvg_rounds: u32,
    /// `pvg`: solutions per prover (helpful and sneaky) per round.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub pvg_solutions: u32,
    /// `rstar`: levels of the generator's tree.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rstar_max_depth: u32,
    /// `rstar`: rollouts of the generator's search.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rstar_num_rollouts: u32,
    /// `rstar`: UCT exploration constant.
    #[arg(long, value_name = "C", default_value_t = 1.4)]
    pub rstar_c: f64,
    /// `z3`: time limit of one solver run, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub z3_timeout: f64,
    /// `z3`: memory limit of one solver run, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub z3_memory: u32,
    /// Reply with the approach's reasoning (thinking, candidates and verdicts, the search's best path) instead of the answer alone; a request's `return_full_response` overrides it.
    #[arg(long)]
    pub return_full_response: bool,
    /// Clients must send `Authorization: Bearer <key>` with the key held in this environment variable (/health is open).
    #[arg(long, value_name = "VAR")]
    pub auth_key_env: Option<String>,
    /// Models clients may name, forwarded upstream as named (comma-separated); --model is the default for a client that names none.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Accept any model a client names and forward it upstream as named.
    #[arg(long)]
    pub allow_any_model: bool,
    /// Send upstream the key the client sent (`Authorization: Bearer`) instead of --api-key-env's; never logged. Not with --auth-key-env.
    #[arg(long)]
    pub forward_client_key: bool,
    /// Requests handled at once; more are answered 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_inflight: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Most messages accepted in one request (more: 413).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_messages: usize,
    /// Write one JSON line per request, with every upstream call, to DIR/requests.jsonl.
    #[arg(long, value_name = "DIR")]
    pub log_requests: Option<PathBuf>,
    /// Requests per minute sent upstream.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Tokens per minute sent upstream.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Retries per upstream request after the first attempt.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_retries: u32,
    /// Seconds in-flight requests get to finish after Ctrl-C or SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub grace: f64,
}

/// `cai merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Run directories of the shards (each written by `cai generate --shard`).
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Directory for the merged dataset (created; must not hold a dataset yet).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Merge even though shards are missing, unfinished or incomplete (what is left out is listed).
    #[arg(long)]
    pub partial: bool,
    /// The prompts file, when it is no longer at the path the manifests record (it must be the same file: same SHA-256).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
}

/// How the model answering is prompted: `generate` and `serve` (`optimize`
/// has its own `--examples`, which is also its example bank).
#[derive(Debug, Args, Clone)]
pub struct InferenceArgs {
    /// `plain`: prompt a base model with DRPO's plain text (`# Instructions`, `# Query:`, `# Answer:`, stopping at the next heading); needs --api completions, --provider hf or local.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "chat")]
    pub base_format: crate::provider::plain::BaseFormat,
    /// Optimized examples (`examples.json` of `cai optimize`, or `query`/`answer` CSV or JSONL): the --num-examples best BM25 matches are placed before each query as turns.
    #[arg(long, value_name = "FILE")]
    pub examples: Option<PathBuf>,
    /// Examples placed before each query with --examples (the paper's 2).
    #[arg(long, value_name = "K", default_value_t = 2, requires = "examples")]
    pub num_examples: usize,
}

/// Shared by `cai optimize` and `cai optimize eval`.
#[derive(Debug, Args, Clone)]
pub struct OptimizeCommonArgs {
    /// Queries: CSV with a header row (column `query`, else as --prompts), or JSONL.
    #[arg(long, value_name = "FILE")]
    pub queries: Option<PathBuf>,
    /// Run directory (created; reused to resume).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The evaluator (aspects and scores), `provider:model[@base_url]` (default: the base endpoint).
    #[arg(long, value_name = "PROVIDER:MODEL[@URL]")]
    pub evaluator: Option<String>,
    /// Aspect list, a JSON array of {"name", "description"} (default: the 14 shipped aspects).
    #[arg(long, value_name = "FILE")]
    pub aspects: Option<PathBuf>,
    /// In-context example bank: `query` and `answer` columns (CSV or JSONL), or `examples.json` of a search.
    #[arg(long, value_name = "FILE")]
    pub examples: Option<PathBuf>,
    /// Examples placed before each query as turns (the best BM25 matches; the paper's 2).
    #[arg(long, visible_alias = "k", value_name = "K", default_value_t = 2)]
    pub num_examples: usize,
    /// Directory of template overrides (optimize_aspects.jinja, optimize_score.jinja, optimize_propose.jinja, optimize_answer.jinja, ...).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Seed sent with every request (re-asks use the next seeds); also fixes the training order.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// `plain`: prompt the base model with DRPO's plain text (`# Instructions`, `# Query:`, `# Answer:`, stopping at the next heading), so a base model is the one aligned; needs --api completions, --provider hf or local. The evaluator and optimizer stay on chat.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "chat")]
    pub base_format: crate::provider::plain::BaseFormat,
    /// The base model's temperature (the paper's 0: greedy).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub base_temperature: f32,
    /// The base model's longest answer, in tokens (the paper's 2048).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub base_max_tokens: u32,
    /// The evaluator's temperature (the paper's 0; a re-ask samples at 0.7).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub evaluator_temperature: f32,
    /// The evaluator's longest reply, in tokens (the paper's 2048).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub evaluator_max_tokens: u32,
    /// Send again the requests an earlier run dropped (cut off, blocked, failed); by default a re-run keeps them dropped.
    #[arg(long)]
    pub retry_dropped: bool,
    #[command(flatten)]
    pub run: RunArgs,
    /// Count requests per step; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop cleanly (exit 3, resumable) before this invocation's spend could pass USD.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Price in USD per million input tokens (default: the built-in table for known models).
    #[arg(long, value_name = "USD")]
    pub price_in: Option<f64>,
    /// Price in USD per million output tokens (default: the built-in table for known models).
    #[arg(long, value_name = "USD")]
    pub price_out: Option<f64>,
}

/// `cai optimize`.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    #[command(subcommand)]
    pub action: Option<OptimizeAction>,
    #[command(flatten)]
    pub common: OptimizeCommonArgs,
    /// The optimizer (proposes prompts and answers), `provider:model[@base_url]` (default: the base endpoint).
    #[arg(long, value_name = "PROVIDER:MODEL[@URL]")]
    pub optimizer: Option<String>,
    /// The optimizer's temperature (the paper's 0.2).
    #[arg(long, value_name = "F", default_value_t = 0.2)]
    pub optimizer_temperature: f32,
    /// The optimizer's nucleus sampling (the paper's 0.95).
    #[arg(long, value_name = "F", default_value_t = 0.95)]
    pub optimizer_top_p: f32,
    /// The optimizer's longest reply, in tokens (the paper's 2048).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub optimizer_max_tokens: u32,
    /// Prompts kept per step (the paper's 2).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub beam: usize,
    /// New prompts proposed per beam entry, in one optimizer call (the paper's 3).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub actions: usize,
    /// Optimisation steps after the start prompt's, each on the next training query (default: one per remaining query, at most 19: the paper's depth of 20 prompts).
    #[arg(long, value_name = "N")]
    pub depth: Option<usize>,
    /// Steps a satisfied beam prompt may add, one per step (the paper's 10).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_depth_increase: usize,
    /// Rounds of the search for each example's answer (the paper's 5).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub example_rounds: usize,
    /// Rewrites proposed per example and round, in one optimizer call (the paper's 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub example_candidates: usize,
    /// Start prompt file (default: "You are a helpful assistant.").
    #[arg(long, value_name = "FILE")]
    pub initial_prompt: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum OptimizeAction {
    /// Score system prompts on held-out queries: per-aspect means, overall mean, pairwise win rate with a 95% interval.
    Eval(Box<OptimizeEvalArgs>),
}

/// `cai optimize eval`.
#[derive(Debug, Args)]
pub struct OptimizeEvalArgs {
    #[command(flatten)]
    pub common: OptimizeCommonArgs,
    /// A system prompt file to score (repeat; at least one).
    #[arg(long = "prompt", value_name = "FILE")]
    pub prompts: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TiesArg {
    /// Write ties, flagged.
    Keep,
    /// Leave ties out of the labels / preference rows.
    Drop,
}

/// What `generate` does with a reply cut off by the token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLengthArg {
    /// Use it; the row is marked and counted as truncated.
    Keep,
    /// Ask once more with twice the limit, then reject the prompt.
    Retry,
    /// Reject the prompt at once.
    Reject,
}

/// What `cai label` writes besides its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelFormat {
    /// labels.csv and judgments.jsonl only.
    Labels,
    /// Also the arena submission file, submission.csv.
    Arena,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SelectArg {
    /// Pairwise tournament by the AI-feedback judge.
    Judge,
    /// A score from length band, diversity and formatting; no requests.
    Heuristic,
}

/// The AI-feedback judge (`generate --preference judge`, `label`).
#[derive(Debug, Args, Clone)]
pub struct JudgeArgs {
    /// A judge, `provider:model[@base_url]` (repeat for an ensemble; default: the --provider/--base-url/--model endpoint).
    #[arg(long = "judge", value_name = "PROVIDER:MODEL[@URL]")]
    pub judges: Vec<String>,
    /// Sampled verdicts per order when log-probabilities are not available (or with --judge-cot).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub judge_samples: u32,
    /// Chain-of-thought judging; probabilities are clamped to [0.4, 0.6].
    #[arg(long)]
    pub judge_cot: bool,
    /// A pair whose P is within this of 0.5 is a tie.
    #[arg(long, value_name = "F", default_value_t = 0.05)]
    pub tie_margin: f64,
    /// Keep ties (flagged) or drop them.
    #[arg(long, value_enum, default_value = "keep")]
    pub ties: TiesArg,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Pairs to label: CSV with a header row, or JSONL (.jsonl/.json).
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,
    /// Constitution whose comparison principles and few-shots the judge uses (default: built-in principles).
    #[arg(long, visible_alias = "principles", value_name = "FILE")]
    pub constitution: Option<PathBuf>,
    /// Directory of template overrides (judge.jinja).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Label only the first N pairs.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Run directory (created; reused to resume).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Fit a calibration of the judges (temperatures, weights, tie model, length term) on the pairs' human labels by k-fold cross-validated log-loss; writes calibration.json and reports held-out log-loss before and after.
    #[arg(long, conflicts_with = "calibration")]
    pub calibrate: bool,
    /// Folds of the --calibrate cross-validation (shuffled by --seed).
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub folds: u32,
    /// Apply a calibration.json written by --calibrate: labels.csv and the arena file get calibrated probabilities.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// `arena`: also write submission.csv (id,winner_model_a,winner_model_b,winner_tie) beside labels.csv.
    #[arg(long, value_enum, default_value = "labels")]
    pub format: LabelFormat,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download the default model (SmolLM2-135M-Instruct, Q4_1) into the cache, verifying its SHA-256.
    Fetch,
    /// List the GGUF files in the model cache.
    List,
    /// Print the path of the default model (whether or not it is there yet).
    Path,
}

/// `cai config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print every setting with its value and origin (flag, environment, .env, cai.toml, endpoint, default).
    Show(Box<ConfigShowArgs>),
}

/// `cai config show`: takes the endpoint and sampling flags so their effect can be seen.
#[derive(Debug, Args)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `cai models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// `cai completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl EndpointArgs {
    /// The first `--base-url` (the only one, unless a pool is given).
    pub fn base_url(&self) -> Option<&str> {
        self.base_urls.first().map(String::as_str)
    }

    /// The flags as [`crate::provider::build`] reads them.
    pub fn flags(&self) -> crate::provider::build::Flags<'_> {
        crate::provider::build::Flags {
            provider: self.provider,
            base_urls: &self.base_urls,
            model: self.model.as_deref(),
            api_key_env: self.api_key_env.as_deref(),
            chat_template: &self.chat_template,
            timeout: self.timeout,
            max_reply_bytes: self.max_reply_bytes,
            offline: self.offline,
            local_parallel: self.local_parallel,
            local_cache_mb: self.local_cache_mb,
            prompt_cache: self.prompt_cache == PromptCacheArg::Auto,
            api: self.api,
        }
    }
}

/// `--prompt-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PromptCacheArg {
    Off,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreferenceArg {
    Revision,
    Judge,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Input files shared by every subcommand.
#[derive(Debug, Args, Clone)]
pub struct InputArgs {
    /// Prompts: CSV with a header row, or JSONL.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Column holding the prompt (default: prompt, instruction, question, input, text, else the only column).
    #[arg(long, value_name = "NAME")]
    pub prompt_column: Option<String>,
    /// Constitution JSON (native, Hugging Face recipe or Anthropic format).
    #[arg(long, visible_alias = "principles", value_name = "FILE")]
    pub constitution: Option<PathBuf>,
    /// Directory of template overrides (initial.jinja, critique.jinja, revision.jinja, sft_text.jinja, judge.jinja).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Take only the first N prompts of the file.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Take shard K of N (rows whose index mod N is K-1): disjoint and covering; `auto` reads K and N from a Slurm array (SLURM_ARRAY_TASK_ID, ..._COUNT or ..._MIN/MAX) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --shards N).
    #[arg(long, value_name = "K/N|auto")]
    pub shard: Option<ShardArg>,
    /// With --shard auto in a Kubernetes Indexed Job: the number of shards (the Job's completions; default: $CAI_SHARDS).
    #[arg(long, value_name = "N", requires = "shard")]
    pub shards: Option<u64>,
}

/// Which endpoint and model.
#[derive(Debug, Args, Clone)]
pub struct EndpointArgs {
    /// Backend or OpenAI-compatible preset, or a named endpoint of cai.toml (default: local, unless --base-url or OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY selects another).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderKind>,
    /// API root, e.g. http://127.0.0.1:8000/v1 (openai) or http://127.0.0.1:8080 (hf/TGI). Repeat it (or give a comma-separated list) for a pool of replicas serving the same model; `URL#weight=2` gives one twice the share.
    #[arg(
        long = "base-url",
        id = "base_url",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub base_urls: Vec<String>,
    /// Model name sent to the endpoint (local: path of a GGUF file; default: the cached SmolLM2-135M-Instruct).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Environment variable holding the API key (default: the provider's, e.g. OPENAI_API_KEY, HF_TOKEN, ANTHROPIC_API_KEY, GEMINI_API_KEY, GROQ_API_KEY).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// `completions`: raw text through an OpenAI-compatible server's /v1/completions (base models; the conversation rendered with --chat-template, or --base-format plain), where the provider serves it; hf and local take raw text either way.
    #[arg(long, value_enum, value_name = "API", default_value = "chat")]
    pub api: crate::provider::registry::Api,
    /// hf and --api completions: chat template, a built-in name (chatml, zephyr, mistral, llama3) or a file holding a Jinja chat template.
    #[arg(long, value_name = "NAME|FILE", default_value = "chatml")]
    pub chat_template: String,
    /// Per-request timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub timeout: f64,
    /// Largest reply body read, in bytes; a larger reply is cut off, retried, then rejected (default: 1 MiB plus 1 KiB per token of max_tokens × samples, more with log-probabilities).
    #[arg(long, value_name = "BYTES")]
    pub max_reply_bytes: Option<u64>,
    /// local: never download; fail if the model is not in the cache.
    #[arg(long)]
    pub offline: bool,
    /// local: sequences generated together in one batch (default 8).
    #[arg(long, value_name = "N")]
    pub local_parallel: Option<usize>,
    /// Provider prompt caching: `auto` marks each stage's shared prefix for Anthropic's cache (`cache_control`) and sends OpenAI's own endpoint a `prompt_cache_key`; `off` sends neither (automatic caches, which need nothing sent, still apply).
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub prompt_cache: PromptCacheArg,
    /// local: prefix KV cache size in MiB (default: what the running sequences can reuse, about 1024 tokens of KV state each; 0: off).
    #[arg(long, value_name = "MB")]
    pub local_cache_mb: Option<usize>,
}

/// How a run is driven: concurrency, limits, budgets, display. Shared by
/// `generate` and `label` (in `label`, limits apply per judge endpoint and
/// the request budget to all judges together).
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Requests in flight at once (generate: prompts; label: pairs).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Requests per minute.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + completion, estimated before each request).
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Retries per request after the first attempt.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_retries: u32,
    /// Stop cleanly (exit 3, resumable) after sending N requests in this invocation.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Resume even though the model, constitution, templates or parameters changed.
    #[arg(long)]
    pub force: bool,
    /// Do not write report.html (the HTML report of the run) at the end.
    #[arg(long)]
    pub no_report: bool,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Log lines as text or as JSON events.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Sampling parameters.
#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// Maximum tokens per reply.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_tokens: u32,
    #[arg(long, value_name = "F", default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed sent to the endpoint; also fixes the principle drawn per prompt and round (default 0 for the choice).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Run directory (created; reused to resume).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Critique→revision rounds per prompt.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: u32,
    /// How chosen/rejected pairs are picked.
    #[arg(long, value_enum, default_value = "revision")]
    pub preference: PreferenceArg,
    /// Answers sampled per prompt (best-of-N).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub samples: u32,
    /// How chosen/rejected are picked among the candidates (sampled answers and the final revision).
    #[arg(long, value_enum)]
    pub select: Option<SelectArg>,
    /// A reply cut off by --max-tokens: keep it (marked "truncated" in trace.jsonl, counted in the manifest), retry it once with twice the limit and then reject the prompt, or reject the prompt at once [default: keep with the local model, retry otherwise].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub on_length: Option<OnLengthArg>,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// System prompt file: replaces the constitution's system message (e.g. `cai optimize`'s system_prompt.txt).
    #[arg(long, value_name = "FILE")]
    pub system_prompt: Option<PathBuf>,
    #[command(flatten)]
    pub inference: InferenceArgs,
    /// Count requests per stage and estimate tokens and cost; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop cleanly (exit 3, resumable) before this invocation's spend could pass USD.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Price in USD per million input tokens (default: the built-in table for known models).
    #[arg(long, value_name = "USD")]
    pub price_in: Option<f64>,
    /// Price in USD per million output tokens (default: the built-in table for known models).
    #[arg(long, value_name = "USD")]
    pub price_out: Option<f64>,
    #[command(flatten)]
    pub batch: BatchArgs,
}

/// The provider's batch API, or a stage as a file (`generate`).
#[derive(Debug, Args, Clone, Default)]
pub struct BatchArgs {
    /// Send through the provider's batch API (openai, anthropic) at the batch price, stage by stage.
    #[arg(long)]
    pub batch: bool,
    /// Seconds between polls of a submitted batch.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub batch_poll: f64,
    /// Write the pending stage's requests to FILE (OpenAI batch JSONL, as `vllm run_batch` reads) and stop.
    #[arg(long, value_name = "FILE")]
    pub batch_export: Option<PathBuf>,
    /// Read a stage's results from FILE (OpenAI batch output JSONL) and continue.
    #[arg(long, value_name = "FILE")]
    pub batch_import: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Also check a chat template (built-in name or file).
    #[arg(long, value_name = "NAME|FILE")]
    pub chat_template: Option<String>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}
