//! The prefix KV cache: key/value states of recently finished sequences,
//! bounded in bytes and evicted least-recently-used first.
//!
//! A request starts from the longest prefix of its prompt tokens that some
//! entry holds, so only the new tokens are processed: a critique request
//! extends the answer's conversation, a revision extends the critique's, and
//! every prompt of a run shares the system message and few-shot block. The
//! keys and values of a position depend only on the tokens up to it, so a
//! sequence continued from the cache computes exactly what it would have
//! computed from scratch.
//!
//! An entry's positions are frozen into shared segments when it comes in
//! (see [`Session::freeze`]), so the sequences continued from it, and the
//! longer entries they leave behind, share those positions instead of each
//! holding a copy; the bound counts each segment once.

use std::collections::HashSet;

use crate::model::Session;

struct Entry {
    sess: Session,
    last_used: u64,
}

/// Finished sequences' KV states, at most `limit` bytes of them.
pub struct PrefixCache {
    entries: Vec<Entry>,
    bytes: usize,
    limit: usize,
    clock: u64,
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(limit: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    /// Bytes of KV data held now; never above [`PrefixCache::limit`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The longest prefix of `tokens` some entry holds (at most `max_len`),
    /// without marking anything as used.
    pub fn longest_len(&self, tokens: &[u32], max_len: usize) -> usize {
        self.entries
            .iter()
            .map(|e| common_prefix(e.sess.tokens(), tokens).min(max_len))
            .max()
            .unwrap_or(0)
    }

    /// The entry sharing the longest prefix with `tokens`, and that length
    /// (at most `max_len`). Marks the entry as used.
    pub fn longest(&mut self, tokens: &[u32], max_len: usize) -> Option<(&Session, usize)> {
        let (i, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(e.sess.tokens(), tokens).min(max_len)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if n == 0 {
            return None;
        }
        self.clock += 1;
        self.entries[i].last_used = self.clock;
        Some((&self.entries[i].sess, n))
    }

    /// Bytes the entries hold in memory: their own positions, and each
    /// shared segment they refer to once.
    fn held(&self) -> usize {
        let mut seen = HashSet::new();
        let mut bytes = 0;
        for e in &self.entries {
            bytes += e.sess.own_bytes();
            for (seg, size) in e.sess.segments() {
                if seen.insert(seg) {
                    bytes += size;
                }
            }
        }
        bytes
    }

    /// Keeps `sess` for later requests. Entries it extends are dropped (it
    /// holds all they hold); if an entry already extends it, that entry is
    /// only marked as used. Least recently used entries go until it fits; a
    /// session larger than the whole cache is not kept.
    pub fn insert(&mut self, mut sess: Session) {
        if sess.is_empty() || sess.bytes() > self.limit {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let tokens = sess.tokens();
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.sess.len() >= tokens.len() && e.sess.tokens().starts_with(tokens))
        {
            e.last_used = clock;
            return;
        }
        self.entries
            .retain(|e| !tokens.starts_with(e.sess.tokens()));
        // A finished sequence holds room to grow; the cache holds only the
        // positions, most of them in segments later sequences can share.
        sess.freeze(0);
        sess.shrink_to_fit();
        self.entries.push(Entry {
            sess,
            last_used: clock,
        });
        self.bytes = self.held();
        while self.bytes > self.limit {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
            self.bytes = self.held();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvRows;

    /// A session of `tokens` with one layer of `width` floats per position.
    fn sess(tokens: &[u32], width: usize) -> Session {
        let fill = |t: &u32| vec![*t as u16; width];
        let rows: Vec<u16> = tokens.iter().flat_map(fill).collect();
        Session {
            shared: Vec::new(),
            k: vec![KvRows::from_slice(&rows, 0)],
            v: vec![KvRows::from_slice(&rows, 0)],
            tokens: tokens.to_vec(),
            cap: 64 * width,
        }
    }

    #[test]
    fn the_longest_shared_prefix_wins_and_leaves_a_token_to_process() {
        let mut c = PrefixCache::new(1 << 20);
        c.insert(sess(&[1, 2, 3], 4));
        c.insert(sess(&[1, 2, 9, 9, 9], 4));
        let (s, n) = c.longest(&[1, 2, 9, 9, 7], 4).unwrap();
        assert_eq!((s.tokens(), n), (&[1, 2, 9, 9, 9][..], 4));
        // The whole request is cached: one token must still be processed.
        let (_, n) = c.longest(&[1, 2, 3], 2).unwrap();
        assert_eq!(n, 2);
        assert!(c.longest(&[5, 1, 2], 2).is_none());
        // A copied prefix holds exactly that many positions.
        let (s, n) = c.longest(&[1, 2, 3, 4], 3).unwrap();
        let p = s.prefix(n);
        assert_eq!(p.tokens(), &[1, 2, 3]);
        assert_eq!(p.k[0].as_slice(), [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);
    }

    #[test]
    fn a_chain_keeps_one_entry_for_its_longest_sequence() {
        let mut c = PrefixCache::new(1 << 20);
        c.insert(sess(&[1, 2], 4));
        c.insert(sess(&[1, 2, 3, 4], 4));
        c.insert(sess(&[1, 2, 3], 4));
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), sess(&[1, 2, 3, 4], 4).bytes());
    }

    #[test]
    fn entries_sharing_frozen_positions_count_them_once() {
        let per = sess(&[0], 4).bytes();
        let mut c = PrefixCache::new(1 << 20);
        let a: Vec<u32> = (0..300).collect();
        c.insert(sess(&a, 4));
        assert_eq!(c.bytes(), 300 * per);
        // A request sharing 280 of those positions, then 30 of its own:
        // the first 256 stay in the segment frozen when `a` came in.
        let b: Vec<u32> = (0..280).chain(1000..1030).collect();
        let (s, n) = c.longest(&b, b.len() - 1).unwrap();
        assert_eq!(n, 280);
        let mut grown = s.prefix(n);
        for l in grown.k.iter_mut().chain(grown.v.iter_mut()) {
            l.push(30 * 4, 0).fill(7);
        }
        grown.tokens.extend(1000..1030);
        assert_eq!(grown.bytes(), 310 * per);
        c.insert(grown);
        assert_eq!(c.len(), 2);
        // One segment of 256 positions, 44 of `a`'s own and 54 of `b`'s.
        assert_eq!(c.bytes(), (256 + 44 + 54) * per);
    }

    #[test]
    fn the_cache_never_exceeds_its_bound_and_evicts_least_recently_used() {
        let per = sess(&[0], 8).bytes();
        let limit = 10 * per;
        let mut c = PrefixCache::new(limit);
        for i in 0..50u32 {
            let len = 1 + (i as usize * 7) % 6;
            let toks: Vec<u32> = (0..len as u32).map(|t| 1000 * (i + 1) + t).collect();
            c.insert(sess(&toks, 8));
            // Touch the very first entry so it is the most recently used.
            c.longest(&[1000, 1001, 1002], 3);
            assert!(c.bytes() <= limit, "{} > {limit}", c.bytes());
            let held: usize = c.entries.iter().map(|e| e.sess.bytes()).sum();
            assert_eq!(held, c.bytes());
        }
        assert!(
            c.longest(&[1000, 1001], 2).is_some(),
            "the used entry was evicted"
        );
        // Larger than the whole cache: not kept, nothing evicted for it.
        let before = c.len();
        c.insert(sess(&(0..11).collect::<Vec<_>>(), 8));
        assert_eq!(c.len(), before);
    }
}
