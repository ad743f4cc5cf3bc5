//! The constitution: principles that drive critique and revision.
//!
//! Three JSON formats are accepted and told apart by their shape:
//!
//! 1. **native** (ConstitutionalAiTuning's keys): `critique_revision_principles`,
//!    few-shots, per-stage system messages, comparison principles;
//! 2. **hf** (the Hugging Face CAI recipe): `{"constitutions": [{critic, revision}],
//!    "system_chat": [[{role, content}]]}`;
//! 3. **anthropic** (the paper's release, also used by NeMo):
//!    `{"<name>": {"prompt": [critique request], "edit_request": revision request}}`.
//!
//! All are normalised into one [`Constitution`]. Validation walks the JSON by
//! hand rather than through serde so that every problem, not just the first,
//! is reported with its JSON path.
//!
//! The paper's requests were written for a completion model, and copies of
//! them often keep that scaffolding: a leading `CritiqueRequest:` /
//! `RevisionRequest:` label and a trailing cue line such as `Critique:` or
//! `Revision:` that invited the model to continue. Sent to a chat model as a
//! user turn, the cue reads as an unfinished sentence, so in the anthropic
//! format both are removed on load ([`strip_completion_markers`]) and each
//! change is listed in [`Constitution::normalised`] (`cai validate` prints
//! it).

use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::walk::{join, Walker};
use super::{InputError, InputErrors, Location};
use crate::provider::{Message, Role};

/// Which format a constitution file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConstitutionFormat {
    Native,
    Hf,
    Anthropic,
}

/// One critique request and the revision request that goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principle {
    /// The key in the Anthropic format; `None` elsewhere.
    pub name: Option<String>,
    pub critique: String,
    pub revision: String,
}

/// A worked example for the judge (used by preference labelling).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComparisonFewShot {
    pub task: String,
    pub chain_of_thought: String,
    pub selected_answer: String,
}

/// A constitution in the one internal form every format maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Constitution {
    pub format: ConstitutionFormat,
    /// System message for the initial answer (and the SFT rows).
    pub system_message: Option<String>,
    /// System message for critique requests; falls back to `system_message`.
    pub system_message_critique: Option<String>,
    /// System message for revision requests; falls back to `system_message`.
    pub system_message_revision: Option<String>,
    pub principles: Vec<Principle>,
    /// Few-shot conversation placed before the user's prompt.
    pub few_shots: Vec<Message>,
    pub comparison_principles: Vec<String>,
    pub comparison_few_shots: Vec<ComparisonFewShot>,
    /// What loading changed for chat models, one line per request:
    /// `harmful0.prompt[0]: removed `CritiqueRequest:`, `Critique:``.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub normalised: Vec<String>,
    /// Each stage's prefix and cache scope, built on first use
    /// ([`Constitution::prefix`], [`Constitution::prefix_scope`]).
    #[serde(skip)]
    prefixes: Prefixes,
}

/// Each stage's shared prefix (system message and few-shots) with its
/// digest, built at first use: every request of a run starts with its
/// stage's prefix and names it for the prompt cache, and copying or hashing
/// kilobytes of few-shots per request was a tenth of the engine's CPU per
/// request. Set the constitution's fields before its first request (the
/// configuration does). Not part of the constitution's value.
#[derive(Clone, Debug, Default)]
struct Prefixes(std::sync::OnceLock<[StagePrefix; 4]>);

/// One stage's [`Prefixes`] entry.
#[derive(Clone, Debug)]
struct StagePrefix {
    messages: Vec<Message>,
    /// `stage:digest`, the prompt-cache scope of the stage's requests.
    scope: Arc<str>,
}

impl PartialEq for Prefixes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Prefixes {}

/// Leading labels of the paper's completion-style requests.
const REQUEST_LABELS: &[&str] = &[
    "CritiqueRequest:",
    "Critique Request:",
    "RevisionRequest:",
    "Revision Request:",
    "EditRequest:",
    "Edit Request:",
];

/// Last lines that only cue a completion model to go on.
const CUE_LINES: &[&str] = &[
    "Critique:",
    "Revision:",
    "Edit:",
    "Answer:",
    "Assistant:",
    "Human:",
];

/// `text` without a leading request label and without trailing cue lines
/// (each matched case-insensitively; a cue only when it is a line of its
/// own, so a request that merely mentions "Revision:" keeps it), and what
/// was removed.
pub fn strip_completion_markers(text: &str) -> (String, Vec<&'static str>) {
    let mut removed = Vec::new();
    let mut t = text.trim();
    for label in REQUEST_LABELS {
        if t.len() >= label.len()
            && t.is_char_boundary(label.len())
            && t[..label.len()].eq_ignore_ascii_case(label)
        {
            t = t[label.len()..].trim_start();
            removed.push(*label);
            break;
        }
    }
    while !t.is_empty() {
        let (head, last) = match t.rfind('\n') {
            Some(i) => (&t[..i], &t[i + 1..]),
            None => ("", t),
        };
        let Some(cue) = CUE_LINES
            .iter()
            .find(|c| last.trim().eq_ignore_ascii_case(c))
        else {
            break;
        };
        removed.push(*cue);
        t = head.trim_end();
    }
    (t.to_string(), removed)
}

impl Constitution {
    /// Reads and validates a constitution file.
    pub fn load(path: &Path) -> Result<Self, InputErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError::new(
                path,
                Location::File,
                format!("cannot read constitution: {e}"),
            )
        })?;
        let c = Self::parse(path, &text)?;
        tracing::debug!(
            file = %path.display(),
            format = ?c.format,
            principles = c.principles.len(),
            few_shots = c.few_shots.len(),
            "constitution loaded"
        );
        Ok(c)
    }

    /// Parses constitution JSON; `path` is used in error messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self, InputErrors> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value = crate::input::parse_json(path, text)?;
        let mut w = Walker::new(path);
        let Some(obj) = value.as_object() else {
            w.err("", "a constitution must be a JSON object");
            return Err(InputErrors(w.errors));
        };
        let c = match detect(obj) {
            Some(ConstitutionFormat::Native) => w.native(obj),
            Some(ConstitutionFormat::Hf) => w.hf(obj),
            Some(ConstitutionFormat::Anthropic) => w.anthropic(obj),
            None => {
                w.err(
                    "",
                    "not a recognised constitution format: expected `critique_revision_principles` \
                     (native), `constitutions` (Hugging Face recipe), or objects with `prompt` and \
                     `edit_request` (Anthropic/NeMo)",
                );
                None
            }
        };
        match c {
            Some(c) if w.errors.is_empty() => Ok(c),
            _ => Err(InputErrors(w.errors)),
        }
    }

    /// The system message for a stage, falling back to the main one.
    pub fn system_for(&self, stage: Stage) -> Option<&str> {
        let specific = match stage {
            Stage::Critique => self.system_message_critique.as_deref(),
            Stage::Revision => self.system_message_revision.as_deref(),
            _ => None,
        };
        specific.or(self.system_message.as_deref())
    }

    /// Replaces the system message of every stage's requests (`--system-prompt`),
    /// forgetting the prefixes built from the old one.
    pub fn set_system_message(&mut self, text: String) {
        self.system_message = Some(text);
        self.prefixes = Prefixes::default();
    }

    /// The messages every request of `stage` starts with, whatever the
    /// prompt: its system message (if any), then the few-shots.
    pub fn prefix(&self, stage: Stage) -> &[Message] {
        &self.stage_prefix(stage).messages
    }

    /// `stage:digest` of [`prefix`](Self::prefix): the digest changes with
    /// the stage's system message and the few-shots, so a prompt-cache key
    /// built on it keeps only requests with the same prefix together.
    pub fn prefix_scope(&self, stage: Stage) -> &Arc<str> {
        &self.stage_prefix(stage).scope
    }

    fn stage_prefix(&self, stage: Stage) -> &StagePrefix {
        let all = self.prefixes.0.get_or_init(|| {
            [
                Stage::Initial,
                Stage::Critique,
                Stage::Revision,
                Stage::Judge,
            ]
            .map(|s| {
                let messages: Vec<Message> = self
                    .system_for(s)
                    .map(Message::system)
                    .into_iter()
                    .chain(self.few_shots.iter().cloned())
                    .collect();
                let mut h = Sha256::new();
                for m in &messages {
                    h.update(m.role.as_str().as_bytes());
                    h.update([0]);
                    h.update((m.content.len() as u64).to_le_bytes());
                    h.update(m.content.as_bytes());
                }
                let scope = format!("{}:{}", s.as_str(), crate::digest::hex(&h.finalize()[..8]));
                StagePrefix {
                    messages,
                    scope: scope.into(),
                }
            })
        });
        &all[stage as usize]
    }
}

/// A step of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Initial,
    Critique,
    Revision,
    Judge,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Initial => "initial",
            Stage::Critique => "critique",
            Stage::Revision => "revision",
            Stage::Judge => "judge",
        }
    }
}

/// The principle index for `(seed, id, round)`.
pub fn pick_principle(seed: u64, id: &str, round: u32, count: usize) -> usize {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update((id.len() as u64).to_le_bytes());
    h.update(id.as_bytes());
    h.update(round.to_le_bytes());
    let digest = h.finalize();
    let mut seed_bytes = [0u8; 32];
    seed_bytes.copy_from_slice(&digest);
    ChaCha8Rng::from_seed(seed_bytes).random_range(0..count.max(1))
}

fn detect(obj: &Map<String, Value>) -> Option<ConstitutionFormat> {
    if obj.contains_key("critique_revision_principles") {
        return Some(ConstitutionFormat::Native);
    }
    if obj.contains_key("constitutions") {
        return Some(ConstitutionFormat::Hf);
    }
    let anthropic = !obj.is_empty()
        && obj.values().all(|v| {
            v.as_object()
                .is_some_and(|o| o.contains_key("prompt") || o.contains_key("edit_request"))
        });
    anthropic.then_some(ConstitutionFormat::Anthropic)
}

const NATIVE_KEYS: &[&str] = &[
    "system_message_user_prompt",
    "system_message_critique",
    "system_message_revision",
    "critique_revision_principles",
    "critique_revision_few_shots",
    "comparison_principles",
    "comparison_few_shots",
];

/// Descriptive keys a native file may carry; ignored.
const METADATA_KEYS: &[&str] = &["name", "description", "version", "license", "author"];

/// The constitution's own readers over the shared field readers of
/// [`Walker`].
impl Walker<'_> {
    /// A required array of `{<critique_key>, revision}` objects.
    fn principles(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        critique_key: &str,
    ) -> Vec<Principle> {
        let mut out = Vec::new();
        for (i, v) in self.array(obj, key, true).iter().enumerate() {
            let p = format!("{key}[{i}]");
            let Some(o) = self.object(v, &p) else {
                continue;
            };
            let critique = self.string(o, &p, critique_key);
            let revision = self.string(o, &p, "revision");
            if let (Some(critique), Some(revision)) = (critique, revision) {
                out.push(Principle {
                    name: None,
                    critique,
                    revision,
                });
            }
        }
        out
    }

    /// The native constitution format. Long because it checks every key of the
    /// format with its JSON path and collects every problem (the walker reports
    /// them all at once).
    fn native(&mut self, obj: &Map<String, Value>) -> Option<Constitution> {
        for key in obj.keys() {
            if !NATIVE_KEYS.contains(&key.as_str()) && !METADATA_KEYS.contains(&key.as_str()) {
                self.err(
                    key,
                    format!("unknown key (expected one of: {})", NATIVE_KEYS.join(", ")),
                );
            }
        }
        let system_message = self.opt_string(obj, "", "system_message_user_prompt");
        let system_message_critique = self.opt_string(obj, "", "system_message_critique");
        let system_message_revision = self.opt_string(obj, "", "system_message_revision");

        let principles = self.principles(obj, "critique_revision_principles", "critique");

        let mut few_shots = Vec::new();
        for (i, v) in self
            .array(obj, "critique_revision_few_shots", false)
            .iter()
            .enumerate()
        {
            let p = format!("critique_revision_few_shots[{i}]");
            let Some(o) = self.object(v, &p) else {
                continue;
            };
            let fields = [
                (Role::User, "input"),
                (Role::Assistant, "initial_answer"),
                (Role::User, "critique_principle"),
                (Role::Assistant, "critique"),
                (Role::User, "revision_principle"),
                (Role::Assistant, "revision"),
            ];
            let msgs: Vec<Option<Message>> = fields
                .iter()
                .map(|(role, key)| {
                    self.string(o, &p, key).map(|content| Message {
                        role: *role,
                        content: content.into(),
                    })
                })
                .collect();
            if let Some(msgs) = msgs.into_iter().collect::<Option<Vec<_>>>() {
                few_shots.extend(msgs);
            }
        }

        let mut comparison_principles = Vec::new();
        for (i, v) in self
            .array(obj, "comparison_principles", false)
            .iter()
            .enumerate()
        {
            let p = format!("comparison_principles[{i}]");
            match v {
                Value::String(s) if !s.trim().is_empty() => comparison_principles.push(s.clone()),
                Value::String(_) => self.err(&p, "empty"),
                other => self.err(
                    &p,
                    format!(
                        "expected a string, found {}",
                        crate::input::json_kind(other)
                    ),
                ),
            }
        }

        let mut comparison_few_shots = Vec::new();
        for (i, v) in self
            .array(obj, "comparison_few_shots", false)
            .iter()
            .enumerate()
        {
            let p = format!("comparison_few_shots[{i}]");
            let Some(o) = self.object(v, &p) else {
                continue;
            };
            let task = self.string(o, &p, "task");
            let chain_of_thought = self.string(o, &p, "chain_of_thought");
            let selected_answer = self.string(o, &p, "selected_answer");
            if let (Some(task), Some(chain_of_thought), Some(selected_answer)) =
                (task, chain_of_thought, selected_answer)
            {
                comparison_few_shots.push(ComparisonFewShot {
                    task,
                    chain_of_thought,
                    selected_answer,
                });
            }
        }

        Some(Constitution {
            format: ConstitutionFormat::Native,
            system_message,
            system_message_critique,
            system_message_revision,
            principles,
            few_shots,
            comparison_principles,
            comparison_few_shots,
            normalised: Vec::new(),
            prefixes: Prefixes::default(),
        })
    }

    fn hf(&mut self, obj: &Map<String, Value>) -> Option<Constitution> {
        for key in obj.keys() {
            if key != "constitutions" && key != "system_chat" {
                self.err(
                    key,
                    "unknown key (expected `constitutions` and optionally `system_chat`)",
                );
            }
        }
        let principles = self.principles(obj, "constitutions", "critic");
        let mut few_shots = Vec::new();
        let mut system_message = None;
        for (i, convo) in self.array(obj, "system_chat", false).iter().enumerate() {
            let p = format!("system_chat[{i}]");
            let Some(turns) = convo.as_array() else {
                self.err(
                    &p,
                    format!(
                        "expected an array of messages, found {}",
                        crate::input::json_kind(convo)
                    ),
                );
                continue;
            };
            for (j, turn) in turns.iter().enumerate() {
                let tp = format!("{p}[{j}]");
                let Some(o) = self.object(turn, &tp) else {
                    continue;
                };
                let role = self.string(o, &tp, "role");
                let content = self.string(o, &tp, "content");
                let (Some(role), Some(content)) = (role, content) else {
                    continue;
                };
                let role = match role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        self.err(
                            &join(&tp, "role"),
                            format!("unknown role `{other}` (expected system, user or assistant)"),
                        );
                        continue;
                    }
                };
                // A system turn becomes the run's system message: chat APIs
                // and templates accept it only first, not mid-conversation.
                if role == Role::System {
                    if system_message.is_none() {
                        system_message = Some(content);
                    }
                    continue;
                }
                few_shots.push(Message {
                    role,
                    content: content.into(),
                });
            }
        }
        Some(Constitution {
            format: ConstitutionFormat::Hf,
            system_message,
            system_message_critique: None,
            system_message_revision: None,
            principles,
            few_shots,
            comparison_principles: Vec::new(),
            comparison_few_shots: Vec::new(),
            normalised: Vec::new(),
            prefixes: Prefixes::default(),
        })
    }

    /// A request of the anthropic format without its completion markers;
    /// notes what was removed. Blank once stripped is an error at `path`.
    fn request(&mut self, path: &str, text: &str, notes: &mut Vec<String>) -> Option<String> {
        let (clean, removed) = strip_completion_markers(text);
        if clean.is_empty() {
            self.err(path, "empty once its completion markers are removed");
            return None;
        }
        if !removed.is_empty() {
            let list: Vec<String> = removed.iter().map(|r| format!("`{r}`")).collect();
            notes.push(format!("{path}: removed {}", list.join(", ")));
        }
        Some(clean)
    }

    fn anthropic(&mut self, obj: &Map<String, Value>) -> Option<Constitution> {
        let mut principles = Vec::new();
        let mut notes = Vec::new();
        for (name, v) in obj {
            let Some(o) = self.object(v, name) else {
                continue;
            };
            let revision = self
                .string(o, name, "edit_request")
                .and_then(|r| self.request(&join(name, "edit_request"), &r, &mut notes));
            let prompt_path = join(name, "prompt");
            let critiques: Vec<String> = match o.get("prompt") {
                None | Some(Value::Null) => {
                    self.err(&prompt_path, "missing");
                    Vec::new()
                }
                Some(Value::String(s)) if !s.trim().is_empty() => self
                    .request(&prompt_path, s, &mut notes)
                    .into_iter()
                    .collect(),
                Some(Value::Array(items)) => {
                    if items.is_empty() {
                        self.err(&prompt_path, "must not be empty");
                    }
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(s) if !s.trim().is_empty() => out.extend(self.request(
                                &format!("{prompt_path}[{i}]"),
                                s,
                                &mut notes,
                            )),
                            Value::String(_) => self.err(&format!("{prompt_path}[{i}]"), "empty"),
                            other => self.err(
                                &format!("{prompt_path}[{i}]"),
                                format!(
                                    "expected a string, found {}",
                                    crate::input::json_kind(other)
                                ),
                            ),
                        }
                    }
                    out
                }
                Some(other) => {
                    self.err(
                        &prompt_path,
                        format!(
                            "expected a string or an array of strings, found {}",
                            crate::input::json_kind(other)
                        ),
                    );
                    Vec::new()
                }
            };
            if let Some(revision) = revision {
                for critique in critiques {
                    principles.push(Principle {
                        name: Some(name.clone()),
                        critique,
                        revision: revision.clone(),
                    });
                }
            }
        }
        Some(Constitution {
            format: ConstitutionFormat::Anthropic,
            system_message: None,
            system_message_critique: None,
            system_message_revision: None,
            principles,
            few_shots: Vec::new(),
            comparison_principles: Vec::new(),
            comparison_few_shots: Vec::new(),
            normalised: notes,
            prefixes: Prefixes::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Constitution, Vec<String>> {
        Constitution::parse(Path::new("c.json"), s)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_new_system_message_replaces_the_built_prefixes() {
        let mut c = parse(
            r#"{"system_message_user_prompt": "Be good.",
                "critique_revision_principles": [{"critique": "C1", "revision": "R1"}]}"#,
        )
        .unwrap();
        let before = c.prefix_scope(Stage::Initial).clone();
        assert_eq!(&*c.prefix(Stage::Initial)[0].content, "Be good.");
        c.set_system_message("Be brief.".into());
        assert_eq!(&*c.prefix(Stage::Initial)[0].content, "Be brief.");
        assert_ne!(c.prefix_scope(Stage::Initial), &before);
        assert!(c.prefix_scope(Stage::Initial).starts_with("initial:"));
    }

    #[test]
    fn native_format_is_normalised() {
        let c = parse(
            r#"{"system_message_user_prompt": "Be good.",
                "critique_revision_principles": [{"critique": "C1", "revision": "R1"}],
                "critique_revision_few_shots": [{"input": "i", "initial_answer": "a", "critique_principle": "cp", "critique": "c", "revision_principle": "rp", "revision": "r"}],
                "comparison_principles": ["Which is kinder?"],
                "comparison_few_shots": [{"task": "t", "chain_of_thought": "cot", "selected_answer": "(A)"}]}"#,
        )
        .unwrap();
        assert_eq!(c.format, ConstitutionFormat::Native);
        assert_eq!(c.system_message.as_deref(), Some("Be good."));
        assert_eq!(c.principles.len(), 1);
        let roles: Vec<Role> = c.few_shots.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant
            ]
        );
        assert_eq!(&*c.few_shots[5].content, "r");
        assert_eq!(c.comparison_few_shots[0].selected_answer, "(A)");
    }

    #[test]
    fn hf_format_is_normalised() {
        let c = parse(
            r#"{"constitutions": [{"critic": "C", "revision": "R"}],
                "system_chat": [[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]]}"#,
        )
        .unwrap();
        assert_eq!(c.format, ConstitutionFormat::Hf);
        assert_eq!(c.principles[0].critique, "C");
        assert_eq!(
            c.few_shots,
            vec![Message::user("u"), Message::assistant("a")]
        );
    }

    #[test]
    fn anthropic_format_is_normalised() {
        let c = parse(
            r#"{"harmful1": {"prompt": ["Critique it."], "edit_request": "Rewrite it."},
                "harmful2": {"prompt": "Another.", "edit_request": "Again."}}"#,
        )
        .unwrap();
        assert_eq!(c.format, ConstitutionFormat::Anthropic);
        assert_eq!(c.principles.len(), 2);
        assert_eq!(c.principles[0].name.as_deref(), Some("harmful1"));
        assert_eq!(c.principles[1].revision, "Again.");
    }

    #[test]
    fn paper_completion_markers_are_removed_for_chat_models() {
        let c = parse(
            r#"{"harmful0": {"prompt": ["\n\nCritiqueRequest: Identify specific ways in which the assistant's last response is harmful.\n\nCritique:"],
                             "edit_request": "\n\nRevisionRequest: Please rewrite the assistant response to remove any harmful content.\n\nRevision:"},
                "plain": {"prompt": "Say whether the answer is honest. Quote it after Revision: if needed.", "edit_request": "Rewrite it honestly."}}"#,
        )
        .unwrap();
        assert_eq!(
            c.principles[0].critique,
            "Identify specific ways in which the assistant's last response is harmful."
        );
        assert_eq!(
            c.principles[0].revision,
            "Please rewrite the assistant response to remove any harmful content."
        );
        // Text that only mentions a cue, not as a line of its own, is kept.
        assert_eq!(
            c.principles[1].critique,
            "Say whether the answer is honest. Quote it after Revision: if needed."
        );
        assert_eq!(
            c.normalised,
            [
                "harmful0.edit_request: removed `RevisionRequest:`, `Revision:`",
                "harmful0.prompt[0]: removed `CritiqueRequest:`, `Critique:`",
            ]
        );
        let errs =
            parse(r#"{"x": {"prompt": ["Critique Request:\nCritique:"], "edit_request": "Fix."}}"#)
                .unwrap_err();
        assert_eq!(
            errs,
            ["c.json: x.prompt[0]: empty once its completion markers are removed"]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errs = parse(
            r#"{"critique_revision_principles": [{"critique": "ok", "revision": "ok"}, {"critique": ""}, 7],
                "comparison_principles": ["x", 3],
                "critque_revision_few_shots": []}"#,
        )
        .unwrap_err();
        let want = [
            "c.json: critque_revision_few_shots: unknown key",
            "c.json: critique_revision_principles[1].critique: empty",
            "c.json: critique_revision_principles[1].revision: missing",
            "c.json: critique_revision_principles[2]: expected an object, found a number",
            "c.json: comparison_principles[1]: expected a string, found a number",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn invalid_json_names_the_line() {
        let errs = parse("{\n  \"constitutions\": [\n  }").unwrap_err();
        assert!(errs[0].starts_with("c.json:3: not valid JSON"), "{errs:?}");
    }

    #[test]
    fn unknown_shape_is_rejected() {
        let errs = parse(r#"{"rules": ["be nice"]}"#).unwrap_err();
        assert!(
            errs[0].contains("not a recognised constitution format"),
            "{errs:?}"
        );
    }
}
