//! Picking a prompt's chosen/rejected pair among its candidates in
//! `generate`: by the judge (`--preference judge`) or by a heuristic score
//! (`--select heuristic`, no requests).
//!
//! The candidates are the sampled initial answers (`--samples N`, the first
//! of which went through critique→revision) followed by the final revision,
//! identical texts counted once: M = N + 1 when all differ. With N = 1 this
//! is exactly "final revision vs initial answer".
//!
//! **Judge tournament**: a full round robin. Every unordered pair (i, j),
//! i < j, is judged once (both orders, every judge — see [`crate::feedback::judge`]),
//! giving P(i beats j). A candidate's score is its mean win probability over
//! its M − 1 comparisons; chosen = highest score, rejected = lowest (the
//! earlier candidate wins an exact draw). Judge requests per prompt, with
//! J judges and log-probabilities available:
//! `2 · J · M(M−1)/2` (N = 4 → M = 5 → 20 per judge). Sampled verdicts
//! multiply this by up to K requests per order where `n` is not honoured.
//! The pair is a tie when chosen − rejected ≤ 2 · `--tie-margin` (for M = 2
//! that is |P − 0.5| ≤ margin); `--ties keep` writes it flagged
//! (`"tie": true` in `preference.jsonl`), `--ties drop` leaves it out.
//!
//! **Heuristic score** in [0, 1] = 0.5 · length + 0.2 · diversity + 0.3 · format:
//! * length: 1 for 30–300 words; below, words / 30; above, falling linearly
//!   to 0 at 1000 words;
//! * diversity: 1 − mean Jaccard similarity of the candidate's set of
//!   lower-cased words with each other candidate's;
//! * format: share of four checks passed — ends with `.`, `!`, `?`, `)`,
//!   a closing code fence or quote; no leading `Answer:`/`Revision:`/
//!   `Critique:` label; an even number of ``` fences; no line repeated.

use std::collections::HashSet;
use std::sync::Arc;

use crate::engine::ItemError;
use crate::feedback::judge::{Comparison, Judge};

/// A chosen/rejected pair picked among a prompt's candidates.
#[derive(Clone, Debug)]
pub struct JudgedPair {
    pub chosen: String,
    pub rejected: String,
    pub chosen_score: f64,
    pub rejected_score: f64,
    /// The comparison principle of the chosen-vs-rejected comparison
    /// (empty for `--select heuristic`).
    pub principle: String,
    /// The scores are within the tie margin.
    pub tie: bool,
    /// `--ties keep`: a tie is still written (flagged).
    pub keep_tie: bool,
    pub comparisons: Vec<Comparison>,
}

/// The judge could not decide a prompt's pair (every comparison failed or
/// was unusable); the prompt keeps its SFT row and the pair goes to the
/// rejects with `reason`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Undecided {
    pub reason: String,
}

/// How `generate` picks pairs among candidates.
pub enum Selector {
    Judge { judge: Arc<Judge>, keep_ties: bool },
    Heuristic,
}

impl Selector {
    /// Picks the pair among a prompt's `candidates` (distinct texts):
    /// `None` when there are fewer than two, `Some(Err(_))` when the
    /// judge could not decide (the prompt keeps its SFT row).
    pub async fn pick(
        &self,
        id: &str,
        prompt: &str,
        candidates: &[String],
    ) -> Result<Option<Result<JudgedPair, Undecided>>, ItemError> {
        if candidates.len() < 2 {
            return Ok(None);
        }
        Ok(Some(match self {
            Selector::Heuristic => Ok(heuristic_pair(candidates)),
            Selector::Judge { judge, keep_ties } => {
                match tournament(judge, id, prompt, candidates).await {
                    Ok(mut pair) => {
                        pair.keep_tie = *keep_ties;
                        Ok(pair)
                    }
                    Err(ItemError::Reject(reason)) => Err(Undecided { reason }),
                    Err(e) => return Err(e),
                }
            }
        }))
    }
}

/// Round robin over the candidates; see the module docs.
async fn tournament(
    judge: &Judge,
    id: &str,
    prompt: &str,
    candidates: &[String],
) -> Result<JudgedPair, ItemError> {
    let m = candidates.len();
    let mut score = vec![0.0f64; m];
    let mut comparisons: Vec<Comparison> = Vec::with_capacity(m * (m - 1) / 2);
    for i in 0..m {
        for j in i + 1..m {
            let c = judge
                .compare(
                    id,
                    &format!("{i}:{j}"),
                    prompt,
                    (i, &candidates[i]),
                    (j, &candidates[j]),
                )
                .await?;
            score[i] += c.p;
            score[j] += 1.0 - c.p;
            comparisons.push(c);
        }
    }
    for s in &mut score {
        *s /= (m - 1) as f64;
    }
    let (best, worst) = extremes(&score);
    let principle = comparisons
        .iter()
        .find(|c| (c.x, c.y) == (best.min(worst), best.max(worst)))
        .map(|c| c.principle.clone())
        .unwrap_or_default();
    Ok(JudgedPair {
        chosen: candidates[best].clone(),
        rejected: candidates[worst].clone(),
        chosen_score: score[best],
        rejected_score: score[worst],
        principle,
        tie: score[best] - score[worst] <= 2.0 * judge.opts.tie_margin + 1e-9,
        keep_tie: true,
        comparisons,
    })
}

/// Indices of the highest and the lowest score (first wins a draw for the
/// highest, last for the lowest, so they differ when m ≥ 2).
fn extremes(score: &[f64]) -> (usize, usize) {
    let mut best = 0;
    for (i, s) in score.iter().enumerate() {
        if *s > score[best] {
            best = i;
        }
    }
    let mut worst = score.len() - 1;
    for (i, s) in score.iter().enumerate().rev() {
        if *s < score[worst] {
            worst = i;
        }
    }
    if worst == best {
        worst = if best == 0 { score.len() - 1 } else { 0 };
    }
    (best, worst)
}

fn words(s: &str) -> HashSet<String> {
    s.split_whitespace().map(|w| w.to_lowercase()).collect()
}

/// The heuristic score of each candidate; see the module docs.
pub fn heuristic_scores(candidates: &[String]) -> Vec<f64> {
    let sets: Vec<HashSet<String>> = candidates.iter().map(|c| words(c)).collect();
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let n = c.split_whitespace().count() as f64;
            let length = if n < 30.0 {
                n / 30.0
            } else if n <= 300.0 {
                1.0
            } else {
                (1.0 - (n - 300.0) / 700.0).max(0.0)
            };
            let others = candidates.len().saturating_sub(1);
            let diversity = if others == 0 {
                1.0
            } else {
                let sim: f64 = (0..candidates.len())
                    .filter(|&j| j != i)
                    .map(|j| {
                        let inter = sets[i].intersection(&sets[j]).count() as f64;
                        let union = sets[i].union(&sets[j]).count() as f64;
                        if union == 0.0 {
                            1.0
                        } else {
                            inter / union
                        }
                    })
                    .sum();
                1.0 - sim / others as f64
            };
            0.5 * length + 0.2 * diversity + 0.3 * format_score(c)
        })
        .collect()
}

fn format_score(c: &str) -> f64 {
    let t = c.trim();
    let ends = t.ends_with(['.', '!', '?', ')', '"', '\'']) || t.ends_with("```");
    let lower = t.to_lowercase();
    let unlabelled = !["answer:", "revision:", "critique:"]
        .iter()
        .any(|l| lower.starts_with(l));
    let fences = t.matches("```").count().is_multiple_of(2);
    let mut seen = HashSet::new();
    let no_repeats = t
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .all(|l| seen.insert(l));
    [ends, unlabelled, fences, no_repeats]
        .iter()
        .filter(|b| **b)
        .count() as f64
        / 4.0
}

fn heuristic_pair(candidates: &[String]) -> JudgedPair {
    let score = heuristic_scores(candidates);
    let (best, worst) = extremes(&score);
    JudgedPair {
        chosen: candidates[best].clone(),
        rejected: candidates[worst].clone(),
        chosen_score: score[best],
        rejected_score: score[worst],
        principle: String::new(),
        tie: false,
        keep_tie: true,
        comparisons: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heuristic_prefers_a_complete_answer_of_reasonable_length() {
        let good = format!("{} end.", "word ".repeat(60));
        let short = "Revision: ok".to_string();
        let s = heuristic_scores(&[short.clone(), good.clone()]);
        assert!(s[1] > s[0], "{s:?}");
        let p = heuristic_pair(&[short.clone(), good.clone()]);
        assert_eq!((p.chosen, p.rejected), (good, short));
    }

    #[test]
    fn extremes_differ_even_when_all_scores_draw() {
        assert_eq!(extremes(&[0.5, 0.5, 0.5]), (0, 2));
        assert_eq!(extremes(&[0.2, 0.9, 0.1]), (1, 2));
    }
}
