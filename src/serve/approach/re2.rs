//! `re2`: re-reading, after Xu et al., "Re-Reading Improves Reasoning in
//! Large Language Models" (2023): the last user message is given twice —
//! the question, then "Read the question again:" and the question — so
//! the model reads it with the whole question in view. One call.

use crate::provider::{Message, Role};

use super::{Answer, Ctx};
use crate::serve::error::ApiError;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let mut convo = messages.to_vec();
    if let Some(m) = convo.iter_mut().rev().find(|m| m.role == Role::User) {
        m.content = reread(&m.content).into();
    }
    if let Some(p) = prev {
        convo.push(Message::assistant(p.text));
        convo.push(Message::user(reread(
            "Check your answer above against the question and give the corrected final answer.",
        )));
    }
    let c = ctx.call(&ctx.request(convo)).await?;
    Ok(Answer::of(c.text.trim().to_string(), c.finish))
}

/// The paper's prompt: the question, then the question again.
pub fn reread(question: &str) -> String {
    format!("{question}\nRead the question again: {question}")
}
