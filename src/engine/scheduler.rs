//! The one run loop of every command that works through a list of items.
//!
//! A command describes its work as a [`Job`] (take one item, do its
//! requests through the [`Engine`](super::Engine), return what to write) and
//! a [`Sink`] (write and commit one finished item). [`run`] does the rest,
//! the same way for `generate` (prompts), `label` (answer pairs) and any
//! later command:
//!
//! - a reader thread streams items from the input into a bounded channel,
//!   skipping ids already committed (resume), so memory depends on the
//!   concurrency, not on the input size;
//! - at most `concurrency` items run at once as tasks; each item's requests
//!   run back to back (depth-first), so finished rows appear within seconds;
//! - this task writes each item the moment it finishes, in completion order;
//! - Ctrl-C / SIGTERM, a budget or the error-rate breaker ([`StopSignal`])
//!   stop taking items; in-flight items get a grace period to finish, then
//!   are dropped (their finished requests are journaled, so a resume pays
//!   for nothing twice); a second Ctrl-C exits at once;
//! - an endpoint that refuses every request ([`ItemError::Stop`]), a broken
//!   input line or a write error stops the run;
//! - progress is reported throughout, and [`RunEnd`] says how it ended.
//!
//! The run directory's lock and fingerprint guard are [`super::rundir`]'s;
//! the commit log is the sink's (`output::AppendFiles`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::ids::IdSet;
use super::progress::{Display, Reporter, Rows};
use super::{AbortReason, ItemError, Stats, StopSignal};
use crate::input::InputError;
use crate::provider::Provider;

/// How long in-flight items may take to finish after a stop.
pub const GRACE: Duration = Duration::from_secs(5);

/// Something a run works through, known by a unique id.
pub trait Item: Send + 'static {
    fn id(&self) -> &str;
}

/// One command's work on one item.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    type Item: Item;
    type Output: Send + 'static;
    /// Does every request of `item`. An item that cannot be completed is a
    /// normal output (the command writes it to its rejects file);
    /// [`ItemError::Stop`] and [`ItemError::Aborted`] end the run.
    async fn run(&self, item: Self::Item) -> Result<Self::Output, ItemError>;
}

/// Where finished items go; called on the loop's task, one item at a time.
pub trait Sink<O> {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Writes and commits one finished item. Returns `Some(note)` when the
    /// item was rejected (counted and shown as a note).
    fn write(&mut self, out: O) -> Result<Option<String>, Self::Error>;
    /// Flushes everything to disk.
    fn sync(&mut self) -> Result<(), Self::Error>;
    /// The commit log and the offset of the last item's commit line, for
    /// a sink with one ([`super::ids::IdSet::insert`]).
    fn last_commit(&self) -> Option<(&std::path::Path, u64)> {
        None
    }
}

/// Why a run stopped before its input was done, beyond budgets and signals.
#[derive(Debug)]
pub enum Fatal<E> {
    /// A line of the input could not be read.
    Input(InputError),
    /// The endpoint refuses every request (bad key, URL or model).
    Endpoint(String),
    /// Writing an item failed.
    Write(E),
    /// A task panicked (a bug).
    Internal(String),
}

impl<E: std::fmt::Display> std::fmt::Display for Fatal<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fatal::Input(e) => e.fmt(f),
            Fatal::Endpoint(m) | Fatal::Internal(m) => f.write_str(m),
            Fatal::Write(e) => e.fmt(f),
        }
    }
}

/// The loop's settings.
pub struct Loop {
    pub concurrency: usize,
    pub stop: StopSignal,
    pub display: Display,
    /// Request counters shown by the progress reporter.
    pub stats: Arc<Stats>,
    /// Items in the input (for progress and ETA).
    pub total: u64,
    /// Ids committed by an earlier invocation (or pass): skipped. A
    /// compact set (16 bytes an id), not the ids themselves.
    pub done: Arc<IdSet>,
    /// Shown once when the run starts (resume summary, provider notes).
    pub notes: Vec<String>,
    /// What an item is called in messages ("prompt", "pair").
    pub noun: &'static str,
    /// The endpoint, for per-endpoint progress when it is a pool.
    pub provider: Option<Arc<dyn Provider>>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunEnd<E> {
    pub fatal: Option<Fatal<E>>,
    pub aborted: Option<AbortReason>,
    /// Seconds from the start of the loop to the first written item.
    pub first_row_s: Option<f64>,
    /// Items written by this invocation, and how many of them were rejects.
    pub written: u64,
    pub rejected: u64,
    /// Items committed before this invocation.
    pub already_done: u64,
}

impl<E: std::fmt::Display> RunEnd<E> {
    /// The manifest's `status`; `rejected` counts every reject of the run
    /// directory (earlier invocations too).
    pub fn status(&self, rejected: u64) -> String {
        match (&self.fatal, self.aborted) {
            (Some(e), _) => format!("failed: {e}"),
            (None, Some(r)) => format!("aborted: {r}"),
            (None, None) if rejected > 0 => "done with rejects".into(),
            (None, None) => "done".into(),
        }
    }
}

/// Runs `job` over `items`, writing each finished item to `sink`.
///
/// Long because it is the one run loop every command shares: reading,
/// concurrency, stop signals and writing in one `select!`.
pub async fn run<J, S, I>(job: Arc<J>, items: I, sink: &mut S, cfg: Loop) -> RunEnd<S::Error>
where
    J: Job,
    S: Sink<J::Output>,
    I: Iterator<Item = Result<J::Item, InputError>> + Send + 'static,
{
    let started = Instant::now();
    let (concurrency, stop, noun) = (cfg.concurrency.max(1), cfg.stop, cfg.noun);
    let already_done = (cfg.done.len() as u64).min(cfg.total);
    let rows = Arc::new(Rows::default());
    rows.done.store(already_done, Ordering::Relaxed);
    let reporter = Reporter::start(
        cfg.display,
        cfg.stats,
        rows.clone(),
        cfg.total,
        cfg.provider,
    );
    for n in &cfg.notes {
        reporter.note(n);
    }
    let signals = watch_signals(stop.clone(), reporter.display(), noun);

    let mut rx = spawn_reader(items, cfg.done, concurrency.saturating_mul(2).max(16));
    let mut tasks: JoinSet<Result<J::Output, ItemError>> = JoinSet::new();
    let mut input_open = true;
    let mut seen = Seen {
        fatal: None,
        first_row: None,
        written: 0,
        rejected: 0,
        started,
        rows: &rows,
        reporter: &reporter,
        noun,
    };
    // Stop taking items at a stop; abort what is in flight after a grace.
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut grace_spent = false;
    loop {
        if grace.is_none() && stop.reason().is_some() {
            grace = Some(Box::pin(tokio::time::sleep(GRACE)));
        }
        let can_take = input_open
            && stop.reason().is_none()
            && seen.fatal.is_none()
            && tasks.len() < concurrency;
        if !can_take && tasks.is_empty() {
            break;
        }
        tokio::select! {
            item = rx.recv(), if can_take => match item {
                Some(Ok(item)) => {
                    let job = job.clone();
                    tasks.spawn(async move { job.run(item).await });
                }
                Some(Err(e)) => {
                    seen.fatal = Some(Fatal::Input(e));
                    tasks.abort_all();
                }
                None => input_open = false,
            },
            joined = tasks.join_next(), if !tasks.is_empty() => {
                let Some(joined) = joined else { continue };
                if !seen.finished(joined, sink, &stop) {
                    tasks.abort_all();
                }
            },
            _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() && !grace_spent && !tasks.is_empty() => {
                // In-flight items had their chance; what is unfinished is
                // resumed next time (its finished requests are journaled).
                tasks.abort_all();
                grace_spent = true;
            }
        }
    }
    drop(rx);
    signals.abort();
    let end = seen.end(sink, &stop, already_done);
    reporter.finish();
    end
}

/// A reader thread streaming the items not `done` into a bounded channel
/// of `capacity`: memory follows the concurrency, not the input's size.
fn spawn_reader<T: Item, I>(
    items: I,
    done: Arc<IdSet>,
    capacity: usize,
) -> tokio::sync::mpsc::Receiver<Result<T, InputError>>
where
    I: Iterator<Item = Result<T, InputError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    std::thread::spawn(move || {
        for item in items {
            if let Ok(it) = &item {
                if done.contains(it.id()) {
                    continue;
                }
            }
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });
    rx
}

/// What the loop has seen of its finished items.
struct Seen<'a, E> {
    fatal: Option<Fatal<E>>,
    /// Seconds from `started` to the first item written.
    first_row: Option<f64>,
    written: u64,
    rejected: u64,
    started: Instant,
    rows: &'a Rows,
    reporter: &'a Reporter,
    noun: &'static str,
}

impl<E> Seen<'_, E> {
    /// How the run ended, once the sink is synced.
    fn end<O, S: Sink<O, Error = E>>(
        self,
        sink: &mut S,
        stop: &StopSignal,
        already_done: u64,
    ) -> RunEnd<E> {
        let mut fatal = self.fatal;
        if let Err(e) = sink.sync() {
            fatal.get_or_insert(Fatal::Write(e));
        }
        let aborted = match &fatal {
            // A write error stops the run through the signal; report the error.
            Some(Fatal::Write(_)) => None,
            _ => stop.reason(),
        };
        RunEnd {
            fatal,
            aborted,
            first_row_s: self.first_row,
            written: self.written,
            rejected: self.rejected,
            already_done,
        }
    }

    /// Takes one finished task: writes its output to `sink`, or records
    /// why the run must stop. `false`: the other tasks must be aborted.
    fn finished<O, S: Sink<O, Error = E>>(
        &mut self,
        joined: Result<Result<O, ItemError>, tokio::task::JoinError>,
        sink: &mut S,
        stop: &StopSignal,
    ) -> bool {
        let noun = self.noun;
        let fatal = match joined {
            Ok(Ok(out)) => match sink.write(out) {
                Ok(note) => {
                    if let Some(note) = note {
                        self.rejected += 1;
                        self.rows.rejected.fetch_add(1, Ordering::Relaxed);
                        self.reporter.note(&note);
                    }
                    self.written += 1;
                    self.rows.done.fetch_add(1, Ordering::Relaxed);
                    let started = self.started;
                    self.first_row
                        .get_or_insert_with(|| started.elapsed().as_secs_f64());
                    return true;
                }
                Err(e) => {
                    self.fatal = Some(Fatal::Write(e));
                    stop.stop(AbortReason::Signal);
                    return false;
                }
            },
            Ok(Err(ItemError::Stop(msg))) => Fatal::Endpoint(msg),
            Ok(Err(ItemError::Reject(why))) => Fatal::Internal(format!(
                "internal error: a {noun} was rejected without a reject row: {why}"
            )),
            // The stop signal carries the reason.
            Ok(Err(ItemError::Aborted(_))) => return true,
            Err(e) if e.is_cancelled() => return true,
            Err(e) => Fatal::Internal(format!("internal error: a {noun} task failed: {e}")),
        };
        self.fatal.get_or_insert(fatal);
        false
    }
}

/// Installs Ctrl-C / SIGTERM handling: the first stops taking new items,
/// the second exits at once (the run stays resumable either way).
fn watch_signals(
    stop: StopSignal,
    display: Display,
    noun: &'static str,
) -> tokio::task::JoinHandle<()> {
    let notify = move |m: &str| {
        if display == Display::Json {
            eprintln!("{}", serde_json::json!({ "event": "signal", "message": m }));
        } else {
            eprintln!("\ncai: {m}");
        }
    };
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            #[cfg(unix)]
            {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = term.recv() => {},
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            count += 1;
            if count == 1 {
                notify(&format!("stopping: no new {noun}s; finishing requests in flight (press Ctrl-C again to quit at once)"));
                stop.stop(AbortReason::Signal);
            } else {
                notify("quitting now; run the same command again to resume");
                std::process::exit(3);
            }
        }
    })
}

/// Seconds since the Unix epoch (manifests).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
