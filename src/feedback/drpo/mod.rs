//! DRPO: tuning-free self-alignment by searching a system prompt (and the
//! answers of in-context examples) under a dynamic reward.
//!
//! After Singla et al., "Dynamic Rewarding with Prompt Optimization Enables
//! Tuning-free Self-Alignment of Language Models" (EMNLP 2024, arXiv
//! 2411.08733). Three roles, each an [`Engine`] (journal, limits, retries)
//! with its own journal file and its own sampling parameters
//! ([`Sampling`]): the **base** model answers, the **evaluator** picks
//! aspects and scores, the **optimizer** proposes new prompts (or answers).
//!
//! One file per concern:
//!
//! | module | what |
//! |---|---|
//! | [`search`] | the beam search over system prompts, the training order, the dry-run plan |
//! | [`evaluator`] | aspect choice, scoring (JSON, then first-token log-probabilities) |
//! | [`optimizer`] | proposals: one call for all, JSON list → marker list → one call each |
//! | [`examples`] | the search for each in-context example's answer |
//! | [`state`] | what a re-run needs: dropped requests, the finished result |
//! | [`figures`] | `optimize eval`: means, win rates, Wilson intervals |
//!
//! This file holds what every role shares: the [`Critic`] (the engines,
//! templates and parameters) and how a reply is asked for and read.
//!
//! ## Model output is never trusted
//!
//! An evaluator or optimizer reply that is not usable is asked again with
//! the next seed, up to [`MAX_ASKS`] times in all; a re-ask of a greedy
//! request samples at [`REASK_TEMPERATURE`] (the same greedy request would
//! get the same reply). What happens then depends on the role (see
//! [`evaluator`] and [`optimizer`]). A request the engine gives up on (cut
//! off twice by the token limit, blocked, failed after retries) is written
//! to `.cai/dropped.jsonl` with its reason, so a re-run does not send it
//! again unless `--retry-dropped` is given ([`state`]).

pub mod evaluator;
pub mod examples;
pub mod figures;
pub mod optimizer;
pub mod search;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::journal::request_key;
use crate::engine::{Engine, ItemError};
use crate::feedback::examples::Retriever;
use crate::provider::{ChatRequest, Completion, GenParams, Message};
use crate::template::Templates;

pub use evaluator::{
    default_aspects, expected_digit, parse_aspects, parse_scores, Aspect, AspectChoice,
    AspectScore, Evaluation, ScoreMethod,
};
pub use figures::{figures, wilson, Pairwise, PromptFigures};
pub use optimizer::{parse_marked_prompts, parse_proposals, Proposal};
pub use search::{plan, training_order, Node, PlanRow, Search, SearchOptions, StepSummary};
pub use state::{Finished, RunState};

/// The start of every search (the paper's).
pub const INITIAL_PROMPT: &str = "You are a helpful assistant.";
/// Asks per evaluator/optimizer reply: the first and two re-asks.
pub const MAX_ASKS: u64 = 3;
/// Temperature of a re-ask whose first ask was greedy.
pub const REASK_TEMPERATURE: f32 = 0.7;
/// Prompt versions shown to the optimizer, the current one included (the
/// paper's 5).
pub const HISTORY: usize = 5;
/// Longest system prompt the optimizer may propose, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Bullets the optimizer may add per proposal (the paper's 2).
pub const MAX_NEW_BULLETS: usize = 2;
/// Least and most aspects the evaluator picks per query (the paper's 2–5).
pub const MIN_ASPECTS: usize = 2;
pub const MAX_ASPECTS: usize = 5;
/// First-token candidates asked for by a log-probability score.
pub const TOP_LOGPROBS: u8 = 20;
/// Tokens a log-probability score request may generate (only the first is
/// read; a few more keep the reply from being blank).
pub const DIGIT_MAX_TOKENS: u32 = 4;
/// Least total probability of the digit tokens 1–5 for a log-probability
/// score to count.
pub const MIN_DIGIT_MASS: f64 = 0.05;
/// Shortest system prompt the plain-text proposal fallback accepts.
pub const MIN_PROMPT_CHARS: usize = 20;

/// Either a value, or why the model never gave a usable one.
pub type Usable<T> = Result<T, Unusable>;

/// Why a model's reply (or the lack of one) cannot be used. Recorded in
/// `search.jsonl` and the report by its text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Unusable {
    /// The engine gave up on the request (cut off, blocked, failed), in
    /// this run or an earlier one (`dropped.jsonl`); the engine's reason.
    #[error("{0}")]
    Dropped(String),
    /// No JSON value could be read from the reply.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON of another kind than asked for.
    #[error("expected a JSON {expected}, got {got}")]
    Shape {
        expected: &'static str,
        got: &'static str,
    },
    /// Something the reply must hold is missing or empty.
    #[error("no {0}")]
    Missing(String),
    /// A value out of its range, or too few of something.
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    /// The log-probability fallback got none from the endpoint.
    #[error("the endpoint returned no log-probabilities")]
    NoLogprobs,
    /// A list reply shorter than asked.
    #[error("the reply held {held} of {want} proposals")]
    TooFew { held: usize, want: usize },
    /// Every ask of [`MAX_ASKS`] was unusable.
    #[error("{asks} replies unusable; last: {last}")]
    Exhausted { asks: u64, last: Box<Unusable> },
    /// The optimizer's list ask, its plain-text fallback and the ask per
    /// proposal all failed.
    #[error("optimizer: {json}; plain-text fallback: {markers}; one per call: {one}")]
    Proposals {
        json: Box<Unusable>,
        markers: Box<Unusable>,
        one: Box<Unusable>,
    },
    /// The first way failed and so did the fallback.
    #[error("{first}; log-probability fallback: {fallback}")]
    Fallback {
        first: Box<Unusable>,
        fallback: Box<Unusable>,
    },
    /// Said of one role (`base model`, `evaluator`) or one aspect.
    #[error("{part}: {source}")]
    In {
        part: String,
        #[source]
        source: Box<Unusable>,
    },
}

/// Written as its text (`search.jsonl`, `report.json`).
impl Serialize for Unusable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Unusable {
    /// This reason, said of `part`.
    pub fn within(self, part: impl Into<String>) -> Unusable {
        Unusable::In {
            part: part.into(),
            source: Box::new(self),
        }
    }

    /// `what` is out of range or short: `why`.
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Unusable {
        Unusable::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
}

/// Sampling parameters per role (paper defaults in `cli.rs`); the seed is
/// set per ask from `--seed`. Read back from `report.json` by the report;
/// a role an older run did not write reads as [`GenParams::default`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    pub base: GenParams,
    pub evaluator: GenParams,
    pub optimizer: GenParams,
}

/// Which role a request is for (its engine, parameters and counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Base,
    Evaluator,
    /// The evaluator's log-probability scores (keeps truncated replies).
    Scorer,
    Optimizer,
}

/// The engines of the three roles.
pub struct Engines {
    pub base: Arc<Engine>,
    pub evaluator: Arc<Engine>,
    pub scorer: Arc<Engine>,
    pub optimizer: Arc<Engine>,
}

/// Requests asked per role (sent or replayed from a journal), for the
/// per-step counts in `search.jsonl` that the dry run predicts.
#[derive(Debug, Default)]
pub struct Asked {
    base: AtomicU64,
    evaluator: AtomicU64,
    optimizer: AtomicU64,
}

/// A snapshot of [`Asked`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoleCounts {
    pub base: u64,
    pub evaluator: u64,
    pub optimizer: u64,
}

impl RoleCounts {
    pub fn since(self, before: RoleCounts) -> RoleCounts {
        RoleCounts {
            base: self.base - before.base,
            evaluator: self.evaluator - before.evaluator,
            optimizer: self.optimizer - before.optimizer,
        }
    }

    pub fn total(self) -> u64 {
        self.base + self.evaluator + self.optimizer
    }
}

/// The three roles and what they share.
pub struct Critic {
    pub engines: Engines,
    pub templates: Templates,
    pub aspects: Vec<Aspect>,
    pub sampling: Sampling,
    pub seed: u64,
    /// The in-context examples and their index.
    pub retriever: Retriever,
    /// Examples placed before each query.
    pub k: usize,
    pub state: RunState,
    asked: Asked,
    chosen: HashMap<String, AspectChoice>,
}

impl Critic {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engines: Engines,
        templates: Templates,
        aspects: Vec<Aspect>,
        sampling: Sampling,
        seed: u64,
        retriever: Retriever,
        k: usize,
        state: RunState,
    ) -> Self {
        Self {
            engines,
            templates,
            aspects,
            sampling,
            seed,
            retriever,
            k,
            state,
            asked: Asked::default(),
            chosen: HashMap::new(),
        }
    }

    /// Requests asked so far, per role.
    pub fn asked(&self) -> RoleCounts {
        RoleCounts {
            base: self.asked.base.load(Ordering::Relaxed),
            evaluator: self.asked.evaluator.load(Ordering::Relaxed),
            optimizer: self.asked.optimizer.load(Ordering::Relaxed),
        }
    }

    fn engine(&self, role: Role) -> &Engine {
        match role {
            Role::Base => &self.engines.base,
            Role::Evaluator => &self.engines.evaluator,
            Role::Scorer => &self.engines.scorer,
            Role::Optimizer => &self.engines.optimizer,
        }
    }

    /// The role's parameters for ask number `attempt` (0-based).
    fn params(&self, role: Role, attempt: u64) -> GenParams {
        let mut p = match role {
            Role::Base => self.sampling.base.clone(),
            Role::Evaluator | Role::Scorer => self.sampling.evaluator.clone(),
            Role::Optimizer => self.sampling.optimizer.clone(),
        };
        p.seed = Some(self.seed.wrapping_add(attempt));
        if attempt > 0 && p.temperature == 0.0 {
            p.temperature = REASK_TEMPERATURE;
        }
        p
    }

    fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String, ItemError> {
        self.templates
            .render(name, ctx)
            .map_err(|e| ItemError::Stop(format!("template failed: {e}")))
    }

    /// A reply for `req` from `role`'s engine: a request dropped by an
    /// earlier run stays dropped (unless `--retry-dropped`), and one the
    /// engine gives up on now is recorded as dropped.
    async fn send(
        &self,
        role: Role,
        stage: &str,
        id: &str,
        req: &ChatRequest,
    ) -> Result<Usable<Completion>, ItemError> {
        let counter = match role {
            Role::Base => &self.asked.base,
            Role::Evaluator | Role::Scorer => &self.asked.evaluator,
            Role::Optimizer => &self.asked.optimizer,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let engine = self.engine(role);
        let key = request_key(
            engine.provider().name(),
            engine.provider().model(),
            stage,
            req,
        );
        if let Some(why) = self.state.dropped(&key) {
            // A reply journaled since (by --retry-dropped) wins.
            if engine.journal().get(&key).is_none() {
                engine.stats().cached.fetch_add(1, Ordering::Relaxed);
                return Ok(Err(Unusable::Dropped(why)));
            }
        }
        match engine.complete(stage, id, req).await {
            Ok(c) => {
                self.state.clear(&key);
                Ok(Ok(c))
            }
            Err(ItemError::Reject(why)) => {
                self.state.record_drop(&key, stage, id, &why).map_err(|e| {
                    ItemError::Stop(format!("cannot write {}: {e}", self.state.path().display()))
                })?;
                Ok(Err(Unusable::Dropped(why)))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `text` as one user turn until `parse` accepts the reply, at
    /// most [`MAX_ASKS`] times (each ask with the next seed).
    async fn ask<T>(
        &self,
        role: Role,
        stage: &str,
        id: &str,
        text: &str,
        parse: impl Fn(&str) -> Usable<T>,
    ) -> Result<Usable<T>, ItemError> {
        let mut last = Unusable::TooFew { held: 0, want: 1 };
        for attempt in 0..MAX_ASKS {
            let req = ChatRequest {
                messages: vec![Message::user(text)],
                params: self.params(role, attempt),
                cache: Default::default(),
            };
            match self.send(role, stage, id, &req).await? {
                Ok(c) => match parse(&c.text) {
                    Ok(v) => return Ok(Ok(v)),
                    Err(why) => last = why,
                },
                Err(why) => last = why,
            }
        }
        Ok(Err(Unusable::Exhausted {
            asks: MAX_ASKS,
            last: Box::new(last),
        }))
    }
}

/// The JSON value in a reply: the whole reply, else the span from its
/// first `open` to its last `close` (models wrap JSON in prose or fences).
fn json_span(text: &str, open: char, close: char) -> Result<Value, serde_json::Error> {
    let t = text.trim();
    serde_json::from_str::<Value>(t).or_else(|e| match (t.find(open), t.rfind(close)) {
        (Some(i), Some(j)) if i < j => serde_json::from_str::<Value>(&t[i..=j]),
        _ => Err(e),
    })
}

/// The JSON object in a reply.
pub fn json_object(text: &str) -> Usable<Map<String, Value>> {
    match json_span(text, '{', '}') {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Unusable::Shape {
            expected: "object",
            got: crate::input::json_kind(&other),
        }),
        Err(e) => Err(Unusable::NotJson(e.to_string())),
    }
}

/// The JSON array or object in a reply (a list of proposals, or one).
fn json_list_or_object(text: &str) -> Usable<Value> {
    let t = text.trim();
    let first = t.find(['[', '{']);
    let parsed = match first.map(|i| &t[i..i + 1]) {
        Some("[") => json_span(t, '[', ']').or_else(|_| json_span(t, '{', '}')),
        _ => json_span(t, '{', '}'),
    };
    match parsed {
        Ok(v @ (Value::Array(_) | Value::Object(_))) => Ok(v),
        Ok(other) => Err(Unusable::Shape {
            expected: "list",
            got: crate::input::json_kind(&other),
        }),
        Err(e) => Err(Unusable::NotJson(e.to_string())),
    }
}

/// A key of `m`, matched without regard to case or surrounding spaces.
fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn names(a: &[Aspect]) -> Vec<&str> {
    a.iter().map(|a| a.name.as_str()).collect()
}
