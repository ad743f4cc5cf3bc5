//! The prompt templates: one minijinja [`Environment`], built once per run.
//!
//! Each template renders the text of one user message (or, for
//! `sft_text.jinja`, the SFT completion). Defaults are embedded in the binary;
//! `--templates DIR` overrides any of them by file name. Undefined variables
//! are errors (strict mode), and user text — prompts, answers, principles —
//! enters only as values, never as template source, so a prompt containing
//! `{{ 7*7 }}` is sent exactly as written.
//!
//! Variables each template receives:
//!
//! | template | variables |
//! |---|---|
//! | `initial.jinja` | `prompt` |
//! | `critique.jinja` | `prompt`, `answer`, `principle` (`critique`, `revision`, `name`), `round` |
//! | `revision.jinja` | `prompt`, `answer`, `critique`, `principle`, `round` |
//! | `sft_text.jinja` | `prompt`, `initial`, `final`, `system` |
//! | `judge.jinja` | `prompt`, `response_a`, `response_b`, `principle` (a string), `few_shots` (`task`, `chain_of_thought`, `selected_answer`), `chain_of_thought` (bool) |
//! | `optimize_aspects.jinja` | `query`, `aspects` (`name`, `description`), `min_aspects`, `max_aspects` |
//! | `optimize_score.jinja` | `query`, `answer`, `aspects` (`name`, `description`; never empty), `analysis` (query-analysis lines), `reasoning` |
//! | `optimize_propose.jinja` | `prompt`, `query`, `answer`, `evaluation` (`aspect`, `score`, `rationale`), `reward`, `history` (earlier prompts, oldest first), `variants`, `variant` (0: all at once), `max_new_bullets`, `max_chars` |
//! | `optimize_answer.jinja` | `query`, `answer`, `evaluation`, `reward`, `candidates` |
//! | `optimize_score_digit.jinja` | `query`, `answer`, `aspect` (`name`, `description`) |
//! | `optimize_propose_text.jinja` | as `optimize_propose.jinja`; `variant` > 0 asks for that one prompt |

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Embedded default templates, by file name.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("initial.jinja", include_str!("../templates/initial.jinja")),
    (
        "critique.jinja",
        include_str!("../templates/critique.jinja"),
    ),
    (
        "revision.jinja",
        include_str!("../templates/revision.jinja"),
    ),
    (
        "sft_text.jinja",
        include_str!("../templates/sft_text.jinja"),
    ),
    ("judge.jinja", include_str!("../templates/judge.jinja")),
    (
        "optimize_aspects.jinja",
        include_str!("../templates/optimize_aspects.jinja"),
    ),
    (
        "optimize_score.jinja",
        include_str!("../templates/optimize_score.jinja"),
    ),
    (
        "optimize_propose.jinja",
        include_str!("../templates/optimize_propose.jinja"),
    ),
    (
        "optimize_answer.jinja",
        include_str!("../templates/optimize_answer.jinja"),
    ),
    (
        "optimize_score_digit.jinja",
        include_str!("../templates/optimize_score_digit.jinja"),
    ),
    (
        "optimize_propose_text.jinja",
        include_str!("../templates/optimize_propose_text.jinja"),
    ),
];

/// A template that does not compile or render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TemplateError {
    /// The override file, or `embedded NAME`.
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The templates of a run.
#[derive(Clone)]
pub struct Templates {
    env: Environment<'static>,
    origins: Vec<(String, String)>,
    digest: String,
    /// Templates whose whole source is one `{{ a.b }}` (the shipped
    /// initial, critique and revision templates), with that path: they
    /// render for every request of a run, and looking the value up skips
    /// starting minijinja's machine for it ([`Templates::render`]).
    lookups: Vec<(String, Vec<String>)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("origins", &self.origins)
            .finish()
    }
}

#[derive(Serialize)]
struct SamplePrinciple {
    name: Option<&'static str>,
    critique: &'static str,
    revision: &'static str,
}

impl Templates {
    /// The embedded templates, overridden by files of the same name in `dir`.
    /// Reports every template that fails to compile or to render with sample
    /// values (so a misspelt variable is caught before a request is sent).
    pub fn load(dir: Option<&Path>) -> Result<Self, Vec<TemplateError>> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut origins = Vec::new();
        let mut lookups = Vec::new();
        let mut errors = Vec::new();
        let mut hasher = Sha256::new();
        if let Some(dir) = dir {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.ends_with(".jinja") && !EMBEDDED.iter().any(|(n, _)| *n == name) {
                            errors.push(TemplateError {
                                origin: entry.path().display().to_string(),
                                line: None,
                                message: format!(
                                    "unknown template name (expected one of: {})",
                                    EMBEDDED
                                        .iter()
                                        .map(|(n, _)| *n)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            });
                        }
                    }
                }
                Err(e) => errors.push(TemplateError {
                    origin: dir.display().to_string(),
                    line: None,
                    message: format!("cannot read templates directory: {e}"),
                }),
            }
        }
        for (name, default) in EMBEDDED {
            let over: Option<PathBuf> = dir.map(|d| d.join(name)).filter(|p| p.exists());
            let (origin, source) = match &over {
                Some(p) => match std::fs::read_to_string(p) {
                    Ok(s) => (p.display().to_string(), s),
                    Err(e) => {
                        errors.push(TemplateError {
                            origin: p.display().to_string(),
                            line: None,
                            message: format!("cannot read: {e}"),
                        });
                        continue;
                    }
                },
                None => (format!("embedded {name}"), (*default).to_string()),
            };
            hasher.update(name.as_bytes());
            hasher.update((source.len() as u64).to_le_bytes());
            hasher.update(source.as_bytes());
            if let Some(path) = lookup_path(name, &source) {
                lookups.push((name.to_string(), path));
            }
            if let Err(e) = env.add_template_owned(name.to_string(), source) {
                errors.push(TemplateError {
                    origin: origin.clone(),
                    line: e.line(),
                    message: describe(&e),
                });
            }
            origins.push((name.to_string(), origin));
        }
        let digest = crate::digest::hex(&hasher.finalize());
        let this = Self {
            env,
            origins,
            digest,
            lookups,
        };
        if errors.is_empty() {
            errors.extend(this.trial_render());
        }
        if errors.is_empty() {
            Ok(this)
        } else {
            Err(errors)
        }
    }

    /// Renders each template once with sample values of every variable.
    fn trial_render(&self) -> Vec<TemplateError> {
        let principle = SamplePrinciple {
            name: Some("sample"),
            critique: "Identify problems.",
            revision: "Rewrite it.",
        };
        let aspects =
            vec![minijinja::context! { name => "Clarity", description => "Easy to follow." }];
        let evaluation =
            vec![minijinja::context! { aspect => "Clarity", score => 3, rationale => "Dense." }];
        let samples: [(&str, Value); 11] = [
            ("initial.jinja", minijinja::context! { prompt => "p" }),
            (
                "critique.jinja",
                minijinja::context! { prompt => "p", answer => "a", principle => &principle, round => 1 },
            ),
            (
                "revision.jinja",
                minijinja::context! { prompt => "p", answer => "a", critique => "c", principle => &principle, round => 1 },
            ),
            (
                "sft_text.jinja",
                minijinja::context! { prompt => "p", initial => "i", final => "f", system => Value::from(()) },
            ),
            (
                "judge.jinja",
                minijinja::context! { prompt => "p", response_a => "a", response_b => "b", principle => "Which is better?", few_shots => vec![minijinja::context! { task => "t", chain_of_thought => "c", selected_answer => "(A)" }], chain_of_thought => true },
            ),
            (
                "optimize_aspects.jinja",
                minijinja::context! { query => "q", aspects => &aspects, min_aspects => 2, max_aspects => 5 },
            ),
            (
                "optimize_score.jinja",
                minijinja::context! { query => "q", answer => "a", aspects => &aspects, analysis => vec!["main topic: t"], reasoning => "r" },
            ),
            (
                "optimize_propose.jinja",
                minijinja::context! { prompt => "p", query => "q", answer => "a", evaluation => &evaluation, reward => 3.0, history => vec!["h"], variant => 1, variants => 3, max_new_bullets => 2, max_chars => 4000 },
            ),
            (
                "optimize_answer.jinja",
                minijinja::context! { query => "q", answer => "a", evaluation => &evaluation, reward => 3.0, candidates => 1 },
            ),
            (
                "optimize_score_digit.jinja",
                minijinja::context! { query => "q", answer => "a", aspect => &aspects[0] },
            ),
            (
                "optimize_propose_text.jinja",
                minijinja::context! { prompt => "p", query => "q", answer => "a", evaluation => &evaluation, reward => 3.0, history => vec!["h"], variant => 1, variants => 3, max_new_bullets => 2, max_chars => 4000 },
            ),
        ];
        samples
            .into_iter()
            .filter_map(|(name, ctx)| self.render(name, ctx).err())
            .collect()
    }

    /// SHA-256 over every template's name and source: changes when any
    /// template that shapes requests or rows changes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Renders template `name` with `ctx`.
    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String, TemplateError> {
        let ctx = Value::from_serialize(&ctx);
        if let Some(text) = self.looked_up(name, &ctx) {
            return Ok(text);
        }
        // The origin is looked up only for an error: rendering runs for
        // every request of a run.
        let fail = |e: minijinja::Error| TemplateError {
            origin: self.origin(name),
            line: e.line(),
            message: describe(&e),
        };
        let tmpl = self.env.get_template(name).map_err(|e| TemplateError {
            line: None,
            ..fail(e)
        })?;
        tmpl.render(ctx).map_err(fail)
    }

    /// The text of a lookup template (see [`Templates::lookups`]) when its
    /// path names a string, the same text minijinja would print; `None`
    /// for any other template or value (an undefined name, a number),
    /// which then renders the full way, errors included.
    fn looked_up(&self, name: &str, ctx: &Value) -> Option<String> {
        let (_, path) = self.lookups.iter().find(|(n, _)| n == name)?;
        let found = path
            .iter()
            .try_fold(ctx.clone(), |v, key| v.get_attr(key).ok())?;
        found.as_str().map(str::to_string)
    }

    /// Where template `name` came from (a file and JSON path), for errors.
    fn origin(&self, name: &str) -> String {
        self.origins
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| name.to_string(), |(_, o)| o.clone())
    }
}

/// The dotted path of a template whose whole source is `{{ a.b }}` (one
/// trailing newline allowed: minijinja drops it), when its name gets no
/// auto-escaping; `None` for anything else.
fn lookup_path(name: &str, source: &str) -> Option<Vec<String>> {
    if minijinja::default_auto_escape_callback(name) != minijinja::AutoEscape::None {
        return None;
    }
    let inner = source
        .strip_suffix('\n')
        .unwrap_or(source)
        .strip_prefix("{{")?
        .strip_suffix("}}")?
        .trim_matches(' ');
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    inner
        .split('.')
        .all(ident)
        .then(|| inner.split('.').map(str::to_string).collect())
}

/// minijinja's error text without the location it also reports separately.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_template_renders_what_minijinja_renders() {
        assert_eq!(
            lookup_path("critique.jinja", "{{ principle.critique }}\n"),
            Some(vec!["principle".to_string(), "critique".to_string()])
        );
        for (name, source) in [
            ("a.jinja", "{{ x | upper }}"),
            ("a.jinja", "{{ x }} and more"),
            ("a.jinja", "{{- x }}"),
            ("a.jinja", "{{ x }}\n\n"),
            ("a.html", "{{ x }}"),
        ] {
            assert_eq!(lookup_path(name, source), None, "{source:?} in {name}");
        }
        let t = Templates::load(None).unwrap();
        let principle = minijinja::context! { critique => "Is it <kind> & {{ true }}?\nSay so.", revision => "R", name => "n" };
        let ctx = minijinja::context! { prompt => "p\n", answer => "a", principle => principle.clone(), round => 1 };
        for name in ["initial.jinja", "critique.jinja", "revision.jinja"] {
            assert!(
                t.lookups.iter().any(|(n, _)| n == name),
                "{name} is a lookup"
            );
            let full = t
                .env
                .get_template(name)
                .unwrap()
                .render(ctx.clone())
                .unwrap();
            assert_eq!(t.render(name, ctx.clone()).unwrap(), full, "{name}");
        }
        // Anything but a string goes the full way: a number prints as
        // minijinja prints it, an undefined name is the strict error.
        let ctx = minijinja::context! { prompt => 7 };
        assert_eq!(t.render("initial.jinja", ctx).unwrap(), "7");
        let err = t.render("initial.jinja", minijinja::context! { other => 1 });
        assert!(err.is_err());
    }

    #[test]
    fn user_text_is_never_template_source() {
        let t = Templates::load(None).unwrap();
        let out = t
            .render(
                "initial.jinja",
                minijinja::context! { prompt => "{{ 7*7 }} {% for x in y %}" },
            )
            .unwrap();
        assert_eq!(out, "{{ 7*7 }} {% for x in y %}");
    }

    #[test]
    fn overrides_are_used_and_checked_strictly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("initial.jinja"), "Q: {{ prompt }}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(
            t.render("initial.jinja", minijinja::context! { prompt => "x" })
                .unwrap(),
            "Q: x"
        );

        std::fs::write(dir.path().join("critique.jinja"), "{{ principle.critiq }}").unwrap();
        std::fs::write(dir.path().join("revision.jinja"), "\n{% if %}").unwrap();
        std::fs::write(dir.path().join("initail.jinja"), "x").unwrap();
        let errs = Templates::load(Some(dir.path())).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("initail.jinja: unknown template name")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("revision.jinja:2: syntax error")),
            "{msgs:?}"
        );
    }

    #[test]
    fn undefined_variables_are_caught_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("critique.jinja"), "{{ principle.critiq }}").unwrap();
        let errs = Templates::load(Some(dir.path())).unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("critique.jinja:1: undefined value"),
            "{errs:?}"
        );
    }
}
