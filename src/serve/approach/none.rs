//! `none`: the request as the client sent it, one upstream call. (Streamed
//! requests do not come here: they are relayed token by token, see
//! [`crate::serve::stream`].)

use crate::provider::Message;

use super::{Answer, Ctx};
use crate::serve::error::ApiError;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    if let Some(p) = prev {
        return Ok(p);
    }
    let req = crate::provider::ChatRequest {
        cache: Default::default(),
        messages: messages.to_vec(),
        params: crate::provider::GenParams {
            n: None,
            ..ctx.params.clone()
        },
    };
    let c = ctx.call(&req).await?;
    let mut a = Answer::of(c.text, c.finish);
    a.logprobs = c.first_token_logprobs;
    Ok(a)
}
