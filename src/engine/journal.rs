//! The request journal: every finished request, appended as one JSON line.
//!
//! A request is keyed by a SHA-256 of (provider, model, stage, messages,
//! parameters). When a run resumes, replies already in the journal are
//! used instead of being paid for again. Only entries of prompts that have
//! no row yet are loaded, so memory stays bounded by what was in flight
//! when the run stopped, not by the size of the run.
//!
//! Each entry is written with a single `write` on a file opened for append,
//! so concurrent writers never interleave within a line; a torn last line
//! (a crash mid-write) is cut off when the journal is reopened.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::provider::{ChatRequest, Completion};

/// The hash that identifies a request. Fields are fed to SHA-256 with
/// length prefixes (so no two different requests share an encoding), and
/// messages go in as raw bytes: hashing JSON would escape every prompt a
/// second time on the hot path.
pub fn request_key(provider: &str, model: &str, stage: &str, req: &ChatRequest) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"cai-request-v1");
    field(provider.as_bytes());
    field(model.as_bytes());
    field(stage.as_bytes());
    for m in &req.messages {
        field(m.role.as_str().as_bytes());
        field(m.content.as_bytes());
    }
    // Parameters are small; their JSON form covers every field, including
    // ones added later.
    field(&serde_json::to_vec(&req.params).unwrap_or_default());
    hex(&h.finalize())
}

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    k: std::borrow::Cow<'a, str>,
    id: std::borrow::Cow<'a, str>,
    c: Completion,
}

/// The journal of one run directory.
pub struct Journal {
    path: PathBuf,
    /// `None`: a [`Journal::disabled`] one, which records nothing.
    file: Option<Mutex<File>>,
    cached: HashMap<String, Completion>,
    /// Replies recorded by this process, kept when a run asks for the same
    /// requests again in later passes (a batch run's stages).
    recorded: Option<Mutex<HashMap<String, Completion>>>,
}

impl Journal {
    /// Opens (creating) the journal, repairing a torn last line, and loads
    /// the entries of prompts not in `done`.
    pub fn open(path: &Path, done: &HashSet<String>) -> std::io::Result<Self> {
        let mut cached = HashMap::new();
        if path.exists() {
            let good_len = {
                let mut reader = BufReader::new(File::open(path)?);
                let mut good_len = 0u64;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let n = reader.read_until(b'\n', &mut line)?;
                    if n == 0 || line.last() != Some(&b'\n') {
                        break;
                    }
                    match serde_json::from_slice::<Entry>(&line) {
                        Ok(e) => {
                            if !done.contains(e.id.as_ref()) {
                                cached.insert(e.k.into_owned(), e.c);
                            }
                        }
                        // A complete but unreadable line can only come from
                        // outside interference; stop trusting the rest.
                        Err(_) => break,
                    }
                    good_len += n as u64;
                }
                good_len
            };
            let f = OpenOptions::new().write(true).open(path)?;
            if f.metadata()?.len() != good_len {
                f.set_len(good_len)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(Mutex::new(file)),
            cached,
            recorded: None,
        })
    }

    /// A journal that remembers nothing and writes nothing, for requests
    /// that are answered once and never resumed (`cai serve`).
    pub fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
            cached: HashMap::new(),
            recorded: None,
        }
    }

    /// Also keeps every reply recorded from now on in memory, for
    /// [`Journal::recorded`]: a batch run replays its prompts once per stage
    /// and must not count a reply twice.
    pub fn keep_recorded(mut self) -> Self {
        self.recorded = Some(Mutex::new(HashMap::new()));
        self
    }

    /// A reply recorded by this process (with [`Journal::keep_recorded`]).
    pub fn recorded(&self, key: &str) -> Option<Completion> {
        let map = self.recorded.as_ref()?;
        map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reply recorded by an earlier run.
    pub fn get(&self, key: &str) -> Option<&Completion> {
        self.cached.get(key)
    }

    /// How many replies were loaded for reuse.
    pub fn cached_len(&self) -> usize {
        self.cached.len()
    }

    /// Appends one finished request.
    pub fn record(&self, key: &str, prompt_id: &str, c: &Completion) -> std::io::Result<()> {
        if let Some(map) = &self.recorded {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_string(), c.clone());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(&Entry {
            k: key.into(),
            id: prompt_id.into(),
            c: c.clone(),
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{FinishReason, GenParams, Message};

    fn completion(t: &str) -> Completion {
        Completion {
            text: t.into(),
            finish: FinishReason::Stop,
            usage: None,
            ..Completion::default()
        }
    }

    #[test]
    fn keys_depend_on_every_part() {
        let req = ChatRequest {
            cache: Default::default(),
            messages: vec![Message::user("hi")],
            params: GenParams::default(),
        };
        let k = request_key("openai", "m", "initial", &req);
        assert_eq!(k.len(), 64);
        assert_ne!(k, request_key("openai", "m2", "initial", &req));
        assert_ne!(k, request_key("openai", "m", "critique", &req));
        let mut other = req.clone();
        other.params.temperature = 0.1;
        assert_ne!(k, request_key("openai", "m", "initial", &other));
        assert_eq!(k, request_key("openai", "m", "initial", &req.clone()));
    }

    #[test]
    fn reopen_repairs_torn_line_and_skips_done_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        {
            let j = Journal::open(&path, &HashSet::new()).unwrap();
            j.record("k1", "a", &completion("one")).unwrap();
            j.record("k2", "b", &completion("two")).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"k\":\"k3\",\"id\":\"c\",\"c\":{\"te")
            .unwrap();
        drop(f);
        let done: HashSet<String> = ["a".to_string()].into();
        let j = Journal::open(&path, &done).unwrap();
        assert!(j.get("k1").is_none());
        assert_eq!(j.get("k2").unwrap().text, "two");
        assert_eq!(j.cached_len(), 1);
        j.record("k4", "d", &completion("four")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("\n"));
    }
}
