//! `cai optimize` (DRPO search) and `cai optimize eval`.
//!
//! The search is sequential (each step needs the last step's scores), so it
//! does not use the run loop; it does use everything under it: the run
//! directory is locked and fingerprinted ([`RunDir`]), and every request of
//! the three roles goes through an [`Engine`] with its own journal
//! (`journal.jsonl` base, `journal-evaluator.jsonl`,
//! `journal-evaluator-logprobs.jsonl` for the evaluator's log-probability
//! scores, `journal-optimizer.jsonl`) and shared counters, so `--max-requests`
//! covers all of them and a re-run replays every finished request. Dropped
//! requests and a finished result are kept too ([`drpo::state`]): a
//! finished search run again prints its result and sends nothing. The
//! algorithm and its request counts are in [`crate::feedback::drpo`].

use std::sync::Arc;
use std::time::Instant;

use crate::config::optimize::{OptimizeConfig, Role, Task};
use crate::engine::rundir::RunDir;
use crate::engine::{Engine, ItemError, Journal, Stats, StopSignal};
use crate::error::RunError;
use crate::feedback::drpo::examples::{self as example_search, ExampleOptions};
use crate::feedback::drpo::{self, Critic, Evaluation, Finished, RunState, Search, SearchOptions};
use crate::feedback::examples::Retriever;
use crate::output::optimize::{self as files, DepthReward, Events, OptimizeKind, PathNode, Report};
use crate::output::OutputError;
use crate::provider::plain::BaseFormat;

/// What a finished command prints.
pub struct Outcome {
    pub table: String,
    pub summary: String,
}

fn item_error(e: ItemError) -> RunError {
    match e {
        ItemError::Aborted(reason) => RunError::Aborted { reason },
        ItemError::Stop(m) | ItemError::Reject(m) => RunError::Endpoint(m),
    }
}

struct Opened {
    engines: drpo::Engines,
    stats: Arc<Stats>,
}

impl Opened {
    /// The scorer and proposer of this run over its engines.
    fn critic(self, cfg: &OptimizeConfig, dir: &RunDir) -> Result<(Critic, Arc<Stats>), RunError> {
        let state_dir = dir.state_dir();
        let state =
            RunState::open(&state_dir, cfg.retry_dropped).map_err(|source| OutputError::Io {
                path: state_dir.join("dropped.jsonl"),
                source,
            })?;
        let critic = Critic::new(
            self.engines,
            cfg.templates.clone(),
            cfg.aspects.clone(),
            cfg.sampling.clone(),
            cfg.seed,
            Retriever::new(cfg.examples.clone()),
            cfg.k,
            state,
        );
        Ok((critic, self.stats))
    }
}

fn open_engines(
    cfg: &OptimizeConfig,
    dir: &RunDir,
    optimizer: Option<&Role>,
) -> Result<Opened, RunError> {
    let stats = Arc::new(Stats::default());
    let stop = StopSignal::default();
    let chat = BaseFormat::Chat;
    let ecfg = cfg.run.engine(cfg.price.clone(), cfg.max_cost);
    let open = |role: &Role,
                file: &str,
                keep_truncated: bool,
                format: BaseFormat|
     -> Result<Arc<Engine>, RunError> {
        let path = dir.state_dir().join(file);
        // Two prompts with the same answer ask the same score: within a
        // run, a reply recorded earlier answers it too.
        let journal = Journal::open(&path, &crate::engine::ids::IdSet::empty())
            .map_err(|source| OutputError::Io { path, source })?
            .keep_recorded();
        let provider = role
            .provider
            .as_ref()
            .ok_or_else(|| RunError::Internal("no provider for a live run".into()))?
            .build()
            .map_err(crate::config::ConfigError::from)?;
        let provider = crate::provider::plain::with_format(provider, format);
        let ecfg = crate::engine::EngineConfig {
            keep_truncated,
            ..ecfg.clone()
        };
        Ok(Arc::new(
            Engine::new(provider, journal, ecfg, stop.clone()).with_stats(stats.clone()),
        ))
    };
    // Only the base model is the one being aligned: the evaluator and the
    // optimizer read and write JSON in chat form whatever it is prompted in.
    let base = open(&cfg.base, "journal.jsonl", false, cfg.base_format)?;
    let evaluator = open(&cfg.evaluator, "journal-evaluator.jsonl", false, chat)?;
    // Only the first token of a log-probability score is read, so a reply
    // cut off at its few tokens is complete.
    let scorer = open(
        &cfg.evaluator,
        "journal-evaluator-logprobs.jsonl",
        true,
        chat,
    )?;
    let optimizer = match optimizer {
        Some(r) => open(r, "journal-optimizer.jsonl", false, chat)?,
        None => evaluator.clone(),
    };
    Ok(Opened {
        engines: drpo::Engines {
            base,
            evaluator,
            scorer,
            optimizer,
        },
        stats,
    })
}

async fn prepare(cfg: &OptimizeConfig) -> Result<RunDir, RunError> {
    let bar = cfg.run.display == crate::engine::progress::Display::Bar;
    let optimizer = match &cfg.task {
        Task::Search { optimizer, .. } => optimizer.provider.as_ref(),
        Task::Eval { .. } => None,
    };
    let roles = [
        cfg.base.provider.as_ref(),
        cfg.evaluator.provider.as_ref(),
        optimizer,
    ];
    crate::provider::build::prepare(roles.into_iter().flatten(), bar, |m| eprintln!("cai: {m}"))
        .await
        .map_err(crate::config::ConfigError::from)?;
    let dir = RunDir::open(&cfg.out)?;
    dir.guard(&cfg.fingerprint(), cfg.run.force, "two searches")?;
    Ok(dir)
}

/// `cai optimize` / `cai optimize eval`.
pub async fn optimize(cfg: OptimizeConfig) -> Result<Outcome, RunError> {
    if cfg.dry_run {
        return Ok(dry_run(&cfg));
    }
    match &cfg.task {
        Task::Search { .. } => search(cfg).await,
        Task::Eval { .. } => eval(cfg).await,
    }
}

/// The training order of a search: long enough for every step it may run.
fn order(cfg: &OptimizeConfig, opts: &SearchOptions) -> Vec<usize> {
    drpo::training_order(
        cfg.queries.len(),
        cfg.seed,
        opts.depth + opts.max_depth_increase + 1,
    )
}

fn dry_run(cfg: &OptimizeConfig) -> Outcome {
    let mut s = String::from("cai optimize --dry-run: nothing is sent\n");
    if let Some(m) = &cfg.missing_key {
        s.push_str(&format!("note: {m}\n"));
    }
    let n = cfg.queries.len();
    match &cfg.task {
        Task::Search { opts, examples, .. } => {
            let order = order(cfg, opts);
            let rows = drpo::plan(&cfg.queries, &order, *opts);
            let distinct: std::collections::HashSet<&str> =
                cfg.examples.iter().map(|e| e.query.as_str()).collect();
            let (ex_e, ex_o) = example_search::plan(cfg.examples.len(), distinct.len(), *examples);
            s.push_str(&format!(
                "{n} queries, depth {} (+ up to {} while a beam prompt is satisfied), beam {}, actions {}, {} examples ({} rounds × {} candidates, {} placed per query)\n\
                 upper bound with no satisfied prompt, duplicate or re-ask (each re-ask adds 1, at most {} per evaluator/optimizer request; a scoring that falls back to log-probabilities adds 1 per aspect; proposals that fall back to plain text add up to {} calls per beam entry):\n step  query  beam  base  evaluator  optimizer\n",
                opts.depth, opts.max_depth_increase, opts.beam, opts.actions, cfg.examples.len(),
                examples.rounds, examples.candidates, cfg.k, drpo::MAX_ASKS - 1,
                drpo::MAX_ASKS * (1 + opts.actions as u64)
            ));
            let (mut b, mut e, mut o) = (0, 0, 0);
            if !cfg.examples.is_empty() {
                s.push_str(&format!(
                    "  ex.      -     -  {:>4}  {:>9}  {:>9}\n",
                    0, ex_e, ex_o
                ));
                e += ex_e;
                o += ex_o;
            }
            for (r, &qi) in rows.iter().zip(&order) {
                s.push_str(&format!(
                    "{:>5}  {:>5}  {:>4}  {:>4}  {:>9}  {:>9}\n",
                    r.step, cfg.queries[qi].id, r.beam, r.base, r.evaluator, r.optimizer
                ));
                b += r.base;
                e += r.evaluator;
                o += r.optimizer;
            }
            s.push_str(&format!(
                "total: {} requests ({b} base, {e} evaluator, {o} optimizer)\n",
                b + e + o
            ));
            if opts.max_depth_increase > 0 {
                let last = rows.last().map_or(0, |r| r.beam.max(1) as u64);
                let per = last * (1 + 2 * opts.actions as u64) + 1;
                s.push_str(&format!(
                    "a satisfied beam prompt adds a step (at most {} in all, each at most {per} requests)\n",
                    opts.max_depth_increase
                ));
            }
        }
        Task::Eval { prompts } => {
            let p = prompts.len();
            s.push_str(&format!(
                "{n} queries × {p} prompts: {n} aspect requests + {} answers + {} scores = {} requests (plus re-asks)\n",
                n * p,
                n * p,
                n + 2 * n * p
            ));
        }
    }
    Outcome {
        table: s,
        summary: String::new(),
    }
}

/// What must match for a finished search to be the answer to this one.
fn finished_options(opts: &SearchOptions, examples: &ExampleOptions) -> serde_json::Value {
    serde_json::json!({"search": opts, "examples": examples})
}

/// `report.json` of a search: its options, the reward per depth and the
/// best path; the caller adds how the run ended (status, requests, time).
fn search_report(
    cfg: &OptimizeConfig,
    opts: &SearchOptions,
    initial_prompt: &str,
    optimizer: &Role,
    state: &Search,
    order: &[usize],
) -> Report {
    let best = state.best();
    let steps = state.steps.len().saturating_sub(1);
    Report {
        kind: OptimizeKind,
        base: cfg.base.label.clone(),
        evaluator: cfg.evaluator.label.clone(),
        optimizer: optimizer.label.clone(),
        queries: cfg.queries.len(),
        beam: opts.beam,
        actions: opts.actions,
        depth: opts.depth,
        max_depth_increase: opts.max_depth_increase,
        extended: state.extended,
        steps,
        seed: cfg.seed,
        training_order: order
            .iter()
            .take(steps + 1)
            .map(|&i| cfg.queries[i].id.clone())
            .collect(),
        examples: cfg.examples.len(),
        sampling: cfg.sampling.clone(),
        initial_prompt: initial_prompt.to_string(),
        best_prompt: best.prompt.clone(),
        best_reward: best.reward,
        best_path_reward: best.path_reward,
        reward_per_depth: state
            .reward_per_depth()
            .into_iter()
            .map(|(depth, best, mean, nodes)| DepthReward {
                depth,
                best,
                mean,
                nodes,
            })
            .collect(),
        best_path: state
            .best_path()
            .into_iter()
            .map(|n| PathNode {
                depth: n.depth,
                node: n.id,
                query_id: cfg.queries[n.query].id.clone(),
                reward: n.reward,
                path_reward: n.path_reward,
                kept: n.kept,
                prompt: n.prompt.clone(),
            })
            .collect(),
        nodes: state.nodes.len(),
        dropped: state.dropped,
        ..Report::default()
    }
}

/// `cai optimize`: reuses a finished search's answer when the options
/// match; else optimises the example bank (with `--examples`), runs the
/// prompt search, and writes the report, the best prompt and the bank.
async fn search(cfg: OptimizeConfig) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let Task::Search {
        opts,
        examples: ex_opts,
        initial_prompt,
        optimizer,
    } = &cfg.task
    else {
        return Err(RunError::Internal("not a search".into()));
    };
    let dir = prepare(&cfg).await?;
    let options = finished_options(opts, ex_opts);
    if !cfg.retry_dropped {
        if let Some(done) = Finished::read(&dir.state_dir(), &options) {
            return Ok(Outcome {
                table: done.table,
                summary: format!(
                    "{}\ncai: this search had finished; nothing was sent (--retry-dropped re-asks what it dropped; another --depth searches on)",
                    done.summary
                ),
            });
        }
    }
    let (mut critic, stats) = open_engines(&cfg, &dir, Some(optimizer))?.critic(&cfg, &dir)?;
    let mut events = Events::create(&cfg.out.join("search.jsonl"))?;
    let mut sink = |v: serde_json::Value| events.write(&v);
    let mut state = Search::new(initial_prompt);
    let quiet = cfg.run.display == crate::engine::progress::Display::Quiet;
    let order = order(&cfg, opts);
    let mut result = Ok(());
    let mut bank = Vec::new();
    if !cfg.examples.is_empty() {
        match critic.optimise_examples(*ex_opts, &mut sink).await {
            Ok(b) => bank = b,
            Err(e) => result = Err(e),
        }
    }
    if result.is_ok() {
        let progress_stats = stats.clone();
        result = state
            .run(&mut critic, &cfg.queries, &order, *opts, &mut sink, |s| {
                if !quiet {
                    let snap = progress_stats.snapshot();
                    eprintln!(
                        "cai: step {} (query {}): {} prompts scored, best {:.2}, best path average {:.2} ({} requests sent, {} from the journal)",
                        s.step,
                        s.query_id,
                        s.evaluated,
                        s.best,
                        s.best_path,
                        snap.requests,
                        snap.cached
                    );
                }
            })
            .await;
    }
    let status = match &result {
        Ok(()) => "done".to_string(),
        Err(ItemError::Aborted(r)) => format!("stopped: {r}"),
        Err(e) => format!("failed: {}", item_error(e.clone())),
    };
    let best = state.best().clone();
    let steps = state.steps.len().saturating_sub(1);
    let report = Report {
        status,
        dropped_requests: critic.state.dropped_count(),
        requests: stats.snapshot(),
        wall_time_s: started.elapsed().as_secs_f64(),
        ..search_report(&cfg, opts, initial_prompt, optimizer, &state, &order)
    };
    files::write_json(&cfg.out.join("report.json"), &report)?;
    if let Err(e) = result {
        return Err(item_error(e));
    }
    files::write_text_atomic(
        &cfg.out.join("system_prompt.txt"),
        &format!("{}\n", best.prompt),
    )?;
    if !bank.is_empty() {
        files::write_json(&cfg.out.join("examples.json"), &bank)?;
    }
    let snap = stats.snapshot();
    let outcome = Outcome {
        table: report.table(),
        summary: format!(
            "cai: searched {} prompts in {} steps ({} dropped) into {}; best path average {}; {} requests sent, {} from the journal; report in {}",
            state.nodes.len(),
            steps,
            state.dropped,
            cfg.out.join("system_prompt.txt").display(),
            best.path_reward.map_or("-".into(), |r| format!("{r:.2}")),
            snap.requests,
            snap.cached,
            cfg.out.join("report.json").display()
        ),
    };
    files::write_json(
        &Finished::path(&dir.state_dir()),
        &Finished {
            options,
            table: outcome.table.clone(),
            summary: outcome.summary.clone(),
        },
    )?;
    Ok(outcome)
}

/// `cai optimize eval`: every prompt on every query, scored, then the
/// figures. Long because the per-prompt loop and the summary share the
/// engines and counters opened at its start.
async fn eval(cfg: OptimizeConfig) -> Result<Outcome, RunError> {
    let Task::Eval { prompts } = &cfg.task else {
        return Err(RunError::Internal("not an eval".into()));
    };
    let dir = prepare(&cfg).await?;
    let (mut critic, stats) = open_engines(&cfg, &dir, None)?.critic(&cfg, &dir)?;
    let mut lines = Events::create(&cfg.out.join("eval.jsonl"))?;
    let mut results: Vec<Vec<Option<Evaluation>>> = vec![Vec::new(); prompts.len()];
    for q in &cfg.queries {
        let (choice, _) = critic.aspects(q).await.map_err(item_error)?;
        for (i, (file, prompt)) in prompts.iter().enumerate() {
            let got = critic
                .evaluate(prompt, q, &choice)
                .await
                .map_err(item_error)?;
            let mut v = serde_json::json!({
                "prompt_file": file.display().to_string(), "query_id": &q.id, "query": &q.text,
                "aspects_fallback": &choice.fallback,
            });
            match &got {
                Ok(ev) => {
                    v["answer"] = serde_json::json!(ev.answer);
                    v["scores"] = serde_json::json!(ev.scores);
                    v["reward"] = serde_json::json!(ev.reward);
                }
                Err(why) => v["dropped"] = serde_json::json!(why),
            }
            lines.write(&v)?;
            results[i].push(got.ok());
        }
    }
    let names: Vec<String> = prompts
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let (per, pairs) = drpo::figures(&names, &results);
    let snap = stats.snapshot();
    let report = serde_json::json!({
        "kind": "optimize-eval",
        "base": cfg.base.label, "evaluator": cfg.evaluator.label,
        "queries": cfg.queries.len(), "seed": cfg.seed,
        "examples": cfg.examples.len(), "num_examples": cfg.k, "sampling": &cfg.sampling,
        "prompts": per, "pairwise": pairs, "requests": snap,
    });
    files::write_json(&cfg.out.join("eval.json"), &report)?;
    let mut t = String::from("prompt  scored (by logprobs)  mean  per aspect\n");
    for p in &per {
        t.push_str(&format!(
            "{}  {}/{} ({})  {}  {}\n",
            p.file,
            p.scored,
            p.scored + p.dropped,
            p.scored_by_logprobs,
            p.mean.map_or("-".into(), |m| format!("{m:.2}")),
            p.aspects
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in &pairs {
        t.push_str(&format!(
            "{} vs {}: {} wins, {} ties, {} losses of {}; win rate {} (95% Wilson {})\n",
            p.a,
            p.b,
            p.wins,
            p.ties,
            p.losses,
            p.n,
            p.win_rate.map_or("-".into(), |r| format!("{r:.2}")),
            p.ci95
                .map_or("-".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2}"))
        ));
    }
    Ok(Outcome {
        table: t,
        summary: format!(
            "cai: scored {} prompts on {} queries ({} requests sent, {} from the journal); figures in {}",
            prompts.len(),
            cfg.queries.len(),
            snap.requests,
            snap.cached,
            cfg.out.join("eval.json").display()
        ),
    })
}
