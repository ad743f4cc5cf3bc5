//! `rto`: round-trip optimisation. Answer the request (C1); ask what
//! request C1 answers best (Q2); answer Q2 (C2). When C1 and C2 agree C1
//! stands; otherwise a last call writes the final answer from both. Four
//! calls, one after another (three when a previous step gave C1, and one
//! fewer when the round trip agrees).

use crate::provider::Message;

use super::{normalise, Answer, Ctx};
use crate::serve::error::ApiError;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let c1 = match prev {
        Some(p) => p.text,
        None => ctx.call(&ctx.request(messages.to_vec())).await?.text,
    };
    let reverse = format!(
        "Here is a response written by an assistant:\n\n{}\n\nWrite the request (instruction or question) that this response answers best. Reply with the request only.",
        c1.trim()
    );
    let q2 = ctx
        .call(&ctx.request(vec![Message::user(reverse)]))
        .await?
        .text;
    let c2 = ctx
        .call(&ctx.request(vec![Message::user(q2.trim())]))
        .await?
        .text;
    if normalise(&c1) == normalise(&c2) {
        return Ok(Answer::stop(c1.trim().to_string()));
    }
    let mut convo = messages.to_vec();
    convo.push(Message::user(format!(
        "Two draft responses to my last message follow.\n\nDraft 1:\n{}\n\nDraft 2:\n{}\n\nWrite the best final response to my last message, keeping what is right in either draft. Reply with the response only.",
        c1.trim(),
        c2.trim()
    )));
    let fin = ctx.call(&ctx.request(convo)).await?;
    Ok(Answer::of(fin.text.trim().to_string(), fin.finish))
}
