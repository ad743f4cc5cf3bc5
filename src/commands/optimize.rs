//! `cai optimize` (DRPO search) and `cai optimize eval`.
//!
//! The search is sequential (each step needs the last step's scores), so it
//! does not use the run loop; it does use everything under it: the run
//! directory is locked and fingerprinted ([`RunDir`]), and every request of
//! the three roles goes through an [`Engine`] with its own journal
//! (`journal.jsonl` base, `journal-evaluator.jsonl`,
//! `journal-evaluator-logprobs.jsonl` for the evaluator's log-probability
//! scores, `journal-optimizer.jsonl`) and shared counters, so `--max-requests`
//! covers all of them and a re-run replays every finished request. The
//! algorithm and its request counts are in [`crate::feedback::drpo`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::config::optimize::{OptimizeConfig, Role, Task};
use crate::engine::rundir::RunDir;
use crate::engine::{Engine, ItemError, Journal, Stats, StopSignal};
use crate::error::RunError;
use crate::feedback::drpo::{self, Critic, Evaluation, Search};
use crate::output::optimize::{self as files, DepthReward, Events, PathNode, Report};
use crate::output::OutputError;

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

struct Engines {
    base: Arc<Engine>,
    evaluator: Arc<Engine>,
    scorer: Arc<Engine>,
    optimizer: Arc<Engine>,
    stats: Arc<Stats>,
}

impl Engines {
    /// The scorer and proposer of this run over its engines.
    fn critic(&self, cfg: &OptimizeConfig) -> Critic {
        Critic::new(
            self.base.clone(),
            self.evaluator.clone(),
            self.scorer.clone(),
            self.optimizer.clone(),
            cfg.templates.clone(),
            cfg.aspects.clone(),
            cfg.params.clone(),
            cfg.seed,
            cfg.examples.clone(),
            cfg.k,
        )
    }
}

fn open_engines(
    cfg: &OptimizeConfig,
    dir: &RunDir,
    optimizer: Option<&Role>,
) -> Result<Engines, RunError> {
    let stats = Arc::new(Stats::default());
    let stop = StopSignal::default();
    let ecfg = cfg.run.engine(cfg.price.clone(), cfg.max_cost);
    let open = |role: &Role, file: &str, keep_truncated: bool| -> Result<Arc<Engine>, RunError> {
        let path = dir.state_dir().join(file);
        let journal = Journal::open(&path, &HashSet::new())
            .map_err(|source| OutputError::Io { path, source })?;
        let provider = role
            .provider
            .as_ref()
            .ok_or_else(|| RunError::Internal("no provider for a live run".into()))?
            .build()
            .map_err(crate::config::ConfigError::from)?;
        let ecfg = crate::engine::EngineConfig {
            keep_truncated,
            ..ecfg.clone()
        };
        Ok(Arc::new(
            Engine::new(provider, journal, ecfg, stop.clone()).with_stats(stats.clone()),
        ))
    };
    let base = open(&cfg.base, "journal.jsonl", false)?;
    let evaluator = open(&cfg.evaluator, "journal-evaluator.jsonl", false)?;
    // Only the first token of a log-probability score is read, so a reply
    // cut off at its few tokens is complete.
    let scorer = open(&cfg.evaluator, "journal-evaluator-logprobs.jsonl", true)?;
    let optimizer = match optimizer {
        Some(r) => open(r, "journal-optimizer.jsonl", false)?,
        None => evaluator.clone(),
    };
    Ok(Engines {
        base,
        evaluator,
        scorer,
        optimizer,
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

fn dry_run(cfg: &OptimizeConfig) -> Outcome {
    let mut s = String::from("cai optimize --dry-run: nothing is sent\n");
    if let Some(m) = &cfg.missing_key {
        s.push_str(&format!("note: {m}\n"));
    }
    let n = cfg.queries.len();
    match &cfg.task {
        Task::Search { opts, .. } => {
            let (rows, ex) = drpo::plan(n, *opts, cfg.examples.len());
            s.push_str(&format!(
                "{n} queries, depth {}, beam {}, actions {}, {} examples (k {})\nupper bound with no early stop, duplicate or re-ask (each re-ask adds 1, at most {} per evaluator/optimizer request; a scoring that falls back to log-probabilities adds 1 per aspect, a proposal that falls back to plain text up to {}):\n step  beam  base  evaluator  optimizer\n",
                opts.depth, opts.beam, opts.actions, cfg.examples.len(), cfg.k, drpo::MAX_ASKS - 1, drpo::MAX_ASKS
            ));
            let (mut b, mut e, mut o) = (0, ex.evaluator, ex.optimizer);
            if !cfg.examples.is_empty() {
                s.push_str(&format!(
                    "  ex.     -  {:>4}  {:>9}  {:>9}\n",
                    0, ex.evaluator, ex.optimizer
                ));
            }
            for r in rows {
                s.push_str(&format!(
                    "{:>5}  {:>4}  {:>4}  {:>9}  {:>9}\n",
                    r.step + 1,
                    r.beam,
                    r.base,
                    r.evaluator,
                    r.optimizer
                ));
                b += r.base;
                e += r.evaluator;
                o += r.optimizer;
            }
            s.push_str(&format!(
                "total: {} requests ({b} base, {e} evaluator, {o} optimizer)\n",
                b + e + o
            ));
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

async fn search(cfg: OptimizeConfig) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let Task::Search {
        opts,
        initial_prompt,
        optimizer,
    } = &cfg.task
    else {
        return Err(RunError::Internal("not a search".into()));
    };
    let dir = prepare(&cfg).await?;
    let engines = open_engines(&cfg, &dir, Some(optimizer))?;
    let mut critic = engines.critic(&cfg);
    let mut events = Events::create(&cfg.out.join("search.jsonl"))?;
    let mut sink = |v: serde_json::Value| events.write(&v);
    let mut state = Search::new(initial_prompt);
    let quiet = cfg.run.display == crate::engine::progress::Display::Quiet;
    let stats = engines.stats.clone();
    let mut result = Ok(());
    if !cfg.examples.is_empty() {
        result = state.optimise_examples(&mut critic, &mut sink).await;
    }
    if result.is_ok() {
        result = state
            .run(&mut critic, &cfg.queries, *opts, &mut sink, |s| {
                if !quiet {
                    let snap = stats.snapshot();
                    eprintln!(
                        "cai: step {} (query {}): {} prompts scored, best {:.2}, mean {:.2} ({} requests sent, {} from the journal)",
                        s.step + 1,
                        s.query_id,
                        s.evaluated,
                        s.best,
                        s.mean,
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
    let report = Report {
        kind: "optimize",
        status,
        base: cfg.base.label.clone(),
        evaluator: cfg.evaluator.label.clone(),
        optimizer: optimizer.label.clone(),
        queries: cfg.queries.len(),
        beam: opts.beam,
        actions: opts.actions,
        depth: opts.depth,
        seed: cfg.seed,
        examples: cfg.examples.len(),
        initial_prompt: initial_prompt.clone(),
        best_prompt: best.prompt.clone(),
        best_reward: best.reward,
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
                reward: n.reward,
                prompt: n.prompt.clone(),
            })
            .collect(),
        nodes: state.nodes.len(),
        dropped: state.dropped,
        requests: engines.stats.snapshot(),
        wall_time_s: started.elapsed().as_secs_f64(),
    };
    files::write_json(&cfg.out.join("report.json"), &report)?;
    if let Err(e) = result {
        return Err(item_error(e));
    }
    files::write_text_atomic(
        &cfg.out.join("system_prompt.txt"),
        &format!("{}\n", best.prompt),
    )?;
    if !state.examples.is_empty() {
        files::write_json(&cfg.out.join("examples.json"), &state.examples)?;
    }
    let snap = engines.stats.snapshot();
    Ok(Outcome {
        table: report.table(),
        summary: format!(
            "cai: searched {} prompts ({} dropped) into {}; best reward {}; {} requests sent, {} from the journal; report in {}",
            state.nodes.len(),
            state.dropped,
            cfg.out.join("system_prompt.txt").display(),
            best.reward.map_or("-".into(), |r| format!("{r:.2}")),
            snap.requests,
            snap.cached,
            cfg.out.join("report.json").display()
        ),
    })
}

async fn eval(cfg: OptimizeConfig) -> Result<Outcome, RunError> {
    let Task::Eval { prompts } = &cfg.task else {
        return Err(RunError::Internal("not an eval".into()));
    };
    let dir = prepare(&cfg).await?;
    let engines = open_engines(&cfg, &dir, None)?;
    let mut critic = engines.critic(&cfg);
    let mut lines = Events::create(&cfg.out.join("eval.jsonl"))?;
    let mut results: Vec<Vec<Option<Evaluation>>> = vec![Vec::new(); prompts.len()];
    for q in &cfg.queries {
        let (aspects, fallback, _) = critic.aspects(q).await.map_err(item_error)?;
        for (i, (file, prompt)) in prompts.iter().enumerate() {
            let got = critic
                .evaluate(prompt, q, &aspects)
                .await
                .map_err(item_error)?;
            let mut v = serde_json::json!({
                "prompt_file": file.display().to_string(), "query_id": &q.id, "query": &q.text,
                "aspects_fallback": fallback,
            });
            match &got {
                Ok(ev) => {
                    v["answer"] = serde_json::json!(ev.answer);
                    v["scores"] = serde_json::json!(ev.scores);
                    v["reward"] = serde_json::json!(ev.reward);
                }
                Err(why) => v["dropped"] = serde_json::json!(why),
            }
            lines.write(&v).map_err(RunError::Internal)?;
            results[i].push(got.ok());
        }
    }
    let names: Vec<String> = prompts
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let (per, pairs) = drpo::figures(&names, &results);
    let snap = engines.stats.snapshot();
    let report = serde_json::json!({
        "kind": "optimize-eval",
        "base": cfg.base.label, "evaluator": cfg.evaluator.label,
        "queries": cfg.queries.len(), "seed": cfg.seed,
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
