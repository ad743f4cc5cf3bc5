//! `leap`: principles learnt from mistakes on the conversation's own
//! examples, after Zhang et al., "In-Context Principle Learning from
//! Mistakes" (LEAP, 2024).
//!
//! The examples are the conversation's earlier user → assistant turns
//! (few-shot turns as chat clients send them), the assistant turn standing
//! for the reference answer. The model answers each example's question
//! afresh (`--best-of-n` samples, one call with `n` per example, all
//! examples at once) to make mistakes; for each example one call compares
//! its answers with the reference and states low-level principles (all at
//! once); one call condenses them into high-level principles; the final
//! call answers the conversation with those principles in its system
//! message. Four calls on the critical path. A conversation without
//! examples is answered directly, and the note says so.

use futures::future::try_join_all;

use crate::provider::{Message, Role};

use super::{with_system, Answer, Ctx, Lead};
use crate::serve::error::ApiError;

/// Most examples used (the paper's prompts hold a few).
const MAX_EXAMPLES: usize = 4;
const LOW: &str = "Compare the attempted answers with the reference answer";
const HIGH: &str = "Condense the principles below into a short list of general principles";
const USE: &str = "Principles learnt from mistakes on similar questions; follow them";

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let examples = examples(messages);
    if examples.is_empty() {
        let mut a = super::none::run(ctx, messages, prev).await?;
        a.note = Some(
            "leap: the conversation holds no example turns to learn from; answered directly".into(),
        );
        return Ok(a);
    }
    let attempts = try_join_all(
        examples
            .iter()
            .map(|(q, _)| ctx.samples(std::slice::from_ref(*q), ctx.best_of_n.max(1))),
    )
    .await?;
    let asks = examples.iter().zip(&attempts).map(|((q, reference), tries)| {
        let listed: String = tries
            .iter()
            .enumerate()
            .map(|(i, t)| format!("Attempt {}:\n{}\n\n", i + 1, t.trim()))
            .collect();
        let req = ctx.request(vec![Message::user(format!(
            "{LOW}. Where an attempt is wrong or worse than the reference, say what went wrong, then state principles that would have avoided the mistake, one per line. If every attempt is right, reply with the principles the reference follows.\n\nQuestion:\n{}\n\nReference answer:\n{}\n\n{listed}",
            q.content.trim(),
            reference.content.trim()
        ))]);
        async move { ctx.call(&req).await }
    });
    let low: Vec<String> = try_join_all(asks)
        .await?
        .into_iter()
        .map(|c| c.text.trim().to_string())
        .collect();
    let high = ctx
        .call(&ctx.request(vec![Message::user(format!(
            "{HIGH}, one per line, useful for answering new questions of the same kind. Reply with the list only.\n\n{}",
            low.join("\n\n")
        ))]))
        .await?
        .text;
    let mut convo = with_principles(messages, high.trim());
    if let Some(p) = prev {
        convo.push(Message::assistant(p.text));
        convo.push(Message::user(
            "Revise your answer above so it follows the principles.",
        ));
    }
    let fin = ctx.call(&ctx.request(convo)).await?;
    let full = format!(
        "Principles from the examples:\n{}\n\nHigh-level principles:\n{}\n\nAnswer:\n{}",
        low.join("\n\n"),
        high.trim(),
        fin.text.trim()
    );
    Ok(Answer::of(fin.text.trim().to_string(), fin.finish).with_full(full))
}

/// The earlier (user, assistant) turn pairs before the last user message.
fn examples(messages: &[Message]) -> Vec<(&Message, &Message)> {
    let last_user = messages.iter().rposition(|m| m.role == Role::User);
    let head = &messages[..last_user.unwrap_or(0)];
    head.windows(2)
        .filter(|w| w[0].role == Role::User && w[1].role == Role::Assistant)
        .map(|w| (&w[0], &w[1]))
        .take(MAX_EXAMPLES)
        .collect()
}

/// `messages` with the principles added to (or as) the system message.
fn with_principles(messages: &[Message], principles: &str) -> Vec<Message> {
    with_system(messages, &format!("{USE}:\n{principles}"), Lead::Theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_the_turn_pairs_before_the_question() {
        let m = vec![
            Message::system("s"),
            Message::user("q1"),
            Message::assistant("a1"),
            Message::user("q2"),
            Message::assistant("a2"),
            Message::user("question"),
        ];
        let ex = examples(&m);
        assert_eq!(ex.len(), 2);
        assert_eq!((&*ex[1].0.content, &*ex[1].1.content), ("q2", "a2"));
        assert!(examples(&m[..2]).is_empty());
    }
}
