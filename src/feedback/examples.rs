//! In-context examples at inference: the `k` examples of a bank whose
//! queries best match a query, placed before it as user/assistant turns.
//!
//! Matching is Okapi BM25 over lower-cased alphanumeric words (k1 = 1.2,
//! b = 0.75, the non-negative idf `ln(1 + (N − df + 0.5) / (df + 0.5))`),
//! the standard lexical ranking; ties keep bank order, and an example whose
//! query is the query itself is never shown (it would hand over the
//! answer). The best match comes first, as in DRPO's reference
//! implementation. Used by `cai optimize` (search and `eval`) and meant for
//! every command that answers with a bank of optimized examples
//! (`examples.json` of `cai optimize`): [`Retriever::place`] is the one
//! call.

use std::collections::HashMap;

use crate::input::queries::Example;
use crate::provider::Message;

const K1: f64 = 1.2;
const B: f64 = 0.75;

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A bank of examples with its BM25 index over their queries.
#[derive(Clone, Debug, Default)]
pub struct Retriever {
    examples: Vec<Example>,
    /// Term counts per example query.
    tf: Vec<HashMap<String, u32>>,
    len: Vec<usize>,
    /// Example queries holding each term.
    df: HashMap<String, usize>,
    avg_len: f64,
}

impl Retriever {
    pub fn new(examples: Vec<Example>) -> Self {
        let mut tf = Vec::with_capacity(examples.len());
        let mut len = Vec::with_capacity(examples.len());
        let mut df: HashMap<String, usize> = HashMap::new();
        for e in &examples {
            let mut counts: HashMap<String, u32> = HashMap::new();
            let mut n = 0;
            for w in words(&e.query) {
                *counts.entry(w).or_default() += 1;
                n += 1;
            }
            for w in counts.keys() {
                *df.entry(w.clone()).or_default() += 1;
            }
            tf.push(counts);
            len.push(n);
        }
        let avg_len = len.iter().sum::<usize>() as f64 / len.len().max(1) as f64;
        Self {
            examples,
            tf,
            len,
            df,
            avg_len,
        }
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The BM25 score of example `i` for the words of a query.
    fn score(&self, i: usize, query: &[String]) -> f64 {
        let n = self.examples.len() as f64;
        let norm = 1.0 - B + B * self.len[i] as f64 / self.avg_len.max(1e-9);
        query
            .iter()
            .map(|w| {
                let Some(&tf) = self.tf[i].get(w) else {
                    return 0.0;
                };
                let df = self.df.get(w).copied().unwrap_or(0) as f64;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let tf = f64::from(tf);
                idf * tf * (K1 + 1.0) / (tf + K1 * norm)
            })
            .sum()
    }

    /// Indices of the `k` best matches for `query`, best first.
    pub fn top(&self, query: &str, k: usize) -> Vec<usize> {
        if k == 0 {
            return Vec::new();
        }
        let q: Vec<String> = words(query).collect();
        let mut ranked: Vec<(f64, usize)> = (0..self.examples.len())
            .filter(|&i| self.examples[i].query != query)
            .map(|i| (self.score(i, &q), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.into_iter().take(k).map(|(_, i)| i).collect()
    }

    /// The `k` best matches for `query` as user/assistant turns.
    pub fn turns(&self, query: &str, k: usize) -> Vec<Message> {
        self.top(query, k)
            .into_iter()
            .flat_map(|i| {
                let e = &self.examples[i];
                [
                    Message::user(e.query.clone()),
                    Message::assistant(e.answer.clone()),
                ]
            })
            .collect()
    }

    /// `messages` with the `k` best matches for its last user turn placed
    /// just before that turn (after any system message and earlier turns).
    pub fn place(&self, mut messages: Vec<Message>, k: usize) -> Vec<Message> {
        let Some(at) = messages
            .iter()
            .rposition(|m| m.role == crate::provider::Role::User)
        else {
            return messages;
        };
        let turns = self.turns(&messages[at].content, k);
        messages.splice(at..at, turns);
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank(queries: &[&str]) -> Retriever {
        Retriever::new(
            queries
                .iter()
                .enumerate()
                .map(|(i, q)| Example {
                    query: q.to_string(),
                    answer: format!("answer {i}"),
                })
                .collect(),
        )
    }

    #[test]
    fn bm25_prefers_rare_shared_words_and_skips_the_query_itself() {
        let r = bank(&[
            "how do I bake bread",
            "what is the capital of France",
            "what is the capital of Spain",
            "what is the boiling point of water",
            "what is the capital of Italy",
        ]);
        // "capital" and "spain" are rarer than "what"/"is"/"the".
        assert_eq!(r.top("capital city of Spain?", 2), [2, 1]);
        // The query itself is never its own example.
        assert_eq!(r.top("what is the capital of Italy", 1), [1]);
        assert_eq!(r.top("bread", 1), [0]);
        // No shared word: bank order.
        assert_eq!(r.top("zzz", 2), [0, 1]);
        assert!(r.top("bread", 0).is_empty());
    }

    #[test]
    fn examples_are_placed_as_turns_before_the_last_user_turn() {
        let r = bank(&["bake bread", "capital of Spain"]);
        let got = r.place(
            vec![Message::system("S"), Message::user("capital of France")],
            1,
        );
        let texts: Vec<&str> = got.iter().map(|m| &*m.content).collect();
        assert_eq!(
            texts,
            ["S", "capital of Spain", "answer 1", "capital of France"]
        );
        assert_eq!(got[2].role, crate::provider::Role::Assistant);
    }
}
