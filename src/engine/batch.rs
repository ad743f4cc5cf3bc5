//! Staged runs over a provider's batch API (`--batch`) or over files a user
//! runs through `vllm run_batch` (`--batch-export` / `--batch-import`).
//!
//! # Design: the normal run loop, replayed per stage
//!
//! A batch run does not have a run loop of its own. It runs the normal one
//! ([`super::scheduler::run`] with the usual pipeline, templates, request
//! building and writers) once per *stage*, with a [`BatchProvider`] in
//! place of the endpoint:
//!
//! - a request whose result is known (from a finished batch) is answered
//!   with it, and the engine treats that reply exactly as a live one
//!   (journal, usage, cost, length and empty-reply rules);
//! - any other request is written to the stage's pending file and the
//!   provider answers [`ProviderError::Queued`]; the engine turns that into
//!   [`AbortReason::Batched`], which ends this prompt for this pass without
//!   writing or rejecting it.
//!
//! After the pass the pending requests are submitted as one batch (split at
//! the service's [`Limits`]), polled until they end, and their results
//! stored; then the loop runs again. A prompt's chain is thus staged — every
//! initial request of the run in the first batch, then every critique, then
//! every revision, per round — and since the requests are built by the same
//! code from the same replies, with the principle chosen by (seed, prompt
//! id, round), the rows are those of a normal run. A request asked for
//! twice (two prompts with the same text) is submitted once.
//!
//! # State in the run directory (`.cai/batch/`)
//!
//! - `state.json`: every submitted batch (id, stage, requests, whether its
//!   results were stored), written atomically after each submission, so a
//!   killed process resumes polling the same batches and submits nothing
//!   twice; only a kill between the service accepting a batch and this
//!   file being renamed (microseconds) could lose a batch id.
//! - `batch-N.jsonl`: the input lines of batch N (their `custom_id`s tell
//!   which requests a batch held).
//! - `results.jsonl`: every result read back, appended and flushed before
//!   the batch is marked done. A failed, expired or cancelled item is
//!   submitted again in the next batch, up to [`MAX_SUBMISSIONS`] times in
//!   all; then the prompt is rejected with the last reason.
//!
//! Replies consumed by the pipeline go to the journal like live ones, so a
//! batch run can also be resumed without `--batch` and the reverse (batches
//! still in progress are then not waited for). Within one process the
//! journal also keeps them in memory ([`super::Journal::keep_recorded`]),
//! so a later pass replays a prompt's earlier stages without counting
//! their tokens and cost again; a batch run therefore holds the replies of
//! its unfinished prompts in memory, unlike a normal run.
//!
//! Ctrl-C or SIGTERM while polling stops the process (exit 3) and leaves the
//! batches running at the service; the same command picks them up. The
//! manifest is written when a pass ends, not when polling is interrupted.
//!
//! # Cost
//!
//! The price is the batch price (half the standard one, set in the config),
//! so the manifest, `--dry-run` and the running cost show what is billed.
//! `--max-cost` is checked before each submission: the stage's worst case
//! (estimated input plus the full `--max-tokens`) on top of what was spent
//! must fit, or nothing is submitted and the run stops (exit 3, resumable).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::ids::IdSet;
use super::progress::Display;
use super::scheduler::{self, Item, Job, Loop, RunEnd, Sink};
use super::{estimate_tokens, AbortReason, Stats};
use crate::cost::Price;
use crate::error::RunError;
use crate::input::InputError;
use crate::provider::batch::{BatchApi, ItemResult, Limits, Poll};
use crate::provider::{ChatRequest, Completion, Provider, ProviderError, Reply};

/// Submissions of one request before its prompt is rejected.
pub const MAX_SUBMISSIONS: u32 = 3;
/// Failed polls in a row before the run stops.
const MAX_POLL_FAILURES: u32 = 20;

/// How the stages are carried out.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchMode {
    /// `--batch`: submit to the provider's batch API, poll every `poll`.
    Submit { poll: Duration },
    /// `--batch-import` / `--batch-export`: the user runs the stage.
    Files {
        import: Option<PathBuf>,
        export: Option<PathBuf>,
    },
}

/// What one stored result says.
#[derive(Clone, Debug)]
enum Stored {
    Done(Completion),
    Failed { times: u32, last: String },
}

/// One line of `results.jsonl`.
#[derive(Serialize, Deserialize)]
struct ResultRecord {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Completion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
}

/// The stage being collected by a pass.
struct Pending {
    file: BufWriter<File>,
    seen: HashSet<String>,
    /// Worst-case cost of the queued requests, micro-USD.
    worst_micros: u64,
}

/// A [`Provider`] that answers from batch results and queues the rest.
pub struct BatchProvider {
    inner: Arc<dyn Provider>,
    api: Arc<dyn BatchApi>,
    price: Option<Price>,
    store: Mutex<HashMap<String, Stored>>,
    pending: Mutex<Option<Pending>>,
}

impl BatchProvider {
    pub fn new(inner: Arc<dyn Provider>, api: Arc<dyn BatchApi>, price: Option<Price>) -> Self {
        Self {
            inner,
            api,
            price,
            store: Mutex::new(HashMap::new()),
            pending: Mutex::new(None),
        }
    }

    /// The `custom_id` of a request: a hash of everything sent.
    fn custom_id(&self, req: &ChatRequest) -> String {
        let key = super::journal::request_key(self.inner.name(), self.inner.model(), "batch", req);
        format!("cai-{}", &key[..40])
    }

    fn remember(&self, id: String, result: ItemResult) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            ItemResult::Done(c) => {
                store.insert(id, Stored::Done(c));
            }
            ItemResult::Failed(why) => {
                let entry = store.entry(id).or_insert(Stored::Failed {
                    times: 0,
                    last: String::new(),
                });
                if let Stored::Failed { times, last } = entry {
                    *times += 1;
                    *last = why;
                }
            }
        }
    }

    fn queue(&self, id: String, req: &ChatRequest) -> Result<(), ProviderError> {
        let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = guard.as_mut() else {
            return Err(ProviderError::Fatal(
                "internal error: a batch request outside a stage".into(),
            ));
        };
        if !p.seen.insert(id.clone()) {
            return Ok(());
        }
        let line = self.api.line(&id, req)?;
        if let Some(price) = &self.price {
            p.worst_micros += crate::cost::to_micros(
                price.cost(estimate_tokens(req), u64::from(req.params.max_tokens)),
            );
        }
        p.file
            .write_all(line.as_bytes())
            .and_then(|_| p.file.write_all(b"\n"))
            .map_err(|e| ProviderError::Fatal(format!("cannot write the batch stage file: {e}")))
    }
}

#[async_trait]
impl Provider for BatchProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }
    fn key_var(&self) -> Option<&str> {
        self.inner.key_var()
    }
    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        self.inner.preview(req)
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let id = self.custom_id(req);
        let known = self
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match known {
            Some(Stored::Done(completion)) => Ok(Reply {
                completion,
                rate: Default::default(),
            }),
            Some(Stored::Failed { times, last }) if times >= MAX_SUBMISSIONS => {
                Err(ProviderError::Unprocessable(format!(
                    "the batch API failed this request {times} times; last: {last}"
                )))
            }
            _ => {
                self.queue(id, req)?;
                Err(ProviderError::Queued)
            }
        }
    }
}

/// One submitted batch, as recorded in `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BatchRecord {
    id: String,
    stage: u32,
    requests: usize,
    /// Its input lines, relative to the batch directory.
    input: String,
    /// Its results are in `results.jsonl`.
    collected: bool,
}

/// `.cai/batch/state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    api: String,
    /// Stages submitted (or exported) so far.
    stages: u32,
    batches: Vec<BatchRecord>,
    /// Requests submitted in all, resubmissions included.
    submitted: u64,
    /// Results that came back failed, expired or cancelled.
    failed: u64,
}

/// The batch part of the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BatchSummary {
    /// `openai` or `anthropic` (`--batch`), or `files` (export/import).
    pub api: String,
    pub stages: u32,
    pub batches: usize,
    pub requests_submitted: u64,
    pub results_failed: u64,
    /// Fraction of the standard price that was charged.
    pub price_factor: f64,
}

/// What to do after a pass.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Nothing was queued: every prompt is written.
    Finished,
    /// The stage was submitted: collect it and run again.
    Submitted,
    /// The stage's requests were written to the export file.
    Exported { requests: usize, path: PathBuf },
    /// Requests are pending and no export file was given.
    Waiting { requests: usize },
    /// `--max-cost` would be passed by the stage: nothing was submitted.
    OverBudget,
}

/// Drives the stages of one run directory.
pub struct BatchRun {
    provider: Arc<BatchProvider>,
    mode: BatchMode,
    dir: PathBuf,
    state: State,
    results: File,
    max_cost: Option<f64>,
    stats: Arc<Stats>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| {
        RunError::Output(crate::output::OutputError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl BatchRun {
    /// Opens (creating) the batch state of a run directory and loads the
    /// stored results into `provider`.
    pub fn open(
        state_dir: &Path,
        provider: Arc<BatchProvider>,
        mode: BatchMode,
        max_cost: Option<f64>,
        stats: Arc<Stats>,
    ) -> Result<Self, RunError> {
        let dir = state_dir.join("batch");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let state_path = dir.join("state.json");
        let api = match &mode {
            BatchMode::Submit { .. } => provider.api.name().to_string(),
            BatchMode::Files { .. } => "files".to_string(),
        };
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| {
                    RunError::Usage(format!(
                        "{}: {e}; it records the batches of this run, repair or remove it",
                        state_path.display()
                    ))
                })?;
                let open = s.batches.iter().any(|b| !b.collected);
                if s.api != api && open {
                    return Err(RunError::Usage(format!(
                        "{} has batches in progress with `{}`; finish them with the same options before switching to `{api}`",
                        state_path.display(),
                        s.api
                    )));
                }
                State { api, ..s }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                api,
                ..State::default()
            },
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        let results_path = dir.join("results.jsonl");
        if results_path.exists() {
            let f = File::open(&results_path).map_err(io_err(&results_path))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io_err(&results_path))?;
                // A torn last line (a kill mid-write) is dropped: its batch
                // is not marked collected yet, so it is read again.
                let Ok(r) = serde_json::from_str::<ResultRecord>(&line) else {
                    continue;
                };
                match (r.ok, r.failed) {
                    (Some(c), _) => provider.remember(r.id, ItemResult::Done(c)),
                    (None, Some(why)) => provider.remember(r.id, ItemResult::Failed(why)),
                    (None, None) => {}
                }
            }
        }
        let results = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results_path)
            .map_err(io_err(&results_path))?;
        Ok(Self {
            provider,
            mode,
            dir,
            state,
            results,
            max_cost,
            stats,
        })
    }

    pub fn summary(&self, price_factor: f64) -> BatchSummary {
        BatchSummary {
            api: self.state.api.clone(),
            stages: self.state.stages,
            batches: self.state.batches.len(),
            requests_submitted: self.state.submitted,
            results_failed: self.state.failed,
            price_factor,
        }
    }

    fn save(&self) -> Result<(), RunError> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })()
        .map_err(io_err(&path))
    }

    fn store(&mut self, id: String, result: ItemResult) -> Result<(), RunError> {
        let rec = match &result {
            ItemResult::Done(c) => ResultRecord {
                id: id.clone(),
                ok: Some(c.clone()),
                failed: None,
            },
            ItemResult::Failed(why) => {
                self.state.failed += 1;
                ResultRecord {
                    id: id.clone(),
                    ok: None,
                    failed: Some(why.clone()),
                }
            }
        };
        let mut line = serde_json::to_vec(&rec).unwrap_or_default();
        line.push(b'\n');
        let path = self.dir.join("results.jsonl");
        self.results.write_all(&line).map_err(io_err(&path))?;
        self.provider.remember(id, result);
        Ok(())
    }

    /// Reads a results file in the OpenAI batch output format (`--batch-import`).
    pub fn import(&mut self, path: &Path) -> Result<usize, RunError> {
        let api = self.provider.api.clone();
        let f = File::open(path)
            .map_err(|e| RunError::Usage(format!("--batch-import {}: {e}", path.display())))?;
        let mut items = Vec::new();
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line
                .map_err(|e| RunError::Usage(format!("--batch-import {}: {e}", path.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            let item = crate::provider::batch::openai_result_line(&line, |b| {
                api.parse_body(b)
            })
            .map_err(|e| {
                RunError::Usage(format!(
                    "--batch-import {} line {}: {e} (expected the OpenAI batch output format: {{\"custom_id\", \"response\": {{\"status_code\", \"body\"}}, \"error\"}})",
                    path.display(),
                    i + 1
                ))
            })?;
            items.push(item);
        }
        let n = items.len();
        for (id, r) in items {
            self.store(id, r)?;
        }
        self.sync_results()?;
        Ok(n)
    }

    fn sync_results(&self) -> Result<(), RunError> {
        let path = self.dir.join("results.jsonl");
        self.results.sync_data().map_err(io_err(&path))
    }

    /// Starts collecting a stage: a fresh pending file.
    pub fn begin_pass(&self) -> Result<(), RunError> {
        let path = self.dir.join("pending.jsonl");
        let file = File::create(&path).map_err(io_err(&path))?;
        *self
            .provider
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Pending {
            file: BufWriter::new(file),
            seen: HashSet::new(),
            worst_micros: 0,
        });
        Ok(())
    }

    /// Waits for every submitted batch that is not collected yet and
    /// stores its results. `note` reports progress.
    pub async fn collect(&mut self, note: &(dyn Fn(&str) + Sync)) -> Result<(), RunError> {
        let BatchMode::Submit { poll } = self.mode else {
            return Ok(());
        };
        let open: Vec<usize> = (0..self.state.batches.len())
            .filter(|&i| !self.state.batches[i].collected)
            .collect();
        for i in open {
            let rec = self.state.batches[i].clone();
            let status = self.wait(&rec, poll, note).await?;
            let results = self
                .retrying(|api| {
                    let id = rec.id.clone();
                    async move { api.results(&id).await }
                })
                .await?;
            let input = self.dir.join(&rec.input);
            let mut missing = input_ids(&input).map_err(io_err(&input))?;
            for (id, r) in results {
                if missing.remove(&id) {
                    self.store(id, r)?;
                }
            }
            for id in missing {
                self.store(
                    id,
                    ItemResult::Failed(format!("no result (the batch ended `{status}`)")),
                )?;
            }
            self.sync_results()?;
            self.state.batches[i].collected = true;
            self.save()?;
        }
        Ok(())
    }

    /// Polls one batch until it ends; returns its final status.
    async fn wait(
        &self,
        rec: &BatchRecord,
        every: Duration,
        note: &(dyn Fn(&str) + Sync),
    ) -> Result<String, RunError> {
        let mut last = None;
        loop {
            let id = rec.id.clone();
            match self
                .retrying(|api| {
                    let id = id.clone();
                    async move { api.poll(&id).await }
                })
                .await?
            {
                Poll::Ended { status } => return Ok(status),
                Poll::Running { done, total } => {
                    if last != Some(done) {
                        note(&format!(
                            "batch {} (stage {}): {done}/{total} requests done; polling every {}s",
                            rec.id,
                            rec.stage,
                            every.as_secs_f64()
                        ));
                        last = Some(done);
                    }
                }
            }
            sleep_or_signal(every).await?;
        }
    }

    /// One call of the batch protocol, retried while it fails in a way a
    /// retry can fix.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, RunError>
    where
        F: Fn(Arc<dyn BatchApi>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut failures = 0u32;
        loop {
            let err = match call(self.provider.api.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            failures += 1;
            match super::retry::classify(&err) {
                super::retry::Verdict::Retry { after, .. } if failures < MAX_POLL_FAILURES => {
                    let wait = after.unwrap_or(
                        super::retry::Backoff::default().delay(failures.min(6), &mut rand::rng()),
                    );
                    sleep_or_signal(wait).await?;
                }
                _ => return Err(RunError::Endpoint(format!("batch API: {err}"))),
            }
        }
    }

    /// After a pass: submits, exports or reports the queued stage.
    pub async fn after_pass(&mut self) -> Result<Next, RunError> {
        let pending = self
            .provider
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut pending) = pending else {
            return Ok(Next::Finished);
        };
        let path = self.dir.join("pending.jsonl");
        pending.file.flush().map_err(io_err(&path))?;
        drop(pending.file);
        let requests = pending.seen.len();
        if requests == 0 {
            // An empty export file tells a script's loop that the run is done.
            if let BatchMode::Files {
                export: Some(to), ..
            } = &self.mode
            {
                std::fs::write(to, b"").map_err(|e| {
                    RunError::Usage(format!("--batch-export {}: {e}", to.display()))
                })?;
            }
            return Ok(Next::Finished);
        }
        if let Some(cap) = self.max_cost {
            let spent = self
                .stats
                .cost_micro_usd
                .load(std::sync::atomic::Ordering::Relaxed);
            if spent.saturating_add(pending.worst_micros) > crate::cost::to_micros(cap) {
                return Ok(Next::OverBudget);
            }
        }
        match self.mode.clone() {
            BatchMode::Files {
                export: Some(to), ..
            } => {
                std::fs::copy(&path, &to).map_err(|e| {
                    RunError::Usage(format!("--batch-export {}: {e}", to.display()))
                })?;
                self.state.stages += 1;
                self.save()?;
                Ok(Next::Exported { requests, path: to })
            }
            BatchMode::Files { export: None, .. } => Ok(Next::Waiting { requests }),
            BatchMode::Submit { .. } => {
                self.state.stages += 1;
                let stage = self.state.stages;
                let chunks = split(&path, &self.dir, stage, self.provider.api.limits())
                    .map_err(io_err(&path))?;
                for (input, count) in chunks {
                    let file = self.dir.join(&input);
                    let id = self
                        .retrying(|api| {
                            let file = file.clone();
                            async move { api.submit(&file, count).await }
                        })
                        .await?;
                    self.state.batches.push(BatchRecord {
                        id,
                        stage,
                        requests: count,
                        input,
                        collected: false,
                    });
                    self.state.submitted += count as u64;
                    self.save()?;
                }
                Ok(Next::Submitted)
            }
        }
    }
}

/// Prints a batch message as the run's display wants it: a JSON event
/// with `--log-format json`, else a `cai:` line, unless `--quiet` and not
/// `always` (the run's outcome is shown even then).
pub fn tell(display: Display, message: &str, always: bool) {
    match display {
        Display::Json => eprintln!(
            "{}",
            serde_json::json!({ "event": "batch", "message": message })
        ),
        Display::Quiet if !always => {}
        _ => eprintln!("cai: {message}"),
    }
}

/// How the passes of a run ended.
#[derive(Debug)]
pub struct Passes<E> {
    /// The last pass's end, with the rows of every pass counted.
    pub end: RunEnd<E>,
    /// A batch run left waiting for results: what to do next.
    pub waiting: Option<String>,
}

impl<E: std::fmt::Display> Passes<E> {
    /// The manifest's `status` (`rejected`: every reject of the run
    /// directory): the waiting note of a batch run that did not fail.
    pub fn status(&self, rejected: u64) -> String {
        match &self.waiting {
            Some(n) if self.end.fatal.is_none() && self.end.aborted.is_none() => n.clone(),
            _ => self.end.status(rejected),
        }
    }
}

/// The sink of a batch run's pass, adding each id it wrote to the done
/// set (16 bytes an id, see [`IdSet`]): the next pass skips them. A run
/// without batches makes one pass and adds nothing.
struct Tracked<'a, S> {
    sink: &'a mut S,
    done: Option<Arc<IdSet>>,
}

impl<O: Item, S: Sink<O>> Sink<O> for Tracked<'_, S> {
    type Error = S::Error;

    fn write(&mut self, out: O) -> Result<Option<String>, S::Error> {
        let Some(done) = &self.done else {
            return self.sink.write(out);
        };
        let id = out.id().to_string();
        let note = self.sink.write(out)?;
        if let Some((log, offset)) = self.sink.last_commit() {
            // The id is committed; failing to note it only means the next
            // pass reads it again and finds its replies in memory.
            let _ = done.insert(&id, offset, log);
        }
        Ok(note)
    }

    fn sync(&mut self) -> Result<(), S::Error> {
        self.sink.sync()
    }

    fn last_commit(&self) -> Option<(&Path, u64)> {
        self.sink.last_commit()
    }
}

/// Runs `job` over the items `items` opens, into `sink`: one pass of the
/// run loop, or with `batch` one pass per stage (collect the stage's
/// results, run, then submit or export what the pass queued) until every
/// item is written, the run stops or a stage is left waiting.
pub async fn run_passes<J, S, I>(
    job: Arc<J>,
    mut items: impl FnMut() -> Result<I, RunError>,
    sink: &mut S,
    mut lp: Loop,
    mut batch: Option<&mut BatchRun>,
) -> Result<Passes<S::Error>, RunError>
where
    J: Job,
    J::Output: Item,
    S: Sink<J::Output>,
    I: Iterator<Item = Result<J::Item, InputError>> + Send + 'static,
{
    let display = lp.display;
    let say = |m: &str| tell(display, m, false);
    let mut earlier: Option<RunEnd<S::Error>> = None;
    let passes = loop {
        if let Some(b) = batch.as_deref_mut() {
            b.collect(&say).await?;
            b.begin_pass()?;
        }
        let mut tracked = Tracked {
            sink: &mut *sink,
            done: batch.is_some().then(|| lp.done.clone()),
        };
        let this = Loop {
            stop: lp.stop.clone(),
            stats: lp.stats.clone(),
            done: lp.done.clone(),
            notes: std::mem::take(&mut lp.notes),
            provider: lp.provider.clone(),
            ..lp
        };
        let pass = scheduler::run(job.clone(), items()?, &mut tracked, this).await;
        let pass = match earlier.take() {
            None => pass,
            Some(acc) => add_pass(acc, pass),
        };
        let Some(b) = batch.as_deref_mut() else {
            break Passes {
                end: pass,
                waiting: None,
            };
        };
        if pass.fatal.is_some() || pass.aborted.is_some() {
            break Passes {
                end: pass,
                waiting: None,
            };
        }
        let note = match b.after_pass().await? {
            Next::Submitted => {
                earlier = Some(pass);
                continue;
            }
            Next::Finished => None,
            Next::Exported { requests, path } => Some(format!(
                "waiting for batch results: {requests} requests written to {}; run them (e.g. `vllm run_batch -i {} -o results.jsonl --model MODEL`), then run this command again with --batch-import results.jsonl",
                path.display(),
                path.display()
            )),
            Next::Waiting { requests } => Some(format!(
                "waiting for batch results: {requests} requests are pending; write them with --batch-export FILE"
            )),
            Next::OverBudget => {
                let mut pass = pass;
                pass.aborted = Some(AbortReason::MaxCost);
                break Passes { end: pass, waiting: None };
            }
        };
        break Passes {
            end: pass,
            waiting: note,
        };
    };
    if let Some(n) = &passes.waiting {
        tell(display, n, true);
    }
    Ok(passes)
}

/// The end of the passes so far (`acc`) followed by `pass`.
fn add_pass<E>(mut acc: RunEnd<E>, pass: RunEnd<E>) -> RunEnd<E> {
    acc.first_row_s = acc.first_row_s.or(pass.first_row_s);
    acc.written += pass.written;
    acc.rejected += pass.rejected;
    acc.fatal = pass.fatal;
    acc.aborted = pass.aborted;
    acc
}

/// The `custom_id`s of a batch's input lines.
fn input_ids(path: &Path) -> std::io::Result<HashSet<String>> {
    #[derive(Deserialize)]
    struct Line {
        custom_id: String,
    }
    let mut ids = HashSet::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if let Ok(l) = serde_json::from_str::<Line>(&line) {
            ids.insert(l.custom_id);
        }
    }
    Ok(ids)
}

/// Splits the pending lines into batch input files within `limits`:
/// `(file name, lines)` per batch.
fn split(
    pending: &Path,
    dir: &Path,
    stage: u32,
    limits: Limits,
) -> std::io::Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    let mut current: Option<(String, BufWriter<File>, usize, u64)> = None;
    for line in BufReader::new(File::open(pending)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let size = line.len() as u64 + 1;
        let full = current.as_ref().is_some_and(|(_, _, n, bytes)| {
            *n >= limits.max_requests || bytes + size > limits.max_bytes
        });
        if full {
            if let Some((name, mut f, n, _)) = current.take() {
                f.flush()?;
                out.push((name, n));
            }
        }
        let (_, f, n, bytes) = match &mut current {
            Some(c) => c,
            None => {
                let name = format!("batch-{stage}-{}.jsonl", out.len() + 1);
                let f = BufWriter::new(File::create(dir.join(&name))?);
                current.insert((name, f, 0, 0))
            }
        };
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        *n += 1;
        *bytes += size;
    }
    if let Some((name, mut f, n, _)) = current {
        f.flush()?;
        f.get_ref().sync_all()?;
        out.push((name, n));
    }
    Ok(out)
}

/// Sleeps, or stops the run on Ctrl-C / SIGTERM (the batches go on at the
/// service; the same command resumes polling them).
async fn sleep_or_signal(d: Duration) -> Result<(), RunError> {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut t) => {
                t.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = tokio::signal::ctrl_c() => Err(RunError::Aborted { reason: AbortReason::Signal }),
        _ = term => Err(RunError::Aborted { reason: AbortReason::Signal }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_lines_split_at_count_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let pending = dir.path().join("pending.jsonl");
        let lines: String = (0..7)
            .map(|i| format!("{{\"custom_id\":\"c{i}\"}}\n"))
            .collect();
        std::fs::write(&pending, lines).unwrap();
        let by_count = split(
            &pending,
            dir.path(),
            1,
            Limits {
                max_requests: 3,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        let counts: Vec<usize> = by_count.iter().map(|c| c.1).collect();
        assert_eq!(counts, [3, 3, 1]);
        // Each line is 17 bytes with its newline: two fit in 40.
        let by_size = split(
            &pending,
            dir.path(),
            2,
            Limits {
                max_requests: 100,
                max_bytes: 40,
            },
        )
        .unwrap();
        let counts: Vec<usize> = by_size.iter().map(|c| c.1).collect();
        assert_eq!(counts, [2, 2, 2, 1]);
        let ids = input_ids(&dir.path().join(&by_size[3].0)).unwrap();
        assert!(ids.contains("c6"));
    }
}
