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
//!
//! # Compaction
//!
//! Once a prompt's rows are committed its replies are in the data files and
//! the trace, and the journal's copy is never read again. The run tells the
//! journal ([`Journal::committed`]); [`Journal::compact`] (at the end of a
//! run, and whenever the file passes [`COMPACT_AT`] bytes since the last
//! compaction) rewrites it with only the entries of prompts not committed —
//! those in flight, or left unfinished by an interrupted run. The new file is
//! written beside the old one (`journal.jsonl.tmp`), flushed to disk and
//! renamed over it, so a crash at any point leaves either the old journal or
//! the new one, both complete; a leftover `.tmp` is removed on open. A
//! finished run's journal is therefore empty, and a 1M-prompt run does not
//! keep every reply twice on disk.
//!
//! Memory: the ids with entries not yet committed (in flight, or loaded
//! from an interrupted run, whose replies are held anyway), never the ids of
//! the whole run.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::IdSet;
use crate::digest::hex;
use crate::provider::{ChatRequest, Completion, GenParams, Message};

/// The hash that identifies a request. Fields are fed to SHA-256 with
/// length prefixes (so no two different requests share an encoding), and
/// messages go in as raw bytes: hashing JSON would escape every prompt a
/// second time on the hot path.
pub fn request_key(provider: &str, model: &str, stage: &str, req: &ChatRequest) -> String {
    let mut h = key_header(provider, model, stage);
    for m in &req.messages {
        key_message(&mut h, m);
    }
    key_finish(h, &params_json(&req.params))
}

/// Feeds one length-prefixed field.
fn key_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn key_header(provider: &str, model: &str, stage: &str) -> Sha256 {
    let mut h = Sha256::new();
    key_field(&mut h, b"cai-request-v1");
    key_field(&mut h, provider.as_bytes());
    key_field(&mut h, model.as_bytes());
    key_field(&mut h, stage.as_bytes());
    h
}

fn key_message(h: &mut Sha256, m: &Message) {
    key_field(h, m.role.as_str().as_bytes());
    key_field(h, m.content.as_bytes());
}

/// Parameters are small; their JSON form covers every field, including
/// ones added later.
fn params_json(p: &GenParams) -> Vec<u8> {
    serde_json::to_vec(p).unwrap_or_default()
}

fn key_finish(mut h: Sha256, params: &[u8]) -> String {
    key_field(&mut h, params);
    hex(&h.finalize())
}

/// [`request_key`] for the requests of one run, without hashing the same
/// bytes again and again: every request of a stage starts with the same
/// system message and few-shot turns (kilobytes, the bulk of each request),
/// and almost every request carries the run's parameters. Per stage, it
/// keeps the SHA-256 state after the messages that the requests seen so far
/// share, and the parameters' JSON; a request whose first messages equal
/// that prefix (compared, not trusted) continues from the saved state. The
/// keys are exactly [`request_key`]'s.
#[derive(Default)]
pub struct KeyCache {
    stages: Mutex<Vec<Arc<StagePrefix>>>,
    params: Mutex<Option<ParamsJson>>,
}

/// Parameters and their JSON.
type ParamsJson = (GenParams, Vec<u8>);

/// The shared start of one stage's requests and the hash state after it.
struct StagePrefix {
    provider: String,
    model: String,
    stage: String,
    messages: Vec<Message>,
    state: Sha256,
}

impl KeyCache {
    pub fn key(&self, provider: &str, model: &str, stage: &str, req: &ChatRequest) -> String {
        let prefix = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.stage == stage && p.provider == provider && p.model == model)
            .cloned();
        let shared = prefix.as_ref().map_or(0, |p| {
            p.messages
                .iter()
                .zip(&req.messages)
                .take_while(|(a, b)| a.role == b.role && a.content == b.content)
                .count()
        });
        let mut h = match &prefix {
            Some(p) if shared == p.messages.len() => p.state.clone(),
            _ => {
                // First request of the stage, or one that shares less: the
                // prefix becomes what the two have in common (it settles
                // on the system message and few-shots within a request or
                // two), so the later requests start from it.
                let keep = match &prefix {
                    None => req.messages.len().saturating_sub(1),
                    Some(_) => shared,
                };
                let mut h = key_header(provider, model, stage);
                for m in &req.messages[..keep] {
                    key_message(&mut h, m);
                }
                self.learn(StagePrefix {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    stage: stage.to_string(),
                    messages: req.messages[..keep].to_vec(),
                    state: h.clone(),
                });
                for m in &req.messages[keep..] {
                    key_message(&mut h, m);
                }
                return key_finish(h, &self.params(&req.params));
            }
        };
        for m in &req.messages[shared..] {
            key_message(&mut h, m);
        }
        key_finish(h, &self.params(&req.params))
    }

    fn learn(&self, p: StagePrefix) {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        stages.retain(|s| !(s.stage == p.stage && s.provider == p.provider && s.model == p.model));
        stages.push(Arc::new(p));
    }

    /// The JSON of `p`, from the last parameters seen when they are equal.
    fn params(&self, p: &GenParams) -> Vec<u8> {
        let mut last = self.params.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_ref() {
            Some(c) if c.0 == *p => c.1.clone(),
            _ => {
                let json = params_json(p);
                *last = Some((p.clone(), json.clone()));
                json
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    k: std::borrow::Cow<'a, str>,
    id: std::borrow::Cow<'a, str>,
    c: Completion,
}

/// Bytes appended since the last compaction that trigger the next one
/// during a run.
pub const COMPACT_AT: u64 = 64 << 20;

/// The append handle and what compaction needs to know.
struct Appender {
    file: File,
    /// Bytes appended since the file was opened or last compacted.
    grown: u64,
}

/// The journal of one run directory.
pub struct Journal {
    path: PathBuf,
    /// `None`: a [`Journal::disabled`] one, which records nothing.
    file: Option<Mutex<Appender>>,
    cached: HashMap<String, Completion>,
    /// Prompts with entries in the file whose rows are not committed: what
    /// compaction keeps.
    live: Mutex<HashSet<String>>,
    /// Replies recorded by this process, kept when a run asks for the same
    /// requests again in later passes (a batch run's stages).
    recorded: Option<Mutex<Recorded>>,
    /// Compacts itself as it grows: only for a journal whose run reports
    /// every commit ([`Journal::compacting`]).
    compacts: bool,
}

/// A batch run's replies of prompts not committed yet: bounded by the
/// unfinished prompts of the run, not by all of them.
#[derive(Default)]
struct Recorded {
    replies: HashMap<String, Completion>,
    /// Each prompt's request keys, to let its replies go once committed.
    keys: HashMap<String, Vec<String>>,
}

/// Calls `each` with every whole line of `reader` (its newline included),
/// until the first torn one (no newline: a write that did not finish) or
/// until `each` returns `false`.
fn whole_lines(
    mut reader: impl BufRead,
    mut each: impl FnMut(&[u8]) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') || !each(&line)? {
            return Ok(());
        }
    }
}

impl Journal {
    /// Opens (creating) the journal, repairing a torn last line, and loads
    /// the entries of prompts not in `done`.
    pub fn open(path: &Path, done: &IdSet) -> std::io::Result<Self> {
        let mut cached = HashMap::new();
        let mut live = HashSet::new();
        // A compaction that did not reach its rename: the journal itself
        // is whole, the half-written copy is not needed.
        let _ = std::fs::remove_file(tmp_path(path));
        if path.exists() {
            let mut good_len = 0u64;
            whole_lines(BufReader::new(File::open(path)?), |line| {
                match serde_json::from_slice::<Entry>(line) {
                    Ok(e) => {
                        if !done.contains(e.id.as_ref()) {
                            if !live.contains(e.id.as_ref()) {
                                live.insert(e.id.into_owned());
                            }
                            cached.insert(e.k.into_owned(), e.c);
                        }
                    }
                    // A complete but unreadable line can only come from
                    // outside interference; stop trusting the rest.
                    Err(_) => return Ok(false),
                }
                good_len += line.len() as u64;
                Ok(true)
            })?;
            let f = OpenOptions::new().write(true).open(path)?;
            if f.metadata()?.len() != good_len {
                f.set_len(good_len)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(Mutex::new(Appender { file, grown: 0 })),
            cached,
            live: Mutex::new(live),
            recorded: None,
            compacts: false,
        })
    }

    /// A journal that remembers nothing and writes nothing, for requests
    /// that are answered once and never resumed (`cai serve`).
    pub fn disabled() -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
            cached: HashMap::new(),
            live: Mutex::new(HashSet::new()),
            recorded: None,
            compacts: false,
        }
    }

    /// Compacts the file whenever [`COMPACT_AT`] bytes were appended since
    /// the last compaction. Only for a run that calls
    /// [`Journal::committed`] for every item it commits; otherwise each
    /// compaction would keep everything.
    pub fn compacting(mut self) -> Self {
        self.compacts = true;
        self
    }

    /// Also keeps every reply recorded from now on in memory, for
    /// [`Journal::recorded`]: a batch run replays its prompts once per stage
    /// and must not count a reply twice.
    pub fn keep_recorded(mut self) -> Self {
        self.recorded = Some(Mutex::new(Recorded::default()));
        self
    }

    /// A reply recorded by this process (with [`Journal::keep_recorded`]),
    /// for a prompt not committed yet.
    pub fn recorded(&self, key: &str) -> Option<Completion> {
        let map = self.recorded.as_ref()?;
        map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .replies
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
            let mut r = map.lock().unwrap_or_else(|e| e.into_inner());
            r.replies.insert(key.to_string(), c.clone());
            r.keys
                .entry(prompt_id.to_string())
                .or_default()
                .push(key.to_string());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(&EntryRef {
            k: key,
            id: prompt_id,
            c,
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if !live.contains(prompt_id) {
                live.insert(prompt_id.to_string());
            }
        }
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        f.file.write_all(&line)?;
        f.grown += line.len() as u64;
        if self.compacts && f.grown >= COMPACT_AT {
            self.compact_locked(&mut f)?;
        }
        Ok(())
    }

    /// Notes that prompt `id`'s rows are committed: its entries are no
    /// longer needed, in memory or (after the next compaction) on disk.
    pub fn committed(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(map) = &self.recorded {
            let mut r = map.lock().unwrap_or_else(|e| e.into_inner());
            for k in r.keys.remove(id).unwrap_or_default() {
                r.replies.remove(&k);
            }
        }
    }

    /// Rewrites the file with only the entries of prompts not committed
    /// (see the module docs); returns its new length.
    pub fn compact(&self) -> std::io::Result<u64> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        self.compact_locked(&mut f)
    }

    /// [`Self::compact`] with the append handle held, so no entry is
    /// appended to the file being replaced.
    fn compact_locked(&self, f: &mut Appender) -> std::io::Result<u64> {
        #[derive(Deserialize)]
        struct IdOnly<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
        }
        let tmp = tmp_path(&self.path);
        let mut kept = 0u64;
        {
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let reader = BufReader::new(File::open(&self.path)?);
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            whole_lines(reader, |line| {
                let keep = match serde_json::from_slice::<IdOnly>(line) {
                    Ok(e) => live.contains(e.id.as_ref()),
                    // Not ours to judge: keep it, as open() would read it.
                    Err(_) => true,
                };
                if keep {
                    out.write_all(line)?;
                    kept += line.len() as u64;
                }
                Ok(true)
            })?;
            out.flush()?;
            out.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must reach the disk before the old entries
            // are forgotten; a directory that cannot be opened (not on
            // every platform) leaves it to the OS.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        f.file = OpenOptions::new().append(true).open(&self.path)?;
        f.grown = 0;
        Ok(kept)
    }
}

/// Where a compaction writes the new journal before renaming it.
fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// [`Entry`] by reference, for writing without cloning the reply.
#[derive(Serialize)]
struct EntryRef<'a> {
    k: &'a str,
    id: &'a str,
    c: &'a Completion,
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

    /// A fresh journal in its own directory, open, with `entries` (key,
    /// prompt id, reply text) recorded.
    fn journal(entries: &[(&str, &str, &str)]) -> (tempfile::TempDir, PathBuf, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::open(&path, &IdSet::empty()).unwrap();
        for (k, id, text) in entries {
            j.record(k, id, &completion(text)).unwrap();
        }
        (dir, path, j)
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
    fn cached_keys_equal_plain_ones_whatever_the_order() {
        let shots = [
            Message::system("sys"),
            Message::user("shot q"),
            Message::assistant("shot a"),
        ];
        let req = |tail: &[&str], max_tokens: u32| ChatRequest {
            messages: shots
                .iter()
                .cloned()
                .chain(tail.iter().map(|t| Message::user(*t)))
                .collect(),
            params: GenParams {
                max_tokens,
                ..GenParams::default()
            },
            cache: Default::default(),
        };
        let cache = KeyCache::default();
        let reqs = [
            req(&["p1"], 8),
            req(&["p2"], 8),
            req(&["p1", "more"], 16),
            req(&[], 8),
            req(&["p3"], 8),
        ];
        for r in reqs.iter().chain(reqs.iter().rev()) {
            for stage in ["initial", "critique"] {
                assert_eq!(
                    cache.key("openai", "m", stage, r),
                    request_key("openai", "m", stage, r)
                );
            }
        }
        let other = ChatRequest {
            messages: vec![Message::system("other")],
            params: GenParams::default(),
            cache: Default::default(),
        };
        assert_eq!(
            cache.key("openai", "m", "initial", &other),
            request_key("openai", "m", "initial", &other)
        );
    }

    #[test]
    fn reopen_repairs_torn_line_and_skips_done_prompts() {
        let (dir, path, j) = journal(&[("k1", "a", "one"), ("k2", "b", "two")]);
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"k\":\"k3\",\"id\":\"c\",\"c\":{\"te")
            .unwrap();
        drop(f);
        let log = dir.path().join("progress.jsonl");
        std::fs::write(&log, "{\"id\":\"a\",\"len\":[]}\n").unwrap();
        let mut b = IdSet::builder();
        b.push("a", 0);
        let done = b.finish(&log).unwrap();
        let j = Journal::open(&path, &done).unwrap();
        assert!(j.get("k1").is_none());
        assert_eq!(j.get("k2").unwrap().text, "two");
        assert_eq!(j.cached_len(), 1);
        j.record("k4", "d", &completion("four")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("\n"));
    }

    #[test]
    fn compaction_keeps_only_prompts_not_committed() {
        let (_dir, path, j) =
            journal(&[("k1", "a", "one"), ("k2", "b", "two"), ("k3", "a", "three")]);
        j.committed("a");
        let kept = j.compact().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"k2\""));
        assert_eq!(kept, text.len() as u64);
        // Appends go on into the new file, and a reopen reads it.
        j.record("k4", "c", &completion("four")).unwrap();
        drop(j);
        assert!(!tmp_path(&path).exists());
        let j = Journal::open(&path, &IdSet::empty()).unwrap();
        assert_eq!(j.cached_len(), 2);
        assert_eq!(j.get("k4").unwrap().text, "four");
    }

    #[test]
    fn a_compaction_cut_short_before_its_rename_loses_nothing() {
        let (_dir, path, j) = journal(&[("k1", "a", "one")]);
        drop(j);
        // A crash while the new file was being written.
        std::fs::write(tmp_path(&path), "{\"k\":\"k9\",\"id\":\"z\"").unwrap();
        let j = Journal::open(&path, &IdSet::empty()).unwrap();
        assert_eq!(j.get("k1").unwrap().text, "one");
        assert!(j.get("k9").is_none());
        assert!(!tmp_path(&path).exists());
    }
}
