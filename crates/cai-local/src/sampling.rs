//! Next-token choice: greedy at temperature 0, otherwise temperature and
//! nucleus (top-p) sampling from a seeded ChaCha generator, so a seed fixes
//! the output exactly.
//!
//! Tokens generated in the last [`REPEAT_WINDOW`] steps have their logits
//! penalised by [`REPEAT_PENALTY`] (divided when positive, multiplied when
//! negative, as in the CTRL paper). Small models such as the 135M default
//! otherwise fall into loops that run to the token limit, and a reply cut
//! off there is rejected rather than written.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Candidates examined before falling back to a full sort for top-p.
const TOP_P_CANDIDATES: usize = 512;
/// How many recent generated tokens are penalised.
pub const REPEAT_WINDOW: usize = 64;
/// The repetition penalty applied to them.
pub const REPEAT_PENALTY: f32 = 1.1;

pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: ChaCha8Rng,
    probs: Vec<(f32, u32)>,
    recent: std::collections::VecDeque<u32>,
    adjusted: Vec<f32>,
}

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self {
            temperature,
            top_p,
            rng: ChaCha8Rng::seed_from_u64(seed),
            probs: Vec::new(),
            recent: std::collections::VecDeque::with_capacity(REPEAT_WINDOW),
            adjusted: Vec::new(),
        }
    }

    /// Picks the next token and remembers it for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut adjusted = std::mem::take(&mut self.adjusted);
        adjusted.clear();
        adjusted.extend_from_slice(logits);
        let mut seen = self.recent.iter().copied().collect::<Vec<u32>>();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = adjusted.get_mut(id as usize) {
                *l = if *l > 0.0 {
                    *l / REPEAT_PENALTY
                } else {
                    *l * REPEAT_PENALTY
                };
            }
        }
        let id = self.pick(&adjusted);
        self.adjusted = adjusted;
        if self.recent.len() == REPEAT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
        id
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.temperature.is_nan() || self.temperature <= 1e-5 || logits.len() < 2 {
            return argmax(logits);
        }
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        self.probs.clear();
        let mut sum = 0f32;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) / self.temperature).exp();
            sum += p;
            self.probs.push((p, i as u32));
        }
        // Higher probability first; ties by id so the order is deterministic.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let keep = if self.top_p < 1.0 && self.top_p > 0.0 {
            let target = self.top_p * sum;
            let k = TOP_P_CANDIDATES.min(self.probs.len());
            if k < self.probs.len() {
                self.probs.select_nth_unstable_by(k - 1, order);
            }
            self.probs[..k].sort_unstable_by(order);
            if self.probs[..k].iter().map(|p| p.0).sum::<f32>() < target {
                self.probs.sort_unstable_by(order);
            }
            let mut acc = 0f32;
            let mut n = 0;
            for p in &self.probs {
                acc += p.0;
                n += 1;
                if acc >= target {
                    break;
                }
            }
            self.probs.truncate(n.max(1));
            acc
        } else {
            sum
        };
        let mut r = self.rng.random::<f32>() * keep;
        for &(p, id) in &self.probs {
            if r < p {
                return id;
            }
            r -= p;
        }
        self.probs.last().map_or(0, |p| p.1)
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = Sampler::new(0.0, 1.0, 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.9]), 1);
    }

    #[test]
    fn recent_tokens_are_penalised() {
        // Greedy picks 0, then 0's logit drops to 3.0 / 1.1 < 2.9.
        let mut s = Sampler::new(0.0, 1.0, 1);
        assert_eq!(s.sample(&[3.0, 2.9]), 0);
        assert_eq!(s.sample(&[3.0, 2.9]), 1);
        // Negative logits are pushed further down, not up.
        let mut s = Sampler::new(0.0, 1.0, 1);
        assert_eq!(s.sample(&[-1.0, -1.05]), 0);
        assert_eq!(s.sample(&[-1.0, -1.05]), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0.9, seed);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // One token holds 95% of the mass: top_p 0.5 must always pick it.
        let mut logits = vec![0.0f32; 1000];
        logits[7] = 20.0;
        let mut s = Sampler::new(1.0, 0.5, 3);
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 7);
        }
    }
}
