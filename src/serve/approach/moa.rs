//! `moa`: mixture of agents. N candidates (at once), one call that
//! critiques them side by side, one that writes the final answer from the
//! candidates and the critique: three calls on the critical path.

use crate::provider::Message;

use super::{Answer, Ctx};
use crate::serve::error::ApiError;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
    n: u32,
) -> Result<Answer, ApiError> {
    let candidates = ctx.candidates(messages, prev, n).await?;

    let mut listing = String::new();
    for (i, c) in candidates.iter().enumerate() {
        listing.push_str(&format!("Candidate {}:\n{}\n\n", i + 1, c.trim()));
    }
    let critique_request = format!(
        "Original conversation:\n\n{}\n\nCandidate responses to its last message:\n\n{}Critique each candidate: what it gets right, what it gets wrong or leaves out, and how it could be better.",
        super::transcript(messages),
        listing
    );
    let mut convo = vec![Message::user(critique_request)];
    let critique = ctx.call(&ctx.request(convo.clone())).await?;
    convo.push(Message::assistant(critique.text.trim()));
    convo.push(Message::user(
        "Using the candidates and the critique, write the single best response to the last message of the original conversation. Reply with that response only, without mentioning the candidates or the critique.",
    ));
    let fin = ctx.call(&ctx.request(convo)).await?;
    let full = format!(
        "{listing}Critique:\n{}\n\nAnswer:\n{}",
        critique.text.trim(),
        fin.text.trim()
    );
    Ok(Answer::of(fin.text.trim().to_string(), fin.finish).with_full(full))
}
