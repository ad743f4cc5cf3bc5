//! The set of finished item ids, compact enough for ten million prompts.
//!
//! A resumed run skips every id its commit log records as committed, and a
//! batch run skips the ids written by its earlier passes. Holding those ids
//! as `String`s in a `HashSet` costs 60–100 bytes each; [`IdSet`] holds, per
//! id, a 64-bit hash of it and the byte offset of its latest line in the
//! commit log: 16 bytes in a sorted array, looked up by binary search. A hash
//! hit is confirmed by reading that commit line back (one positioned read)
//! and comparing the full id, so two ids that happen to share a hash are
//! never confused, and the line's text hash serves refresh
//! ([`IdSet::commit_of`]).
//!
//! Bound: 16 bytes per id committed before this invocation, plus a hash-map
//! entry (16 bytes, about 20–40 with the map's spare room) per id added
//! during it ([`IdSet::insert`], batch passes only). A fresh run that is not
//! a batch run holds nothing here.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;

/// A 64-bit hash of an id. Only ever compared within one process, so the
/// standard library's fixed-key SipHash is enough.
pub fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(id.as_bytes());
    h.finish()
}

/// The key is already a hash: use it as it is.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The fields of a commit line that identify it (the rest is the output
/// module's business).
#[derive(Deserialize)]
pub struct CommitRef {
    pub id: Option<String>,
    /// Hash of the item's input text (`generate`), for refresh.
    #[serde(default)]
    pub h: Option<String>,
}

/// Offset marking an entry taken out by [`IdSet::retain_input`].
const REMOVED: u64 = u64::MAX;

/// Ids added during this invocation: hash → commit offset, and the rare
/// second id under a hash already taken.
#[derive(Default)]
struct Added {
    first: HashMap<u64, u64, BuildHasherDefault<Identity>>,
    more: Vec<(u64, u64)>,
}

/// Committed ids: see the module docs. Shared by the run loop's reader
/// thread and the writer (a batch run adds what each pass wrote), so
/// additions take `&self`.
pub struct IdSet {
    /// `(id_hash, offset of the latest commit line)`, sorted by hash; one
    /// entry per hash unless two ids share one.
    sorted: Vec<(u64, u64)>,
    /// Added during this invocation (batch passes).
    added: Mutex<Added>,
    /// The commit log, for confirming hits; unset for an empty set.
    log: OnceLock<File>,
    len: AtomicUsize,
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdSet({} ids)", self.len())
    }
}

impl Default for IdSet {
    fn default() -> Self {
        Self::empty()
    }
}

/// Collects `(id, offset)` pairs while a commit log is read.
#[derive(Default)]
pub struct IdSetBuilder {
    entries: Vec<(u64, u64)>,
}

impl IdSetBuilder {
    /// Notes that the commit line at `offset` committed `id`; a later line
    /// for the same id (a refreshed prompt) replaces it.
    pub fn push(&mut self, id: &str, offset: u64) {
        self.entries.push((id_hash(id), offset));
    }

    /// The set, reading hits back from the log at `log`.
    pub fn finish(mut self, log: &Path) -> std::io::Result<IdSet> {
        if self.entries.is_empty() {
            return Ok(IdSet::empty());
        }
        // Stable: the lines of one hash stay in log order, so the last one
        // of each id is the latest.
        self.entries.sort_by_key(|e| e.0);
        let set = IdSet::empty();
        let _ = set.log.set(File::open(log)?);
        // Keep one entry per distinct id: for equal hashes, read the lines
        // back (rare unless an id was committed twice) and keep the latest
        // line of each distinct id.
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.entries.len());
        let mut i = 0;
        while i < self.entries.len() {
            let h = self.entries[i].0;
            let mut j = i + 1;
            while j < self.entries.len() && self.entries[j].0 == h {
                j += 1;
            }
            if j == i + 1 {
                out.push(self.entries[i]);
            } else {
                let mut latest: Vec<(String, u64)> = Vec::new();
                for &(_, off) in &self.entries[i..j] {
                    let id = set.read(off)?.id.unwrap_or_default();
                    match latest.iter_mut().find(|(seen, _)| *seen == id) {
                        Some(e) => e.1 = off,
                        None => latest.push((id, off)),
                    }
                }
                out.extend(latest.into_iter().map(|(_, off)| (h, off)));
            }
            i = j;
        }
        out.shrink_to_fit();
        Ok(IdSet {
            len: AtomicUsize::new(out.len()),
            sorted: out,
            ..set
        })
    }
}

impl IdSet {
    pub fn empty() -> Self {
        Self {
            sorted: Vec::new(),
            added: Mutex::new(Added::default()),
            log: OnceLock::new(),
            len: AtomicUsize::new(0),
        }
    }

    pub fn builder() -> IdSetBuilder {
        IdSetBuilder::default()
    }

    /// Ids in the set.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The commit line at `offset`.
    fn read(&self, offset: u64) -> std::io::Result<CommitRef> {
        use std::os::unix::fs::FileExt;
        let Some(f) = self.log.get() else {
            return Err(std::io::Error::other("no commit log"));
        };
        // Commit lines are short (an id, a hash and a few lengths); read in
        // growing steps for the rare long id.
        let mut buf = vec![0u8; 512];
        let mut have = 0;
        loop {
            let n = f.read_at(&mut buf[have..], offset + have as u64)?;
            have += n;
            if let Some(end) = buf[..have].iter().position(|&b| b == b'\n') {
                return serde_json::from_slice(&buf[..end]).map_err(std::io::Error::other);
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "commit line cut short",
                ));
            }
            if have == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
        }
    }

    /// Offsets that may hold the commit line of an id hashing to `h`:
    /// `(index in the sorted part, or None for an addition, offset)`.
    fn candidates(&self, h: u64) -> Vec<(Option<usize>, u64)> {
        let start = self.sorted.partition_point(|e| e.0 < h);
        let end = start + self.sorted[start..].partition_point(|e| e.0 == h);
        let mut out: Vec<(Option<usize>, u64)> =
            (start..end).map(|i| (Some(i), self.sorted[i].1)).collect();
        let added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&off) = added.first.get(&h) {
            out.push((None, off));
            out.extend(added.more.iter().filter(|e| e.0 == h).map(|e| (None, e.1)));
        }
        out.retain(|c| c.1 != REMOVED);
        out
    }

    /// Where `id`'s latest commit line is, and that line, if `id` is in
    /// the set.
    fn find(&self, id: &str) -> Option<(Option<usize>, CommitRef)> {
        if self.is_empty() {
            return None;
        }
        // A line that cannot be read back (the log changed under the run)
        // does not confirm the hit: the item is done again rather than lost.
        self.candidates(id_hash(id))
            .into_iter()
            .find_map(|(slot, off)| match self.read(off) {
                Ok(c) if c.id.as_deref() == Some(id) => Some((slot, c)),
                _ => None,
            })
    }

    pub fn contains(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// `id`'s latest commit line, if it is in the set.
    pub fn commit_of(&self, id: &str) -> Option<CommitRef> {
        self.find(id).map(|(_, c)| c)
    }

    /// Refresh: goes through the ids of the input (`ids`); an id whose
    /// commit line `changed` says is out of date is taken out of the set,
    /// and so is every id not in the input at all (1 bit per id while this
    /// runs). Returns how many were out of date.
    pub fn retain_input<E>(
        &mut self,
        ids: impl Iterator<Item = Result<(String, String), E>>,
        mut changed: impl FnMut(&str, &CommitRef) -> bool,
    ) -> Result<u64, E> {
        let mut seen = vec![0u64; self.sorted.len().div_ceil(64)];
        let mut stale = 0;
        for item in ids {
            let (id, text) = item?;
            let Some((Some(slot), c)) = self.find(&id) else {
                continue;
            };
            if changed(&text, &c) {
                stale += 1;
            } else {
                seen[slot / 64] |= 1 << (slot % 64);
            }
        }
        let mut kept = 0;
        for (i, e) in self.sorted.iter_mut().enumerate() {
            if seen[i / 64] & (1 << (i % 64)) == 0 {
                e.1 = REMOVED;
            } else {
                kept += 1;
            }
        }
        self.len.store(kept, Ordering::Relaxed);
        Ok(stale)
    }

    /// Adds `id`, committed at `offset` of the commit log at `log`, during
    /// this invocation (a batch run's pass).
    pub fn insert(&self, id: &str, offset: u64, log: &Path) -> std::io::Result<()> {
        if self.contains(id) {
            return Ok(());
        }
        if self.log.get().is_none() {
            let _ = self.log.set(File::open(log)?);
        }
        let h = id_hash(id);
        let mut guard = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let added = &mut *guard;
        match added.first.entry(h) {
            std::collections::hash_map::Entry::Occupied(_) => added.more.push((h, offset)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(offset);
            }
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log(lines: &[&str]) -> (tempfile::NamedTempFile, Vec<u64>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for l in lines {
            offsets.push(at);
            writeln!(f, "{l}").unwrap();
            at += l.len() as u64 + 1;
        }
        (f, offsets)
    }

    #[test]
    fn hits_are_confirmed_against_the_log_and_the_latest_line_wins() {
        let (f, off) = log(&[
            r#"{"id":null,"len":[0]}"#,
            r#"{"id":"a","h":"1111","len":[1]}"#,
            r#"{"id":"b","h":"2222","len":[2]}"#,
            r#"{"id":"a","h":"3333","len":[3]}"#,
        ]);
        let mut b = IdSet::builder();
        b.push("a", off[1]);
        b.push("b", off[2]);
        b.push("a", off[3]);
        let mut set = b.finish(f.path()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("a") && set.contains("b"));
        assert!(!set.contains("c"));
        assert_eq!(set.commit_of("a").unwrap().h.as_deref(), Some("3333"));
        // Refresh: "a" changed; "b" is no longer in the input.
        let input = ["a", "c"].map(|s| Ok::<_, ()>((s.to_string(), String::new())));
        let stale = set
            .retain_input(input.into_iter(), |_, c| c.h.as_deref() == Some("3333"))
            .unwrap();
        assert_eq!(stale, 1);
        assert!(!set.contains("a") && !set.contains("b"));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_shared_hash_does_not_confuse_two_ids() {
        // Two entries under one hash: only the one whose line names the id
        // answers for it.
        let (f, off) = log(&[r#"{"id":"x","len":[0]}"#, r#"{"id":"y","len":[0]}"#]);
        let h = id_hash("x");
        let b = IdSetBuilder {
            entries: vec![(h, off[0]), (h, off[1])],
        };
        let set = b.finish(f.path()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("x"));
        // "y" does not hash to h, so it is not found under it.
        assert!(!set.contains("y"));
        assert_eq!(set.candidates(h).len(), 2);
    }

    #[test]
    fn ids_added_during_a_run_are_found() {
        let (f, off) = log(&[r#"{"id":"p","len":[0]}"#]);
        let set = IdSet::empty();
        assert!(!set.contains("p"));
        set.insert("p", off[0], f.path()).unwrap();
        assert!(set.contains("p"));
        assert_eq!(set.len(), 1);
    }
}
