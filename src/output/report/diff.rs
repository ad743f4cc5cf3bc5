//! Word-level differences between an initial answer and its final revision.
//!
//! Two tools for two jobs. [`word_diff`] aligns the texts for display (an
//! LCS table over word and whitespace tokens, after trimming the common
//! prefix and suffix); it runs on the sampled rows only. [`edit_share`]
//! measures how much of the text a revision changed for *every* row of a
//! 100k-row run, so it only needs the LCS length, which a bit-parallel
//! algorithm (Hyyrö 2004) gives in O(n·m/64) word operations.

use std::collections::HashMap;

/// What a span of text is in the diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Same,
    Removed,
    Added,
}

/// One span of the diff, borrowed from the old (removed) or new text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span<'a> {
    pub change: Change,
    pub text: &'a str,
}

/// Above this many LCS cells (old × new tokens after trimming) the middle
/// is shown as one removal and one addition rather than aligned.
const MAX_CELLS: usize = 4_000_000;

/// Runs of whitespace and of non-whitespace, in order; concatenated they
/// give back `s`.
pub fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let space = c.is_whitespace();
        if in_space.is_some_and(|w| w != space) {
            out.push(&s[start..i]);
            start = i;
        }
        in_space = Some(space);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The spans that turn `old` into `new`, one per token (the page groups
/// neighbours of one kind into one `<del>`/`<ins>`). The second value is false when the texts were too long to
/// align and the changed middle is shown whole.
pub fn word_diff<'a>(old: &'a str, new: &'a str) -> (Vec<Span<'a>>, bool) {
    let a = tokens(old);
    let b = tokens(new);
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out = Spans::default();
    for t in &a[..prefix] {
        out.push(Change::Same, t);
    }
    let aligned = am.len().saturating_mul(bm.len()) <= MAX_CELLS;
    if aligned {
        align(am, bm, &mut out);
    } else {
        for t in am {
            out.push(Change::Removed, t);
        }
        for t in bm {
            out.push(Change::Added, t);
        }
    }
    for t in &a[a.len() - suffix..] {
        out.push(Change::Same, t);
    }
    (out.0, aligned)
}

#[derive(Default)]
struct Spans<'a>(Vec<Span<'a>>);

impl<'a> Spans<'a> {
    fn push(&mut self, change: Change, text: &'a str) {
        self.0.push(Span { change, text });
    }
}

/// LCS table alignment of the trimmed middles (both small enough).
fn align<'a>(a: &[&'a str], b: &[&'a str], out: &mut Spans<'a>) {
    let (n, m) = (a.len(), b.len());
    let w = m + 1;
    // table[i][j] = LCS of a[i..] and b[j..]; min(n, m) ≤ 2000 under
    // MAX_CELLS, so u16 holds it.
    let mut t = vec![0u16; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i * w + j] = if a[i] == b[j] {
                t[(i + 1) * w + j + 1] + 1
            } else {
                t[(i + 1) * w + j].max(t[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Change::Same, a[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || t[(i + 1) * w + j] >= t[i * w + j + 1]) {
            // Removals before additions: "old → new" reads left to right.
            out.push(Change::Removed, a[i]);
            i += 1;
        } else {
            out.push(Change::Added, b[j]);
            j += 1;
        }
    }
}

/// Share of words a revision removed or added: (removed + added) /
/// (words before + words after), from the exact word-level LCS. 0 when
/// nothing changed, 1 when no word survived; 0 for two empty texts.
pub fn edit_share(old: &str, new: &str) -> f64 {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let a: Vec<u32> = old
        .split_whitespace()
        .map(|w| {
            let next = ids.len() as u32;
            *ids.entry(w).or_insert(next)
        })
        .collect();
    let known = ids.len() as u32;
    // Words only in the new text never match: one shared "absent" id.
    let b: Vec<u32> = new
        .split_whitespace()
        .map(|w| ids.get(w).copied().unwrap_or(known))
        .collect();
    let total = a.len() + b.len();
    if total == 0 {
        return 0.0;
    }
    let lcs = lcs_len(&a, &b, known as usize);
    (total - 2 * lcs) as f64 / total as f64
}

/// Length of the longest common subsequence of `a` and `b`, whose symbols
/// are `0..symbols` in `a` (anything ≥ `symbols` in `b` matches nothing):
/// Hyyrö's bit-vector recurrence V' = (V + (V & M)) | (V & !M), with the
/// LCS length the number of zero bits among the first |a| bits of V.
fn lcs_len(a: &[u32], b: &[u32], symbols: usize) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let words = a.len().div_ceil(64);
    let mut peq = vec![0u64; symbols * words];
    for (i, &s) in a.iter().enumerate() {
        peq[s as usize * words + i / 64] |= 1 << (i % 64);
    }
    let mut v = vec![u64::MAX; words];
    for &s in b {
        if s as usize >= symbols {
            continue;
        }
        let m = &peq[s as usize * words..(s as usize + 1) * words];
        let mut carry = false;
        for (vw, &mw) in v.iter_mut().zip(m) {
            let u = *vw & mw;
            let (sum, c1) = vw.overflowing_add(u);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            carry = c1 || c2;
            *vw = sum | (*vw & !mw);
        }
    }
    let full = a.len() / 64;
    let mut zeros: usize = v[..full].iter().map(|w| w.count_zeros() as usize).sum();
    let rest = a.len() % 64;
    if rest > 0 {
        let mask = (1u64 << rest) - 1;
        zeros += (!v[full] & mask).count_ones() as usize;
    }
    zeros
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rebuild(spans: &[Span], keep: Change) -> String {
        spans
            .iter()
            .filter(|s| s.change == Change::Same || s.change == keep)
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn tokens_split_words_from_whitespace_losslessly() {
        let s = "  Hello,  world!\n\tbye ";
        let t = tokens(s);
        assert_eq!(t, ["  ", "Hello,", "  ", "world!", "\n\t", "bye", " "]);
        assert_eq!(t.concat(), s);
        assert!(tokens("").is_empty());
    }

    #[test]
    fn diff_marks_changed_words_and_rebuilds_both_texts() {
        let old = "The cat sat on the mat.";
        let new = "The big cat sat on a mat.";
        let (spans, aligned) = word_diff(old, new);
        assert!(aligned);
        assert_eq!(rebuild(&spans, Change::Removed), old);
        assert_eq!(rebuild(&spans, Change::Added), new);
        let words = |c: Change| -> Vec<&str> {
            spans
                .iter()
                .filter(|s| s.change == c && !s.text.trim().is_empty())
                .map(|s| s.text)
                .collect()
        };
        assert_eq!(words(Change::Added), ["big", "a"]);
        assert_eq!(words(Change::Removed), ["the"]);
    }

    #[test]
    fn identical_texts_have_no_changes() {
        let (spans, _) = word_diff("same words here", "same words here");
        assert!(spans.iter().all(|s| s.change == Change::Same));
        assert_eq!(edit_share("same words here", "same  words\nhere"), 0.0);
    }

    #[test]
    fn edit_share_counts_removed_and_added_words() {
        // LCS = 2 of 3 + 3 words: one removed, one added → 2/6.
        assert!((edit_share("a b c", "a x c") - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(edit_share("a b", "c d"), 1.0);
        assert_eq!(edit_share("", ""), 0.0);
        assert_eq!(edit_share("", "new text"), 1.0);
    }

    fn lcs_dp(a: &[u32], b: &[u32]) -> usize {
        let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                t[i][j] = if a[i] == b[j] {
                    t[i + 1][j + 1] + 1
                } else {
                    t[i + 1][j].max(t[i][j + 1])
                };
            }
        }
        t[0][0]
    }

    #[test]
    fn bit_parallel_lcs_agrees_with_the_table_across_word_boundaries() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(0..200);
            let m = rng.random_range(0..200);
            let k = rng.random_range(1..8u32);
            let a: Vec<u32> = (0..n).map(|_| rng.random_range(0..k)).collect();
            let b: Vec<u32> = (0..m).map(|_| rng.random_range(0..k + 2)).collect();
            assert_eq!(lcs_len(&a, &b, k as usize), lcs_dp(&a, &b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn diff_of_random_texts_rebuilds_both_sides() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let words = ["a", "b", "c", "dd", " ", "  ", "\n", "é"];
        for _ in 0..200 {
            let mk = |rng: &mut rand_chacha::ChaCha8Rng| -> String {
                (0..rng.random_range(0..40))
                    .map(|_| words[rng.random_range(0..words.len())])
                    .collect()
            };
            let (old, new) = (mk(&mut rng), mk(&mut rng));
            let (spans, _) = word_diff(&old, &new);
            assert_eq!(rebuild(&spans, Change::Removed), old);
            assert_eq!(rebuild(&spans, Change::Added), new);
        }
    }
}
