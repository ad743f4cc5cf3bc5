//! `rstar`: self-play mutual reasoning, after Qi et al., "Mutual Reasoning
//! Makes Smaller LLMs Stronger Problem-Solvers" (rStar, 2024).
//!
//! The generator searches a tree of reasoning trajectories by MCTS with
//! UCT constant `--rstar-c`, `--rstar-num-rollouts` rollouts,
//! `--rstar-max-depth` levels. Of the paper's five actions three are kept:
//! propose one next step (A1), finish the remaining steps with an answer
//! (A2), and, at the root, rephrase the question (A5); a node on the last
//! level can only finish. Expanding a node sends all its actions at once. A
//! rollout descends — expanding where needed, taking the first unvisited
//! child, else the UCT choice — to a finished trajectory, whose reward is
//! the paper's self-consistency estimate: the share of the trajectories
//! finished so far that reach the same answer.
//!
//! The discriminator then checks each distinct finished trajectory: it is
//! given the trajectory's first half (the paper samples the cut; the
//! midpoint keeps runs repeatable) and completes it, all trajectories at
//! once. A trajectory is mutually consistent when the completion reaches
//! its answer. The answer is the consistent trajectory with the highest
//! reward, else the trajectory with the highest reward.

use crate::provider::Message;

use super::tree::Tree;
use super::{normalise, Answer, Ctx};
use crate::serve::error::ApiError;

const ONE_STEP: &str = "Write only the next single step of the solution";
const FINISH: &str =
    "Write the remaining steps of the solution and end with a last line `The answer is: ...`";
const REPHRASE: &str = "Rephrase the question below so that every condition in it is stated plainly. Reply with the rephrased question only.";
const COMPLETE: &str = "Here is the beginning of a solution. Continue it to the end and finish with a last line `The answer is: ...`";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Root,
    Step,
    Finish,
    Rephrase,
}

struct Data {
    action: Action,
    text: String,
}

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let (tree, finished) = search(ctx, messages, prev).await?;
    let confirmed = discriminate(ctx, messages, &tree, &finished).await?;
    let mut full = String::new();
    let mut best: Option<(bool, f64, usize)> = None;
    for (&i, &consistent) in finished.iter().zip(&confirmed) {
        let reward = tree.nodes[i].mean();
        full.push_str(&format!(
            "Trajectory (reward {reward:.2}, {}):\n{}\n\n",
            if consistent {
                "confirmed by the discriminator"
            } else {
                "not confirmed"
            },
            trajectory(&tree, i)
        ));
        // A confirmed trajectory beats any unconfirmed one; then the reward.
        if best.is_none_or(|(bc, br, _)| (consistent, reward) > (bc, br)) {
            best = Some((consistent, reward, i));
        }
    }
    let Some((_, _, i)) = best else {
        return Err(ApiError::invalid(
            "rstar: no trajectory finished",
            Some("rstar_num_rollouts".into()),
        ));
    };
    Ok(Answer::stop(trajectory(&tree, i)).with_full(full.trim_end().to_string()))
}

/// The generator's rollouts: the tree, and its finished trajectories in
/// the order they were first reached.
async fn search(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<(Tree<Data>, Vec<usize>), ApiError> {
    let k = ctx.knobs;
    let max_depth = k.rstar_max_depth.max(1);
    let mut tree = Tree::new(Data {
        action: Action::Root,
        text: String::new(),
    });
    let mut finished: Vec<usize> = Vec::new();
    // The previous step's answer joins the root's children when the root
    // is expanded: a finished trajectory that rollouts reach and reward
    // like the others.
    let mut carried = prev.map(|p| p.text);
    for _ in 0..k.rstar_num_rollouts.max(1) {
        let mut at = 0;
        while tree.nodes[at].data.action != Action::Finish {
            if tree.nodes[at].children.is_empty() {
                expand(ctx, messages, &mut tree, at, max_depth).await?;
                if let Some(text) = carried.take().filter(|_| at == 0) {
                    let action = Action::Finish;
                    tree.add(0, Data { action, text });
                }
            }
            let fresh = tree.nodes[at]
                .children
                .iter()
                .copied()
                .find(|&c| tree.nodes[c].visits == 0);
            match fresh.or_else(|| tree.select(at, k.rstar_c)) {
                Some(c) => at = c,
                None => break,
            }
        }
        // Self-consistency: the share of finished trajectories (this one
        // counted once) that reach this answer.
        let answer = answer_of(&tree.nodes[at].data.text);
        let others: Vec<usize> = finished.iter().copied().filter(|&j| j != at).collect();
        let same = others
            .iter()
            .filter(|&&j| answer_of(&tree.nodes[j].data.text) == answer)
            .count();
        let reward = (same as f64 + 1.0) / (others.len() as f64 + 1.0);
        if !finished.contains(&at) {
            finished.push(at);
        }
        tree.backup(at, reward);
    }
    Ok((tree, finished))
}

/// Whether the discriminator, completing each trajectory from its first
/// half (all at once), reaches the trajectory's answer.
async fn discriminate(
    ctx: &Ctx,
    messages: &[Message],
    tree: &Tree<Data>,
    finished: &[usize],
) -> Result<Vec<bool>, ApiError> {
    let question = super::last_user(messages);
    let checks = finished.iter().map(|&i| {
        let lines = trajectory(tree, i);
        let half: Vec<&str> = lines.lines().take(lines.lines().count() / 2).collect();
        let convo = vec![Message::user(format!(
            "{COMPLETE}\n\nQuestion:\n{question}\n\nBeginning of the solution:\n{}",
            half.join("\n")
        ))];
        let req = ctx.request(convo);
        async move { ctx.call(&req).await }
    });
    let completions = futures::future::try_join_all(checks).await?;
    Ok(finished
        .iter()
        .zip(&completions)
        .map(|(&i, c)| answer_of(&c.text) == answer_of(&tree.nodes[i].data.text))
        .collect())
}

/// Creates the children of `at`, one per action open to it, all sent at once.
async fn expand(
    ctx: &Ctx,
    messages: &[Message],
    tree: &mut Tree<Data>,
    at: usize,
    max_depth: u32,
) -> Result<(), ApiError> {
    let node = &tree.nodes[at];
    let mut actions = Vec::new();
    if node.depth + 1 < max_depth {
        actions.push(Action::Step);
    }
    actions.push(Action::Finish);
    if node.data.action == Action::Root && max_depth > 1 {
        actions.push(Action::Rephrase);
    }
    let so_far = trajectory(tree, at);
    let question = question_of(tree, at, messages);
    let requests: Vec<_> = actions
        .iter()
        .map(|&a| ctx.request(prompt(messages, &question, &so_far, a)))
        .collect();
    let replies =
        futures::future::try_join_all(requests.iter().map(|r| async move { ctx.call(r).await }))
            .await?;
    for (a, c) in actions.into_iter().zip(replies) {
        tree.add(
            at,
            Data {
                action: a,
                text: c.text.trim().to_string(),
            },
        );
    }
    Ok(())
}

/// The request of action `a` after the steps `so_far`.
fn prompt(messages: &[Message], question: &str, so_far: &str, a: Action) -> Vec<Message> {
    if a == Action::Rephrase {
        return vec![Message::user(format!(
            "{REPHRASE}\n\nQuestion:\n{question}"
        ))];
    }
    let mut convo = messages.to_vec();
    let what = if a == Action::Step { ONE_STEP } else { FINISH };
    let ask = if so_far.is_empty() {
        format!("Question:\n{question}\n\n{what}.")
    } else {
        format!("Question:\n{question}\n\nSolution so far:\n{so_far}\n\n{what}.")
    };
    convo.push(Message::user(ask));
    convo
}

/// The question at `at`: the rephrased one on a rephrased branch.
fn question_of(tree: &Tree<Data>, at: usize, messages: &[Message]) -> String {
    tree.path(at)
        .into_iter()
        .find(|&k| tree.nodes[k].data.action == Action::Rephrase)
        .map_or_else(
            || super::last_user(messages).to_string(),
            |k| tree.nodes[k].data.text.clone(),
        )
}

/// The solution steps from the root to `at` (rephrasings left out).
fn trajectory(tree: &Tree<Data>, at: usize) -> String {
    tree.path(at)
        .into_iter()
        .filter(|&k| tree.nodes[k].data.action != Action::Rephrase)
        .map(|k| tree.nodes[k].data.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The answer a solution reaches: what follows its last "answer is",
/// else its last line, normalised.
fn answer_of(text: &str) -> String {
    let lower = text.to_lowercase();
    let tail = match lower.rfind("answer is") {
        Some(i) => &lower[i + "answer is".len()..],
        None => lower.lines().last().unwrap_or(""),
    };
    normalise(tail.lines().next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_from_the_last_answer_line() {
        assert_eq!(answer_of("x = 2\nThe answer is: 42."), "42");
        assert_eq!(answer_of("so\nthe ANSWER IS 42"), "42");
        assert_eq!(answer_of("first\nlast line"), "last line");
    }
}
