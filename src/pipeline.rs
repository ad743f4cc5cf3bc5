//! The critique → revision loop for one prompt, run depth-first.
//!
//! ```text
//! messages = [system?] + few_shots + examples? + [user: prompt]  → initial answer
//! for round in 1..=rounds:
//!     principle = pick(seed, prompt id, round)
//!     messages += [user: critique request]                   → critique
//!     messages += [user: revision request]                   → revision
//! ```
//!
//! The system message comes first (chat APIs and most chat templates accept
//! it nowhere else); critique and revision requests use the constitution's
//! stage-specific system message when it has one. The principle of a round
//! depends only on (seed, prompt id, round), so the same seed picks the same
//! principles whatever the concurrency or the order prompts finish in —
//! which also keeps journal keys stable across a resume.
//!
//! A reply cut off by the token limit is handled as [`OnLength`] says:
//! `retry` (the engine asks once more with twice the limit, then the prompt
//! is rejected), `reject` (the prompt is rejected at once, nothing more is
//! sent for it) or `keep` (the reply is used; its step is marked
//! `"truncated": true` in `trace.jsonl` and the row is counted in the
//! manifest's `counts.truncated_rows`). `generate` keeps by default with
//! the embedded local model and retries otherwise (see the config).

use serde::{Deserialize, Serialize};

use crate::engine::{AbortReason, Engine, ItemError};
use crate::feedback::examples::Retriever;
use crate::feedback::select::{JudgedPair, Undecided};
use crate::input::{pick_principle, Constitution, Principle, PromptRecord, Stage};
use crate::provider::{
    CacheHint, ChatRequest, Completion, FinishReason, GenParams, Message, Usage,
};
use crate::template::{TemplateError, Templates};

/// Everything the loop needs, shared by all prompts of a run.
pub struct Pipeline {
    /// Shared (an `Arc`) so the judge can send through the same engine.
    pub engine: std::sync::Arc<Engine>,
    pub constitution: Constitution,
    pub templates: Templates,
    pub params: GenParams,
    pub rounds: u32,
    /// Seed of the principle choice (always set: a resume must pick the same).
    pub seed: u64,
    /// Initial answers sampled per prompt (`--samples N`, best-of-N). The
    /// first one goes through the critique→revision loop; all are candidates
    /// for the preference pair.
    pub samples: u32,
    /// What a reply cut off by the token limit becomes. The engine must
    /// hand such replies over (`keep_truncated`) unless this is `Retry`.
    pub on_length: OnLength,
    /// Optimized examples (`--examples`) and how many go before each
    /// prompt (`--num-examples`): the best matches, as earlier turns of the
    /// prompt's conversation, so every stage of the prompt sees them.
    pub examples: Option<(std::sync::Arc<Retriever>, usize)>,
}

/// The policy for a reply cut off by the token limit (`--on-length`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLength {
    /// Use it; mark the step and count the row.
    Keep,
    /// Ask once more with twice the limit, then reject (the engine does it).
    Retry,
    /// Reject the prompt at once.
    Reject,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One request and its reply, as recorded in `trace.jsonl` (and read
/// back by the report).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceStep {
    pub stage: Stage,
    pub round: u32,
    /// The user message this step added (the full conversation is rebuilt
    /// from the steps, the system message and the few-shots).
    pub request: String,
    pub response: String,
    /// The reply as the model gave it, before labels were stripped.
    pub raw_response: String,
    pub usage: Option<Usage>,
    /// The reply was cut off by the token limit and kept (`--on-length keep`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

impl TraceStep {
    /// The step of `stage` that sent `request` and got `c`, whose text was
    /// read as `response`.
    fn new(stage: Stage, round: u32, request: String, response: String, c: Completion) -> Self {
        TraceStep {
            stage,
            round,
            request,
            response,
            truncated: c.finish == FinishReason::Length,
            raw_response: c.text,
            usage: c.usage,
        }
    }
}

/// One critique/revision round, as `trace.jsonl` records it (and the
/// report reads it back; a field an older run did not write reads as its
/// default).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Round {
    pub round: u32,
    pub principle_index: usize,
    pub principle_name: Option<String>,
    pub critique_request: String,
    pub critique: String,
    pub revision_request: String,
    pub revision: String,
}

/// A prompt that went through every round.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: String,
    pub prompt: String,
    pub system: Option<String>,
    /// The rendered `initial.jinja` (the user message actually sent).
    pub user_message: String,
    pub initial: String,
    pub rounds: Vec<Round>,
    pub steps: Vec<TraceStep>,
    /// The SFT completion, rendered with `sft_text.jinja`.
    pub sft_text: String,
    /// Further sampled initial answers (`--samples N`: N-1 of them).
    pub samples: Vec<String>,
    /// The judged (or heuristically scored) preference pair: `None` when
    /// pairs are not picked that way or the candidates are all identical,
    /// `Some(Err(_))` when the judge could not decide.
    pub judged: Option<Result<JudgedPair, Undecided>>,
}

impl Finished {
    /// Every candidate answer for the preference pair, distinct, in order:
    /// the sampled initial answers, then the final revision.
    pub fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.samples.len() + 2);
        let all = std::iter::once(self.initial.as_str())
            .chain(self.samples.iter().map(String::as_str))
            .chain(std::iter::once(self.final_answer()));
        for c in all {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
        out
    }
}

impl Finished {
    /// Some reply of this row was cut off by the token limit and kept.
    pub fn truncated(&self) -> bool {
        self.steps.iter().any(|s| s.truncated)
    }

    /// The final revision (the initial answer when there were no rounds).
    pub fn final_answer(&self) -> &str {
        self.rounds.last().map_or(&self.initial, |r| &r.revision)
    }
}

/// A prompt that could not be completed.
#[derive(Clone, Debug, Serialize)]
pub struct Reject {
    pub id: String,
    pub prompt: String,
    pub stage: Stage,
    pub round: u32,
    pub reason: String,
}

/// What became of one prompt.
#[derive(Debug)]
pub enum Outcome {
    Done(Box<Finished>),
    Rejected(Reject),
}

/// Removes a leading `Label:` (also `**Label:**`), case-insensitively, at
/// the start of a reply only.
pub fn strip_label(text: &str, label: &str) -> String {
    let t = text.trim();
    let body = t.strip_prefix("**").unwrap_or(t);
    let has_label = body
        .get(..label.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(label));
    if has_label {
        let rest = &body[label.len()..];
        let rest = rest.strip_prefix("**").unwrap_or(rest);
        if let Some(rest) = rest.strip_prefix(':') {
            let rest = rest.strip_prefix("**").unwrap_or(rest);
            return rest.trim().to_string();
        }
    }
    t.to_string()
}

/// Openings of a revision that declines to revise. Such a reply is not a
/// revision and is never written as one.
const REFUSALS: &[&str] = &[
    "no revision",
    "no revisions",
    "no changes are needed",
    "no changes needed",
    "i cannot revise",
    "i can't revise",
    "i won't revise",
    "there is nothing to revise",
];

fn is_refusal_to_revise(text: &str) -> bool {
    let lower = text.trim_start().to_lowercase();
    REFUSALS.iter().any(|r| lower.starts_with(r))
}

#[derive(Serialize)]
struct PrincipleCtx<'a> {
    name: Option<&'a str>,
    critique: &'a str,
    revision: &'a str,
}

impl<'a> From<&'a Principle> for PrincipleCtx<'a> {
    fn from(p: &'a Principle) -> Self {
        Self {
            name: p.name.as_deref(),
            critique: &p.critique,
            revision: &p.revision,
        }
    }
}

/// The first-stage request of a prompt: the rendered `initial.jinja` user
/// message and the full request around it.
pub fn initial_request(
    constitution: &Constitution,
    templates: &Templates,
    params: &GenParams,
    prompt: &str,
) -> Result<(String, ChatRequest), TemplateError> {
    initial_request_after(constitution, templates, params, &[], prompt)
}

/// [`initial_request`] with `examples` (user/assistant turns) before the
/// prompt, after the system message and the few-shots.
pub fn initial_request_after(
    constitution: &Constitution,
    templates: &Templates,
    params: &GenParams,
    examples: &[Message],
    prompt: &str,
) -> Result<(String, ChatRequest), TemplateError> {
    let user = templates.render("initial.jinja", minijinja::context! { prompt })?;
    let mut convo = examples.to_vec();
    convo.push(Message::user(user.clone()));
    let req = request(constitution, Stage::Initial, &convo, params, &Sent::new());
    Ok((user, req))
}

/// The requests already sent for one prompt, as (stage, message count):
/// what a later request's [`CacheHint::previous`] is worked out from.
pub type Sent = Vec<(Stage, usize)>;

/// `[system?] + few_shots + convo` for a stage, with the [`CacheHint`]
/// that says which of it other requests repeat: every request of the stage
/// starts with the same system message and few-shots (in that order, the
/// same bytes whatever the prompt), and, since a prompt's conversation only
/// grows, every earlier request of the prompt whose stage has the same
/// system message is a prefix of this one (the longest is `previous`).
/// Whether a later request extends this one is set by the caller.
fn request(
    c: &Constitution,
    stage: Stage,
    convo: &[Message],
    params: &GenParams,
    sent: &Sent,
) -> ChatRequest {
    let mut m = Vec::with_capacity(1 + c.few_shots.len() + convo.len());
    m.extend_from_slice(c.prefix(stage));
    let shared = m.len();
    m.extend(convo.iter().cloned());
    let previous = sent
        .iter()
        .filter(|&&(s, n)| extends(c, s, stage) && n < m.len())
        .map(|&(_, n)| n)
        .max()
        .unwrap_or(0);
    ChatRequest {
        messages: m,
        params: params.clone(),
        cache: CacheHint {
            shared,
            previous,
            extended: false,
            scope: Some(c.prefix_scope(stage).clone()),
        },
    }
}

/// Whether a later request of `next` for the same prompt starts with the
/// whole of an earlier request of `this`: the same system message (and
/// the same few-shots, always), and the conversation only grows.
fn extends(c: &Constitution, this: Stage, next: Stage) -> bool {
    c.system_for(this) == c.system_for(next)
}

impl Pipeline {
    /// The first-stage request of a prompt, exactly as it will be sent.
    pub fn initial_request(&self, prompt: &str) -> Result<(String, ChatRequest), TemplateError> {
        let examples = self.example_turns(prompt);
        let (user, mut req) = initial_request_after(
            &self.constitution,
            &self.templates,
            &self.params,
            &examples,
            prompt,
        )?;
        if self.samples > 1 {
            req.params.n = Some(self.samples);
        }
        req.cache.extended =
            self.rounds > 0 && extends(&self.constitution, Stage::Initial, Stage::Critique);
        Ok((user, req))
    }

    /// The examples placed before `prompt`, best match first.
    fn example_turns(&self, prompt: &str) -> Vec<Message> {
        match &self.examples {
            Some((bank, k)) => bank.turns(prompt, *k),
            None => Vec::new(),
        }
    }

    async fn call(
        &self,
        stage: Stage,
        id: &str,
        req: &ChatRequest,
    ) -> Result<Completion, ItemError> {
        self.engine.complete(stage.as_str(), id, req).await
    }

    /// Runs every stage of one prompt.
    ///
    /// Long because it is the stages in order (initial answer, samples, rounds,
    /// judging, SFT text), each a few lines, with the early exits between them;
    /// the work of each is in its own method.
    pub async fn run(&self, rec: PromptRecord) -> Result<Outcome, ItemError> {
        let PromptRecord {
            id, text: prompt, ..
        } = rec;
        let reject = |stage: Stage, round: u32, reason: String| {
            Ok(Outcome::Rejected(Reject {
                id: id.clone(),
                prompt: prompt.clone(),
                stage,
                round,
                reason,
            }))
        };
        let reject_cut = self.on_length == OnLength::Reject;
        macro_rules! attempt {
            ($stage:expr, $round:expr, $req:expr) => {
                match self.call($stage, &id, $req).await {
                    Ok(c) if reject_cut && c.finish == FinishReason::Length => {
                        return reject($stage, $round, cut_off($req.params.max_tokens))
                    }
                    Ok(c) => c,
                    Err(ItemError::Reject(why)) => return reject($stage, $round, why),
                    Err(e) => return Err(e),
                }
            };
        }
        macro_rules! render {
            ($stage:expr, $round:expr, $name:expr, $ctx:expr) => {
                match self.templates.render($name, $ctx) {
                    Ok(s) => s,
                    Err(e) => return reject($stage, $round, format!("template failed: {e}")),
                }
            };
        }

        let (user, req) = match self.initial_request(&prompt) {
            Ok(r) => r,
            Err(e) => return reject(Stage::Initial, 0, format!("template failed: {e}")),
        };
        let c = attempt!(Stage::Initial, 0, &req);
        let initial = c.text.trim().to_string();
        let mut samples: Vec<String> = c
            .more
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .take(self.samples.saturating_sub(1) as usize)
            .collect();
        let mut steps = vec![TraceStep::new(
            Stage::Initial,
            0,
            user.clone(),
            initial.clone(),
            c,
        )];
        // An endpoint that ignores `n` gets one request per missing sample,
        // each with its own seed (distinct replies, distinct journal keys).
        let mut k = samples.len() as u64 + 1;
        while samples.len() + 1 < self.samples as usize {
            let mut one = req.clone();
            one.params.n = None;
            one.params.seed = Some(self.params.seed.unwrap_or(self.seed).wrapping_add(k));
            let c = attempt!(Stage::Initial, 0, &one);
            samples.push(c.text.trim().to_string());
            k += 1;
        }
        let mut convo = self.example_turns(&prompt);
        convo.push(Message::user(user.clone()));
        convo.push(Message::assistant(initial.clone()));
        let mut answer = initial.clone();
        let mut rounds = Vec::new();
        let mut sent: Sent = vec![(Stage::Initial, req.messages.len())];

        let reviser = Reviser {
            engine: &self.engine,
            constitution: &self.constitution,
            templates: &self.templates,
            params: &self.params,
            seed: self.seed,
        };
        for round in 1..=self.rounds {
            let more = round < self.rounds;
            let (r, [critique, revision]) = match reviser
                .round_after(
                    &id, round, &prompt, &answer, &mut convo, &mut sent, more, reject_cut,
                )
                .await
            {
                Ok(x) => x,
                Err(RoundFail::Reject(stage, why)) => return reject(stage, round, why),
                Err(RoundFail::Stop(msg)) => return Err(ItemError::Stop(msg)),
                Err(RoundFail::Aborted(r)) => return Err(ItemError::Aborted(r)),
            };
            steps.push(critique);
            steps.push(revision);
            answer = r.revision.clone();
            rounds.push(r);
        }

        let system = self.constitution.system_message.clone();
        let sft_text = render!(
            Stage::Revision,
            self.rounds,
            "sft_text.jinja",
            minijinja::context! { prompt => &prompt, initial => &initial, final => &answer, system => &system }
        );
        Ok(Outcome::Done(Box::new(Finished {
            id,
            prompt,
            system,
            user_message: user,
            initial,
            rounds,
            steps,
            sft_text,
            samples,
            judged: None,
        })))
    }
}

/// The critique → revision step of the loop, shared by `generate` (every
/// round of [`Pipeline::run`]) and `cai serve`'s `cai` approach.
pub struct Reviser<'a> {
    pub engine: &'a Engine,
    pub constitution: &'a Constitution,
    pub templates: &'a Templates,
    pub params: &'a GenParams,
    /// Seed of the principle choice.
    pub seed: u64,
}

/// Why a round produced no revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundFail {
    /// The prompt is rejected at this stage, for this reason.
    Reject(Stage, String),
    /// The endpoint refuses every request.
    Stop(String),
    Aborted(AbortReason),
}

impl Reviser<'_> {
    /// One round: picks the principle for `(seed, id, round)`, asks for a
    /// critique of `answer` and then a revision. `convo` is the conversation
    /// so far, ending with `answer`; the four new turns are appended to it.
    /// Returns the round and its two trace steps.
    pub async fn round(
        &self,
        id: &str,
        round: u32,
        prompt: &str,
        answer: &str,
        convo: &mut Vec<Message>,
    ) -> Result<(Round, [TraceStep; 2]), RoundFail> {
        self.round_after(
            id,
            round,
            prompt,
            answer,
            convo,
            &mut Sent::new(),
            true,
            false,
        )
        .await
    }

    /// The text of a critique or revision reply without its `label`; a
    /// reply cut off by the token limit (with `reject_cut`) or empty
    /// rejects the prompt at `stage`.
    fn labelled(
        &self,
        c: &Completion,
        stage: Stage,
        label: &str,
        reject_cut: bool,
    ) -> Result<String, RoundFail> {
        if reject_cut && c.finish == FinishReason::Length {
            return Err(RoundFail::Reject(stage, cut_off(self.params.max_tokens)));
        }
        let text = strip_label(&c.text, label);
        if text.is_empty() {
            return Err(RoundFail::Reject(
                stage,
                format!("empty {}", label.to_lowercase()),
            ));
        }
        Ok(text)
    }

    /// One request of a round (`stage` is critique or revision): renders
    /// the stage's template as the next user turn, sends the conversation
    /// so far (`extended`: a later request of the prompt extends this one),
    /// and adds the reply without its label to the conversation. Returns
    /// the user turn, the reply and the trace step.
    async fn exchange(
        &self,
        turn: &Turn<'_>,
        stage: Stage,
        ctx: minijinja::Value,
        extended: bool,
        convo: &mut Vec<Message>,
        sent: &mut Sent,
    ) -> Result<(String, String, TraceStep), RoundFail> {
        let (template, label) = match stage {
            Stage::Revision => ("revision.jinja", "Revision"),
            _ => ("critique.jinja", "Critique"),
        };
        let request_text = self
            .templates
            .render(template, ctx)
            .map_err(|e| RoundFail::Reject(stage, format!("template failed: {e}")))?;
        convo.push(Message::user(request_text.as_str()));
        let mut req = request(self.constitution, stage, convo, self.params, sent);
        req.cache.extended = extended;
        sent.push((stage, req.messages.len()));
        let c = self
            .engine
            .complete(stage.as_str(), turn.id, &req)
            .await
            .map_err(|e| match e {
                ItemError::Reject(why) => RoundFail::Reject(stage, why),
                ItemError::Stop(msg) => RoundFail::Stop(msg),
                ItemError::Aborted(r) => RoundFail::Aborted(r),
            })?;
        let reply = self.labelled(&c, stage, label, turn.reject_cut)?;
        convo.push(Message::assistant(reply.as_str()));
        let step = TraceStep::new(stage, turn.round, request_text.clone(), reply.clone(), c);
        Ok((request_text, reply, step))
    }

    /// [`Reviser::round`] knowing the requests sent before it for the same
    /// prompt (`sent`, to which this round's two are added) and whether
    /// another round follows, so each request's [`CacheHint`] says what it
    /// shares with an earlier one and whether a later one extends it; with
    /// `reject_cut`, a reply cut off by the token limit rejects the prompt
    /// before anything more is sent for it.
    #[allow(clippy::too_many_arguments)]
    pub async fn round_after(
        &self,
        id: &str,
        round: u32,
        prompt: &str,
        answer: &str,
        convo: &mut Vec<Message>,
        sent: &mut Sent,
        more: bool,
        reject_cut: bool,
    ) -> Result<(Round, [TraceStep; 2]), RoundFail> {
        let index = pick_principle(self.seed, id, round, self.constitution.principles.len());
        let principle = &self.constitution.principles[index];
        let pctx = PrincipleCtx::from(principle);
        let turn = Turn {
            id,
            round,
            reject_cut,
        };

        // The revision (same system message) or the next round's critique
        // starts with all of the critique request.
        let critique_extended =
            more || extends(self.constitution, Stage::Critique, Stage::Revision);
        let (critique_request, critique, critique_step) = self
            .exchange(
                &turn,
                Stage::Critique,
                minijinja::context! { prompt, answer, principle => &pctx, round },
                critique_extended,
                convo,
                sent,
            )
            .await?;
        // The next round's critique and revision both grow this
        // conversation; the revision at least shares its system message.
        let (revision_request, revision, revision_step) = self
            .exchange(
                &turn,
                Stage::Revision,
                minijinja::context! { prompt, answer, critique => &critique, principle => &pctx, round },
                more,
                convo,
                sent,
            )
            .await?;
        if is_refusal_to_revise(&revision) {
            return Err(RoundFail::Reject(
                Stage::Revision,
                format!("the model declined to revise: {}", first_line(&revision)),
            ));
        }
        Ok((
            Round {
                round,
                principle_index: index,
                principle_name: principle.name.clone(),
                critique_request,
                critique,
                revision_request,
                revision,
            },
            [critique_step, revision_step],
        ))
    }
}

/// What every request of one round shares: the prompt's id, the round's
/// number and whether a reply cut off by the token limit rejects the prompt.
struct Turn<'a> {
    id: &'a str,
    round: u32,
    reject_cut: bool,
}

/// The reject reason of a reply cut off under `--on-length reject`.
fn cut_off(max_tokens: u32) -> String {
    format!("reply cut off by the token limit (max_tokens {max_tokens}; --on-length reject)")
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stripped_only_at_the_start() {
        assert_eq!(
            strip_label("Critique: too vague.", "Critique"),
            "too vague."
        );
        assert_eq!(
            strip_label("  **Revision:** Better.", "Revision"),
            "Better."
        );
        assert_eq!(strip_label("revision:fixed", "Revision"), "fixed");
        assert_eq!(
            strip_label("The Critique: stays", "Critique"),
            "The Critique: stays"
        );
        assert_eq!(
            strip_label("Critiques are fine", "Critique"),
            "Critiques are fine"
        );
        assert_eq!(
            strip_label("Ok. Revision: x", "Revision"),
            "Ok. Revision: x"
        );
    }

    #[test]
    fn principle_choice_is_a_pure_function() {
        let a: Vec<usize> = (1..=4).map(|r| pick_principle(7, "p1", r, 12)).collect();
        let b: Vec<usize> = (1..=4).map(|r| pick_principle(7, "p1", r, 12)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&i| i < 12));
        let spread: std::collections::HashSet<usize> = (0..200)
            .map(|i| pick_principle(7, &i.to_string(), 1, 12))
            .collect();
        assert!(
            spread.len() >= 10,
            "choices should cover the principles: {spread:?}"
        );
        assert_ne!(
            (0..50)
                .map(|i| pick_principle(7, &i.to_string(), 1, 12))
                .collect::<Vec<_>>(),
            (0..50)
                .map(|i| pick_principle(8, &i.to_string(), 1, 12))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn refusals_to_revise_are_recognised() {
        assert!(is_refusal_to_revise("No revisions are needed."));
        assert!(is_refusal_to_revise("I cannot revise this"));
        assert!(!is_refusal_to_revise("Here is a revised answer"));
    }
}
