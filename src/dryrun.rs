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
//! Requests a resume would answer from the journal are counted as sent.

use serde::Serialize;

use crate::cost::{Price, REPLY_FRACTION};
use crate::engine::estimate_tokens;
use crate::input::{Constitution, InputErrors, PromptReader, PromptSpec};
use crate::pipeline::initial_request;
use crate::provider::{GenParams, Provider};
use crate::run::RunError;
use crate::template::Templates;

/// What a run would use: endpoint, inputs, parameters.
pub struct Run<'a> {
    pub provider: &'a dyn Provider,
    pub constitution: &'a Constitution,
    pub templates: &'a Templates,
    pub params: &'a GenParams,
    pub rounds: u32,
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
    pub price: Option<Price>,
    pub max_cost: Option<f64>,
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
        let _ = writeln!(
            o,
            "{:<10} {:>10} {:>16} {:>17}",
            "stage", "requests", "input tokens ~", "output tokens ~"
        );
        for s in self.stages.iter().chain(std::iter::once(&self.total())) {
            let _ = writeln!(
                o,
                "{:<10} {:>10} {:>16} {:>17}",
                s.stage, s.requests, s.tokens_in, s.tokens_out
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
fn request_lengths(p: &Run, reply_chars: usize) -> Result<(u64, u64), RunError> {
    let reply = "x".repeat(reply_chars);
    let (mut crit, mut rev, mut n) = (0u64, 0u64, 0u64);
    for pr in &p.constitution.principles {
        let principle = PrincipleCtx {
            name: pr.name.as_deref(),
            critique: &pr.critique,
            revision: &pr.revision,
        };
        let c = p
            .templates
            .render(
                "critique.jinja",
                minijinja::context! { prompt => "", answer => &reply, principle => &principle, round => 1 },
            )
            .map_err(|e| RunError::Template(vec![e]))?;
        let r = p
            .templates
            .render(
                "revision.jinja",
                minijinja::context! { prompt => "", answer => &reply, critique => &reply, principle => &principle, round => 1 },
            )
            .map_err(|e| RunError::Template(vec![e]))?;
        crit += (c.len() as u64).div_ceil(4) + 4;
        rev += (r.len() as u64).div_ceil(4) + 4;
        n += 1;
    }
    let n = n.max(1);
    Ok((crit / n, rev / n))
}

/// Estimates `run` over the prompts of `spec`.
pub fn estimate(pipeline: &Run, spec: &PromptSpec) -> Result<Estimate, RunError> {
    let max_tokens = pipeline.params.max_tokens;
    let reply = ((f64::from(max_tokens) * REPLY_FRACTION).round() as u64).max(1);
    let reply_msg = reply + 4;
    let (crit_req, rev_req) = request_lengths(pipeline, (reply * 4) as usize)?;
    let rounds = u64::from(pipeline.rounds);
    let mut initial = StageEstimate {
        stage: "initial",
        ..StageEstimate::default()
    };
    let mut critique = StageEstimate {
        stage: "critique",
        ..StageEstimate::default()
    };
    let mut revision = StageEstimate {
        stage: "revision",
        ..StageEstimate::default()
    };
    let mut prompts = 0u64;
    for rec in PromptReader::open(spec).map_err(InputErrors::from)? {
        let rec = rec.map_err(InputErrors::from)?;
        let (_, req) = initial_request(
            pipeline.constitution,
            pipeline.templates,
            pipeline.params,
            &rec.text,
        )
        .map_err(RunError::Usage)?;
        let first = estimate_tokens(&req);
        prompts += 1;
        initial.requests += 1;
        initial.tokens_in += first;
        initial.tokens_out += reply;
        // Conversation before round r's critique request: the first
        // request and its reply, then (r-1) full rounds of two turns each.
        let round_growth = crit_req + reply_msg + rev_req + reply_msg;
        for r in 0..rounds {
            let before = first + reply_msg + r * round_growth;
            critique.requests += 1;
            critique.tokens_in += before + crit_req;
            critique.tokens_out += reply;
            revision.requests += 1;
            revision.tokens_in += before + crit_req + reply_msg + rev_req;
            revision.tokens_out += reply;
        }
    }
    let provider = pipeline.provider;
    Ok(Estimate {
        provider: provider.name().to_string(),
        model: provider.model().to_string(),
        endpoint: provider.endpoint(),
        prompts,
        rounds: pipeline.rounds,
        max_tokens,
        stages: vec![initial, critique, revision],
        price: None,
        max_cost: None,
    })
}
