//! Client-side chat templates: a conversation rendered to one prompt string.
//!
//! Raw-completion backends (TGI / Inference API `generate`, the embedded
//! model) take text, not messages, so the conversation is rendered with the
//! model's own Jinja chat template, the `chat_template` string found in a
//! model's `tokenizer_config.json` or a GGUF's `tokenizer.chat_template`.
//! Those templates are written for Python's Jinja2, so the environment adds
//! the helpers they rely on: Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()`, via minijinja-contrib's pycompat),
//! `raise_exception`, and `strftime_now`.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use super::Message;

/// Built-in templates, selectable by name with `--chat-template NAME`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("chatml", CHATML),
    ("zephyr", ZEPHYR),
    ("mistral", MISTRAL),
    ("llama3", LLAMA3),
    ("gemma", GEMMA),
];

const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const ZEPHYR: &str = "{% for message in messages %}<|{{ message.role }}|>\n{{ message.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

// Mistral instruct has no system role: a system message is prepended to the
// first user turn, as Mistral's own templates do.
const MISTRAL: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}{% if message.role == 'system' %}{% set ns.system = message.content + '\n\n' %}{% elif message.role == 'user' %}[INST] {{ ns.system }}{{ message.content }} [/INST]{% set ns.system = '' %}{% elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}{% endif %}{% endfor %}";

// Gemma has no system role either (Gemma 2's own template rejects one): a
// system message is folded into the first user turn, blank-line separated,
// as Gemma 3's own template does. The assistant's role is called `model`.
// The newline after the role is an expression: trim_blocks would eat a
// literal one after `{% endif %}`.
const GEMMA: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}{% if message.role == 'system' %}{% set ns.system = ns.system + (message.content | trim) + '\n\n' %}{% else %}<start_of_turn>{% if message.role == 'assistant' %}model{% else %}{{ message.role }}{% endif %}{{ '\\n' }}{% if message.role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}{{ message.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// Default special tokens of the built-in templates.
fn builtin_tokens(name: &str) -> (&'static str, &'static str) {
    match name {
        "zephyr" => ("<s>", "</s>"),
        "mistral" => ("<s>", "</s>"),
        "llama3" => ("<|begin_of_text|>", "<|eot_id|>"),
        "gemma" => ("<bos>", "<end_of_turn>"),
        _ => ("", "<|im_end|>"),
    }
}

/// The template a model of `family` (GGUF `general.architecture`) is
/// rendered with, given its own (`None` when the file has none): the
/// built-in `gemma` for the Gemma family, whose own templates reject (Gemma
/// 2) or differ on (Gemma 3) the system message every cai request carries;
/// else the model's own; else ChatML, which models without a template are
/// almost always trained on.
pub fn source_for<'a>(family: &str, own: Option<&'a str>) -> &'a str {
    let builtin = |name: &str| {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(CHATML, |(_, s)| *s)
    };
    if family.starts_with("gemma") {
        return builtin("gemma");
    }
    own.unwrap_or_else(|| builtin("chatml"))
}

/// A compiled chat template with its special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Ctx<'a> {
    messages: &'a [Message],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

impl ChatTemplate {
    /// Compiles `source`. Fails (with minijinja's line and reason) on a
    /// syntax error, so a broken template is caught before any request.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", strftime_now);
        // Templates are trimmed the way transformers renders them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// One of [`BUILTIN`] by name.
    pub fn builtin(name: &str) -> Option<Self> {
        let (_, src) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        let (bos, eos) = builtin_tokens(name);
        // The built-in sources are constants tested below.
        Self::new(src, bos, eos).ok()
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders the conversation, ending with the assistant header when
    /// `add_generation_prompt` is set.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let tmpl = self.env.get_template("chat")?;
        tmpl.render(Ctx {
            messages,
            add_generation_prompt,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
        })
    }
}

/// `strftime_now(fmt)`: some templates (Llama 3.1+) print today's date.
/// Supports the common `%d %b %Y %m %B %H %M %S %y` directives in UTC.
fn strftime_now(fmt: String) -> String {
    let now = crate::date::Utc::now();
    let (y, m, d) = (now.year, now.month, now.day);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", now.hour)),
            Some('M') => out.push_str(&format!("{:02}", now.minute)),
            Some('S') => out.push_str(&format!("{:02}", now.second)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convo() -> Vec<Message> {
        vec![
            Message::system("Be kind."),
            Message::user("Hi {{ x }}"),
            Message::assistant("Hello."),
            Message::user("Why?"),
        ]
    }

    #[test]
    fn builtins_render_exact_strings() {
        let cases = [
            (
                "chatml",
                "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi {{ x }}<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n",
            ),
            (
                "zephyr",
                "<|system|>\nBe kind.</s>\n<|user|>\nHi {{ x }}</s>\n<|assistant|>\nHello.</s>\n<|user|>\nWhy?</s>\n<|assistant|>\n",
            ),
            (
                "mistral",
                "<s>[INST] Be kind.\n\nHi {{ x }} [/INST]Hello.</s>[INST] Why? [/INST]",
            ),
            (
                "gemma",
                "<bos><start_of_turn>user\nBe kind.\n\nHi {{ x }}<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n",
            ),
            (
                "llama3",
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi {{ x }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
        ];
        for (name, want) in cases {
            let t = ChatTemplate::builtin(name).unwrap();
            assert_eq!(t.render(&convo(), true).unwrap(), want, "template {name}");
        }
    }

    /// Gemma's template: no system turn of its own, and a conversation
    /// without a system message renders as Gemma's own template does.
    #[test]
    fn gemma_folds_the_system_message_into_the_first_user_turn() {
        let t = ChatTemplate::builtin("gemma").unwrap();
        let plain = t
            .render(&[Message::user("Hi"), Message::assistant("Hello.")], false)
            .unwrap();
        assert_eq!(
            plain,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        );
        let folded = t.render(&convo(), true).unwrap();
        assert!(!folded.contains("system"), "{folded}");
        assert_eq!(folded.matches("Be kind.").count(), 1, "{folded}");
    }

    #[test]
    fn gemma_models_get_the_gemma_template_and_others_their_own() {
        let own = "{{ messages[0].content }}";
        assert_eq!(source_for("gemma2", Some(own)), GEMMA);
        assert_eq!(source_for("gemma3", None), GEMMA);
        assert_eq!(source_for("llama", Some(own)), own);
        assert_eq!(source_for("qwen2", None), CHATML);
    }

    #[test]
    fn python_style_templates_work() {
        // The shape of many tokenizer_config.json templates: Python methods,
        // raise_exception, loop.first.
        let src = "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'].strip() %}{% else %}{% set sys = '' %}{% endif %}{% for m in messages %}{% if m['role'] not in ['system','user','assistant'] %}{{ raise_exception('bad role') }}{% endif %}{% if m['role'] != 'system' %}{{ m['role'].upper() }}: {{ m['content'] }}\n{% endif %}{% endfor %}SYS={{ sys }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&convo(), false).unwrap(),
            "USER: Hi {{ x }}\nASSISTANT: Hello.\nUSER: Why?\nSYS=Be kind."
        );
    }

    #[test]
    fn raise_exception_surfaces_as_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&convo(), true).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn broken_template_fails_to_compile() {
        assert!(ChatTemplate::new("{% for m in messages %}", "", "").is_err());
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
    }
}
