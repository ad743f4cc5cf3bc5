//! `mcts`: Monte Carlo tree search over reasoning steps, after Xie et al.,
//! "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference
//! Learning" (2024), used at inference time as the other proxy does.
//!
//! A node is a partial answer: the steps written so far. The tree is
//! `--mcts-depth` steps deep; a step below the last level is one reasoning
//! step, a step on the last level is the complete answer. Each of
//! `--mcts-simulations` simulations selects a leaf by UCT (exploration
//! `--mcts-exploration`), expands it into `--best-of-n` children — sampled
//! together, one call with `n` where the upstream honours it — and scores
//! every new child by the model's self-evaluation (the paper's value
//! signal without a reference answer; one call each, all at once), backing
//! each score up to the root. A simulation that selects a complete answer
//! backs its mean up again and costs no call. The answer follows the most
//! visited child from the root (the higher score on ties); when that path
//! stops short of a complete answer, one last call completes it.

use crate::provider::Message;

use super::tree::Tree;
use super::{Answer, Ctx};
use crate::serve::error::ApiError;

/// Marks a step request (the test upstream keys on it too).
const NEXT_STEP: &str = "Write only the next step of reasoning towards the answer";
const FINAL: &str = "Now write the complete final answer to my last message";
const EVALUATE: &str = "Rate from 0 to 10 how likely this partial or complete answer is to lead to a correct, helpful final answer";

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
) -> Result<Answer, ApiError> {
    let k = ctx.knobs;
    let depth = k.mcts_depth.max(1);
    let width = ctx.best_of_n.max(1);
    let mut tree: Tree<String> = Tree::new(String::new());
    // The previous step's answer becomes one of the root's children, sampled
    // and scored with the others.
    let mut carried = prev.map(|p| p.text);
    for _ in 0..k.mcts_simulations {
        simulate(ctx, messages, &mut tree, depth, width, &mut carried).await?;
    }
    let mut at = 0;
    while let Some(c) = tree.most_visited(at) {
        at = c;
    }
    let path = steps(&tree, at);
    let mut full = String::new();
    for (n, &i) in tree.path(at).iter().enumerate() {
        let node = &tree.nodes[i];
        full.push_str(&format!(
            "Step {} (visits {}, mean score {:.2}):\n{}\n\n",
            n + 1,
            node.visits,
            node.mean(),
            node.data
        ));
    }
    if tree.nodes[at].depth >= depth {
        let text = tree.nodes[at].data.clone();
        return Ok(Answer::stop(text).with_full(full.trim_end().to_string()));
    }
    let fin = ctx
        .call(&ctx.request(prompt(messages, &path, true)))
        .await?;
    full.push_str(&format!("Final answer:\n{}", fin.text.trim()));
    Ok(Answer::of(fin.text.trim().to_string(), fin.finish).with_full(full))
}

/// One simulation: select a leaf by UCT; a complete answer backs its mean
/// up again, any other leaf gets `width` children (sampled together, the
/// `carried` answer among the root's) whose scores (asked for together)
/// are backed up.
async fn simulate(
    ctx: &Ctx,
    messages: &[Message],
    tree: &mut Tree<String>,
    depth: u32,
    width: u32,
    carried: &mut Option<String>,
) -> Result<(), ApiError> {
    let mut leaf = 0;
    while let Some(c) = tree.select(leaf, ctx.knobs.mcts_exploration) {
        leaf = c;
    }
    if tree.nodes[leaf].depth >= depth {
        let again = tree.nodes[leaf].mean();
        tree.backup(leaf, again);
        return Ok(());
    }
    let last_level = tree.nodes[leaf].depth + 1 == depth;
    let convo = prompt(messages, &steps(tree, leaf), last_level);
    let mut texts = Vec::with_capacity(width as usize);
    if leaf == 0 {
        texts.extend(carried.take());
    }
    let want = width.saturating_sub(texts.len() as u32).max(1);
    texts.extend(ctx.samples(&convo, want).await?);
    let children: Vec<usize> = texts.into_iter().map(|t| tree.add(leaf, t)).collect();
    let scores = score(ctx, messages, tree, &children).await?;
    for (&c, s) in children.iter().zip(scores) {
        tree.backup(c, s);
    }
    Ok(())
}

/// The texts of the steps from the root down to `i`.
fn steps(tree: &Tree<String>, i: usize) -> Vec<String> {
    tree.path(i)
        .into_iter()
        .map(|k| tree.nodes[k].data.clone())
        .collect()
}

/// The conversation asking for the next step (or, on the last level, the
/// complete answer) after `steps`. With no steps and the answer due, it is
/// the conversation itself.
fn prompt(messages: &[Message], steps: &[String], last_level: bool) -> Vec<Message> {
    let mut convo = messages.to_vec();
    if steps.is_empty() && last_level {
        return convo;
    }
    let mut ask = String::new();
    if !steps.is_empty() {
        ask.push_str("Reasoning steps so far towards answering my last message:\n\n");
        ask.push_str(&numbered(steps));
        ask.push_str("\n\n");
    }
    ask.push_str(if last_level { FINAL } else { NEXT_STEP });
    ask.push_str(if last_level {
        ", using the steps above. Reply with the answer only."
    } else {
        ". Reply with that one step only."
    });
    convo.push(Message::user(ask));
    convo
}

fn numbered(steps: &[String]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}. {}", i + 1, s.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The model's self-evaluation of each node in `nodes`, in [0, 1].
async fn score(
    ctx: &Ctx,
    messages: &[Message],
    tree: &Tree<String>,
    nodes: &[usize],
) -> Result<Vec<f64>, ApiError> {
    let asks = nodes
        .iter()
        .map(|&i| {
            vec![Message::user(format!(
                "Conversation:\n\n{}\n\nProposed answer so far:\n\n{}\n\n{EVALUATE}. Reply with the number only.",
                super::transcript(messages),
                numbered(&steps(tree, i))
            ))]
        })
        .collect();
    ctx.scores(asks, 10.0, 0.5).await
}
