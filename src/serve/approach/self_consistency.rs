//! `self_consistency`: k samples (at once), grouped by agreement; the
//! answer of the largest group wins. Two answers agree when their
//! normalised texts are equal or share most of their words (Jaccard
//! similarity of word sets ≥ [`SIMILAR`]), so a reworded answer counts as
//! a vote for the same thing.

use std::collections::HashSet;

use crate::provider::Message;

use super::{normalise, Answer, Ctx};
use crate::serve::error::ApiError;

/// Word-set overlap above which two answers are one vote.
const SIMILAR: f64 = 0.8;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
    k: u32,
) -> Result<Answer, ApiError> {
    let mut samples = ctx.candidates(messages, prev, k).await?;
    let winner = majority(&samples);
    Ok(Answer::stop(samples.swap_remove(winner)))
}

/// The index of the first member of the largest group (earliest on ties).
pub fn majority(samples: &[String]) -> usize {
    let words: Vec<HashSet<String>> = samples
        .iter()
        .map(|s| normalise(s).split(' ').map(str::to_string).collect())
        .collect();
    // Greedy clustering: each sample joins the first group whose founder it resembles.
    let mut founders: Vec<usize> = Vec::new();
    let mut votes: Vec<usize> = Vec::new();
    for (i, w) in words.iter().enumerate() {
        match founders
            .iter()
            .position(|&f| jaccard(&words[f], w) >= SIMILAR)
        {
            Some(g) => votes[g] += 1,
            None => {
                founders.push(i);
                votes.push(1);
            }
        }
    }
    let mut best = 0;
    for (g, &v) in votes.iter().enumerate() {
        if v > votes[best] {
            best = g;
        }
    }
    founders.get(best).copied().unwrap_or(0)
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_group_wins_and_rewordings_vote_together() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            majority(&s(&["It is 41.", "The answer is 42.", "the answer is 42"])),
            1
        );
        assert_eq!(majority(&s(&["a b c d e", "x y z", "a b c d e f"])), 0);
        assert_eq!(majority(&s(&["one", "two"])), 0);
    }
}
