//! Approaches: how a request spends upstream calls to answer better.
//!
//! A request names a [`Plan`]: one or more pipelines joined by `|`, each
//! one or more [`Step`]s joined by `&`. In a pipeline each step refines the
//! answer of the one before it (the previous answer stands in for the
//! step's own first draft, so `cai&bon` revises the answer and then lets it
//! compete with fresh candidates). Pipelines joined by `|` run at once and
//! each gives its own choice (`bon|moa`: two choices). Every step is a
//! small file over [`Ctx::call`], which sends through the shared engine.
//! Calls that do not depend on each other are awaited together, so a
//! request's wall time is its critical path.

mod bon;
mod cai;
mod cot_reflection;
mod leap;
mod mcts;
mod moa;
mod none;
mod pvg;
mod re2;
mod rstar;
mod rto;
mod self_consistency;
mod tree;
pub mod z3;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::try_join_all;

use crate::engine::Engine;
use crate::provider::{ChatRequest, Completion, FinishReason, GenParams, Message, Role};

use super::error::ApiError;
use super::record;
use super::Shared;

/// Every approach slug, as error messages and `/v1/models` list them.
pub const KNOWN: &[&str] = &[
    "none",
    "cai",
    "bon",
    "moa",
    "self_consistency",
    "rto",
    "cot_reflection",
    "mcts",
    "z3",
    "pvg",
    "rstar",
    "re2",
    "leap",
];

/// One step of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Pass-through.
    None,
    /// Constitutional critique → revision, `rounds` times.
    Cai { rounds: u32 },
    /// Best of `n` candidates by the judge (`None`: the request's or server's N).
    Bon { n: Option<u32> },
    /// Mixture of agents: candidates, a critique of them, a synthesis.
    Moa,
    /// Majority answer of k samples.
    SelfConsistency,
    /// Round-trip optimisation.
    Rto,
    /// Think, reflect, answer; only the answer is returned.
    CotReflection,
    /// Monte Carlo tree search over reasoning steps, scored by the model.
    Mcts,
    /// The problem as SMT-LIB, solved by `z3`, answered from its result.
    Z3,
    /// Prover–verifier game: helpful and sneaky provers, a verifier.
    Pvg,
    /// rStar: a generator's tree search, a discriminator's agreement.
    Rstar,
    /// Re-reading: the question twice in one call.
    Re2,
    /// Principles learnt from mistakes on the conversation's examples.
    Leap,
}

impl Step {
    /// Reads one slug: a known name, `cai` and `bon` optionally followed by
    /// a number (`cai2`: two rounds, `bon5`: five candidates).
    pub fn parse(s: &str) -> Option<Step> {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (base, num) = s.split_at(s.len() - digits);
        let num: Option<u32> = if num.is_empty() {
            None
        } else {
            Some(num.parse().ok().filter(|&n| (1..=16).contains(&n))?)
        };
        Some(match (base, num) {
            ("none", None) => Step::None,
            ("cai", r) => Step::Cai {
                rounds: r.unwrap_or(1),
            },
            ("bon", n) => Step::Bon { n },
            ("moa", None) => Step::Moa,
            ("self_consistency", None) => Step::SelfConsistency,
            ("rto", None) => Step::Rto,
            ("cot_reflection", None) => Step::CotReflection,
            ("mcts", None) => Step::Mcts,
            ("pvg", None) => Step::Pvg,
            ("rstar", None) => Step::Rstar,
            ("leap", None) => Step::Leap,
            ("re", Some(2)) => Step::Re2,
            _ if s == "z3" => Step::Z3,
            _ => return None,
        })
    }

    pub fn slug(self) -> String {
        match self {
            Step::None => "none".into(),
            Step::Cai { rounds: 1 } => "cai".into(),
            Step::Cai { rounds } => format!("cai{rounds}"),
            Step::Bon { n: None } => "bon".into(),
            Step::Bon { n: Some(n) } => format!("bon{n}"),
            Step::Moa => "moa".into(),
            Step::SelfConsistency => "self_consistency".into(),
            Step::Rto => "rto".into(),
            Step::CotReflection => "cot_reflection".into(),
            Step::Mcts => "mcts".into(),
            Step::Z3 => "z3".into(),
            Step::Pvg => "pvg".into(),
            Step::Rstar => "rstar".into(),
            Step::Re2 => "re2".into(),
            Step::Leap => "leap".into(),
        }
    }
}

/// A part of an approach name that names no approach.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown approach `{0}`")]
pub struct UnknownApproach(pub String);

/// Pipelines run side by side (`|`), each of steps run one after another
/// (`&`): `&` binds tighter, so `a&b|c` is `(a&b) | c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan(pub Vec<Vec<Step>>);

impl Plan {
    /// One pipeline of one step.
    pub fn single(step: Step) -> Plan {
        Plan(vec![vec![step]])
    }

    /// Reads `a&b|c`; the error names the first unknown part.
    pub fn parse(s: &str) -> Result<Plan, UnknownApproach> {
        let pipelines = s
            .split('|')
            .map(|pipe| {
                pipe.split('&')
                    .map(|p| {
                        Step::parse(p.trim()).ok_or_else(|| UnknownApproach(p.trim().to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan(pipelines))
    }

    pub fn slug(&self) -> String {
        self.0
            .iter()
            .map(|pipe| pipe.iter().map(|s| s.slug()).collect::<Vec<_>>().join("&"))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// Plain pass-through: streamed token by token.
    pub fn is_passthrough(&self) -> bool {
        self.0 == [vec![Step::None]]
    }

    /// Every step of every pipeline.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.0.iter().flatten()
    }
}

/// The message for an unknown approach.
pub fn unknown(name: &str) -> String {
    format!(
        "unknown approach `{name}`; known approaches: {} (join them with & for a pipeline, e.g. cai&bon, or with | to run several at once, one choice each, e.g. bon|moa; cai2 and bon5 set rounds and candidates)",
        KNOWN.join(", ")
    )
}

/// Splits `SLUG-model` into its plan and the model name. A prefix that is
/// not an approach is part of the model name (`gpt-4o`), unless it is a
/// pipeline (`cai&foo-m`), which can only be a misspelt approach.
pub fn split_model(model: &str) -> Result<Option<(Plan, &str)>, UnknownApproach> {
    let Some((prefix, rest)) = model.split_once('-') else {
        return Ok(None);
    };
    match Plan::parse(prefix) {
        Ok(plan) if !rest.is_empty() => Ok(Some((plan, rest))),
        Ok(_) => Ok(None),
        Err(bad) if prefix.contains(['&', '|']) => Err(bad),
        Err(_) => Ok(None),
    }
}

/// An answer and why it ended.
#[derive(Clone, Debug)]
pub struct Answer {
    pub text: String,
    pub finish: FinishReason,
    /// First-token candidates of the call that wrote `text`, when the
    /// client asked for them (`none` only).
    pub logprobs: Option<Vec<crate::provider::TokenLogprob>>,
    /// The reasoning behind `text` (thinking, candidates and verdicts, the
    /// tree's best path), returned instead of `text` with
    /// `return_full_response`; `None` when the approach has none.
    pub full: Option<String>,
    /// Why the answer is not what the approach normally gives (the solver
    /// failed, …); said in `cai.note`.
    pub note: Option<String>,
}

impl Answer {
    fn stop(text: String) -> Self {
        Self::of(text, FinishReason::Stop)
    }

    fn of(text: String, finish: FinishReason) -> Self {
        Self {
            text,
            finish,
            logprobs: None,
            full: None,
            note: None,
        }
    }

    fn with_full(mut self, full: String) -> Self {
        self.full = Some(full);
        self
    }

    /// What the client gets as the message content.
    pub fn content(&self, full_response: bool) -> &str {
        match (&self.full, full_response) {
            (Some(f), true) => f,
            _ => &self.text,
        }
    }
}

/// A setting outside its range: the field (`mcts_depth`; the flag is the
/// same with dashes) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BadKnob {
    pub field: &'static str,
    pub why: String,
}

/// Settings of the search approaches: the server's flags, each overridden
/// by the request field of the same name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knobs {
    pub mcts_simulations: u32,
    pub mcts_exploration: f64,
    pub mcts_depth: u32,
    pub pvg_rounds: u32,
    pub pvg_solutions: u32,
    pub rstar_max_depth: u32,
    pub rstar_num_rollouts: u32,
    pub rstar_c: f64,
    /// Wall-clock limit of one `z3` run.
    pub z3_timeout: std::time::Duration,
    /// Memory limit of one `z3` run, in MiB.
    pub z3_memory_mb: u32,
}

impl Knobs {
    /// Every setting within the range this server accepts (the bounds keep
    /// one request's calls bounded).
    pub fn check(&self) -> Result<(), BadKnob> {
        let count = |field: &'static str, v: u32, max: u32| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(BadKnob {
                    field,
                    why: format!("{v} is outside 1..={max}"),
                })
            }
        };
        let real = |field: &'static str, v: f64| {
            if v.is_finite() && (0.0..=10.0).contains(&v) {
                Ok(())
            } else {
                Err(BadKnob {
                    field,
                    why: format!("{v} is outside [0, 10]"),
                })
            }
        };
        count("mcts_simulations", self.mcts_simulations, 32)?;
        real("mcts_exploration", self.mcts_exploration)?;
        count("mcts_depth", self.mcts_depth, 8)?;
        count("pvg_rounds", self.pvg_rounds, 8)?;
        count("pvg_solutions", self.pvg_solutions, 8)?;
        count("rstar_max_depth", self.rstar_max_depth, 8)?;
        count("rstar_num_rollouts", self.rstar_num_rollouts, 32)?;
        real("rstar_c", self.rstar_c)?;
        count("z3_memory_mb", self.z3_memory_mb, 65536)?;
        let t = self.z3_timeout.as_secs_f64();
        if !(t > 0.0 && t <= 600.0) {
            return Err(BadKnob {
                field: "z3_timeout",
                why: format!("{t} s is outside (0, 600]"),
            });
        }
        Ok(())
    }
}

impl Default for Knobs {
    /// The papers' (and the other proxy's) defaults.
    fn default() -> Self {
        Self {
            mcts_simulations: 2,
            mcts_exploration: 0.2,
            mcts_depth: 1,
            pvg_rounds: 2,
            pvg_solutions: 3,
            rstar_max_depth: 3,
            rstar_num_rollouts: 5,
            rstar_c: 1.4,
            z3_timeout: std::time::Duration::from_secs(10),
            z3_memory_mb: 512,
        }
    }
}

/// What an approach works with: one request's conversation and parameters.
pub struct Ctx {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    /// The client's parameters (with the server's defaults).
    pub params: GenParams,
    /// Seed of principle and comparison choices.
    pub seed: u64,
    /// Names the conversation in principle choices (a hash of it).
    pub key: String,
    /// N of `bon`/`moa`/`self_consistency` when the slug gives none (and
    /// the children of an `mcts` expansion).
    pub best_of_n: u32,
    pub knobs: Knobs,
}

impl Ctx {
    /// One upstream call through the engine.
    pub async fn call(&self, req: &ChatRequest) -> Result<Completion, ApiError> {
        self.engine
            .complete("serve", &self.key, req)
            .await
            .map_err(|e| ApiError::upstream(e, record::last_status()))
    }

    /// The client's parameters for an intermediate call: no stop sequences,
    /// one choice.
    pub fn inner_params(&self) -> GenParams {
        GenParams {
            stop: Vec::new(),
            n: None,
            top_logprobs: None,
            ..self.params.clone()
        }
    }

    /// A request of `messages` with the intermediate parameters.
    pub fn request(&self, messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            cache: Default::default(),
            messages,
            params: self.inner_params(),
        }
    }

    /// `want` answers to `messages`: one request with `n` where the upstream
    /// honours it, else (and once it has been seen ignoring `n`) `want`
    /// concurrent requests with distinct seeds.
    pub async fn samples(&self, messages: &[Message], want: u32) -> Result<Vec<String>, ApiError> {
        if want == 0 {
            return Ok(Vec::new());
        }
        let base = self.params.seed.unwrap_or(self.seed);
        let mut out = Vec::with_capacity(want as usize);
        let support = &self.shared.n_support;
        if want > 1 && support.load(Ordering::Relaxed) != N_IGNORED {
            let mut req = self.request(messages.to_vec());
            req.params.n = Some(want);
            let c = self.call(&req).await?;
            out.push(c.text);
            out.extend(c.more.into_iter().take(want as usize - 1));
            support.store(
                if out.len() as u32 >= want {
                    N_HONOURED
                } else {
                    N_IGNORED
                },
                Ordering::Relaxed,
            );
        }
        let missing = want - out.len() as u32;
        let calls = (0..missing).map(|i| {
            let mut req = self.request(messages.to_vec());
            req.params.seed = Some(base.wrapping_add(u64::from(want + i)));
            async move { self.call(&req).await.map(|c| c.text) }
        });
        out.extend(try_join_all(calls).await?);
        Ok(out.into_iter().map(|t| t.trim().to_string()).collect())
    }

    /// `n` candidate answers to `messages`: the previous step's answer, if
    /// any, and fresh [`Self::samples`] for the rest.
    pub async fn candidates(
        &self,
        messages: &[Message],
        prev: Option<Answer>,
        n: u32,
    ) -> Result<Vec<String>, ApiError> {
        let mut out: Vec<String> = prev.map(|p| vec![p.text]).unwrap_or_default();
        let want = n.saturating_sub(out.len() as u32);
        out.extend(self.samples(messages, want).await?);
        Ok(out)
    }
}

/// Whether the upstream honours `n` (learnt from its first reply to it).
pub const N_UNKNOWN: u8 = 0;
const N_HONOURED: u8 = 1;
const N_IGNORED: u8 = 2;

impl Ctx {
    /// Scores read from the replies to `asks` (one call each, all at once):
    /// each reply's [`rating`], divided by `scale` and clamped to [0, 1]; an
    /// unreadable reply scores `fallback`.
    pub async fn scores(
        &self,
        asks: Vec<Vec<Message>>,
        scale: f64,
        fallback: f64,
    ) -> Result<Vec<f64>, ApiError> {
        let calls = asks.into_iter().map(|m| {
            let req = self.request(m);
            async move { self.call(&req).await }
        });
        let replies = try_join_all(calls).await?;
        Ok(replies
            .iter()
            .map(|c| rating(&c.text).map_or(fallback, |x| (x / scale).clamp(0.0, 1.0)))
            .collect())
    }
}

/// The rating in a reply: the first number of the last line that holds
/// one, so reasoning before a final "Rating: 7" does not count, and
/// "8 out of 10" reads as 8.
pub fn rating(text: &str) -> Option<f64> {
    text.lines().rev().find_map(first_number)
}

/// The first number in `text` (`8`, `7.5`, `-1`), if any.
pub fn first_number(text: &str) -> Option<f64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let neg = text[..start].ends_with('-');
    let tail = &text[start..];
    let end = tail
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(tail.len());
    let x: f64 = tail[..end].trim_end_matches('.').parse().ok()?;
    Some(if neg { -x } else { x })
}

/// Runs the steps of one pipeline over `messages`.
pub async fn run(ctx: &Ctx, steps: &[Step], messages: &[Message]) -> Result<Answer, ApiError> {
    let mut prev: Option<Answer> = None;
    let mut notes: Vec<String> = Vec::new();
    for step in steps {
        let p = prev.take();
        prev = Some(match *step {
            Step::None => none::run(ctx, messages, p).await?,
            Step::Cai { rounds } => cai::run(ctx, messages, p, rounds).await?,
            Step::Bon { n } => bon::run(ctx, messages, p, n.unwrap_or(ctx.best_of_n)).await?,
            Step::Moa => moa::run(ctx, messages, p, ctx.best_of_n.max(2)).await?,
            Step::SelfConsistency => {
                self_consistency::run(ctx, messages, p, ctx.best_of_n.max(2)).await?
            }
            Step::Rto => rto::run(ctx, messages, p).await?,
            Step::CotReflection => cot_reflection::run(ctx, messages, p).await?,
            Step::Mcts => mcts::run(ctx, messages, p).await?,
            Step::Z3 => z3::run(ctx, messages, p).await?,
            Step::Pvg => pvg::run(ctx, messages, p).await?,
            Step::Rstar => rstar::run(ctx, messages, p).await?,
            Step::Re2 => re2::run(ctx, messages, p).await?,
            Step::Leap => leap::run(ctx, messages, p).await?,
        });
        if let Some(n) = prev.as_mut().and_then(|a| a.note.take()) {
            notes.push(n);
        }
    }
    let mut answer =
        prev.ok_or_else(|| ApiError::invalid("empty approach", Some("approach".into())))?;
    answer.note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(answer)
}

/// The text of the last user message (what the judge and critiques call
/// the prompt).
pub fn last_user(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| &*m.content)
}

/// The conversation as plain text, for prompts that quote it.
pub fn transcript(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let who = match m.role {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        };
        out.push_str(who);
        out.push_str(": ");
        out.push_str(&m.content);
        out.push_str("\n\n");
    }
    out.trim_end().to_string()
}

/// Where an approach's own instruction stands in the system message when
/// the client sent one.
#[derive(Clone, Copy)]
pub enum Lead {
    /// The instruction first, then the client's system text.
    Ours,
    /// The client's system text first, then the instruction.
    Theirs,
}

/// `messages` with `text` joined to the client's system message (a blank
/// line between, in the order `lead` says), or as the system message where
/// the client sent none.
pub fn with_system(messages: &[Message], text: &str, lead: Lead) -> Vec<Message> {
    let mut convo = Vec::with_capacity(messages.len() + 1);
    match messages.first() {
        Some(m) if m.role == Role::System => {
            convo.push(Message::system(match lead {
                Lead::Ours => format!("{text}\n\n{}", m.content),
                Lead::Theirs => format!("{}\n\n{text}", m.content),
            }));
            convo.extend(messages[1..].iter().cloned());
        }
        _ => {
            convo.push(Message::system(text));
            convo.extend(messages.iter().cloned());
        }
    }
    convo
}

/// Text with case, punctuation and spacing folded, for comparing answers.
pub fn normalise(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_parse_with_counts_and_pipelines() {
        assert_eq!(Step::parse("cai2"), Some(Step::Cai { rounds: 2 }));
        assert_eq!(Step::parse("bon"), Some(Step::Bon { n: None }));
        assert_eq!(Step::parse("bon5"), Some(Step::Bon { n: Some(5) }));
        assert_eq!(Step::parse("moa2"), None);
        assert_eq!(Step::parse("cai0"), None);
        assert_eq!(
            Plan::parse("cai&bon").unwrap().0,
            vec![vec![Step::Cai { rounds: 1 }, Step::Bon { n: None }]]
        );
        assert_eq!(
            Plan::parse("cai&bon|mcts").unwrap().0,
            vec![
                vec![Step::Cai { rounds: 1 }, Step::Bon { n: None }],
                vec![Step::Mcts]
            ]
        );
        assert_eq!(Plan::parse("z3|re2").unwrap().slug(), "z3|re2");
        assert_eq!(Step::parse("re3"), None);
        assert_eq!(
            Plan::parse("cai&nope"),
            Err(UnknownApproach("nope".to_string()))
        );
    }

    #[test]
    fn model_prefixes_are_approaches_only_when_known() {
        let (plan, model) = split_model("moa-gpt-4o-mini").unwrap().unwrap();
        assert_eq!((plan.slug().as_str(), model), ("moa", "gpt-4o-mini"));
        assert!(split_model("gpt-4o").unwrap().is_none());
        assert!(split_model("llama3").unwrap().is_none());
        assert_eq!(
            split_model("cai&bogus-m"),
            Err(UnknownApproach("bogus".to_string()))
        );
        let (plan, _) = split_model("cai&bon-m").unwrap().unwrap();
        assert_eq!(plan.slug(), "cai&bon");
        let (plan, model) = split_model("mcts|pvg-m").unwrap().unwrap();
        assert_eq!((plan.slug().as_str(), model), ("mcts|pvg", "m"));
        assert_eq!(
            split_model("z3|nope-m"),
            Err(UnknownApproach("nope".to_string()))
        );
    }

    #[test]
    fn the_first_number_of_a_reply_is_read() {
        assert_eq!(first_number("Score: 7.5/10"), Some(7.5));
        assert_eq!(first_number("8."), Some(8.0));
        assert_eq!(first_number("-1 points"), Some(-1.0));
        assert_eq!(first_number("none"), None);
        assert_eq!(rating("Step 1 is right, step 2 too.\nRating: 7"), Some(7.0));
        assert_eq!(rating("8 out of 10\n"), Some(8.0));
        assert_eq!(rating("no rating"), None);
    }

    #[test]
    fn normalising_ignores_case_punctuation_and_spacing() {
        assert_eq!(
            normalise("  The answer is 42. "),
            normalise("the ANSWER is 42")
        );
        assert_ne!(normalise("41"), normalise("42"));
    }
}
