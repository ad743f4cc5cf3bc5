//! `cot_reflection`: one call asked to think in `<thinking>`, check itself
//! in `<reflection>` and answer in `<output>`; only the output is returned
//! (the whole reply when the model ignored the format).

use crate::provider::Message;

use super::{with_system, Answer, Ctx, Lead};
use crate::serve::error::ApiError;

const SYSTEM: &str = "Answer in three parts. First think the problem through step by step inside <thinking></thinking>. Then check that reasoning for mistakes or gaps inside <reflection></reflection>, correcting them. Finally give the answer for the user inside <output></output>; the user sees only the output, so it must stand on its own.";

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let mut convo = with_system(messages, SYSTEM, Lead::Theirs);
    if let Some(p) = prev {
        convo.push(Message::assistant(p.text));
        convo.push(Message::user(
            "Improve your answer above, using the three parts.",
        ));
    }
    let c = ctx.call(&ctx.request(convo)).await?;
    Ok(Answer::of(output_of(&c.text), c.finish).with_full(c.text.trim().to_string()))
}

/// The text inside `<output>` (to the end when it is not closed).
pub fn output_of(text: &str) -> String {
    match text.find("<output>") {
        Some(i) => {
            let rest = &text[i + "<output>".len()..];
            rest.split("</output>")
                .next()
                .unwrap_or(rest)
                .trim()
                .to_string()
        }
        None => text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_output_is_returned() {
        assert_eq!(
            output_of("<thinking>x</thinking><reflection>y</reflection><output> 42 </output>"),
            "42"
        );
        assert_eq!(output_of("<output>cut off"), "cut off");
        assert_eq!(output_of("no tags"), "no tags");
    }
}
