//! Diagnostic log records (`tracing` events) on stderr, installed once by
//! the binary from `--log-level` or `RUST_LOG`.
//!
//! Stderr is shared with the run's own output ([`crate::engine::progress`]);
//! how the two live together:
//!
//! - **Quiet by default.** Without `--log-level` or `RUST_LOG`, only `warn`
//!   and `error` records print, so an ordinary run looks as it always did.
//! - **The progress bar.** While a bar is drawn, a record is written with
//!   the bar suspended (cleared, the line printed, the bar redrawn) — the
//!   way [`crate::engine::progress::Reporter::note`] prints — so a record
//!   never lands in the middle of the bar, nor the bar over a record.
//! - **`--log-format json`.** Records are JSON objects too, one per line,
//!   so stderr stays one JSON object per line. A run event (progress, note,
//!   finish, error) has an `"event"` key; a log record has `"level"`,
//!   `"target"` and `"fields"` instead, so a reader tells them apart by key.
//!   Each line goes out in one locked write, so lines never interleave.
//! - **Whose records.** `--log-level` applies to cai's own code; libraries
//!   stay at `warn`, so their internals (HTTP/2 frames and the like) do not
//!   flood the output. `RUST_LOG` takes the full filter syntax for that.
//!
//! Secrets: API keys are held as `SecretString`, which prints as
//! `[REDACTED]`; no event records a key, a request header or a request body.
//! The tests run with `--log-level trace` and a known key and check that
//! the key never appears.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogLevel;
use crate::error::ConfigError;

/// The bar being drawn, if any; records are printed around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Records are printed around `bar` until [`detach_bar`].
pub fn attach_bar(bar: &ProgressBar) {
    if let Ok(mut b) = BAR.lock() {
        *b = Some(bar.clone());
    }
}

/// The bar is gone: records print straight to stderr again.
pub fn detach_bar() {
    if let Ok(mut b) = BAR.lock() {
        *b = None;
    }
}

/// The filter directives for `level`: cai's own records from `level` up,
/// libraries' from `warn` (or `error` when that is asked for).
fn directives(level: LogLevel) -> String {
    let name = |l: LogLevel| match l {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let others = if level == LogLevel::Error {
        "error"
    } else {
        "warn"
    };
    format!("{others},cai={}", name(level))
}

/// The filter in force: `--log-level`, else `RUST_LOG` when set, else warn.
fn filter(level: Option<LogLevel>) -> Result<EnvFilter, ConfigError> {
    let spec = match (level, std::env::var("RUST_LOG")) {
        (Some(l), _) => directives(l),
        (None, Ok(v)) if !v.trim().is_empty() => {
            return EnvFilter::try_new(v.trim()).map_err(|e| ConfigError::Env {
                var: "RUST_LOG",
                why: format!("not a tracing filter: {e}"),
            })
        }
        (None, _) => directives(LogLevel::Warn),
    };
    EnvFilter::try_new(&spec).map_err(|e| ConfigError::Env {
        var: "RUST_LOG",
        why: format!("internal filter `{spec}` rejected: {e}"),
    })
}

/// Installs the subscriber for the process: text records (`json` false) or
/// JSON lines on stderr. A second call (tests that run several commands in
/// one process) keeps the first subscriber.
pub fn init(level: Option<LogLevel>, json: bool) -> Result<(), ConfigError> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(AroundBar);
    // `try_init` fails only when a subscriber is already set, which is fine.
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    Ok(())
}

/// Makes [`BarSafeStderr`] writers for the subscriber.
struct AroundBar;

impl<'a> MakeWriter<'a> for AroundBar {
    type Writer = BarSafeStderr;
    fn make_writer(&'a self) -> BarSafeStderr {
        BarSafeStderr
    }
}

/// Stderr, with the progress bar (when one is drawn) suspended around each
/// write. The subscriber formats a whole record and writes it with one
/// `write_all`, so each record is one suspension.
struct BarSafeStderr;

impl Write for BarSafeStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // Cloned out so the lock is not held while the bar redraws.
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().lock().write_all(buf)),
            None => std::io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_applies_to_cai_and_libraries_stay_at_warn() {
        assert_eq!(directives(LogLevel::Debug), "warn,cai=debug");
        assert_eq!(directives(LogLevel::Error), "error,cai=error");
        for l in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert!(EnvFilter::try_new(directives(l)).is_ok(), "{l:?}");
        }
    }
}
