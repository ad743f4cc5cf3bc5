//! The optimizer: new system prompts from an evaluated answer.
//!
//! One optimizer call returns all proposals of a beam entry, as in the
//! paper: `optimize_propose.jinja` shows the current prompt, the last
//! [`HISTORY`] prompt versions of its path (the current one included), the
//! query, the answer and its evaluation, and asks for a JSON list of
//! `actions` objects `{"analysis", "thought", "new_system_prompt"}` (an
//! object with a `proposals` list, or a single object, is read too). At
//! most `actions` proposals are taken; a list item without a usable
//! prompt is dropped with its reason, and so is each proposal the list
//! came short of.
//!
//! When no reply (of [`super::MAX_ASKS`]) holds a usable list, the ask falls back
//! to plain text: `optimize_propose_text.jinja` asks for the prompts each
//! between a `<prompt>` line and a `</prompt>` line. A block counts when
//! its `<prompt>` starts a line (the instruction names the markers
//! mid-sentence, so an echo of it does not count) and it holds
//! [`MIN_PROMPT_CHARS`]..=[`MAX_PROMPT_CHARS`] characters (`"format":
//! "markers"`, no analysis or thought). The text is the model's own answer
//! to "write the new prompts", so nothing is made up for it; only the JSON
//! wrapper is gone. When no block is usable either, the same template asks
//! for one prompt per call, `actions` calls of up to [`super::MAX_ASKS`]
//! asks each; a proposal none of them yields is dropped with all three reasons.

use serde::Serialize;
use serde_json::Value;

use super::{
    get_ci, json_list_or_object, Critic, Evaluation, Role, Unusable, Usable, HISTORY,
    MAX_NEW_BULLETS, MAX_PROMPT_CHARS, MIN_PROMPT_CHARS,
};
use crate::engine::ItemError;
use crate::input::PromptRecord;

/// The optimizer's reply.
#[derive(Clone, Debug, Serialize)]
pub struct Proposal {
    pub analysis: String,
    pub thought: String,
    pub text: String,
    /// `json`, or `markers` for the plain-text fallback.
    pub format: &'static str,
}

/// One proposal object: `analysis`, `thought` and the new text in `field`.
fn proposal_of(item: &Value, field: &str, max_chars: usize) -> Usable<Proposal> {
    let Value::Object(m) = item else {
        return Err(Unusable::Shape {
            expected: "object as list item",
            got: crate::input::json_kind(item),
        });
    };
    let s = |k: &str| get_ci(m, k).and_then(Value::as_str).map(str::trim);
    let new = s(field)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Unusable::Missing(format!("`{field}` string")))?;
    let chars = new.chars().count();
    if chars > max_chars {
        return Err(Unusable::invalid(
            format!("`{field}`"),
            format!("{chars} characters (at most {max_chars})"),
        ));
    }
    Ok(Proposal {
        analysis: s("analysis").unwrap_or_default().to_string(),
        thought: s("thought").unwrap_or_default().to_string(),
        text: new.to_string(),
        format: "json",
    })
}

/// The optimizer's list reply: each item a proposal or why not. Unusable
/// as a whole when no item is usable.
pub fn parse_proposals(text: &str, field: &str, max_chars: usize) -> Usable<Vec<Usable<Proposal>>> {
    let v = json_list_or_object(text)?;
    let items: Vec<Value> = match v {
        Value::Array(items) => items,
        Value::Object(m) => match get_ci(&m, "proposals").and_then(Value::as_array) {
            Some(items) => items.clone(),
            None => vec![Value::Object(m)],
        },
        _ => Vec::new(),
    };
    let got: Vec<Usable<Proposal>> = items
        .iter()
        .map(|i| proposal_of(i, field, max_chars))
        .collect();
    if got.iter().any(Result::is_ok) {
        return Ok(got);
    }
    Err(match got.into_iter().next() {
        Some(Err(why)) => why,
        _ => Unusable::TooFew { held: 0, want: 1 },
    })
}

/// The plain-text reply's proposals: every block from a `<prompt>` that
/// starts a line to the `</prompt>` after it. Unusable when no block is.
pub fn parse_marked_prompts(text: &str, max_chars: usize) -> Usable<Vec<Usable<Proposal>>> {
    const OPEN: &str = "<prompt>";
    const CLOSE: &str = "</prompt>";
    let starts_line = |i: usize| {
        text[..i]
            .rsplit('\n')
            .next()
            .is_none_or(|l| l.trim().is_empty())
    };
    let opens: Vec<usize> = text
        .match_indices(OPEN)
        .map(|(i, _)| i)
        .filter(|&i| starts_line(i))
        .collect();
    if opens.is_empty() {
        return Err(Unusable::Missing(
            "line starting with `<prompt>` in a plain-text reply".into(),
        ));
    }
    let mut out = Vec::new();
    for (n, &open) in opens.iter().enumerate() {
        let start = open + OPEN.len();
        let next_open = opens.get(n + 1).copied().unwrap_or(text.len());
        let block = match text[start..].find(CLOSE) {
            Some(end) if start + end <= next_open => text[start..start + end].trim(),
            _ => {
                out.push(Err(Unusable::Missing(
                    "`</prompt>` after a `<prompt>`".into(),
                )));
                continue;
            }
        };
        let chars = block.chars().count();
        out.push(if chars < MIN_PROMPT_CHARS {
            Err(Unusable::invalid(
                "the prompt between the markers",
                format!("{chars} characters (at least {MIN_PROMPT_CHARS})"),
            ))
        } else if chars > max_chars {
            Err(Unusable::invalid(
                "the prompt between the markers",
                format!("{chars} characters (at most {max_chars})"),
            ))
        } else {
            Ok(Proposal {
                analysis: String::new(),
                thought: String::new(),
                text: block.to_string(),
                format: "markers",
            })
        });
    }
    if out.iter().any(Result::is_ok) {
        return Ok(out);
    }
    Err(match out.into_iter().next() {
        Some(Err(why)) => why,
        _ => Unusable::TooFew { held: 0, want: 1 },
    })
}

/// The first `want` items of a list reply; a list short of `want` is
/// padded with drops saying so.
fn take(mut got: Vec<Usable<Proposal>>, want: usize) -> Vec<Usable<Proposal>> {
    let held = got.len();
    got.truncate(want);
    while got.len() < want {
        got.push(Err(Unusable::TooFew { held, want }));
    }
    got
}

impl Critic {
    /// `actions` proposals for a better prompt than `prompt`, from its
    /// evaluation `ev` on `q` and its `path` (root first, `prompt` last):
    /// each a proposal or why it was dropped.
    pub async fn propose(
        &self,
        prompt: &str,
        q: &PromptRecord,
        ev: &Evaluation,
        path: &[String],
        actions: usize,
    ) -> Result<Vec<Usable<Proposal>>, ItemError> {
        let history = &path[path.len().saturating_sub(HISTORY)..path.len().saturating_sub(1)];
        let ctx = |variant: usize| {
            minijinja::context! {
                prompt => prompt, query => &q.text, answer => &ev.answer, evaluation => &ev.scores,
                reward => format!("{:.2}", ev.reward), history => history, variants => actions,
                variant => variant, max_new_bullets => MAX_NEW_BULLETS, max_chars => MAX_PROMPT_CHARS,
            }
        };
        let text = self.render("optimize_propose.jinja", ctx(0))?;
        let json = match self
            .ask(Role::Optimizer, "optimize-propose", &q.id, &text, |t| {
                parse_proposals(t, "new_system_prompt", MAX_PROMPT_CHARS)
            })
            .await?
        {
            Ok(list) => return Ok(take(list, actions)),
            Err(why) => why,
        };
        let text = self.render("optimize_propose_text.jinja", ctx(0))?;
        let markers = match self
            .ask(
                Role::Optimizer,
                "optimize-propose-text",
                &q.id,
                &text,
                |t| parse_marked_prompts(t, MAX_PROMPT_CHARS),
            )
            .await?
        {
            Ok(list) => return Ok(take(list, actions)),
            Err(why) => why,
        };
        let mut out = Vec::with_capacity(actions);
        for variant in 1..=actions {
            let text = self.render("optimize_propose_text.jinja", ctx(variant))?;
            let one = self
                .ask(Role::Optimizer, "optimize-propose-one", &q.id, &text, |t| {
                    parse_marked_prompts(t, MAX_PROMPT_CHARS)
                })
                .await?;
            out.push(
                match one {
                    Ok(list) => list
                        .into_iter()
                        .find_map(Result::ok)
                        .ok_or_else(|| Unusable::Missing("usable `<prompt>` block".into())),
                    Err(why) => Err(why),
                }
                .map_err(|one| Unusable::Proposals {
                    json: Box::new(json.clone()),
                    markers: Box::new(markers.clone()),
                    one: Box::new(one),
                }),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_reply_gives_each_proposal_or_why_not() {
        let got = parse_proposals(
            r#"Here: [{"analysis": "a", "thought": "t", "new_system_prompt": "P1"}, {"analysis": "b"}, {"new_system_prompt": "P3"}]"#,
            "new_system_prompt",
            100,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().text, "P1");
        assert!(got[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("no `new_system_prompt`"));
        assert_eq!(got[2].as_ref().unwrap().analysis, "");
        // One object, or an object with a list, is read as well.
        let one = parse_proposals(r#"{"new_system_prompt": "P"}"#, "new_system_prompt", 100);
        assert_eq!(one.unwrap().len(), 1);
        let wrapped = parse_proposals(
            r#"{"proposals": [{"new_answer": "A"}, {"new_answer": "B"}]}"#,
            "new_answer",
            100,
        );
        assert_eq!(wrapped.unwrap().len(), 2);
        assert!(
            parse_proposals(r#"[{"analysis": "a"}]"#, "new_system_prompt", 10)
                .unwrap_err()
                .to_string()
                .contains("no `new_system_prompt`")
        );
        let short = take(
            vec![Ok(Proposal {
                analysis: String::new(),
                thought: String::new(),
                text: "x".into(),
                format: "json",
            })],
            3,
        );
        assert_eq!(short.len(), 3);
        assert_eq!(
            short[2].as_ref().unwrap_err().to_string(),
            "the reply held 1 of 3 proposals"
        );
    }

    #[test]
    fn plain_text_proposals_are_the_blocks_between_line_start_markers() {
        let got = parse_marked_prompts(
            "Reply between <prompt> and </prompt>.\n<prompt>\nYou are a careful assistant.\n- Be concise.\n</prompt>\n<prompt>\nYou are a very careful assistant.\n</prompt>\nDone.",
            100,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].as_ref().unwrap().text,
            "You are a careful assistant.\n- Be concise."
        );
        assert_eq!(got[1].as_ref().unwrap().format, "markers");
        assert!(parse_marked_prompts("You are a careful assistant.", 100)
            .unwrap_err()
            .to_string()
            .contains("no line starting with `<prompt>`"));
        assert!(
            parse_marked_prompts("<prompt>\nYou are a careful assistant.", 100)
                .unwrap_err()
                .to_string()
                .contains("no `</prompt>`")
        );
        // An echo of the instruction names the markers mid-sentence.
        assert!(parse_marked_prompts(
            "Sure, starting with a line <prompt> and ending with a line </prompt>.",
            100
        )
        .unwrap_err()
        .to_string()
        .contains("no line starting with `<prompt>`"));
        assert!(parse_marked_prompts("<prompt>\nBe nice.\n</prompt>", 100)
            .unwrap_err()
            .to_string()
            .contains("at least 20"));
        assert!(
            parse_marked_prompts("<prompt>You are a careful assistant.</prompt>", 25)
                .unwrap_err()
                .to_string()
                .contains("at most 25")
        );
    }
}
