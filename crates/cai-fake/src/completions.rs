//! OpenAI's text-completion route (`POST /v1/completions`), answered the
//! way a base model behaves.
//!
//! The prompt is one string. The stage is read as on the TGI route (what
//! follows the fake's last reply), and a prompt that ends with an open
//! answer heading (`# Answer:`, the plain format of DRPO) is continued past
//! the answer with a made-up next `# Query:`, as a base model runs on into
//! the next section of the document it continues; `stop` sequences cut that
//! off, so a client that sends them gets the answer alone. `logprobs: N`
//! returns the legacy shape: `top_logprobs`, one map of token →
//! log-probability per generated word.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    compose, last_marker, limit, now_secs, splitmix, stage_of, tokens, End, Fault, Fnv, Output,
    Stop, CRITIQUE, WORDS,
};

#[derive(Deserialize)]
pub(crate) struct CompletionBody {
    model: String,
    prompt: String,
    max_tokens: Option<u32>,
    pub(crate) temperature: Option<f64>,
    pub(crate) top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    logprobs: Option<u32>,
}

impl CompletionBody {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.logprobs.is_some_and(|n| n > 5) {
            return Err("'logprobs' must be at most 5".into());
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Response<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    text: String,
    finish_reason: &'static str,
    logprobs: Option<Logprobs>,
}

#[derive(Serialize)]
struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f64>,
    top_logprobs: Vec<BTreeMap<String, f64>>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// What a base model writes after its answer when nothing stops it.
const RUN_ON: &str =
    "\n\n# Query:\nAnd what would you ask next?\n\n# Answer:\nSomething else entirely.";

pub(crate) fn answer(b: CompletionBody, fault: Fault) -> Output {
    let mut h = Fnv::new().add(b.model.as_bytes()).add(b.prompt.as_bytes());
    if let Some(seed) = b.seed {
        h = h.add(&seed.to_le_bytes());
    }
    let (request, last_reply) = match last_marker(&b.prompt) {
        Some(at) => {
            let before = &b.prompt[at.saturating_sub(160)..at];
            let reply = if before.contains(CRITIQUE) {
                CRITIQUE
            } else {
                ""
            };
            (&b.prompt[at..], Some(reply))
        }
        None => (b.prompt.as_str(), None),
    };
    let stage = stage_of(request, last_reply);
    let stop = b.stop.map(Stop::list).unwrap_or_default();
    let (text, end) = if fault == Fault::Empty {
        (String::new(), End::Natural)
    } else {
        let mut text = compose(stage, h.0);
        if b.prompt.trim_end().ends_with("# Answer:") {
            text.push_str(RUN_ON);
        }
        let end = limit(&mut text, &stop, b.max_tokens, fault == Fault::Length);
        (text, end)
    };
    let logprobs = b.logprobs.map(|top| legacy_logprobs(&text, h.0, top));
    let prompt_tokens = tokens(&b.prompt);
    let completion_tokens = tokens(&text);
    let resp = Response {
        id: format!("cmpl-{:016x}", h.0),
        object: "text_completion",
        created: now_secs(),
        model: &b.model,
        choices: vec![Choice {
            index: 0,
            text,
            finish_reason: if end == End::Length { "length" } else { "stop" },
            logprobs,
        }],
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    };
    Output {
        body: serde_json::to_vec(&resp).unwrap_or_default(),
        prompt_tokens,
        completion_tokens,
        truncated: end == End::Length,
    }
}

/// One entry per word: its log-probability and `top` alternatives (the word
/// itself among them).
fn legacy_logprobs(text: &str, hash: u64, top: u32) -> Logprobs {
    let lp = |x: u64| -((x % 4000) as f64) / 1000.0;
    let mut out = Logprobs {
        tokens: Vec::new(),
        token_logprobs: Vec::new(),
        top_logprobs: Vec::new(),
    };
    for (i, word) in text.split(' ').enumerate() {
        let x = splitmix(hash ^ i as u64);
        let mut alts = BTreeMap::new();
        alts.insert(word.to_string(), lp(x));
        for k in 1..u64::from(top) {
            alts.insert(
                WORDS[((x >> k) & 63) as usize].to_string(),
                lp(splitmix(x + k)) - 4.0,
            );
        }
        out.tokens.push(word.to_string());
        out.token_logprobs.push(lp(x));
        out.top_logprobs.push(alts);
    }
    out
}
