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

use crate::engine::rundir::RunDirError;
use crate::engine::scheduler::Fatal;
use crate::engine::AbortReason;
use crate::input::InputErrors;
use crate::output::OutputError;
use crate::template::TemplateError;

/// A configuration problem, found before anything is sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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
