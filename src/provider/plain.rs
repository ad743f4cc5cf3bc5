//! The plain-text prompt format of DRPO, for base models (`--base-format
//! plain`).
//!
//! A base model was never tuned on a chat template, so DRPO prompts it with
//! a document it can continue: the instructions (the system prompt) under a
//! `# Instructions` heading, then each turn as `# Query:` or `# Answer:`
//! sections, ending with an open `# Answer:` for the model to write. The
//! model stops at the next heading it starts: the headings are sent as stop
//! sequences, and a reply from a server that ignores them is cut at the
//! first one here, so an answer never carries a made-up next query.
//!
//! ```text
//! # Instructions
//!
//! You are a helpful assistant.
//!
//! # Query:
//! What is 2 + 2?
//!
//! # Answer:
//! ```
//!
//! [`Plain`] wraps any provider that takes raw text
//! ([`Provider::complete_text`]): the OpenAI-compatible `completions`
//! backend, TGI `generate`, the embedded model. Retrieved examples
//! ([`crate::feedback::examples`]) arrive as earlier user/assistant turns and
//! so become earlier `# Query:`/`# Answer:` sections.

use std::sync::Arc;

use async_trait::async_trait;

use super::registry::{Api, Backend, Entry};
use super::{ChatRequest, Message, Provider, ProviderError, Reply, Role};

/// How the model being aligned (or served) is prompted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFormat {
    /// Chat turns: the endpoint's chat API, or its chat template.
    #[default]
    Chat,
    /// DRPO's plain text (`# Instructions … # Query: … # Answer:`), for
    /// base models; needs an endpoint that takes raw text.
    Plain,
}

/// The section headings; a reply ends where the model starts one.
const HEADINGS: [&str; 3] = ["# Query:", "# Answer:", "# Instructions"];

/// The stop sequences sent with every plain-format request.
pub fn stop_sequences() -> impl Iterator<Item = String> {
    HEADINGS.iter().map(|h| format!("\n{h}"))
}

/// The prompt for a conversation: system messages as the instructions,
/// the other turns as sections, and an open answer unless the last turn is
/// an answer already (which the model then continues).
pub fn render(messages: &[Message]) -> String {
    let instructions: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.trim())
        .filter(|c| !c.is_empty())
        .collect();
    let mut out = String::new();
    if !instructions.is_empty() {
        out.push_str("# Instructions\n\n");
        out.push_str(&instructions.join("\n\n"));
        out.push_str("\n\n");
    }
    let mut last = None;
    for m in messages.iter().filter(|m| m.role != Role::System) {
        let heading = match m.role {
            Role::Assistant => "# Answer:\n",
            _ => "# Query:\n",
        };
        out.push_str(heading);
        out.push_str(m.content.trim());
        out.push_str("\n\n");
        last = Some(m.role);
    }
    if last == Some(Role::Assistant) {
        out.truncate(out.trim_end().len());
    } else {
        out.push_str("# Answer:\n");
    }
    out
}

/// The answer in a reply: up to the first heading that starts a line
/// (whether or not the server honoured the stop sequences), trimmed.
/// Whether it was cut is returned too.
pub fn answer(text: &str) -> (&str, bool) {
    let cut = HEADINGS
        .iter()
        .filter_map(|h| {
            text.match_indices(h)
                .map(|(i, _)| i)
                .find(|&i| i == 0 || text[..i].ends_with('\n'))
        })
        .min();
    match cut {
        Some(i) => (text[..i].trim(), true),
        None => (text.trim(), false),
    }
}

/// Why a provider cannot be prompted in the plain format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("--base-format plain needs an endpoint that takes raw text: add --api completions (an OpenAI-compatible server's /v1/completions)")]
    NeedsCompletions,
    #[error("--base-format plain needs an endpoint that takes raw text; provider {0} speaks chat turns only (use an OpenAI-compatible server with --api completions, --provider hf or local)")]
    ChatOnly(&'static str),
}

/// Checks that requests in `format` can go to `entry`'s provider when it
/// is reached through `api`.
pub fn check(format: BaseFormat, entry: &Entry, api: Api) -> Result<(), FormatError> {
    if format == BaseFormat::Chat {
        return Ok(());
    }
    match entry.backend {
        Backend::Local | Backend::Hf => Ok(()),
        Backend::OpenAi if api == Api::Completions => Ok(()),
        Backend::OpenAi if entry.apis.contains(&Api::Completions) => {
            Err(FormatError::NeedsCompletions)
        }
        _ => Err(FormatError::ChatOnly(entry.name)),
    }
}

/// `inner` prompted in `format`: itself for chat, [`Plain`] around it for
/// the plain format.
pub fn with_format(inner: Arc<dyn Provider>, format: BaseFormat) -> Arc<dyn Provider> {
    match format {
        BaseFormat::Chat => inner,
        BaseFormat::Plain => Arc::new(Plain::new(inner)),
    }
}

/// A raw-text provider prompted in the plain format.
pub struct Plain {
    inner: Arc<dyn Provider>,
    /// `{inner}+plain`: the journal keys requests by provider name, and a
    /// plain-format reply must not answer the same conversation asked in
    /// chat form.
    name: String,
}

impl Plain {
    pub fn new(inner: Arc<dyn Provider>) -> Self {
        Self {
            name: format!("{}+plain", inner.name()),
            inner,
        }
    }

    /// The request as sent: the caller's stop sequences and the headings.
    fn request(req: &ChatRequest) -> ChatRequest {
        let mut sent = req.clone();
        for s in stop_sequences() {
            if !sent.params.stop.contains(&s) {
                sent.params.stop.push(s);
            }
        }
        sent
    }
}

#[async_trait]
impl Provider for Plain {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }

    fn key_var(&self) -> Option<&str> {
        self.inner.key_var()
    }

    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        self.inner.list_models().await
    }

    fn endpoint_stats(&self) -> Vec<super::pool::EndpointStats> {
        self.inner.endpoint_stats()
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let sent = Self::request(req);
        Ok(serde_json::json!({
            "endpoint": self.endpoint(),
            "prompt": render(&sent.messages),
            "params": sent.params,
        }))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let sent = Self::request(req);
        let prompt = render(&sent.messages);
        let mut reply = self.inner.complete_text(&prompt, &sent).await?;
        let c = &mut reply.completion;
        let (text, cut) = answer(&c.text);
        c.text = text.to_string();
        if cut {
            c.finish = super::FinishReason::Stop;
        }
        for more in &mut c.more {
            *more = answer(more).0.to_string();
        }
        Ok(reply)
    }

    async fn complete_text(&self, prompt: &str, req: &ChatRequest) -> Result<Reply, ProviderError> {
        self.inner.complete_text(prompt, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_renders_as_sections_with_an_open_answer() {
        let messages = [
            Message::system("Be brief."),
            Message::user("Capital of France?"),
            Message::assistant("Paris."),
            Message::user("And of Italy?"),
        ];
        assert_eq!(
            render(&messages),
            "# Instructions\n\nBe brief.\n\n# Query:\nCapital of France?\n\n# Answer:\nParis.\n\n# Query:\nAnd of Italy?\n\n# Answer:\n"
        );
        assert_eq!(
            render(&[Message::user("Hi")]),
            "# Query:\nHi\n\n# Answer:\n"
        );
    }

    #[test]
    fn an_answer_ends_at_the_first_heading_that_starts_a_line() {
        assert_eq!(answer(" Rome.\n\n# Query:\nNext?"), ("Rome.", true));
        assert_eq!(answer("Rome.\n# Instructions\nx"), ("Rome.", true));
        assert_eq!(
            answer("Use `# Query:` inline"),
            ("Use `# Query:` inline", false)
        );
        assert_eq!(answer("# Answer:\nRome."), ("", true));
        assert_eq!(answer("Rome.\n"), ("Rome.", false));
    }
}
