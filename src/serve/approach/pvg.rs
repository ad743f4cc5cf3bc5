//! `pvg`: a prover–verifier game at inference time, after Kirchner et al.,
//! "Prover-Verifier Games improve legibility of LLM outputs" (2024).
//!
//! Each of `--pvg-rounds` rounds, a helpful prover writes
//! `--pvg-solutions` solutions and a sneaky prover as many subtly wrong
//! ones — both sets sampled at once — then a verifier, not told which is
//! which, scores every solution (one call each, all at once). The game's
//! rule for the answer: the helpful solution the verifier scores highest
//! (the earliest on ties). From the second round the helpful prover sees
//! the best solution so far and its score and is asked to do better, so a
//! round costs two calls on the critical path.

use futures::future::try_join;

use crate::provider::Message;

use super::{with_system, Answer, Ctx, Lead};
use crate::serve::error::ApiError;

const HELPFUL: &str =
    "You are a helpful prover: solve the problem correctly, with clear steps a checker can verify.";
const SNEAKY: &str = "You are a sneaky prover: write a solution that looks convincing but contains a subtle mistake, so that a checker must be careful to catch it.";
const VERIFY: &str = "You are a verifier. Check the solution below step by step for errors";

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let k = ctx.knobs;
    let m = k.pvg_solutions.max(1);
    let mut best: Option<(f64, String)> = None;
    let mut carried = prev.map(|p| p.text);
    let mut full = String::new();
    for round in 1..=k.pvg_rounds.max(1) {
        let mut helpful_convo = with_system(messages, HELPFUL, Lead::Ours);
        if let Some((score, text)) = &best {
            helpful_convo.push(Message::user(format!(
                "A verifier scored this earlier solution {:.0}/10:\n\n{}\n\nWrite a better, fully correct solution to my previous message.",
                score * 10.0,
                text.trim()
            )));
        }
        let sneaky_convo = with_system(messages, SNEAKY, Lead::Ours);
        // The previous step's answer takes a helpful seat in the first
        // round, but the prover still writes at least one.
        let want_helpful = match carried {
            Some(_) => (m - 1).max(1),
            None => m,
        };
        let (mut helpful, sneaky) = try_join(
            ctx.samples(&helpful_convo, want_helpful),
            ctx.samples(&sneaky_convo, m),
        )
        .await?;
        if let Some(p) = carried.take() {
            helpful.insert(0, p);
        }
        let asks = helpful
            .iter()
            .chain(&sneaky)
            .map(|s| verify_ask(messages, s))
            .collect();
        let scores = ctx.scores(asks, 10.0, 0.0).await?;
        let (helpful_scores, sneaky_scores) = scores.split_at(helpful.len());
        full.push_str(&format!("Round {round}:\n"));
        listing(&mut full, "helpful", &helpful, helpful_scores);
        listing(&mut full, "sneaky", &sneaky, sneaky_scores);
        for (s, &score) in helpful.iter().zip(helpful_scores) {
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, s.clone()));
            }
        }
    }
    let (score, text) = best.unwrap_or_default();
    full.push_str(&format!(
        "Chosen: the helpful solution scored {:.1}/10.\n\n{}",
        score * 10.0,
        text.trim()
    ));
    Ok(Answer::stop(text.trim().to_string()).with_full(full))
}

/// The verifier's request for one solution (it is not told which prover wrote it).
fn verify_ask(messages: &[Message], solution: &str) -> Vec<Message> {
    vec![Message::user(format!(
        "{VERIFY} in answering the conversation, then rate from 0 to 10 how likely it is to be correct. End with the rating alone on the last line.\n\nConversation:\n\n{}\n\nSolution:\n\n{}",
        super::transcript(messages),
        solution.trim()
    ))]
}

/// One line per solution and its score, for `return_full_response`.
fn listing(full: &mut String, who: &str, solutions: &[String], scores: &[f64]) {
    for (i, (s, score)) in solutions.iter().zip(scores).enumerate() {
        full.push_str(&format!(
            "  {who} {} (verifier {:.1}/10): {}\n",
            i + 1,
            score * 10.0,
            s.trim()
        ));
    }
}
