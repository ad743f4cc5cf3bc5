//! Command-line arguments (clap derive) and nothing else: turning them into
//! a validated configuration is [`crate::config`]'s job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::input::Shard;

#[derive(Debug, Parser)]
#[command(
    name = "cai",
    version,
    about = "Constitutional AI data generation: prompts + constitution → critique/revision loops → SFT and preference datasets",
    after_help = "Exit codes: 0 done; 1 finished with some rows rejected (see rejects.jsonl); 2 bad usage or bad input (nothing sent) or an endpoint that refuses every request; 3 aborted (budget, error rate or signal; run the same command again to resume)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the critique→revision loop over every prompt and write the datasets.
    #[command(
        after_help = "Examples:\n  cai generate --prompts prompts/harmless_sample.csv --constitution principles/harmless.json --out output/demo\n  cai generate --provider openai --base-url http://127.0.0.1:8000/v1 --model my-model --prompts p.csv --constitution c.json --out run1 --rounds 2\n  cai generate --provider hf --base-url http://127.0.0.1:8080 --chat-template zephyr --prompts p.csv --constitution c.json --out run2\n\nRunning the same command again on the same --out resumes: finished rows are kept and finished requests are not sent again."
    )]
    Generate(Box<GenerateArgs>),
    /// Check prompts, constitution and templates; send nothing.
    #[command(
        after_help = "Example:\n  cai validate --prompts prompts/stem_sample.csv --constitution principles/helpful_tutor.json"
    )]
    Validate(ValidateArgs),
    /// Print the exact first-stage requests, without sending them.
    #[command(
        after_help = "Example:\n  cai render --prompts prompts/harmless_sample.csv --constitution principles/harmless.json --limit 2 --provider openai"
    )]
    Render(Box<RenderArgs>),
    /// Label existing answer pairs with the AI-feedback judge (soft labels, bias report).
    #[command(
        after_help = "Examples:\n  cai label --pairs arena.csv --out labels1 --provider openai --base-url http://127.0.0.1:8000/v1 --model judge-model\n  cai label --pairs pairs.jsonl --constitution principles/harmless.json --out labels2 --judge openai:model-a@http://127.0.0.1:8000/v1 --judge openai:model-b@http://127.0.0.1:8001/v1 --ties drop\n\nInput columns: prompt,response_a,response_b; optional id, model_a, model_b and the human labels winner_model_a,winner_model_b,winner_tie. Running the same command again on the same --out resumes."
    )]
    Label(Box<LabelArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TiesArg {
    /// Write ties, flagged.
    Keep,
    /// Leave ties out of the labels / preference rows.
    Drop,
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
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Pairs judged at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Requests per minute (per judge endpoint).
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Tokens per minute (per judge endpoint).
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Retries per request after the first attempt.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_retries: u32,
    /// Stop cleanly (exit 3, resumable) after sending N requests in this invocation (all judges together).
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Resume even though the judges, constitution, templates or options changed.
    #[arg(long)]
    pub force: bool,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Log lines as text or as JSON events.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Embedded GGUF model on CPU.
    Local,
    /// Any OpenAI-compatible `chat/completions` server.
    Openai,
    /// Hugging Face Inference API / TGI `generate`.
    Hf,
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
    /// Take shard K of N (rows whose index mod N is K-1): disjoint and covering.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
}

/// Which endpoint and model.
#[derive(Debug, Args, Clone)]
pub struct EndpointArgs {
    /// Backend (default: local, unless --base-url or a provider key in the environment selects another).
    #[arg(long, value_enum)]
    pub provider: Option<ProviderKind>,
    /// API root, e.g. http://127.0.0.1:8000/v1 (openai) or http://127.0.0.1:8080 (hf/TGI).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Model name sent to the endpoint (local: path of a GGUF file).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Environment variable holding the API key (default: OPENAI_API_KEY for openai, HF_TOKEN for hf).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// hf: chat template, a built-in name (chatml, zephyr, mistral, llama3) or a file holding a Jinja chat template.
    #[arg(long, value_name = "NAME|FILE", default_value = "chatml")]
    pub chat_template: String,
    /// Per-request timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub timeout: f64,
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
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Requests in flight at once.
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
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Log lines as text or as JSON events.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
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
