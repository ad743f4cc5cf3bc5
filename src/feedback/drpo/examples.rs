//! The search for each in-context example's answer (`--examples` of `cai
//! optimize`), before the prompt search uses the bank.
//!
//! Per example, with the same evaluator and aspects as the prompt search:
//! score the given answer; then, for up to `--example-rounds` rounds while
//! the best answer is not satisfied, one optimizer call
//! (`optimize_answer.jinja`) proposes `--example-candidates` rewrites of
//! the best answer so far from its evaluation (a JSON list of `{"analysis",
//! "thought", "new_answer"}`), each is scored, and a rewrite replaces the
//! best only when its reward is higher (an answer the evaluator cannot
//! tell apart is kept as written). The paper's offline example optimisation
//! runs 5 rounds of one rewrite each; those are the defaults. Rewrites have
//! no plain-text fallback: an unusable reply keeps the answer.
//!
//! Requests per example, at most: 1 aspect request (if its query is new) +
//! 1 score + rounds × (1 optimizer call + candidates scores).

use serde_json::json;

use super::search::{log, Log};
use super::{names, Critic, Evaluation, Proposal, Role, Usable, MAX_PROMPT_CHARS};
use crate::engine::ItemError;
use crate::feedback::examples::Retriever;
use crate::input::queries::Example;
use crate::input::PromptRecord;

/// How hard each example is searched.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ExampleOptions {
    pub rounds: usize,
    pub candidates: usize,
}

/// Requests of the example search at most, per role (evaluator,
/// optimizer), for `n` examples with `new_queries` distinct new queries.
pub fn plan(n: usize, new_queries: usize, opts: ExampleOptions) -> (u64, u64) {
    let (n, r, c) = (n as u64, opts.rounds as u64, opts.candidates as u64);
    (new_queries as u64 + n + n * r * c, n * r)
}

impl Critic {
    /// `candidates` rewrites of an example answer from its evaluation.
    pub async fn rewrite(
        &self,
        q: &PromptRecord,
        ev: &Evaluation,
        candidates: usize,
    ) -> Result<Vec<Usable<Proposal>>, ItemError> {
        let text = self.render(
            "optimize_answer.jinja",
            minijinja::context! {
                query => &q.text, answer => &ev.answer, evaluation => &ev.scores,
                reward => format!("{:.2}", ev.reward), candidates => candidates,
            },
        )?;
        let got = self
            .ask(Role::Optimizer, "optimize-rewrite", &q.id, &text, |t| {
                super::parse_proposals(t, "new_answer", 4 * MAX_PROMPT_CHARS)
            })
            .await?;
        Ok(match got {
            Ok(mut list) => {
                list.truncate(candidates);
                list
            }
            Err(why) => vec![Err(why.within("optimizer"))],
        })
    }

    /// Searches every example's answer (module docs); the bank the prompt
    /// search then uses is the result.
    pub async fn optimise_examples(
        &mut self,
        opts: ExampleOptions,
        sink: &mut Log<'_>,
    ) -> Result<Vec<Example>, ItemError> {
        let bank = self.retriever.examples().to_vec();
        let mut out = Vec::with_capacity(bank.len());
        for (i, ex) in bank.into_iter().enumerate() {
            let q = PromptRecord {
                id: format!("example-{i}"),
                text: ex.query.clone(),
                line: 0,
            };
            let (choice, _) = self.aspects(&q).await?;
            let mut event = json!({
                "kind": "example", "example": i, "query": &ex.query,
                "aspects": names(&choice.aspects), "aspects_fallback": &choice.fallback,
            });
            let mut kept = ex.clone();
            let mut best = match self.score(&q, &choice, &ex.answer).await? {
                Ok(ev) => ev,
                Err(why) => {
                    event["status"] = json!("kept");
                    event["reason"] = json!(why);
                    log(sink, event)?;
                    out.push(kept);
                    continue;
                }
            };
            event["reward"] = json!(best.reward);
            event["scores"] = json!(best.scores);
            let mut tried = Vec::new();
            let mut rounds = 0;
            while rounds < opts.rounds && !best.satisfied() {
                rounds += 1;
                for c in self.rewrite(&q, &best, opts.candidates).await? {
                    let scored = match c {
                        Ok(p) => self.score(&q, &choice, &p.text).await?,
                        Err(why) => Err(why),
                    };
                    match scored {
                        Ok(ev) => {
                            tried.push(json!({"round": rounds, "reward": ev.reward}));
                            if ev.reward > best.reward {
                                best = ev;
                            }
                        }
                        Err(why) => tried.push(json!({"round": rounds, "dropped": why})),
                    }
                }
            }
            event["rounds"] = json!(rounds);
            event["candidates"] = json!(tried);
            if best.answer != ex.answer {
                event["status"] = json!("rewritten");
                event["new_reward"] = json!(best.reward);
                event["new_scores"] = json!(best.scores);
                event["answer"] = json!(&best.answer);
                kept.answer = best.answer.clone();
            } else if rounds == 0 {
                event["status"] = json!("satisfied");
            } else {
                event["status"] = json!("kept");
                event["reason"] = json!("no rewrite scored higher");
            }
            log(sink, event)?;
            out.push(kept);
        }
        self.retriever = Retriever::new(out.clone());
        Ok(out)
    }
}
