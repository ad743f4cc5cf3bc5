//! The AI-feedback judge: which of two answers better follows a principle.
//!
//! Each comparison renders `judge.jinja` in the Constitutional AI paper's
//! multiple-choice form (the conversation, a comparison principle, options
//! (A) and (B), "The answer is:"), with the constitution's
//! `comparison_few_shots` in front. The principle is drawn per comparison
//! from `comparison_principles` (or [`DEFAULT_COMPARISON_PRINCIPLES`]) with
//! [`crate::input::pick_principle`], keyed by (seed, item id, comparison
//! key), so a resume asks exactly the same questions.
//!
//! Every pair is judged in **both orders** — x as (A), then x as (B) — by
//! every judge of the ensemble, and P(x better) is the mean over orders and
//! judges. Requests go through [`Engine::complete`] with stage `judge`, one
//! after another within a comparison (the caller runs items concurrently).
//!
//! How one order becomes P(A):
//!
//! * **Log-probabilities** (not with `--judge-cot`): the request asks for the
//!   top 20 first-token log-probabilities. Tokens that name an option are
//!   `A`/`B` optionally surrounded by spaces, one `(` before and/or one `)`
//!   after: `A`, ` A`, `(A`, ` (A`, `A)`, `(A)`, ` (A)`. Lower-case `a` is
//!   not accepted (it is usually the article). The probabilities of all
//!   variants of an option are summed and P(A) = p(A) / (p(A) + p(B)). When
//!   no option token is among the candidates — for instance when the first
//!   token is a bare `(` — the reply's text is used as a sampled verdict.
//! * **Sampled verdicts**: `--judge-samples K` verdicts (one request with
//!   `n = K`; an endpoint that returns fewer choices is asked again for the
//!   missing ones, each request with its own seed), P(A) = share of (A)
//!   verdicts.
//!   Temperature is 0 for K = 1 and 1 otherwise. See [`parse_verdict`] for
//!   what is read as a verdict.
//! * **Unparseable verdicts** are replaced by fresh samples (temperature 1,
//!   new seed), at most [`UNPARSEABLE_RETRIES`] per order; after that the
//!   comparison fails and the caller writes the item to `rejects.jsonl`.
//! * Without chain of thought a request allows 32 tokens and stops at the
//!   first `)`: "(A" is all a verdict needs, and a judge that goes on
//!   explaining is not cut off by the token limit (which the engine rejects).
//! * **Chain of thought** (`--judge-cot`): the judge reasons first and ends
//!   with "The answer is: (A)"; each order's P(A) is clamped to [0.4, 0.6],
//!   as the paper found such verdicts overconfident.
//!
//! Besides P, a comparison carries a three-way distribution for scoring
//! against human labels that include ties: with f = P(x) when x is (A) and
//! s = P(x) when x is (B), p_x = f·s (x wins in both orders),
//! p_y = (1−f)(1−s), p_tie = 1 − p_x − p_y (the orders disagree). Then
//! p_x − p_y = 2P − 1, i.e. P = p_x + p_tie / 2. Ensembles average it too.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, ItemError};
use crate::input::{pick_principle, Stage};
use crate::input::{ComparisonFewShot, Constitution};
use crate::provider::{ChatRequest, GenParams, Message, TokenLogprob};
use crate::template::Templates;

/// Comparison principles for constitutions that have none.
pub const DEFAULT_COMPARISON_PRINCIPLES: &[&str] = &[
    "Which of these assistant responses is more helpful, honest and harmless?",
    "Which of these responses answers the human's request more accurately and completely?",
    "Which of these responses is less likely to cause harm, while still being genuinely useful?",
    "Which of these responses is clearer and better organised, without padding or evasion?",
    "Which of these responses would a thoughtful, knowledgeable and kind person rather give?",
];

/// Fresh samples allowed per order when a verdict cannot be read.
pub const UNPARSEABLE_RETRIES: u32 = 2;
/// Reply budget of a verdict without chain of thought: "(A)" needs a few
/// tokens; some room keeps a chatty judge from being cut off.
pub const VERDICT_MAX_TOKENS: u32 = 32;
/// First-token candidates asked for (the most OpenAI-compatible servers allow).
pub const TOP_LOGPROBS: u8 = 20;

/// An option of the multiple-choice question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    A,
    B,
}

/// Judge settings shared by every comparison of a run.
#[derive(Clone, Debug)]
pub struct JudgeOptions {
    /// K: sampled verdicts per order when log-probabilities are not used.
    pub samples: u32,
    pub cot: bool,
    pub tie_margin: f64,
    pub seed: u64,
    /// Reply budget with chain of thought.
    pub cot_max_tokens: u32,
}

/// One judge of the ensemble.
pub struct JudgeEndpoint {
    /// `provider:model`, as written to the outputs.
    pub label: String,
    /// The model name, compared with `model_a`/`model_b` (self-enhancement).
    pub model: String,
    pub engine: Arc<Engine>,
}

/// How one judge's probability was obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Logprobs,
    Samples,
    /// Read back from a file of another `cai` version that names a method
    /// this one does not know (or none); never written.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Logprobs => "logprobs",
            Method::Samples => "samples",
            Method::Unknown => "unknown",
        }
    }
}

/// One judge's view of one comparison. Written into `trace.jsonl` and read
/// back by the report (missing fields default, so other versions' files load).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeVerdict {
    pub judge: String,
    /// P(x better), mean of the two orders.
    pub p: f64,
    /// P(x better) when x was option (A).
    pub p_first: f64,
    /// P(x better) when x was option (B).
    pub p_second: f64,
    pub method: Method,
}

/// The result of judging x against y (a `judgments` entry of a
/// `trace.jsonl` line; read back by the report like [`JudgeVerdict`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Comparison {
    /// Indices of x and y among the caller's candidates.
    pub x: usize,
    pub y: usize,
    pub principle: String,
    /// P(x better): mean over orders and judges.
    pub p: f64,
    /// Three-way distribution (x, y, tie); see the module docs.
    pub p_x: f64,
    pub p_y: f64,
    pub p_tie: f64,
    pub judges: Vec<JudgeVerdict>,
}

/// The judge of a run: templates, principles, options and endpoints.
pub struct Judge {
    pub endpoints: Vec<JudgeEndpoint>,
    templates: Templates,
    principles: Vec<String>,
    few_shots: Vec<ComparisonFewShot>,
    pub opts: JudgeOptions,
}

#[derive(Serialize)]
struct ShotCtx<'a> {
    task: &'a str,
    chain_of_thought: &'a str,
    selected_answer: &'a str,
}

impl Judge {
    pub fn new(
        endpoints: Vec<JudgeEndpoint>,
        templates: Templates,
        constitution: Option<&Constitution>,
        opts: JudgeOptions,
    ) -> Self {
        let (principles, few_shots) = match constitution {
            Some(c) if !c.comparison_principles.is_empty() => (
                c.comparison_principles.clone(),
                c.comparison_few_shots.clone(),
            ),
            other => (
                DEFAULT_COMPARISON_PRINCIPLES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                other
                    .map(|c| c.comparison_few_shots.clone())
                    .unwrap_or_default(),
            ),
        };
        Self {
            endpoints,
            templates,
            principles,
            few_shots,
            opts,
        }
    }

    /// The principle of comparison `key` of item `id`.
    pub fn principle(&self, id: &str, key: &str) -> &str {
        let i = pick_principle(
            self.opts.seed,
            &format!("judge\u{1f}{id}\u{1f}{key}"),
            0,
            self.principles.len(),
        );
        &self.principles[i]
    }

    /// The judge's user message for one order.
    pub fn render(
        &self,
        prompt: &str,
        a: &str,
        b: &str,
        principle: &str,
    ) -> Result<String, ItemError> {
        let shots: Vec<ShotCtx> = self
            .few_shots
            .iter()
            .map(|s| ShotCtx {
                task: &s.task,
                chain_of_thought: &s.chain_of_thought,
                selected_answer: &s.selected_answer,
            })
            .collect();
        self.templates
            .render(
                "judge.jinja",
                minijinja::context! {
                    prompt, response_a => a, response_b => b, principle,
                    few_shots => shots, chain_of_thought => self.opts.cot
                },
            )
            .map_err(|e| ItemError::Reject(format!("judge template failed: {e}")))
    }

    /// Judges x against y (candidates `xi`, `yi` of item `id`) in both
    /// orders with every judge. `key` names the comparison within the item.
    pub async fn compare(
        &self,
        id: &str,
        key: &str,
        prompt: &str,
        (xi, x): (usize, &str),
        (yi, y): (usize, &str),
    ) -> Result<Comparison, ItemError> {
        let principle = self.principle(id, key).to_string();
        let first = self.render(prompt, x, y, &principle)?;
        let second = self.render(prompt, y, x, &principle)?;
        let mut judges = Vec::with_capacity(self.endpoints.len());
        for ep in &self.endpoints {
            let (pa_first, m1) = self.one_order(ep, id, &first).await?;
            let (pa_second, m2) = self.one_order(ep, id, &second).await?;
            let p_first = pa_first;
            let p_second = 1.0 - pa_second;
            judges.push(JudgeVerdict {
                judge: ep.label.clone(),
                p: (p_first + p_second) / 2.0,
                p_first,
                p_second,
                method: if m1 == Method::Logprobs && m2 == Method::Logprobs {
                    Method::Logprobs
                } else {
                    Method::Samples
                },
            });
        }
        let n = judges.len().max(1) as f64;
        let mean = |f: &dyn Fn(&JudgeVerdict) -> f64| judges.iter().map(f).sum::<f64>() / n;
        let p = mean(&|j| j.p);
        let p_x = mean(&|j| j.p_first * j.p_second);
        let p_y = mean(&|j| (1.0 - j.p_first) * (1.0 - j.p_second));
        Ok(Comparison {
            x: xi,
            y: yi,
            principle,
            p,
            p_x,
            p_y,
            p_tie: (1.0 - p_x - p_y).max(0.0),
            judges,
        })
    }

    /// True when `p` is within the tie margin of 0.5.
    pub fn is_tie(&self, p: f64) -> bool {
        is_tie(p, self.opts.tie_margin)
    }

    /// P(A) for one rendered question, from one judge.
    pub async fn one_order(
        &self,
        ep: &JudgeEndpoint,
        id: &str,
        question: &str,
    ) -> Result<(f64, Method), ItemError> {
        let o = &self.opts;
        let k = o.samples.max(1) as usize;
        let mut verdicts: Vec<Choice> = Vec::with_capacity(k);
        let mut unreadable = 0u32;
        let mut request_index = 0u64;
        while verdicts.len() < k {
            let want = k - verdicts.len();
            let fresh = unreadable > 0;
            let params = GenParams {
                max_tokens: if o.cot {
                    o.cot_max_tokens
                } else {
                    VERDICT_MAX_TOKENS
                },
                temperature: if k > 1 || fresh { 1.0 } else { 0.0 },
                top_p: 1.0,
                seed: Some(o.seed.wrapping_add(request_index)),
                stop: if o.cot { Vec::new() } else { vec![")".into()] },
                top_logprobs: (!o.cot).then_some(TOP_LOGPROBS),
                n: (want > 1).then_some(want as u32),
            };
            request_index += 1;
            let req = ChatRequest {
                cache: Default::default(),
                messages: vec![Message::user(question)],
                params,
            };
            let c = ep
                .engine
                .complete(Stage::Judge.as_str(), id, &req)
                .await
                .map_err(|e| match e {
                    ItemError::Reject(why) => {
                        ItemError::Reject(format!("judge {}: {why}", ep.label))
                    }
                    other => other,
                })?;
            if !o.cot && verdicts.is_empty() {
                if let Some(p) = c.first_token_logprobs.as_deref().and_then(logprob_p) {
                    return Ok((p, Method::Logprobs));
                }
            }
            for text in std::iter::once(&c.text).chain(&c.more).take(want) {
                match parse_verdict(text) {
                    Some(v) => verdicts.push(v),
                    None => {
                        unreadable += 1;
                        if unreadable > UNPARSEABLE_RETRIES {
                            return Err(ItemError::Reject(format!(
                                "judge {}: no readable verdict after {} fresh samples; last reply: {}",
                                ep.label,
                                UNPARSEABLE_RETRIES,
                                text.chars().take(200).collect::<String>()
                            )));
                        }
                    }
                }
            }
        }
        let a = verdicts.iter().filter(|v| **v == Choice::A).count();
        let mut p = a as f64 / verdicts.len() as f64;
        if o.cot {
            p = p.clamp(0.4, 0.6);
        }
        Ok((p, Method::Samples))
    }
}

/// True when `p` is within `margin` of 0.5 (with a little slack for
/// floating-point sums such as 0.55 − 0.5).
pub fn is_tie(p: f64, margin: f64) -> bool {
    (p - 0.5).abs() <= margin + 1e-9
}

/// The option a first-token candidate names, if any (see the module docs).
pub fn option_token(token: &str) -> Option<Choice> {
    let t = token.trim();
    let t = t.strip_prefix('(').unwrap_or(t);
    let t = t.strip_suffix(')').unwrap_or(t);
    match t {
        "A" => Some(Choice::A),
        "B" => Some(Choice::B),
        _ => None,
    }
}

/// P(A) from first-token log-probabilities, or `None` when no candidate
/// names an option.
pub fn logprob_p(tops: &[TokenLogprob]) -> Option<f64> {
    let (mut pa, mut pb) = (0.0f64, 0.0f64);
    for t in tops {
        if !t.logprob.is_finite() {
            continue;
        }
        match option_token(&t.token) {
            Some(Choice::A) => pa += t.logprob.exp(),
            Some(Choice::B) => pb += t.logprob.exp(),
            None => {}
        }
    }
    (pa + pb > 0.0).then(|| pa / (pa + pb))
}

/// Reads a verdict from a reply.
///
/// If the reply contains "answer is" (any case), the text after its last
/// occurrence is read; otherwise the whole reply. That text, after leading
/// spaces, `:`, `*`, quotes and an optional `Option`/`Response` word, must
/// start with `A` or `B` — optionally in `(…)` or `[…]` — followed by the end
/// or a character that is not a letter or digit: `(A)`, `A`, `**B**`,
/// `Option B.`, `[A]`. Anything else (`Both`, `Neither`, `a tie`, free text)
/// is unreadable.
pub fn parse_verdict(text: &str) -> Option<Choice> {
    let lower = text.to_lowercase();
    let tail = match lower.rfind("answer is") {
        // Lower-casing can change byte lengths only outside ASCII; map the
        // position back through the original when it is a boundary.
        Some(i) if text.is_char_boundary(i + "answer is".len()) && lower.len() == text.len() => {
            &text[i + "answer is".len()..]
        }
        Some(_) => return None,
        None => text,
    };
    let skip = |s: &str| -> usize {
        s.len()
            - s.trim_start_matches(|c: char| {
                c.is_whitespace() || matches!(c, ':' | '*' | '"' | '\'' | '`' | '_')
            })
            .len()
    };
    let mut t = &tail[skip(tail)..];
    for word in ["option", "response", "answer"] {
        if t.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
        {
            t = &t[word.len()..];
            t = &t[skip(t)..];
            break;
        }
    }
    let t = t
        .strip_prefix('(')
        .or_else(|| t.strip_prefix('['))
        .unwrap_or(t);
    let mut chars = t.chars();
    let choice = match chars.next()? {
        'A' => Choice::A,
        'B' => Choice::B,
        _ => return None,
    };
    match chars.next() {
        None => Some(choice),
        Some(c) if !c.is_alphanumeric() => Some(choice),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(token: &str, p: f64) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob: p.ln(),
        }
    }

    #[test]
    fn verdicts_are_read_in_their_common_forms() {
        for (text, want) in [
            ("(A)", Some(Choice::A)),
            (" B", Some(Choice::B)),
            ("The answer is: (B)", Some(Choice::B)),
            ("the answer is **A**.", Some(Choice::A)),
            (
                "Step 1... (A) is rude. Therefore the answer is: (B)",
                Some(Choice::B),
            ),
            ("The answer is Option A", Some(Choice::A)),
            ("[B] because", Some(Choice::B)),
            ("B.", Some(Choice::B)),
            ("Both are fine", None),
            ("Answer: neither", None),
            ("Answer: (A)", Some(Choice::A)),
            ("a tie", None),
            ("", None),
            ("The answer is: Ab", None),
            ("I think (A) but maybe (B)", None),
        ] {
            assert_eq!(parse_verdict(text), want, "{text:?}");
        }
    }

    #[test]
    fn option_token_variants_are_summed_and_normalised() {
        assert_eq!(option_token(" (A"), Some(Choice::A));
        assert_eq!(option_token("B)"), Some(Choice::B));
        assert_eq!(option_token("("), None);
        assert_eq!(option_token("a"), None);
        let p = logprob_p(&[lp("A", 0.5), lp(" (A", 0.1), lp("B", 0.2), lp("(", 0.15)]).unwrap();
        assert!((p - 0.6 / 0.8).abs() < 1e-12, "{p}");
        assert_eq!(logprob_p(&[lp("(", 0.9), lp("The", 0.05)]), None);
    }

    #[test]
    fn questions_have_the_papers_multiple_choice_form() {
        let c = Constitution::parse(
            std::path::Path::new("c.json"),
            r#"{"critique_revision_principles": [{"critique": "c", "revision": "r"}],
                "comparison_principles": ["Which is kinder?"],
                "comparison_few_shots": [{"task": "TASK", "chain_of_thought": "COT", "selected_answer": "(B)"}]}"#,
        )
        .unwrap();
        let opts = JudgeOptions {
            samples: 1,
            cot: false,
            tie_margin: 0.05,
            seed: 0,
            cot_max_tokens: 64,
        };
        let t = Templates::load(None).unwrap();
        let j = Judge::new(Vec::new(), t, Some(&c), opts.clone());
        assert_eq!(j.principle("id", "0:1"), "Which is kinder?");
        assert_eq!(
            j.render("Hi?", "one", "two", "Which is kinder?").unwrap(),
            "TASK\nThe answer is: (B)\n\nConsider the following conversation between a human and an assistant:\nHuman: Hi?\n\nConsider the following principle: Which is kinder?\nOptions:\n(A) one\n(B) two\nThe answer is:"
        );
        let cot = Judge::new(
            Vec::new(),
            Templates::load(None).unwrap(),
            Some(&c),
            JudgeOptions { cot: true, ..opts },
        );
        let q = cot.render("Hi?", "one", "two", "P?").unwrap();
        assert!(
            q.starts_with("TASK\nLet's think step by step: COT\nThe answer is: (B)\n\n"),
            "{q}"
        );
        assert!(q.ends_with("(B) two\nLet's think step by step, then end with \"The answer is: (A)\" or \"The answer is: (B)\"."), "{q}");
        // Without comparison principles the built-in list is used.
        let none = Judge::new(
            Vec::new(),
            Templates::load(None).unwrap(),
            None,
            cot.opts.clone(),
        );
        assert!(DEFAULT_COMPARISON_PRINCIPLES.contains(&none.principle("x", "")));
    }

    #[test]
    fn ties_are_within_the_margin() {
        assert!(is_tie(0.55, 0.05));
        assert!(is_tie(0.45, 0.05));
        assert!(!is_tie(0.56, 0.05));
        assert!(is_tie(0.5, 0.0));
    }
}
