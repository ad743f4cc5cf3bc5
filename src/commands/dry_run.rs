//! `generate --dry-run`: how many requests a run sends per stage, and an
//! estimate of its tokens and cost, without sending anything.
//!
//! How the estimate is made (also printed with it):
//! - every prompt's real first request is rendered (system message,
//!   few-shots, `initial.jinja`) and counted at 4 characters a token plus 4
//!   tokens per message;
//! - each reply is assumed to be [`REPLY_FRACTION`] of `--max-tokens`;
//! - a critique or revision request is the conversation so far plus the
//!   template rendered for each principle of the constitution (averaged)
//!   around a reply of that length, so later rounds cost more input;
//! - output tokens are the same assumed reply length per request; the
//!   upper bound assumes every reply uses all of `--max-tokens`.
//!
//! - `--samples N`: the initial request asks for N answers (`n`), each a
//!   reply's worth of output;
//! - `--preference judge`: every pair of the M candidates (N sampled answers
//!   and the final revision) is judged in both orders by every judge: a
//!   question holding the prompt and two replies, answered by a short
//!   verdict (or a chain of thought with `--judge-cot`), K verdicts per
//!   question with `--judge-samples K` asked for with `n`.
//!
//! Request counts assume the endpoint honours `n` and returns readable
//! verdicts (OpenAI, vLLM and the in-repo fake do); one that ignores `n`
//! gets one request per missing sample or verdict, and the upper bound
//! printed says how many that can be. Requests a resume would answer from
//! the journal are counted as sent.

use serde::Serialize;

use crate::config::generate::{GenerateConfig, Selection};
use crate::cost::{Price, REPLY_FRACTION};
use crate::engine::{estimate_message_tokens, estimate_tokens};
use crate::error::RunError;
use crate::feedback::judge::{Judge, VERDICT_MAX_TOKENS};
use crate::input::{InputErrors, PromptReader};
use crate::pipeline::initial_request;
use crate::provider::{estimated_text_tokens, Message};

/// `cai generate --dry-run`: checks what `generate` checks before sending
/// (except that the API key is set), then prints requests per stage and
/// estimated tokens and cost. Sends nothing and writes nothing.
pub fn dry_run(cfg: &GenerateConfig) -> Result<String, RunError> {
    let mut estimate = estimate(cfg)?;
    estimate.price = cfg.price.clone();
    estimate.batch_factor = cfg.batch_price_factor();
    estimate.max_cost = cfg.max_cost;
    let mut out = estimate.render();
    if let Some(missing) = &cfg.missing_key {
        out.push_str(&format!(
            "note: {missing} before the real run (the dry run needs no key)\n"
        ));
    }
    Ok(out)
}

/// One stage's share.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StageEstimate {
    pub stage: &'static str,
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

/// The whole estimate.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub prompts: u64,
    pub rounds: u32,
    pub max_tokens: u32,
    pub stages: Vec<StageEstimate>,
    /// Requests if the endpoint ignores `n` (one per sample and verdict).
    pub requests_without_n: u64,
    /// What the judge stage compares, for the report.
    pub judging: Option<String>,
    pub price: Option<Price>,
    pub max_cost: Option<f64>,
    /// Input tokens the provider's prompt cache can serve: each stage's
    /// shared prefix (system message and few-shots) for every request but
    /// the stage's first, and a round's whole earlier request of the same
    /// stage; only prefixes at or above the provider's minimum.
    pub cache_read: u64,
    /// Input tokens written to the cache at the write price (Anthropic:
    /// each stage's prefix once, and conversations a later round repeats).
    pub cache_write: u64,
    /// The provider has a batch API (`--batch`), so batch + caching applies.
    pub batch: bool,
    /// The share of the list price `price` already holds: 0.5 when this
    /// run submits batches (`--batch`), else 1.
    pub batch_factor: f64,
}

impl Estimate {
    pub fn total(&self) -> StageEstimate {
        let mut t = StageEstimate {
            stage: "total",
            ..StageEstimate::default()
        };
        for s in &self.stages {
            t.requests += s.requests;
            t.tokens_in += s.tokens_in;
            t.tokens_out += s.tokens_out;
        }
        t
    }

    /// (estimated, upper bound) in USD, when the price is known.
    pub fn cost(&self) -> Option<(f64, f64)> {
        let p = self.price.as_ref()?;
        let t = self.total();
        Some((
            p.cost(t.tokens_in, t.tokens_out),
            p.cost(t.tokens_in, t.requests * u64::from(self.max_tokens)),
        ))
    }

    /// The report printed to stdout.
    ///
    /// Long because it is the printed report, section after section.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "dry run: nothing was sent");
        let _ = writeln!(
            o,
            "provider {} · model {} · endpoint {}",
            self.provider, self.model, self.endpoint
        );
        let _ = writeln!(
            o,
            "{} prompts × (1 initial + {} rounds × (critique + revision))",
            self.prompts, self.rounds
        );
        if let Some(j) = &self.judging {
            let _ = writeln!(o, "{j}");
        }
        let _ = writeln!(
            o,
            "{:<10} {:>10} {:>16} {:>17}",
            "stage", "requests", "input tokens ~", "output tokens ~"
        );
        let total = self.total();
        for s in self.stages.iter().chain(std::iter::once(&total)) {
            let _ = writeln!(
                o,
                "{:<10} {:>10} {:>16} {:>17}",
                s.stage, s.requests, s.tokens_in, s.tokens_out
            );
        }
        if self.requests_without_n > total.requests {
            let _ = writeln!(
                o,
                "requests: {} if the endpoint honours `n`, up to {} if it ignores it",
                total.requests, self.requests_without_n
            );
        }
        match (&self.price, self.cost()) {
            (Some(p), Some((est, max))) => {
                let _ = writeln!(
                    o,
                    "price: ${} in / ${} out per million tokens ({})",
                    p.input_per_m, p.output_per_m, p.source
                );
                let _ = writeln!(
                    o,
                    "estimated cost: ${est:.4} (at most ${max:.4} if every reply used --max-tokens {})",
                    self.max_tokens
                );
                if self.cache_read > 0 {
                    let cached = est
                        - self.cache_read as f64 * (p.input_per_m - p.cached_in_per_m) / 1e6
                        + self.cache_write as f64 * (p.cache_write_per_m - p.input_per_m) / 1e6;
                    let _ = writeln!(
                        o,
                        "with prompt caching: ${cached:.4} (~{} input tokens read from the cache at ${}/M, ~{} written at ${}/M)",
                        self.cache_read, p.cached_in_per_m, self.cache_write, p.cache_write_per_m
                    );
                    if self.batch && self.batch_factor < 1.0 {
                        // The figures above are at the batch price already.
                        let _ = writeln!(
                            o,
                            "live (without --batch): ${:.4}; live with prompt caching: ${:.4}",
                            est / self.batch_factor,
                            cached / self.batch_factor
                        );
                    } else if self.batch {
                        let _ = writeln!(
                            o,
                            "with --batch: ${:.4}; with --batch and prompt caching: ${:.4}",
                            est * crate::config::generate::BATCH_PRICE_FACTOR,
                            cached * crate::config::generate::BATCH_PRICE_FACTOR
                        );
                    }
                }
                if let Some(cap) = self.max_cost {
                    let verdict = if max <= cap {
                        "the whole run fits"
                    } else if est <= cap {
                        "the run may stop at the cap (exit 3, resumable)"
                    } else {
                        "the run will likely stop at the cap (exit 3, resumable)"
                    };
                    let _ = writeln!(o, "--max-cost ${cap}: {verdict}");
                }
            }
            _ => {
                let _ = writeln!(
                    o,
                    "estimated cost: unknown (no price for model {}; pass --price-in and --price-out, USD per million tokens)",
                    self.model
                );
            }
        }
        let _ = writeln!(
            o,
            "how: each prompt's first request rendered, 4 characters a token + 4 per message; replies assumed {:.0}% of --max-tokens; later stages grow the conversation",
            REPLY_FRACTION * 100.0
        );
        o
    }
}

#[derive(Serialize)]
struct PrincipleCtx<'a> {
    name: Option<&'a str>,
    critique: &'a str,
    revision: &'a str,
}

/// Average token length of the critique and revision requests over the
/// principles, around a reply of `reply_chars` characters.
fn request_lengths(p: &GenerateConfig, reply_chars: usize) -> Result<(u64, u64), RunError> {
    let reply = "x".repeat(reply_chars);
    let (mut crit, mut rev, mut n) = (0u64, 0u64, 0u64);
    for pr in &p.inputs.constitution.principles {
        let principle = PrincipleCtx {
            name: pr.name.as_deref(),
            critique: &pr.critique,
            revision: &pr.revision,
        };
        let c = p
            .inputs
            .templates
            .render(
                "critique.jinja",
                minijinja::context! { prompt => "", answer => &reply, principle => &principle, round => 1 },
            )
            .map_err(|e| RunError::Template(vec![e]))?;
        let r = p
            .inputs
            .templates
            .render(
                "revision.jinja",
                minijinja::context! { prompt => "", answer => &reply, critique => &reply, principle => &principle, round => 1 },
            )
            .map_err(|e| RunError::Template(vec![e]))?;
        crit += Message::user(c).estimated_tokens();
        rev += Message::user(r).estimated_tokens();
        n += 1;
    }
    let n = n.max(1);
    Ok((crit / n, rev / n))
}

/// The judge stage per prompt, when pairs are judged.
struct Judging {
    /// Questions asked: every unordered pair of candidates in both orders,
    /// by every judge.
    questions: u64,
    /// Verdicts per question.
    k: u64,
    /// Tokens of a question, without the prompt.
    q_tokens: u64,
    /// Tokens of the `k` verdicts of a question.
    out_tokens: u64,
    /// Candidates per prompt.
    m: u64,
}

impl Judging {
    /// The judge stage in the estimate's words.
    fn describe(&self, judges: usize) -> String {
        let (m, k) = (self.m, self.k);
        format!(
            "judge: {m} candidates → {} comparisons × 2 orders × {judges} judge(s) per prompt{}",
            m * m.saturating_sub(1) / 2,
            if k > 1 {
                format!(", {k} verdicts per question")
            } else {
                String::new()
            }
        )
    }
}

/// The judge stage: M candidates, every unordered pair in both orders by
/// every judge; K verdicts per question (`reply`: tokens of an answer).
fn judging(
    cfg: &GenerateConfig,
    reply: u64,
    samples: u64,
    rounds: u64,
) -> Result<Option<Judging>, RunError> {
    let Some(Selection::Judge { .. }) = cfg.selection else {
        return Ok(None);
    };
    let m = samples + u64::from(rounds > 0);
    let judges = cfg.judges.len().max(1) as u64;
    let k = u64::from(cfg.judge.samples.max(1));
    let questions = m * m.saturating_sub(1) / 2 * 2 * judges;
    // A question holds the prompt and two replies.
    let j = Judge::new(
        Vec::new(),
        cfg.inputs.templates.clone(),
        Some(&cfg.inputs.constitution),
        cfg.judge.clone(),
    );
    let answer = "x".repeat((reply * 4) as usize);
    let q = j
        .render("", &answer, &answer, j.principle("", ""))
        .map_err(|e| RunError::Usage(format!("{e:?}")))?;
    let verdict_out = if cfg.judge.cot {
        ((f64::from(cfg.judge.cot_max_tokens) * REPLY_FRACTION).round() as u64).max(1)
    } else {
        u64::from(VERDICT_MAX_TOKENS).min(4)
    };
    Ok(Some(Judging {
        questions,
        k,
        q_tokens: Message::user(q).estimated_tokens(),
        out_tokens: verdict_out * k,
        m,
    }))
}

/// Estimates a run of `cfg` over its prompts.
///
/// Long because it mirrors the run stage by stage (initial, rounds, judge,
/// samples) with each stage's request and cache counts next to each other.
pub fn estimate(cfg: &GenerateConfig) -> Result<Estimate, RunError> {
    let max_tokens = cfg.params.max_tokens;
    let reply = ((f64::from(max_tokens) * REPLY_FRACTION).round() as u64).max(1);
    let reply_msg = reply + 4;
    let (crit_req, rev_req) = request_lengths(cfg, (reply * 4) as usize)?;
    let rounds = u64::from(cfg.rounds);
    let samples = u64::from(cfg.samples.max(1));
    let stage = |stage| StageEstimate {
        stage,
        ..StageEstimate::default()
    };
    let (mut initial, mut critique, mut revision, mut judge) = (
        stage("initial"),
        stage("critique"),
        stage("revision"),
        stage("judge"),
    );
    let judging = judging(cfg, reply, samples, rounds)?;
    // Each stage's shared prefix, and the least the provider caches.
    let anthropic = cfg.provider.name() == "anthropic";
    let caching = cfg.endpoint.prompt_cache == crate::cli::PromptCacheArg::Auto || !anthropic;
    let min = if anthropic {
        crate::provider::anthropic::min_cacheable_tokens(&cfg.provider.model())
    } else {
        1024
    };
    let c = &cfg.inputs.constitution;
    let cacheable = |t: u64| if caching && t >= min { t } else { 0 };
    let prefix = |stage| cacheable(estimate_message_tokens(c.prefix(stage)));
    use crate::input::Stage as S;
    let (p_init, p_crit, p_rev) = (prefix(S::Initial), prefix(S::Critique), prefix(S::Revision));
    let (mut cache_read, mut cache_write) = (0u64, 0u64);
    let mut prompts = 0u64;
    for rec in PromptReader::open(&cfg.inputs.spec).map_err(InputErrors::from)? {
        let rec = rec.map_err(InputErrors::from)?;
        let (_, req) = initial_request(
            &cfg.inputs.constitution,
            &cfg.inputs.templates,
            &cfg.params,
            &rec.text,
        )
        .map_err(|e| RunError::Template(vec![e]))?;
        let first = estimate_tokens(&req);
        prompts += 1;
        initial.requests += 1;
        initial.tokens_in += first;
        initial.tokens_out += reply * samples;
        // Conversation before round r's critique request: the first
        // request and its reply, then (r-1) full rounds of two turns each.
        let round_growth = crit_req + reply_msg + rev_req + reply_msg;
        let shared = if prompts == 1 { 0 } else { 1 };
        cache_read += shared * p_init;
        for r in 0..rounds {
            let before = first + reply_msg + r * round_growth;
            critique.requests += 1;
            critique.tokens_in += before + crit_req;
            critique.tokens_out += reply;
            revision.requests += 1;
            revision.tokens_in += before + crit_req + reply_msg + rev_req;
            revision.tokens_out += reply;
            // Round r repeats round r-1's request of the same stage whole;
            // round 1 only the stage's shared prefix.
            if r == 0 {
                cache_read += shared * (p_crit + p_rev);
            } else {
                let prev = before - round_growth;
                cache_read +=
                    cacheable(prev + crit_req) + cacheable(prev + crit_req + reply_msg + rev_req);
            }
            if anthropic && r + 1 < rounds {
                cache_write += cacheable(before + crit_req).saturating_sub(p_crit)
                    + cacheable(before + crit_req + reply_msg + rev_req).saturating_sub(p_rev);
            }
        }
        if let Some(j) = &judging {
            judge.requests += j.questions;
            judge.tokens_in += j.questions * (j.q_tokens + estimated_text_tokens(&rec.text));
            judge.tokens_out += j.questions * j.out_tokens;
        }
    }
    let mut stages = vec![initial, critique, revision];
    let mut requests_without_n: u64 = stages.iter().map(|s| s.requests).sum();
    requests_without_n += prompts * (samples - 1);
    let mut judging_text = None;
    if let Some(j) = judging {
        requests_without_n += prompts * j.questions * j.k;
        judging_text = Some(j.describe(cfg.judges.len().max(1)));
        stages.push(judge);
    }
    let provider = &cfg.provider;
    Ok(Estimate {
        provider: provider.name().to_string(),
        model: provider.model().to_string(),
        endpoint: provider.endpoint(),
        prompts,
        rounds: cfg.rounds,
        max_tokens,
        stages,
        requests_without_n,
        judging: judging_text,
        price: None,
        max_cost: None,
        cache_read,
        cache_write: if anthropic {
            cache_write + p_init + p_crit + p_rev
        } else {
            0
        },
        batch: cfg.provider.entry().batch == crate::provider::registry::BatchSupport::Api,
        batch_factor: 1.0,
    })
}
