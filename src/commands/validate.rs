//! `cai validate`: checks prompts, constitution, templates and a chat
//! template, reporting every problem at once; sends nothing.

use crate::cli::ValidateArgs;
use crate::config::generate::prompt_spec;
use crate::error::RunError;
use crate::input::{prompts, Constitution};
use crate::template::Templates;

/// `cai validate`: reports every problem, sends nothing.
pub fn validate(args: &ValidateArgs) -> Result<String, RunError> {
    let mut problems: Vec<String> = Vec::new();
    let mut report = Vec::new();
    if let Some(p) = &args.input.constitution {
        match Constitution::load(p) {
            Ok(c) => {
                report.push(format!(
                    "{}: {:?} format, {} principles, {} few-shot messages, {} comparison principles",
                    p.display(),
                    c.format,
                    c.principles.len(),
                    c.few_shots.len(),
                    c.comparison_principles.len()
                ));
                if !c.normalised.is_empty() {
                    report.push(format!(
                        "{}: normalised for chat models: completion-style markers removed from {} requests:\n  {}",
                        p.display(),
                        c.normalised.len(),
                        c.normalised.join("\n  ")
                    ));
                }
            }
            Err(e) => problems.extend(e.0.iter().map(ToString::to_string)),
        }
    }
    if let Some(p) = &args.input.prompts {
        let spec = prompt_spec(&args.input, p.clone())?;
        match prompts::validate(&spec) {
            Ok(n) => report.push(format!("{}: {n} prompts", p.display())),
            Err(e) => problems.extend(e.0.iter().map(ToString::to_string)),
        }
    }
    match Templates::load(args.input.templates.as_deref()) {
        Ok(_) => report.push(match &args.input.templates {
            Some(d) => format!("templates: ok (overrides from {})", d.display()),
            None => "templates: ok (embedded)".to_string(),
        }),
        Err(e) => problems.extend(e.iter().map(ToString::to_string)),
    }
    if let Some(t) = &args.chat_template {
        match crate::config::load_chat_template(t) {
            Ok(_) => report.push(format!("chat template {t}: ok")),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(report.join("\n"))
    } else {
        Err(RunError::Usage(problems.join("\n")))
    }
}
