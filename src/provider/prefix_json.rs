//! The JSON of a stage's shared messages, serialized once per run.
//!
//! Every request of a stage starts with the same system message and
//! few-shots (a few kilobytes with the shipped constitutions), and escaping
//! them into JSON again for each request was the largest single share of
//! the engine's CPU per request. [`PrefixJson`] keeps each recent stage's
//! leading messages beside their JSON; a request whose
//! [`CacheHint`](super::CacheHint) names the same scope *and* whose leading
//! messages compare equal (checked, not trusted) reuses it. The body's
//! bytes are the same as serializing every message: a cached message is
//! spliced in as the raw JSON serde would have written for it.

use std::sync::{Arc, Mutex};

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::{ChatRequest, Message};

/// Stages remembered at once; a run has three (initial, critique,
/// revision), and a judge or a second system message adds a few.
const KEPT: usize = 8;

/// One stage's shared messages and their JSON, one raw value each.
struct Prefix {
    scope: String,
    messages: Vec<Message>,
    json: Vec<Box<RawValue>>,
}

/// A provider's memory of its stages' prefixes (shared by clones).
#[derive(Clone, Default)]
pub struct PrefixJson {
    kept: Arc<Mutex<Vec<Arc<Prefix>>>>,
}

impl PrefixJson {
    /// `req.messages`, ready to serialize with the shared part's JSON
    /// reused (or worked out now and kept for the next request).
    pub fn messages<'a>(&self, req: &'a ChatRequest) -> Messages<'a> {
        let shared = req.cache.shared.min(req.messages.len());
        let prefix = match req.cache.scope.as_deref() {
            Some(scope) if shared > 0 => self.prefix(scope, &req.messages[..shared]),
            _ => None,
        };
        Messages {
            prefix,
            all: &req.messages,
        }
    }

    fn prefix(&self, scope: &str, lead: &[Message]) -> Option<Arc<Prefix>> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = kept.iter().find(|p| p.scope == scope && p.messages == lead) {
            return Some(p.clone());
        }
        let json = lead
            .iter()
            .map(|m| serde_json::value::to_raw_value(m).ok())
            .collect::<Option<Vec<_>>>()?;
        let p = Arc::new(Prefix {
            scope: scope.to_string(),
            messages: lead.to_vec(),
            json,
        });
        kept.retain(|q| q.scope != scope);
        if kept.len() >= KEPT {
            kept.remove(0);
        }
        kept.push(p.clone());
        Some(p)
    }
}

/// A request's messages for serialization: the cached JSON of its shared
/// prefix, then the rest serialized as usual.
pub struct Messages<'a> {
    prefix: Option<Arc<Prefix>>,
    all: &'a [Message],
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.all.len()))?;
        let done = match &self.prefix {
            Some(p) => {
                for raw in &p.json {
                    seq.serialize_element(raw)?;
                }
                p.json.len()
            }
            None => 0,
        };
        for m in &self.all[done..] {
            seq.serialize_element(m)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{CacheHint, GenParams};

    fn req(prompt: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::system("Be \"kind\".\n"),
                Message::user("Example question"),
                Message::assistant("Example answer \u{1F600}"),
                Message::user(prompt),
            ],
            params: GenParams::default(),
            cache: CacheHint {
                shared: 3,
                scope: Some("critique:abc".into()),
                ..CacheHint::default()
            },
        }
    }

    #[test]
    fn the_same_bytes_as_serializing_every_message() {
        let cache = PrefixJson::default();
        for prompt in ["first \\ prompt", "second\tprompt"] {
            let r = req(prompt);
            let spliced = serde_json::to_string(&cache.messages(&r)).unwrap();
            assert_eq!(spliced, serde_json::to_string(&r.messages).unwrap());
        }
        assert_eq!(cache.kept.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_scope_with_other_messages_is_not_trusted() {
        let cache = PrefixJson::default();
        let a = req("q");
        let _ = serde_json::to_string(&cache.messages(&a)).unwrap();
        let mut b = req("q");
        b.messages[1].content = "Another example".into();
        let spliced = serde_json::to_string(&cache.messages(&b)).unwrap();
        assert!(spliced.contains("Another example"), "{spliced}");
        assert_eq!(spliced, serde_json::to_string(&b.messages).unwrap());
    }
}
