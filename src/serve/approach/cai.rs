//! `cai`: the project's own technique at inference time. A first answer
//! (or the previous step's), then `rounds` critique → revision rounds with
//! the server's constitution, through the very steps `generate` uses
//! ([`crate::pipeline::Reviser`]): same templates, same principle choice
//! (seeded, per conversation and round), same label stripping.
//!
//! A round the model will not complete usefully (an empty critique, a
//! refusal to revise) leaves the answer as it was: a client gets the best
//! answer there is, not an error.

use crate::pipeline::{Reviser, RoundFail};
use crate::provider::{Message, Role};

use super::{Answer, Ctx};
use crate::serve::error::ApiError;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
    rounds: u32,
) -> Result<Answer, ApiError> {
    let mut answer = match prev {
        Some(p) => p,
        None => super::none::run(ctx, messages, None).await?,
    };
    let shared = &ctx.shared;
    let params = ctx.inner_params();
    let reviser = Reviser {
        engine: &ctx.engine,
        constitution: &shared.constitution,
        templates: &shared.templates,
        params: &params,
        seed: ctx.seed,
    };
    let prompt = super::last_user(messages);
    // The constitution's system messages lead the critique and revision
    // requests; the client's own system message is left to the answer.
    let mut convo: Vec<Message> = messages
        .iter()
        .filter(|m| m.role != Role::System)
        .cloned()
        .collect();
    convo.push(Message::assistant(answer.text.clone()));
    for round in 1..=rounds {
        match reviser
            .round(&ctx.key, round, prompt, &answer.text, &mut convo)
            .await
        {
            Ok((r, _)) => answer = Answer::stop(r.revision),
            Err(RoundFail::Reject(_, why)) if crate::serve::record::last_failed() => {
                return Err(ApiError::upstream(
                    crate::engine::ItemError::Reject(why),
                    crate::serve::record::last_status(),
                ))
            }
            Err(RoundFail::Reject(stage, why)) => {
                tracing::debug!(
                    "cai round {round} kept the answer: {} {why}",
                    stage.as_str()
                );
                break;
            }
            Err(RoundFail::Stop(msg)) => {
                return Err(ApiError::upstream(
                    crate::engine::ItemError::Stop(msg),
                    crate::serve::record::last_status(),
                ))
            }
            Err(RoundFail::Aborted(r)) => {
                return Err(ApiError::upstream(
                    crate::engine::ItemError::Aborted(r),
                    None,
                ))
            }
        }
    }
    Ok(answer)
}
