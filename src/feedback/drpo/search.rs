//! The beam search over system prompts, as the paper runs it.
//!
//! **Training order.** The queries are mixed in a shuffle seeded by
//! `--seed` ([`training_order`]); a search that needs more queries than
//! there are takes a new shuffle of all of them (never the same query twice
//! in a row), rather than cycling in file order.
//!
//! **Step 0** scores the start prompt (the root) on the first query of the
//! order. **Step `s`** (1 ≤ s ≤ depth) uses the next query, `order[s]`.
//! For each entry of the beam, best first:
//!
//! - if its evaluation (on the query of the step that scored it) is not
//!   satisfied, the optimizer proposes `actions` new prompts from it in
//!   one call ([`super::optimizer`]), and each new prompt is scored on
//!   **this step's query**, the one after the query that produced it. A
//!   proposal identical to a prompt already scored in this step is dropped
//!   unscored (`duplicate`);
//! - if it is satisfied (every aspect 5, or the mean above 4.5), or it has
//!   no evaluation (its scoring was dropped), it is carried on unchanged
//!   (`"kept": true`) and scored on this step's query; a satisfied entry
//!   also extends the search by one step (at most once per step, at most
//!   `--max-depth-increase` steps in all), as the paper does when its
//!   training queries are too easy.
//!
//! A node's value is the **average reward along its path** (the root's own
//! reward is left out once the path has a step, as in the reference
//! implementation; every path of a step has the same length, so this does
//! not change the order). The new beam is the `beam` best **new** nodes of
//! the step by that average (stable: an earlier node wins a tie); parents
//! are not answered and scored again. When no new node of a step could be
//! scored, the beam is kept for the next step. The result is the head of
//! the last beam.
//!
//! ## Requests (the formula the dry run prints and the tests check)
//!
//! With no re-asks, fallbacks, satisfied prompts, duplicates or drops,
//! step 0 sends 1 aspect request (evaluator) + 1 answer (base) + 1 score
//! (evaluator); step `s` with `b_s` beam entries (`b_1 = 1`, `b_{s+1} =
//! min(beam, b_s · actions)`) sends
//!
//! ```text
//! [query order[s] not seen before]    evaluator (aspects)
//! + b_s                               optimizer (one call per entry)
//! + b_s · actions                     base answers
//! + b_s · actions                     evaluator scores
//! ```
//!
//! A satisfied entry costs 2 (answer + score) instead of `1 + 2·actions`
//! and may add a step. Each re-ask adds 1; a scoring that falls back to
//! log-probabilities adds one request per aspect; proposals that fall back
//! to plain text add up to [`super::MAX_ASKS`] calls, and then up to
//! `actions · MAX_ASKS` more. A request already answered in the journal
//! (two prompts with the same answer give the same score request) is
//! counted in `search.jsonl` as asked but is not sent.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};

use super::{names, AspectChoice, Critic, Evaluation, Proposal, RoleCounts};
use crate::engine::ItemError;
use crate::input::PromptRecord;

/// A prompt in the search tree.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: usize,
    pub parent: Option<usize>,
    /// The step that scored it (the root: 0).
    pub depth: usize,
    pub prompt: String,
    /// Index of the query it was scored on.
    #[serde(skip)]
    pub query: usize,
    pub reward: Option<f64>,
    /// Mean reward along its path (the root: its own reward).
    pub path_reward: Option<f64>,
    /// The parent's prompt carried on unchanged.
    pub kept: bool,
    #[serde(skip)]
    pub eval: Option<Evaluation>,
    /// The rewards of its path, root excluded.
    #[serde(skip)]
    rewards: Vec<f64>,
}

/// Search settings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SearchOptions {
    pub beam: usize,
    pub actions: usize,
    /// Optimisation steps after the root's (each on the next query).
    pub depth: usize,
    /// Steps a satisfied prompt may add in all.
    pub max_depth_increase: usize,
}

/// One step's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StepSummary {
    pub step: usize,
    pub query_id: String,
    /// Nodes scored in this step.
    pub evaluated: usize,
    /// Best and mean reward of this step's nodes.
    pub best: f64,
    pub mean: f64,
    /// Best path average of this step's nodes.
    pub best_path: f64,
    pub beam: Vec<usize>,
    /// Requests asked in this step per role (journal replays included).
    pub requests: RoleCounts,
}

/// The order in which the search reads the queries: `len` indices into
/// `n` queries, shuffles seeded by `seed` laid end to end.
pub fn training_order(n: usize, seed: u64, len: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<usize> = Vec::with_capacity(len + n);
    while out.len() < len && n > 0 {
        let mut pass: Vec<usize> = (0..n).collect();
        pass.shuffle(&mut rng);
        if n > 1 && out.last() == pass.first() {
            pass.swap(0, 1);
        }
        out.extend(pass);
    }
    out.truncate(len);
    out
}

/// Where a step is: its index, its query (index and record) and the
/// query's aspects.
struct At<'a> {
    step: usize,
    qi: usize,
    q: &'a PromptRecord,
    choice: &'a AspectChoice,
}

/// The search state; kept by the caller so a stopped search still reports.
pub struct Search {
    pub nodes: Vec<Node>,
    pub beam: Vec<usize>,
    pub steps: Vec<StepSummary>,
    pub dropped: usize,
    /// Steps added by satisfied prompts.
    pub extended: usize,
}

/// Where `search.jsonl` lines go.
pub type Log<'a> = dyn FnMut(Value) -> Result<(), crate::output::OutputError> + 'a;

pub(super) fn log(sink: &mut Log<'_>, v: Value) -> Result<(), ItemError> {
    sink(v).map_err(|e| ItemError::Stop(e.to_string()))
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

impl Search {
    pub fn new(initial: &str) -> Self {
        Self {
            nodes: vec![Node {
                id: 0,
                parent: None,
                depth: 0,
                prompt: initial.to_string(),
                query: 0,
                reward: None,
                path_reward: None,
                kept: false,
                eval: None,
                rewards: Vec::new(),
            }],
            beam: vec![0],
            steps: Vec::new(),
            dropped: 0,
            extended: 0,
        }
    }

    /// The best node: the head of the beam.
    pub fn best(&self) -> &Node {
        &self.nodes[self.beam.first().copied().unwrap_or(0)]
    }

    /// Root → best.
    pub fn best_path(&self) -> Vec<&Node> {
        let mut path = vec![self.best()];
        while let Some(p) = path.last().and_then(|n| n.parent) {
            path.push(&self.nodes[p]);
        }
        path.reverse();
        path
    }

    /// The prompts of `id`'s path, root first, consecutive repeats (kept
    /// nodes) once.
    fn path_prompts(&self, id: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut cur = Some(id);
        while let Some(c) = cur {
            let p = &self.nodes[c].prompt;
            if out.last() != Some(p) {
                out.push(p.clone());
            }
            cur = self.nodes[c].parent;
        }
        out.reverse();
        out
    }

    /// Best and mean reward of the nodes scored at each step.
    pub fn reward_per_depth(&self) -> Vec<(usize, f64, f64, usize)> {
        let mut by: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for n in &self.nodes {
            if let Some(r) = n.reward {
                by.entry(n.depth).or_default().push(r);
            }
        }
        by.into_iter()
            .map(|(d, rs)| {
                let best = rs.iter().copied().fold(f64::MIN, f64::max);
                (d, best, mean(&rs), rs.len())
            })
            .collect()
    }

    fn add(
        &mut self,
        parent: usize,
        step: usize,
        prompt: String,
        query: usize,
        kept: bool,
    ) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            id,
            parent: Some(parent),
            depth: step,
            prompt,
            query,
            reward: None,
            path_reward: None,
            kept,
            eval: None,
            rewards: self.nodes[parent].rewards.clone(),
        });
        id
    }

    /// The aspects of `q`, logged the first time they are asked.
    async fn aspects(
        critic: &mut Critic,
        q: &PromptRecord,
        step: usize,
        sink: &mut Log<'_>,
    ) -> Result<AspectChoice, ItemError> {
        let (choice, asked) = critic.aspects(q).await?;
        if asked {
            log(
                sink,
                json!({"kind": "aspects", "step": step, "query_id": &q.id, "query": &q.text,
                       "aspects": names(&choice.aspects), "reasoning": &choice.reasoning,
                       "fallback": &choice.fallback}),
            )?;
        }
        Ok(choice)
    }

    /// Scores node `id` on `q`; its path average when it could be scored.
    async fn score(
        &mut self,
        critic: &Critic,
        id: usize,
        q: &PromptRecord,
        choice: &AspectChoice,
        proposal: Option<&Proposal>,
        sink: &mut Log<'_>,
    ) -> Result<Option<f64>, ItemError> {
        let prompt = self.nodes[id].prompt.clone();
        let got = critic.evaluate(&prompt, q, choice).await?;
        let n = &mut self.nodes[id];
        let out = match &got {
            Ok(ev) => {
                n.reward = Some(ev.reward);
                if n.parent.is_some() {
                    n.rewards.push(ev.reward);
                }
                let avg = if n.rewards.is_empty() {
                    ev.reward
                } else {
                    mean(&n.rewards)
                };
                n.path_reward = Some(avg);
                n.eval = Some(ev.clone());
                Some(avg)
            }
            Err(_) => {
                self.dropped += 1;
                None
            }
        };
        let event = self.event(id, q, got.as_ref().ok(), got.as_ref().err(), proposal);
        log(sink, event)?;
        Ok(out)
    }

    /// Runs the search over `queries` in `order` (at least `depth +
    /// max_depth_increase + 1` long).
    pub async fn run(
        &mut self,
        critic: &mut Critic,
        queries: &[PromptRecord],
        order: &[usize],
        opts: SearchOptions,
        sink: &mut Log<'_>,
        mut on_step: impl FnMut(&StepSummary),
    ) -> Result<(), ItemError> {
        let Some(&first) = order.first() else {
            return Ok(());
        };
        let before = critic.asked();
        let q = &queries[first];
        let choice = Self::aspects(critic, q, 0, sink).await?;
        self.nodes[0].query = first;
        let root = self.score(critic, 0, q, &choice, None, sink).await?;
        self.summarise(
            0,
            q,
            &[(0, root)],
            critic.asked().since(before),
            sink,
            &mut on_step,
        )?;

        let mut limit = opts.depth;
        let mut step = 1;
        while step <= limit && step < order.len() {
            let before = critic.asked();
            let qi = order[step];
            let q = &queries[qi];
            let choice = Self::aspects(critic, q, step, sink).await?;
            let mut scored: Vec<(usize, Option<f64>)> = Vec::new();
            let mut satisfied = false;
            let at = At {
                step,
                qi,
                q,
                choice: &choice,
            };
            for nid in self.beam.clone() {
                satisfied |= self
                    .expand(critic, queries, nid, &at, opts.actions, &mut scored, sink)
                    .await?;
            }
            if satisfied && limit < opts.depth + opts.max_depth_increase {
                limit += 1;
                self.extended += 1;
                log(
                    sink,
                    json!({"kind": "depth", "step": step, "depth": limit,
                           "reason": "a beam prompt was satisfied"}),
                )?;
            }
            let mut ranked: Vec<(usize, f64)> = scored
                .iter()
                .filter_map(|&(id, r)| r.map(|r| (id, r)))
                .collect();
            if !ranked.is_empty() {
                // Stable: among equal averages the earlier node stays ahead.
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                self.beam = ranked.iter().take(opts.beam).map(|c| c.0).collect();
            }
            let asked = critic.asked().since(before);
            self.summarise(step, q, &scored, asked, sink, &mut on_step)?;
            step += 1;
        }
        Ok(())
    }

    /// One beam entry's part of a step (module docs): its proposals, each
    /// scored on this step's query, or itself carried on. True when the
    /// entry was satisfied.
    #[allow(clippy::too_many_arguments)]
    async fn expand(
        &mut self,
        critic: &Critic,
        queries: &[PromptRecord],
        nid: usize,
        at: &At<'_>,
        actions: usize,
        scored: &mut Vec<(usize, Option<f64>)>,
        sink: &mut Log<'_>,
    ) -> Result<bool, ItemError> {
        let parent = &self.nodes[nid];
        let (prompt, pq) = (parent.prompt.clone(), parent.query);
        let ev = match &parent.eval {
            Some(ev) if !ev.satisfied() => ev.clone(),
            other => {
                let satisfied = other.is_some();
                let child = self.add(nid, at.step, prompt, at.qi, true);
                let r = self
                    .score(critic, child, at.q, at.choice, None, sink)
                    .await?;
                scored.push((child, r));
                return Ok(satisfied);
            }
        };
        let path = self.path_prompts(nid);
        let proposals = critic
            .propose(&prompt, &queries[pq], &ev, &path, actions)
            .await?;
        for (i, p) in proposals.into_iter().enumerate() {
            let p = match p {
                Ok(p) => p,
                Err(why) => {
                    self.dropped += 1;
                    log(
                        sink,
                        json!({"kind": "dropped", "step": at.step, "parent": nid, "variant": i + 1,
                               "query_id": &queries[pq].id, "reason": why}),
                    )?;
                    continue;
                }
            };
            if let Some(&(dup, _)) = scored.iter().find(|(c, _)| self.nodes[*c].prompt == p.text) {
                log(
                    sink,
                    json!({"kind": "duplicate", "step": at.step, "parent": nid, "variant": i + 1,
                           "same_as": dup}),
                )?;
                continue;
            }
            let child = self.add(nid, at.step, p.text.clone(), at.qi, false);
            let r = self
                .score(critic, child, at.q, at.choice, Some(&p), sink)
                .await?;
            scored.push((child, r));
        }
        Ok(false)
    }

    fn summarise(
        &mut self,
        step: usize,
        q: &PromptRecord,
        scored: &[(usize, Option<f64>)],
        requests: RoleCounts,
        sink: &mut Log<'_>,
        on_step: &mut impl FnMut(&StepSummary),
    ) -> Result<(), ItemError> {
        let rewards: Vec<f64> = scored
            .iter()
            .filter_map(|(id, _)| self.nodes[*id].reward)
            .collect();
        let paths: Vec<f64> = scored.iter().filter_map(|(_, r)| *r).collect();
        let summary = StepSummary {
            step,
            query_id: q.id.clone(),
            evaluated: rewards.len(),
            best: rewards.iter().copied().fold(f64::NAN, f64::max),
            mean: mean(&rewards),
            best_path: paths.iter().copied().fold(f64::NAN, f64::max),
            beam: self.beam.clone(),
            requests,
        };
        log(sink, json!({"kind": "step", "summary": &summary}))?;
        on_step(&summary);
        self.steps.push(summary);
        Ok(())
    }

    fn event(
        &self,
        id: usize,
        q: &PromptRecord,
        ev: Option<&Evaluation>,
        dropped: Option<&super::Unusable>,
        proposal: Option<&Proposal>,
    ) -> Value {
        let n = &self.nodes[id];
        let role = match (n.parent, n.kept) {
            (None, _) => "root",
            (Some(_), true) => "kept",
            (Some(_), false) => "child",
        };
        let mut v = json!({
            "kind": "node", "node": id, "parent": n.parent, "depth": n.depth, "step": n.depth,
            "role": role, "query_id": &q.id, "query": &q.text, "prompt": &n.prompt,
        });
        if let Some(ev) = ev {
            v["answer"] = json!(ev.answer);
            v["aspects"] = json!(ev.scores.iter().map(|s| &s.aspect).collect::<Vec<_>>());
            v["scores"] = json!(ev.scores);
            v["reward"] = json!(ev.reward);
            v["path_reward"] = json!(n.path_reward);
            v["satisfied"] = json!(ev.satisfied());
        }
        if let Some(why) = dropped {
            v["dropped"] = json!(why);
        }
        if let Some(p) = proposal {
            v["analysis"] = json!(p.analysis);
            v["thought"] = json!(p.thought);
            v["proposal_format"] = json!(p.format);
        }
        v
    }
}

/// The dry run's plan: requests per step when nothing is satisfied,
/// duplicated, re-asked or dropped.
#[derive(Clone, Debug, Serialize)]
pub struct PlanRow {
    pub step: usize,
    pub beam: usize,
    pub base: u64,
    pub evaluator: u64,
    pub optimizer: u64,
}

/// Rows for step 0..=depth over the training `order` of `queries`.
pub fn plan(queries: &[PromptRecord], order: &[usize], opts: SearchOptions) -> Vec<PlanRow> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    let a = opts.actions as u64;
    let mut b = 1usize;
    for (step, &qi) in order.iter().enumerate().take(opts.depth + 1) {
        let new_query = u64::from(seen.insert(queries[qi].text.as_str()));
        if step == 0 {
            rows.push(PlanRow {
                step,
                beam: 0,
                base: 1,
                evaluator: new_query + 1,
                optimizer: 0,
            });
            continue;
        }
        let bb = b as u64;
        rows.push(PlanRow {
            step,
            beam: b,
            base: bb * a,
            evaluator: new_query + bb * a,
            optimizer: bb,
        });
        b = opts.beam.min(b * opts.actions).max(1);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_order_is_a_seeded_mix_of_whole_passes() {
        let o = training_order(5, 7, 12);
        assert_eq!(o.len(), 12);
        let mut first: Vec<usize> = o[..5].to_vec();
        first.sort_unstable();
        assert_eq!(first, [0, 1, 2, 3, 4], "each query once per pass");
        assert_ne!(o[..5], [0, 1, 2, 3, 4], "mixed, not in file order");
        assert_ne!(o[..5], o[5..10], "a new shuffle per pass");
        assert!(o.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(o, training_order(5, 7, 12), "the seed fixes it");
        assert_ne!(o, training_order(5, 8, 12));
        assert_eq!(training_order(1, 7, 3), [0, 0, 0]);
    }
}
