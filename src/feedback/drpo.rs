//! DRPO: tuning-free self-alignment by searching a system prompt (and the
//! answers of in-context examples) under a dynamic reward.
//!
//! After "Dynamic Rewarding with Prompt Optimization Enables Tuning-free
//! Self-Alignment of Language Models" (arXiv 2411.08733). Three roles, each
//! an [`Engine`] (journal, limits, retries) with its own journal file:
//! the **base** model answers, the **evaluator** picks aspects and scores,
//! the **optimizer** proposes new prompts (or answers).
//!
//! ## One evaluation of a prompt on a query
//!
//! 1. Aspects: the evaluator picks 1–5 aspects relevant to the query from
//!    the list (`optimize_aspects.jinja`), or names new ones. Cached per
//!    query text: one request per distinct query for the whole run.
//! 2. Answer: the base model answers `[system: prompt] + examples + [user:
//!    query]`, where the examples are the `k` most lexically similar ones of
//!    the bank (Jaccard over lower-cased words; ties by bank order).
//! 3. Score: the evaluator scores each aspect 1–5 with a rationale, as JSON
//!    (`optimize_score.jinja`); the reward is the mean score. A prompt is
//!    *satisfied* when every score is 5 or the mean is above 4.5.
//!
//! ## The beam search
//!
//! Step `d` (0-based, `d < depth`) uses query `d mod n`. For each node of
//! the beam (one node, the start prompt, at step 0): evaluate it; if it is
//! satisfied it is kept as it is; otherwise the optimizer proposes
//! `actions` new prompts from the prompt, query, answer, evaluation and the
//! last [`HISTORY`] prompt versions on its path (`optimize_propose.jinja`,
//! JSON `analysis`/`thought`/`new_system_prompt`), and each new prompt is
//! evaluated on the same query. A proposal identical to a prompt already
//! evaluated in this step is dropped unevaluated. The next beam is the
//! `beam` best of this step's evaluated parents and children by reward
//! (stable: earlier candidates win ties, so an unimproved parent stays).
//! The result is the top node of the last beam.
//!
//! ## Requests (the formula the tests check)
//!
//! With no re-asks, no failures and no duplicates, step `d` with a beam of
//! `b_d` nodes, `s_d` of them satisfied, sends
//!
//! ```text
//! [query d mod n not seen before]          evaluator (aspects)
//! + b_d · 2                                base answer + evaluator score, per parent
//! + (b_d − s_d) · actions · 3              optimizer proposal + base answer + score, per child
//! ```
//!
//! with `b_0 = 1` and `b_{d+1} ≤ min(beam, evaluated candidates of step d)`.
//! Each duplicate proposal removes 2 requests (its answer and score); each
//! re-ask adds 1; a scoring that falls back to log-probabilities adds one
//! request per aspect; a proposal that falls back to plain text adds 1 to
//! [`MAX_ASKS`]. The example bank costs, per example, 1 aspect request (if
//! its query is new) + 1 score + (if not satisfied) 1 rewrite + 1 score.
//!
//! ## Model output is never trusted
//!
//! An evaluator or optimizer reply that is not JSON, or misses a field, is
//! asked again with the next seed, up to [`MAX_ASKS`] times in all. What
//! happens then depends on the role:
//!
//! * **Aspect choice** falls back to a default set (Helpfulness, Clarity,
//!   Factuality), recorded as `fallback` in `search.jsonl`.
//! * **Scoring** falls back to first-token log-probabilities: one request
//!   per aspect (`optimize_score_digit.jinja`, ending "Rating (1-5):",
//!   temperature 0, at most [`DIGIT_MAX_TOKENS`] tokens, the top
//!   [`TOP_LOGPROBS`] first-token candidates asked for). The candidates
//!   that are a digit 1–5 (spaces trimmed) are renormalised and the score
//!   is the expected value Σ p(k)·k — a fraction, recorded with `"method":
//!   "logprobs"`, the digits' share of the probability (`p_digits`) and no
//!   rationale. A score needs `p_digits` ≥ [`MIN_DIGIT_MASS`]: below it the
//!   model was not answering with a digit, and renormalising noise would
//!   invent a score. Small local models (SmolLM2-135M) never write the
//!   JSON but do put some probability on digits, so a local search runs
//!   end to end; how much the scores say depends on the model (135M's
//!   barely depend on the answer: README, `cai optimize`). A model that
//!   writes JSON never reaches this, so the JSON path is unchanged. When
//!   the endpoint returns no log-probabilities (Anthropic, Gemini, HF) or
//!   an aspect has too little digit mass, the candidate is dropped with
//!   both reasons.
//! * **Proposals** fall back to plain text: `optimize_propose_text.jinja`
//!   asks for the new prompt alone between a `<prompt>` and a `</prompt>`
//!   line, up to [`MAX_ASKS`] times. The text between the last `<prompt>`
//!   that starts a line (the instruction's own mention of the markers is
//!   mid-sentence, so an echo of it does not count) and the `</prompt>`
//!   after it is the proposal (`"format": "markers"`, no analysis or
//!   thought) if it has at least [`MIN_PROMPT_CHARS`] and at most
//!   [`MAX_PROMPT_CHARS`] characters; otherwise the candidate is dropped
//!   with the reason. The text is the model's own answer to "write the new
//!   prompt", so nothing is made up for it; only the JSON wrapper is gone.
//!   A reply without markers is not taken as a prompt. Example answers
//!   (`optimize_answer.jinja`) have no such fallback: an unusable rewrite
//!   keeps the old answer.
//!
//! Every request's seed is fixed by (`--seed`, attempt), and the order of
//! requests by the search itself, so a re-run replays every finished
//! request from the journal and sends only what is missing (a request
//! whose reply was rejected, e.g. cut off twice by the token limit, is not
//! journaled and is sent again). The
//! log-probability requests go through their own engine
//! (`journal-evaluator-logprobs.jsonl`) that keeps a reply cut off at
//! [`DIGIT_MAX_TOKENS`] instead of retrying it: only its first token
//! matters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::engine::{Engine, ItemError};
use crate::input::queries::Example;
use crate::input::PromptRecord;
use crate::provider::{ChatRequest, GenParams, Message, TokenLogprob};
use crate::template::Templates;

/// The start of every search (the paper's).
pub const INITIAL_PROMPT: &str = "You are a helpful assistant.";
/// Asks per evaluator/optimizer reply: the first and two re-asks.
pub const MAX_ASKS: u64 = 3;
/// Earlier prompt versions shown to the optimizer.
pub const HISTORY: usize = 3;
/// Longest system prompt the optimizer may propose, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Bullets the optimizer may add or change per proposal.
pub const MAX_NEW_BULLETS: usize = 2;
/// Aspects kept per query.
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
/// Used when the evaluator never names aspects usably.
const FALLBACK_ASPECTS: [&str; 3] = ["Helpfulness", "Clarity", "Factuality"];

/// One aspect of a good answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Aspect {
    pub name: String,
    pub description: String,
}

/// The shipped aspect list (`principles/aspects.json`).
pub fn default_aspects() -> Vec<Aspect> {
    serde_json::from_str(include_str!("../../principles/aspects.json")).unwrap_or_default()
}

/// How a score was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMethod {
    /// The evaluator's JSON reply: an integer with a rationale.
    Json,
    /// Expected digit under the first-token log-probabilities.
    Logprobs,
}

/// One aspect's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AspectScore {
    pub aspect: String,
    /// 1–5: an integer from JSON, a fraction from log-probabilities.
    #[serde(serialize_with = "ser_score")]
    pub score: f64,
    /// Empty for log-probability scores.
    pub rationale: String,
    pub method: ScoreMethod,
    /// Log-probability scores: the share of the first-token probability on
    /// the digits 1–5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_digits: Option<f64>,
}

/// Whole scores as integers (as the evaluator wrote them), others to four
/// decimals.
fn ser_score<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && (0.0..=255.0).contains(v) {
        s.serialize_u8(*v as u8)
    } else {
        s.serialize_f64((v * 10_000.0).round() / 10_000.0)
    }
}

/// A scored answer.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub answer: String,
    pub scores: Vec<AspectScore>,
    pub reward: f64,
}

impl Evaluation {
    /// Every score 5, or the mean above 4.5: nothing left to optimise.
    pub fn satisfied(&self) -> bool {
        self.scores.iter().all(|s| s.score == 5.0) || self.reward > 4.5
    }
}

/// The optimizer's reply.
#[derive(Clone, Debug, Serialize)]
pub struct Proposal {
    pub analysis: String,
    pub thought: String,
    pub text: String,
    /// `json`, or `markers` for the plain-text fallback.
    pub format: &'static str,
}

/// Either a value, or why the model never gave a usable one.
pub type Usable<T> = Result<T, String>;

/// The three roles and what they share.
pub struct Critic {
    pub base: Arc<Engine>,
    pub evaluator: Arc<Engine>,
    /// The evaluator's log-probability scores (keeps truncated replies).
    pub scorer: Arc<Engine>,
    pub optimizer: Arc<Engine>,
    pub templates: Templates,
    pub aspects: Vec<Aspect>,
    pub params: GenParams,
    pub seed: u64,
    pub examples: Vec<Example>,
    pub k: usize,
    chosen: HashMap<String, (Vec<Aspect>, Option<String>)>,
}

fn words(s: &str) -> HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Jaccard similarity of the word sets of two texts.
pub fn similarity(a: &str, b: &str) -> f64 {
    let (a, b) = (words(a), words(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// The JSON object in a reply: the whole reply, else the span from its
/// first `{` to its last `}` (models wrap JSON in prose or code fences).
pub fn json_object(text: &str) -> Usable<Map<String, Value>> {
    let t = text.trim();
    let parsed = serde_json::from_str::<Value>(t).or_else(|e| match (t.find('{'), t.rfind('}')) {
        (Some(i), Some(j)) if i < j => serde_json::from_str::<Value>(&t[i..=j]),
        _ => Err(e),
    });
    match parsed {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("expected a JSON object, got {}", kind(&other))),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A 1–5 score from a number or a numeric string.
fn score_of(v: &Value) -> Option<u8> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.fract() == 0.0 && (1.0..=5.0).contains(&f)).then_some(f as u8)
}

/// The evaluator's aspect choice: `{"aspects": [...]}` of names (or
/// `{name, description}` objects). Known names take the list's spelling and
/// description; others are new aspects.
pub fn parse_aspects(text: &str, known: &[Aspect]) -> Usable<Vec<Aspect>> {
    let m = json_object(text)?;
    let list = get_ci(&m, "aspects")
        .and_then(Value::as_array)
        .ok_or("no `aspects` array")?;
    let mut out: Vec<Aspect> = Vec::new();
    for item in list {
        let (name, desc) = match item {
            Value::String(s) => (s.trim().to_string(), None),
            Value::Object(o) => (
                o.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                o.get("description").and_then(Value::as_str),
            ),
            _ => continue,
        };
        if name.is_empty() || name.len() > 60 {
            continue;
        }
        let a = match known.iter().find(|a| a.name.eq_ignore_ascii_case(&name)) {
            Some(a) => a.clone(),
            None => Aspect {
                description: desc
                    .unwrap_or("An aspect the evaluator named for this query.")
                    .to_string(),
                name,
            },
        };
        if !out.iter().any(|o| o.name.eq_ignore_ascii_case(&a.name)) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err("`aspects` names no aspect".into());
    }
    out.truncate(MAX_ASPECTS);
    Ok(out)
}

/// The evaluator's scores: one key per aspect holding `{"score", "rationale"}`
/// (or a bare number), or `{"scores": [{"aspect", "score", "rationale"}]}`.
/// Every chosen aspect needs an integer score 1–5.
pub fn parse_scores(text: &str, aspects: &[Aspect]) -> Usable<Vec<AspectScore>> {
    let m = json_object(text)?;
    let listed: Option<Map<String, Value>> = get_ci(&m, "scores").and_then(|v| match v {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| {
                    let name = i.get("aspect").and_then(Value::as_str)?;
                    Some((name.to_string(), i.clone()))
                })
                .collect(),
        ),
        Value::Object(o) => Some(o.clone()),
        _ => None,
    });
    let m = listed.unwrap_or(m);
    let mut out = Vec::with_capacity(aspects.len());
    for a in aspects {
        let v = get_ci(&m, &a.name).ok_or_else(|| format!("no score for `{}`", a.name))?;
        let (score, rationale) = match v {
            Value::Object(o) => (
                get_ci(o, "score").and_then(score_of),
                get_ci(o, "rationale")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            other => (score_of(other), String::new()),
        };
        let score =
            score.ok_or_else(|| format!("`{}`: the score is not an integer 1–5", a.name))?;
        out.push(AspectScore {
            aspect: a.name.clone(),
            score: f64::from(score),
            rationale,
            method: ScoreMethod::Json,
            p_digits: None,
        });
    }
    Ok(out)
}

/// The optimizer's reply: `analysis`, `thought` and the new text in `field`.
pub fn parse_proposal(text: &str, field: &str, max_chars: usize) -> Usable<Proposal> {
    let m = json_object(text)?;
    let s = |k: &str| get_ci(&m, k).and_then(Value::as_str).map(str::trim);
    let new = s(field).ok_or_else(|| format!("no `{field}` string"))?;
    if new.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    let chars = new.chars().count();
    if chars > max_chars {
        return Err(format!(
            "`{field}` has {chars} characters (at most {max_chars})"
        ));
    }
    Ok(Proposal {
        analysis: s("analysis").unwrap_or_default().to_string(),
        thought: s("thought").unwrap_or_default().to_string(),
        text: new.to_string(),
        format: "json",
    })
}

/// The plain-text fallback's proposal: the text between the last
/// `<prompt>` and the `</prompt>` after it (see the module docs).
pub fn parse_marked_prompt(text: &str, max_chars: usize) -> Usable<Proposal> {
    const OPEN: &str = "<prompt>";
    const CLOSE: &str = "</prompt>";
    // The instruction names the markers mid-sentence; the reply's own
    // opening marker starts a line.
    let starts_line = |i: usize| {
        text[..i]
            .rsplit('\n')
            .next()
            .is_none_or(|l| l.trim().is_empty())
    };
    let start = text
        .match_indices(OPEN)
        .map(|(i, _)| i)
        .filter(|&i| starts_line(i))
        .last()
        .ok_or("no line starting with `<prompt>` in a plain-text reply")?
        + OPEN.len();
    let end = text[start..]
        .find(CLOSE)
        .ok_or("no `</prompt>` after the last `<prompt>`")?;
    let new = text[start..start + end].trim();
    let chars = new.chars().count();
    if chars < MIN_PROMPT_CHARS {
        return Err(format!(
            "the prompt between the markers has {chars} characters (at least {MIN_PROMPT_CHARS})"
        ));
    }
    if chars > max_chars {
        return Err(format!(
            "the prompt between the markers has {chars} characters (at most {max_chars})"
        ));
    }
    Ok(Proposal {
        analysis: String::new(),
        thought: String::new(),
        text: new.to_string(),
        format: "markers",
    })
}

/// The digit a first-token candidate is (`"3"`, `" 3"`), if it is 1–5.
fn digit_token(token: &str) -> Option<u8> {
    match token.trim() {
        "1" => Some(1),
        "2" => Some(2),
        "3" => Some(3),
        "4" => Some(4),
        "5" => Some(5),
        _ => None,
    }
}

/// The expected score Σ p(k)·k over the digit candidates (renormalised),
/// and their total probability; `None` when no candidate is a digit 1–5.
pub fn expected_digit(tops: &[TokenLogprob]) -> Option<(f64, f64)> {
    let (mut mass, mut sum) = (0.0f64, 0.0f64);
    for t in tops {
        if !t.logprob.is_finite() {
            continue;
        }
        if let Some(k) = digit_token(&t.token) {
            let p = t.logprob.exp();
            mass += p;
            sum += p * f64::from(k);
        }
    }
    (mass > 0.0).then(|| (sum / mass, mass.min(1.0)))
}

fn mean(scores: &[AspectScore]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().map(|s| s.score).sum::<f64>() / scores.len() as f64
}

impl Critic {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base: Arc<Engine>,
        evaluator: Arc<Engine>,
        scorer: Arc<Engine>,
        optimizer: Arc<Engine>,
        templates: Templates,
        aspects: Vec<Aspect>,
        params: GenParams,
        seed: u64,
        examples: Vec<Example>,
        k: usize,
    ) -> Self {
        Self {
            base,
            evaluator,
            scorer,
            optimizer,
            templates,
            aspects,
            params,
            seed,
            examples,
            k,
            chosen: HashMap::new(),
        }
    }

    fn params(&self, attempt: u64) -> GenParams {
        let mut p = self.params.clone();
        p.seed = Some(self.seed.wrapping_add(attempt));
        p
    }

    fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String, ItemError> {
        self.templates
            .render(name, ctx)
            .map_err(|e| ItemError::Stop(format!("template failed: {e}")))
    }

    /// Sends `text` to `engine` until `parse` accepts the reply, at most
    /// [`MAX_ASKS`] times (each ask with the next seed).
    async fn ask<T>(
        &self,
        engine: &Engine,
        stage: &str,
        id: &str,
        text: &str,
        parse: impl Fn(&str) -> Usable<T>,
    ) -> Result<Usable<T>, ItemError> {
        let mut last = String::new();
        for attempt in 0..MAX_ASKS {
            let req = ChatRequest {
                cache: Default::default(),
                messages: vec![Message::user(text)],
                params: self.params(attempt),
            };
            match engine.complete(stage, id, &req).await {
                Ok(c) => match parse(&c.text) {
                    Ok(v) => return Ok(Ok(v)),
                    Err(why) => last = why,
                },
                Err(ItemError::Reject(why)) => last = why,
                Err(e) => return Err(e),
            }
        }
        Ok(Err(format!("{MAX_ASKS} replies unusable; last: {last}")))
    }

    /// The aspects that matter for `q` (asked once per query text), and why
    /// the fallback set was used, if it was. The bool says whether this
    /// call asked (false: from the cache).
    pub async fn aspects(
        &mut self,
        q: &PromptRecord,
    ) -> Result<(Vec<Aspect>, Option<String>, bool), ItemError> {
        if let Some((a, f)) = self.chosen.get(&q.text) {
            return Ok((a.clone(), f.clone(), false));
        }
        let text = self.render(
            "optimize_aspects.jinja",
            minijinja::context! { query => &q.text, aspects => &self.aspects },
        )?;
        let known = self.aspects.clone();
        let got = self
            .ask(&self.evaluator, "optimize-aspects", &q.id, &text, |t| {
                parse_aspects(t, &known)
            })
            .await?;
        let (chosen, fallback) = match got {
            Ok(a) => (a, None),
            Err(why) => {
                let mut a: Vec<Aspect> = FALLBACK_ASPECTS
                    .iter()
                    .filter_map(|n| self.aspects.iter().find(|a| a.name == *n).cloned())
                    .collect();
                if a.is_empty() {
                    a = self.aspects.iter().take(3).cloned().collect();
                }
                (a, Some(why))
            }
        };
        self.chosen
            .insert(q.text.clone(), (chosen.clone(), fallback.clone()));
        Ok((chosen, fallback, true))
    }

    /// The `k` examples most similar to `query` (never the query itself).
    pub fn examples_for(&self, query: &str) -> Vec<&Example> {
        let mut ranked: Vec<(f64, usize)> = self
            .examples
            .iter()
            .enumerate()
            .filter(|(_, e)| e.query != query)
            .map(|(i, e)| (similarity(&e.query, query), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked
            .into_iter()
            .take(self.k)
            .map(|(_, i)| &self.examples[i])
            .collect()
    }

    /// The base model's request for `query` under `prompt`.
    pub fn answer_request(&self, prompt: &str, query: &str) -> ChatRequest {
        let mut messages = vec![Message::system(prompt)];
        for e in self.examples_for(query) {
            messages.push(Message::user(e.query.clone()));
            messages.push(Message::assistant(e.answer.clone()));
        }
        messages.push(Message::user(query));
        ChatRequest {
            cache: Default::default(),
            messages,
            params: self.params(0),
        }
    }

    /// Scores `answer` to `q` on `aspects`.
    pub async fn score(
        &self,
        q: &PromptRecord,
        aspects: &[Aspect],
        answer: &str,
    ) -> Result<Usable<Evaluation>, ItemError> {
        let text = self.render(
            "optimize_score.jinja",
            minijinja::context! { query => &q.text, answer => answer, aspects => aspects },
        )?;
        let got = self
            .ask(&self.evaluator, "optimize-score", &q.id, &text, |t| {
                parse_scores(t, aspects)
            })
            .await?;
        let got = match got {
            Ok(scores) => Ok(scores),
            Err(why) => self
                .score_by_logprobs(q, aspects, answer)
                .await?
                .map_err(|lp| format!("{why}; log-probability fallback: {lp}")),
        };
        Ok(got
            .map(|scores| Evaluation {
                answer: answer.to_string(),
                reward: mean(&scores),
                scores,
            })
            .map_err(|why| format!("evaluator: {why}")))
    }

    /// The scoring fallback (module docs): one first-token request per
    /// aspect; unusable as soon as one aspect is.
    async fn score_by_logprobs(
        &self,
        q: &PromptRecord,
        aspects: &[Aspect],
        answer: &str,
    ) -> Result<Usable<Vec<AspectScore>>, ItemError> {
        let mut out = Vec::with_capacity(aspects.len());
        for a in aspects {
            let text = self.render(
                "optimize_score_digit.jinja",
                minijinja::context! { query => &q.text, answer => answer, aspect => a },
            )?;
            let req = ChatRequest {
                cache: Default::default(),
                messages: vec![Message::user(text)],
                params: GenParams {
                    max_tokens: DIGIT_MAX_TOKENS,
                    temperature: 0.0,
                    top_p: 1.0,
                    seed: Some(self.seed),
                    stop: Vec::new(),
                    top_logprobs: Some(TOP_LOGPROBS),
                    n: None,
                },
            };
            let c = match self
                .scorer
                .complete("optimize-score-logprobs", &q.id, &req)
                .await
            {
                Ok(c) => c,
                Err(ItemError::Reject(why)) => return Ok(Err(format!("`{}`: {why}", a.name))),
                Err(e) => return Err(e),
            };
            let Some(tops) = c.first_token_logprobs.as_deref() else {
                return Ok(Err("the endpoint returned no log-probabilities".into()));
            };
            let Some((score, mass)) = expected_digit(tops) else {
                return Ok(Err(format!(
                    "`{}`: no digit 1–5 among the top {} first tokens",
                    a.name,
                    tops.len()
                )));
            };
            if mass < MIN_DIGIT_MASS {
                return Ok(Err(format!(
                    "`{}`: the digits 1–5 hold {mass:.3} of the first-token probability (at least {MIN_DIGIT_MASS})",
                    a.name
                )));
            }
            out.push(AspectScore {
                aspect: a.name.clone(),
                score,
                rationale: String::new(),
                method: ScoreMethod::Logprobs,
                p_digits: Some((mass * 10_000.0).round() / 10_000.0),
            });
        }
        Ok(Ok(out))
    }

    /// Answers `q` under `prompt` with the base model, then scores it.
    pub async fn evaluate(
        &self,
        prompt: &str,
        q: &PromptRecord,
        aspects: &[Aspect],
    ) -> Result<Usable<Evaluation>, ItemError> {
        let req = self.answer_request(prompt, &q.text);
        let answer = match self.base.complete("optimize-answer", &q.id, &req).await {
            Ok(c) => c.text.trim().to_string(),
            Err(ItemError::Reject(why)) => return Ok(Err(format!("base model: {why}"))),
            Err(e) => return Err(e),
        };
        self.score(q, aspects, &answer).await
    }

    /// Proposal `variant` (1-based) of `variants` for a better prompt.
    pub async fn propose(
        &self,
        prompt: &str,
        q: &PromptRecord,
        ev: &Evaluation,
        history: &[String],
        variant: usize,
        variants: usize,
    ) -> Result<Usable<Proposal>, ItemError> {
        // One context for the JSON ask and its plain-text fallback.
        let ctx = minijinja::context! {
            prompt => prompt, query => &q.text, answer => &ev.answer, evaluation => &ev.scores,
            reward => format!("{:.2}", ev.reward), history => history, variant => variant, variants => variants,
            max_new_bullets => MAX_NEW_BULLETS, max_chars => MAX_PROMPT_CHARS,
        };
        let text = self.render("optimize_propose.jinja", &ctx)?;
        let got = self
            .ask(&self.optimizer, "optimize-propose", &q.id, &text, |t| {
                parse_proposal(t, "new_system_prompt", MAX_PROMPT_CHARS)
            })
            .await?;
        let why = match got {
            Ok(p) => return Ok(Ok(p)),
            Err(why) => why,
        };
        let text = self.render("optimize_propose_text.jinja", &ctx)?;
        let plain = self
            .ask(
                &self.optimizer,
                "optimize-propose-text",
                &q.id,
                &text,
                |t| parse_marked_prompt(t, MAX_PROMPT_CHARS),
            )
            .await?;
        Ok(plain.map_err(|plain| format!("optimizer: {why}; plain-text fallback: {plain}")))
    }

    /// A rewritten example answer.
    pub async fn rewrite(
        &self,
        q: &PromptRecord,
        ev: &Evaluation,
    ) -> Result<Usable<Proposal>, ItemError> {
        let text = self.render(
            "optimize_answer.jinja",
            minijinja::context! {
                query => &q.text, answer => &ev.answer, evaluation => &ev.scores,
                reward => format!("{:.2}", ev.reward),
            },
        )?;
        let got = self
            .ask(&self.optimizer, "optimize-rewrite", &q.id, &text, |t| {
                parse_proposal(t, "new_answer", 4 * MAX_PROMPT_CHARS)
            })
            .await?;
        Ok(got.map_err(|why| format!("optimizer: {why}")))
    }
}

/// A prompt in the search tree.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: usize,
    pub parent: Option<usize>,
    pub depth: usize,
    pub prompt: String,
    /// Its reward when first evaluated (children: on the query of the step
    /// that made them; the root: on the first query).
    pub reward: Option<f64>,
}

/// Search settings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SearchOptions {
    pub beam: usize,
    pub actions: usize,
    pub depth: usize,
}

/// One step's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StepSummary {
    pub step: usize,
    pub query_id: String,
    pub evaluated: usize,
    pub best: f64,
    pub mean: f64,
    pub beam: Vec<usize>,
}

/// The search state; kept by the caller so a stopped search still reports.
pub struct Search {
    pub nodes: Vec<Node>,
    pub beam: Vec<usize>,
    pub steps: Vec<StepSummary>,
    pub dropped: usize,
    /// Example bank after optimisation.
    pub examples: Vec<Example>,
}

/// Where `search.jsonl` lines go.
pub type Log<'a> = dyn FnMut(Value) -> Result<(), String> + 'a;

fn log(sink: &mut Log<'_>, v: Value) -> Result<(), ItemError> {
    sink(v).map_err(ItemError::Stop)
}

impl Search {
    pub fn new(initial: &str) -> Self {
        Self {
            nodes: vec![Node {
                id: 0,
                parent: None,
                depth: 0,
                prompt: initial.to_string(),
                reward: None,
            }],
            beam: vec![0],
            steps: Vec::new(),
            dropped: 0,
            examples: Vec::new(),
        }
    }

    /// The best node: the head of the beam.
    pub fn best(&self) -> &Node {
        &self.nodes[self.beam.first().copied().unwrap_or(0)]
    }

    /// Root → best.
    pub fn best_path(&self) -> Vec<&Node> {
        let mut path = vec![self.best()];
        while let Some(p) = path.last().and_then(|n| n.parent) {
            path.push(&self.nodes[p]);
        }
        path.reverse();
        path
    }

    /// Best and mean first-evaluation reward of the nodes at each depth.
    pub fn reward_per_depth(&self) -> Vec<(usize, f64, f64, usize)> {
        let mut by: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for n in &self.nodes {
            if let Some(r) = n.reward {
                by.entry(n.depth).or_default().push(r);
            }
        }
        by.into_iter()
            .map(|(d, rs)| {
                let best = rs.iter().copied().fold(f64::MIN, f64::max);
                let mean = rs.iter().sum::<f64>() / rs.len() as f64;
                (d, best, mean, rs.len())
            })
            .collect()
    }

    fn history(&self, id: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = self.nodes[id].parent;
        while let Some(p) = cur {
            if out.len() == HISTORY {
                break;
            }
            out.push(self.nodes[p].prompt.clone());
            cur = self.nodes[p].parent;
        }
        out.reverse();
        out
    }

    /// Optimises the answers of the example bank (one critic round each:
    /// score; if not satisfied, rewrite and keep the better).
    pub async fn optimise_examples(
        &mut self,
        critic: &mut Critic,
        sink: &mut Log<'_>,
    ) -> Result<(), ItemError> {
        let bank = critic.examples.clone();
        let mut out = Vec::with_capacity(bank.len());
        for (i, ex) in bank.into_iter().enumerate() {
            let q = PromptRecord {
                id: format!("example-{i}"),
                text: ex.query.clone(),
                line: 0,
            };
            let (aspects, fallback, _) = critic.aspects(&q).await?;
            let before = critic.score(&q, &aspects, &ex.answer).await?;
            let mut event = json!({
                "kind": "example", "example": i, "query": &ex.query,
                "aspects": names(&aspects), "aspects_fallback": fallback,
            });
            let mut kept = ex.clone();
            match before {
                Err(why) => {
                    event["status"] = json!("kept");
                    event["reason"] = json!(why);
                }
                Ok(ev) if ev.satisfied() => {
                    event["status"] = json!("satisfied");
                    event["reward"] = json!(ev.reward);
                    event["scores"] = json!(ev.scores);
                }
                Ok(ev) => {
                    event["reward"] = json!(ev.reward);
                    event["scores"] = json!(ev.scores);
                    match critic.rewrite(&q, &ev).await? {
                        Err(why) => {
                            event["status"] = json!("kept");
                            event["reason"] = json!(why);
                        }
                        Ok(p) => match critic.score(&q, &aspects, &p.text).await? {
                            Err(why) => {
                                event["status"] = json!("kept");
                                event["reason"] = json!(why);
                            }
                            Ok(ev2) => {
                                event["new_reward"] = json!(ev2.reward);
                                event["new_scores"] = json!(ev2.scores);
                                if ev2.reward > ev.reward {
                                    event["status"] = json!("rewritten");
                                    event["answer"] = json!(&p.text);
                                    kept.answer = p.text;
                                } else {
                                    event["status"] = json!("kept");
                                    event["reason"] = json!("the rewrite scored no higher");
                                }
                            }
                        },
                    }
                }
            }
            log(sink, event)?;
            out.push(kept);
        }
        critic.examples = out.clone();
        self.examples = out;
        Ok(())
    }

    /// Runs the beam search over `queries`.
    pub async fn run(
        &mut self,
        critic: &mut Critic,
        queries: &[PromptRecord],
        opts: SearchOptions,
        sink: &mut Log<'_>,
        mut on_step: impl FnMut(&StepSummary),
    ) -> Result<(), ItemError> {
        if queries.is_empty() {
            return Ok(());
        }
        for step in 0..opts.depth {
            let q = &queries[step % queries.len()];
            let (aspects, fallback, asked) = critic.aspects(q).await?;
            if asked {
                log(
                    sink,
                    json!({"kind": "aspects", "step": step, "query_id": &q.id, "query": &q.text,
                           "aspects": names(&aspects), "fallback": fallback}),
                )?;
            }
            let mut cands: Vec<(usize, f64)> = Vec::new();
            let beam = self.beam.clone();
            for nid in beam {
                let prompt = self.nodes[nid].prompt.clone();
                let ev = match critic.evaluate(&prompt, q, &aspects).await? {
                    Ok(ev) => ev,
                    Err(why) => {
                        self.dropped += 1;
                        log(
                            sink,
                            self.event(nid, step, q, "parent", None, Some(why.as_str()), None),
                        )?;
                        continue;
                    }
                };
                if self.nodes[nid].reward.is_none() {
                    self.nodes[nid].reward = Some(ev.reward);
                }
                log(
                    sink,
                    self.event(nid, step, q, "parent", Some(&ev), None, None),
                )?;
                cands.push((nid, ev.reward));
                if ev.satisfied() {
                    continue;
                }
                let history = self.history(nid);
                for variant in 1..=opts.actions {
                    let p = match critic
                        .propose(&prompt, q, &ev, &history, variant, opts.actions)
                        .await?
                    {
                        Ok(p) => p,
                        Err(why) => {
                            self.dropped += 1;
                            log(
                                sink,
                                json!({"kind": "dropped", "step": step, "parent": nid, "variant": variant,
                                       "query_id": &q.id, "reason": why}),
                            )?;
                            continue;
                        }
                    };
                    if let Some(&(dup, _)) =
                        cands.iter().find(|(c, _)| self.nodes[*c].prompt == p.text)
                    {
                        log(
                            sink,
                            json!({"kind": "duplicate", "step": step, "parent": nid, "variant": variant,
                                   "query_id": &q.id, "same_as": dup}),
                        )?;
                        continue;
                    }
                    let child = self.nodes.len();
                    self.nodes.push(Node {
                        id: child,
                        parent: Some(nid),
                        depth: self.nodes[nid].depth + 1,
                        prompt: p.text.clone(),
                        reward: None,
                    });
                    match critic.evaluate(&p.text, q, &aspects).await? {
                        Ok(ev2) => {
                            self.nodes[child].reward = Some(ev2.reward);
                            log(
                                sink,
                                self.event(child, step, q, "child", Some(&ev2), None, Some(&p)),
                            )?;
                            cands.push((child, ev2.reward));
                        }
                        Err(why) => {
                            self.dropped += 1;
                            log(
                                sink,
                                self.event(
                                    child,
                                    step,
                                    q,
                                    "child",
                                    None,
                                    Some(why.as_str()),
                                    Some(&p),
                                ),
                            )?;
                        }
                    }
                }
            }
            if cands.is_empty() {
                // Nothing could be evaluated: keep the beam for the next query.
                continue;
            }
            let best = cands.iter().map(|c| c.1).fold(f64::MIN, f64::max);
            let mean = cands.iter().map(|c| c.1).sum::<f64>() / cands.len() as f64;
            // Stable: among equal rewards the earlier candidate stays ahead.
            cands.sort_by(|a, b| b.1.total_cmp(&a.1));
            self.beam = cands.iter().take(opts.beam).map(|c| c.0).collect();
            let summary = StepSummary {
                step,
                query_id: q.id.clone(),
                evaluated: cands.len(),
                best,
                mean,
                beam: self.beam.clone(),
            };
            log(sink, json!({"kind": "step", "summary": &summary}))?;
            on_step(&summary);
            self.steps.push(summary);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        id: usize,
        step: usize,
        q: &PromptRecord,
        role: &str,
        ev: Option<&Evaluation>,
        dropped: Option<&str>,
        proposal: Option<&Proposal>,
    ) -> Value {
        let n = &self.nodes[id];
        let mut v = json!({
            "kind": "node", "node": id, "parent": n.parent, "depth": n.depth, "step": step,
            "role": role, "query_id": &q.id, "query": &q.text, "prompt": &n.prompt,
        });
        if let Some(ev) = ev {
            v["answer"] = json!(ev.answer);
            v["aspects"] = json!(ev.scores.iter().map(|s| &s.aspect).collect::<Vec<_>>());
            v["scores"] = json!(ev.scores);
            v["reward"] = json!(ev.reward);
            v["satisfied"] = json!(ev.satisfied());
        }
        if let Some(why) = dropped {
            v["dropped"] = json!(why);
        }
        if let Some(p) = proposal {
            v["analysis"] = json!(p.analysis);
            v["thought"] = json!(p.thought);
            v["proposal_format"] = json!(p.format);
        }
        v
    }
}

fn names(a: &[Aspect]) -> Vec<&str> {
    a.iter().map(|a| a.name.as_str()).collect()
}

/// The dry run's plan: requests per step when nothing is satisfied,
/// duplicated, re-asked or dropped (an upper bound except for re-asks,
/// which can add up to `MAX_ASKS - 1` per evaluator/optimizer request).
#[derive(Clone, Debug, Serialize)]
pub struct PlanRow {
    pub step: usize,
    pub beam: usize,
    pub base: u64,
    pub evaluator: u64,
    pub optimizer: u64,
}

pub fn plan(queries: usize, opts: SearchOptions, examples: usize) -> (Vec<PlanRow>, PlanRow) {
    let a = opts.actions as u64;
    let mut b = 1usize;
    let mut rows = Vec::new();
    for step in 0..opts.depth {
        let bb = b as u64;
        rows.push(PlanRow {
            step,
            beam: b,
            base: bb * (1 + a),
            evaluator: u64::from(step < queries) + bb * (1 + a),
            optimizer: bb * a,
        });
        b = opts.beam.min(b * (1 + opts.actions)).max(1);
    }
    let e = examples as u64;
    let ex = PlanRow {
        step: 0,
        beam: 0,
        base: 0,
        evaluator: 3 * e,
        optimizer: e,
    };
    (rows, ex)
}

/// `cai optimize eval`: the figures of one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct PromptFigures {
    pub file: String,
    pub scored: usize,
    /// Of `scored`: those scored by first-token log-probabilities.
    pub scored_by_logprobs: usize,
    pub dropped: usize,
    pub mean: Option<f64>,
    /// Mean score per aspect, over the queries that chose it.
    pub aspects: BTreeMap<String, f64>,
}

/// Pairwise comparison of two prompts on the queries both were scored on.
#[derive(Clone, Debug, Serialize)]
pub struct Pairwise {
    pub a: String,
    pub b: String,
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// (wins + ties/2) / n.
    pub win_rate: Option<f64>,
    /// Wilson score interval (95 %) of the win rate, ties counted as half.
    pub ci95: Option<(f64, f64)>,
}

/// Wilson score interval at 95 % for `p` over `n` trials.
pub fn wilson(p: f64, n: usize) -> (f64, f64) {
    let z = 1.959_964_f64;
    let n = n as f64;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Per-prompt figures and every pair, from `results[prompt][query]`.
pub fn figures(
    files: &[String],
    results: &[Vec<Option<Evaluation>>],
) -> (Vec<PromptFigures>, Vec<Pairwise>) {
    let mut per = Vec::new();
    for (f, rs) in files.iter().zip(results) {
        let mut by: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut sum = 0.0;
        let mut scored = 0;
        let mut by_logprobs = 0;
        for ev in rs.iter().flatten() {
            scored += 1;
            if ev.scores.iter().any(|s| s.method == ScoreMethod::Logprobs) {
                by_logprobs += 1;
            }
            sum += ev.reward;
            for s in &ev.scores {
                let e = by.entry(s.aspect.clone()).or_default();
                e.0 += s.score;
                e.1 += 1;
            }
        }
        per.push(PromptFigures {
            file: f.clone(),
            scored,
            scored_by_logprobs: by_logprobs,
            dropped: rs.len() - scored,
            mean: (scored > 0).then(|| sum / scored as f64),
            aspects: by
                .into_iter()
                .map(|(k, (s, n))| (k, s / n as f64))
                .collect(),
        });
    }
    let mut pairs = Vec::new();
    for i in 0..files.len() {
        for j in i + 1..files.len() {
            let (mut w, mut t, mut l) = (0, 0, 0);
            for (a, b) in results[i].iter().zip(&results[j]) {
                if let (Some(a), Some(b)) = (a, b) {
                    if (a.reward - b.reward).abs() < 1e-9 {
                        t += 1;
                    } else if a.reward > b.reward {
                        w += 1;
                    } else {
                        l += 1;
                    }
                }
            }
            let n = w + t + l;
            let rate = (n > 0).then(|| (w as f64 + t as f64 / 2.0) / n as f64);
            pairs.push(Pairwise {
                a: files[i].clone(),
                b: files[j].clone(),
                n,
                wins: w,
                ties: t,
                losses: l,
                win_rate: rate,
                ci95: rate.map(|p| wilson(p, n)),
            });
        }
    }
    (per, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asp(names: &[&str]) -> Vec<Aspect> {
        names
            .iter()
            .map(|n| Aspect {
                name: n.to_string(),
                description: String::new(),
            })
            .collect()
    }

    #[test]
    fn replies_are_read_leniently_but_need_every_score() {
        let a = asp(&["Clarity", "Depth"]);
        let s = parse_scores(
            "Sure! ```json\n{\"clarity\": {\"rationale\": \"ok\", \"score\": 4}, \"Depth\": \"2\"}\n```",
            &a,
        )
        .unwrap();
        assert_eq!(s[0].score, 4.0);
        assert_eq!(s[0].rationale, "ok");
        assert_eq!(s[0].method, ScoreMethod::Json);
        assert_eq!(s[1].score, 2.0);
        let s = parse_scores(
            r#"{"scores": [{"aspect": "Clarity", "score": 5}, {"aspect": "Depth", "score": 5}]}"#,
            &a,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_scores(r#"{"Clarity": {"score": 4}}"#, &a)
            .unwrap_err()
            .contains("no score for `Depth`"));
        assert!(parse_scores(r#"{"Clarity": 6, "Depth": 3}"#, &a)
            .unwrap_err()
            .contains("not an integer 1–5"));
        assert!(parse_scores("no json here", &a)
            .unwrap_err()
            .starts_with("not JSON"));
        let known = default_aspects();
        assert_eq!(known.len(), 14);
        let got =
            parse_aspects(r#"{"aspects": ["clarity", "Humour", "Clarity"]}"#, &known).unwrap();
        assert_eq!(names(&got), ["Clarity", "Humour"]);
        assert!(
            parse_proposal(r#"{"analysis": "a"}"#, "new_system_prompt", 10)
                .unwrap_err()
                .contains("no `new_system_prompt`")
        );
    }

    fn lp(token: &str, p: f64) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob: p.ln(),
        }
    }

    #[test]
    fn the_logprob_score_is_the_expected_digit_over_the_digit_candidates() {
        let (e, mass) = expected_digit(&[
            lp("4", 0.3),
            lp(" 5", 0.1),
            lp("The", 0.5),
            lp("2", 0.1),
            lp("7", 0.05),
        ])
        .unwrap();
        // (0.3·4 + 0.1·5 + 0.1·2) / 0.5
        assert!((e - 3.8).abs() < 1e-9, "{e}");
        assert!((mass - 0.5).abs() < 1e-9, "{mass}");
        assert_eq!(expected_digit(&[lp("The", 0.9), lp("0", 0.1)]), None);
        let whole = AspectScore {
            aspect: "Clarity".into(),
            score: 4.0,
            rationale: "ok".into(),
            method: ScoreMethod::Json,
            p_digits: None,
        };
        assert_eq!(
            serde_json::to_value(&whole).unwrap(),
            json!({"aspect": "Clarity", "score": 4, "rationale": "ok", "method": "json"})
        );
        let frac = AspectScore {
            score: 3.456_789,
            rationale: String::new(),
            method: ScoreMethod::Logprobs,
            p_digits: Some(0.25),
            ..whole
        };
        assert_eq!(serde_json::to_value(&frac).unwrap()["score"], 3.4568);
    }

    #[test]
    fn the_plain_text_proposal_is_the_text_between_the_last_markers() {
        let p = parse_marked_prompt(
            "Reply between <prompt> and </prompt>.\n<prompt>\nYou are a careful assistant.\n- Be concise.\n</prompt>\nDone.",
            100,
        )
        .unwrap();
        assert_eq!(p.text, "You are a careful assistant.\n- Be concise.");
        assert_eq!(p.format, "markers");
        assert!(parse_marked_prompt("You are a careful assistant.", 100)
            .unwrap_err()
            .contains("no line starting with `<prompt>`"));
        assert!(
            parse_marked_prompt("<prompt>\nYou are a careful assistant.", 100)
                .unwrap_err()
                .contains("no `</prompt>`")
        );
        // An echo of the instruction names the markers mid-sentence.
        assert!(parse_marked_prompt(
            "Sure, starting with a line <prompt> and ending with a line </prompt>.",
            100
        )
        .unwrap_err()
        .contains("no line starting with `<prompt>`"));
        assert!(parse_marked_prompt("<prompt>\nBe nice.\n</prompt>", 100)
            .unwrap_err()
            .contains("at least 20"));
        assert!(
            parse_marked_prompt("<prompt>You are a careful assistant.</prompt>", 25)
                .unwrap_err()
                .contains("at most 25")
        );
    }

    #[test]
    fn wilson_interval_brackets_the_rate() {
        let (lo, hi) = wilson(0.5, 10);
        assert!(lo < 0.5 && hi > 0.5 && lo > 0.2 && hi < 0.8, "{lo} {hi}");
        let (lo, hi) = wilson(1.0, 3);
        assert!(hi <= 1.0 && lo > 0.3, "{lo} {hi}");
    }

    #[test]
    fn examples_are_the_most_similar_ones() {
        let ex = |q: &str| Example {
            query: q.into(),
            answer: "a".into(),
        };
        let bank = [
            ex("how do I bake bread"),
            ex("what is the capital of France"),
            ex("what is the capital of Spain"),
        ];
        let s = words("x");
        assert_eq!(s.len(), 1);
        assert!(similarity("capital of Italy", "what is the capital of Spain") > 0.2);
        let mut ranked: Vec<(f64, usize)> = bank
            .iter()
            .enumerate()
            .map(|(i, e)| (similarity(&e.query, "what is the capital of Italy"), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(ranked[0].1, 1);
        assert_eq!(ranked[1].1, 2);
    }
}
