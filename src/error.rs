//! Why a command did not finish, and the exit code each reason gets.
//!
//! Every command returns [`RunError`]; `main` prints it and exits with
//! [`RunError::exit_code`]: 2 for anything the user must fix before a run
//! can start (usage, inputs, templates, settings, an endpoint that refuses
//! every request, a run directory in use) — nothing was sent or written — and
//! 3 for a run that stopped part-way (budget, breaker, signal, disk) and can
//! be resumed by running the same command again.
//!
//! Per item, the engine's [`crate::engine::ItemError`] says whether one item
//! is rejected, the run must stop, or it is stopping already.

use std::path::PathBuf;

use crate::engine::rundir::RunDirError;
use crate::engine::scheduler::Fatal;
use crate::engine::AbortReason;
use crate::input::prompts::ShardAutoError;
use crate::input::InputErrors;
use crate::output::report::ReportError;
use crate::output::OutputError;
use crate::provider::model_store::ModelError;
use crate::template::TemplateError;

/// A configuration problem, found before anything is sent. Each variant
/// carries where the bad value came from (the flag, the file and the key or
/// line inside it, the environment variable), so callers branch on the
/// variant, never on the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An endpoint that cannot be set up: a bad `--base-url`, a missing
    /// key, an unreadable chat template (the provider table's checks).
    #[error(transparent)]
    Endpoint(#[from] crate::provider::build::BuildError),
    /// A flag's value is malformed or out of range; `why` finishes the
    /// sentence that starts with the flag.
    #[error("{flag} {why}")]
    Flag { flag: &'static str, why: String },
    /// The file a flag names cannot be used.
    #[error("{flag} {}: {why}", path.display())]
    FlagFile {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    /// Two flags that do not go together, or one that needs the other;
    /// `why` names both and says what to do.
    #[error("{why}")]
    Conflict {
        a: &'static str,
        b: &'static str,
        why: String,
    },
    /// `--api-key-env` was given something that is not a variable name —
    /// likely the key itself, which must not be echoed.
    #[error("--api-key-env takes the NAME of an environment variable (e.g. MY_KEY), not a key; the value given is not a variable name and is not shown")]
    KeyEnvNotAName,
    /// No key in `var` (nor in any of `alternatives`).
    #[error(
        "no API key for provider {provider}: set the environment variable {var}{}{}",
        alternatives.iter().map(|v| format!(" (or {v})")).collect::<String>(),
        if *named_by_flag { " (named by --api-key-env)" } else { "" }
    )]
    MissingKey {
        provider: String,
        var: String,
        alternatives: Vec<String>,
        /// The variable was named by `--api-key-env` rather than the default.
        named_by_flag: bool,
    },
    /// A file (config, `.env`, chat template, aspects) that cannot be read
    /// or parsed as a whole.
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    /// A bad value at `key` (a TOML key or a JSON path) inside a file.
    #[error("{}: {key}: {why}", path.display())]
    FileKey {
        path: PathBuf,
        key: String,
        why: String,
    },
    /// A bad line (1-based) of a file.
    #[error("{}:{line}: {why}", path.display())]
    FileLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// A value that came from the config file or a `CAI_*` variable does
    /// not parse as its flag; `origins` says where each such value came from.
    #[error(
        "a configured value is invalid: {message}\nvalues taken from the config file or the environment: {}",
        origins.join("; ")
    )]
    ConfiguredValue {
        message: String,
        origins: Vec<String>,
    },
    /// An environment variable cai reads holds a value it cannot use.
    #[error("{var}: {why}")]
    Env { var: &'static str, why: String },
    /// `--shard auto` found the scheduler's variables missing or inconsistent.
    #[error(transparent)]
    Shard(#[from] ShardAutoError),
    #[error("unknown provider {0}")]
    UnknownProvider(String),
    /// The GGUF file is not there; `default` = it is the default model,
    /// which `cai model fetch` downloads.
    #[error(
        "model file {} not found{}",
        path.display(),
        if *default { "; run `cai model fetch` to download the default model" } else { "" }
    )]
    ModelNotFound { path: PathBuf, default: bool },
    #[error("the default model is not in the cache ({}) and --offline forbids downloading it; run `cai model fetch` first", path.display())]
    OfflineNoModel { path: PathBuf },
    /// The model cache or the download of the default model failed.
    #[error(transparent)]
    ModelStore(#[from] ModelError),
    /// The GGUF file does not load; `why` names the file.
    #[error("{why}")]
    LocalModel { path: PathBuf, why: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// A judge's request journal cannot be opened.
    #[error("cannot open {}: {source}", path.display())]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// A flag's value is wrong; `why` follows the flag in the message.
    pub fn flag(flag: &'static str, why: impl Into<String>) -> Self {
        ConfigError::Flag {
            flag,
            why: why.into(),
        }
    }

    /// Flags `a` and `b` conflict; `why` is the whole message.
    pub fn conflict(a: &'static str, b: &'static str, why: impl Into<String>) -> Self {
        ConfigError::Conflict {
            a,
            b,
            why: why.into(),
        }
    }

    /// The same problem reported under `name`: a parser shared by several
    /// flags (`--judge` and `--optimizer` take the same spec) reports the
    /// flag the user actually gave.
    pub fn under_flag(mut self, name: &'static str) -> Self {
        if let ConfigError::Flag { flag, .. } | ConfigError::FlagFile { flag, .. } = &mut self {
            *flag = name;
        }
        self
    }
}

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Input(#[from] InputErrors),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Template(Vec<TemplateError>),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// `cai report`: the directory is not a readable run, or the page
    /// cannot be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The endpoint refuses every request.
    #[error("{0}")]
    Endpoint(String),
    /// A bug: a task panicked.
    #[error("{0}")]
    Internal(String),
    #[error("stopped: {reason}; run the same command again to resume")]
    Aborted { reason: AbortReason },
}

impl RunError {
    /// The process exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_)
            | RunError::Config(_)
            | RunError::Input(_)
            | RunError::Template(_)
            | RunError::Endpoint(_) => 2,
            RunError::Output(OutputError::RunDir(RunDirError::Usage(_))) => 2,
            RunError::Report(ReportError::Write { .. }) => 3,
            RunError::Report(_) => 2,
            RunError::Output(_) | RunError::Internal(_) | RunError::Aborted { .. } => 3,
        }
    }
}

impl From<RunDirError> for RunError {
    fn from(e: RunDirError) -> Self {
        match e {
            RunDirError::Usage(m) => RunError::Usage(m),
            io => RunError::Output(io.into()),
        }
    }
}

impl From<Fatal<OutputError>> for RunError {
    fn from(f: Fatal<OutputError>) -> Self {
        match f {
            Fatal::Input(e) => RunError::Input(e.into()),
            Fatal::Endpoint(m) => RunError::Endpoint(m),
            Fatal::Write(e) => RunError::Output(e),
            Fatal::Internal(m) => RunError::Internal(m),
        }
    }
}

/// `Ok` when a run loop went through its whole input; otherwise why not
/// (a fatal error first, then a budget, breaker or signal stop).
pub fn run_result(
    fatal: Option<Fatal<OutputError>>,
    aborted: Option<AbortReason>,
) -> Result<(), RunError> {
    match (fatal, aborted) {
        (Some(f), _) => Err(f.into()),
        (None, Some(reason)) => Err(RunError::Aborted { reason }),
        (None, None) => Ok(()),
    }
}
