//! `trace.jsonl`: one line per finished prompt, with every request and
//! reply.
//!
//! [`TraceLine`] is the line's one schema: the writer serialises it
//! borrowed from the finished prompt (a `Cow::Borrowed` per field, so the
//! hot loop copies no text to write it), and the report reads it back
//! owned. A field an older `cai` did not write reads as its default.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::feedback::judge::Comparison;
use crate::pipeline::{Finished, Round, TraceStep};

/// One line of `trace.jsonl`. Besides cai's own `rounds` and `steps`, it
/// carries the Hugging Face recipe columns (`init_prompt` …
/// `revision_response`, of the last round).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceLine<'a> {
    pub id: Cow<'a, str>,
    pub prompt: Cow<'a, str>,
    pub system: Option<Cow<'a, str>>,
    pub init_prompt: Cow<'a, str>,
    pub init_response: Cow<'a, str>,
    pub critic_prompt: Option<Cow<'a, str>>,
    pub critic_response: Option<Cow<'a, str>>,
    pub revision_prompt: Option<Cow<'a, str>>,
    pub revision_response: Option<Cow<'a, str>>,
    pub rounds: Cow<'a, [Round]>,
    pub steps: Cow<'a, [TraceStep]>,
    /// Further sampled answers (`--samples N`), after the initial one.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub samples: Cow<'a, [String]>,
    /// Every judge comparison of the prompt (`--preference judge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judgments: Option<Cow<'a, [Comparison]>>,
}

impl<'a> TraceLine<'a> {
    /// The line of a finished prompt, borrowing all of it.
    pub fn of(f: &'a Finished) -> Self {
        let last = f.rounds.last();
        let of_last = |field: fn(&Round) -> &String| last.map(|r| Cow::Borrowed(field(r).as_str()));
        TraceLine {
            id: Cow::Borrowed(&f.id),
            prompt: Cow::Borrowed(&f.prompt),
            system: f.system.as_deref().map(Cow::Borrowed),
            init_prompt: Cow::Borrowed(&f.user_message),
            init_response: Cow::Borrowed(&f.initial),
            critic_prompt: of_last(|r| &r.critique_request),
            critic_response: of_last(|r| &r.critique),
            revision_prompt: of_last(|r| &r.revision_request),
            revision_response: of_last(|r| &r.revision),
            rounds: Cow::Borrowed(&f.rounds),
            steps: Cow::Borrowed(&f.steps),
            samples: Cow::Borrowed(&f.samples),
            judgments: f
                .judged
                .as_ref()
                .and_then(|j| j.as_ref().ok())
                .map(|j| Cow::Borrowed(j.comparisons.as_slice())),
        }
    }

    /// The answer the prompt ended with: the last revision, or the initial
    /// answer when no round ran.
    pub fn final_answer(&self) -> &str {
        self.rounds
            .last()
            .map_or(&self.init_response, |r| r.revision.as_str())
    }
}
