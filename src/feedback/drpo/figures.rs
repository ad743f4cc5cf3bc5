//! `cai optimize eval`: per-prompt figures (mean reward, per-aspect means,
//! how many scores came from log-probabilities) and every pairwise
//! comparison on the queries both prompts were scored on, with a Wilson
//! score interval (95 %) of the win rate, ties counted as half.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Evaluation, ScoreMethod};

/// `cai optimize eval`: the figures of one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct PromptFigures {
    pub file: String,
    pub scored: usize,
    /// Of `scored`: those scored by first-token log-probabilities.
    pub scored_by_logprobs: usize,
    pub dropped: usize,
    pub mean: Option<f64>,
    /// Mean score per aspect, over the queries that chose it.
    pub aspects: BTreeMap<String, f64>,
}

/// Pairwise comparison of two prompts on the queries both were scored on.
#[derive(Clone, Debug, Serialize)]
pub struct Pairwise {
    pub a: String,
    pub b: String,
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// (wins + ties/2) / n.
    pub win_rate: Option<f64>,
    /// Wilson score interval (95 %) of the win rate, ties counted as half.
    pub ci95: Option<(f64, f64)>,
}

/// Wilson score interval at 95 % for `p` over `n` trials.
pub fn wilson(p: f64, n: usize) -> (f64, f64) {
    let z = 1.959_964_f64;
    let n = n as f64;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Per-prompt figures and every pair, from `results[prompt][query]`.
pub fn figures(
    files: &[String],
    results: &[Vec<Option<Evaluation>>],
) -> (Vec<PromptFigures>, Vec<Pairwise>) {
    let mut per = Vec::new();
    for (f, rs) in files.iter().zip(results) {
        let mut by: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut sum = 0.0;
        let mut scored = 0;
        let mut by_logprobs = 0;
        for ev in rs.iter().flatten() {
            scored += 1;
            if ev.scores.iter().any(|s| s.method == ScoreMethod::Logprobs) {
                by_logprobs += 1;
            }
            sum += ev.reward;
            for s in &ev.scores {
                let e = by.entry(s.aspect.clone()).or_default();
                e.0 += s.score;
                e.1 += 1;
            }
        }
        per.push(PromptFigures {
            file: f.clone(),
            scored,
            scored_by_logprobs: by_logprobs,
            dropped: rs.len() - scored,
            mean: (scored > 0).then(|| sum / scored as f64),
            aspects: by
                .into_iter()
                .map(|(k, (s, n))| (k, s / n as f64))
                .collect(),
        });
    }
    let mut pairs = Vec::new();
    for i in 0..files.len() {
        for j in i + 1..files.len() {
            let (mut w, mut t, mut l) = (0, 0, 0);
            for (a, b) in results[i].iter().zip(&results[j]) {
                if let (Some(a), Some(b)) = (a, b) {
                    if (a.reward - b.reward).abs() < 1e-9 {
                        t += 1;
                    } else if a.reward > b.reward {
                        w += 1;
                    } else {
                        l += 1;
                    }
                }
            }
            let n = w + t + l;
            let rate = (n > 0).then(|| (w as f64 + t as f64 / 2.0) / n as f64);
            pairs.push(Pairwise {
                a: files[i].clone(),
                b: files[j].clone(),
                n,
                wins: w,
                ties: t,
                losses: l,
                win_rate: rate,
                ci95: rate.map(|p| wilson(p, n)),
            });
        }
    }
    (per, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_brackets_the_rate() {
        let (lo, hi) = wilson(0.5, 10);
        assert!(lo < 0.5 && hi > 0.5 && lo > 0.2 && hi < 0.8, "{lo} {hi}");
        let (lo, hi) = wilson(1.0, 3);
        assert!(hi <= 1.0 && lo > 0.3, "{lo} {hi}");
    }
}
