//! `bon`: best of N. N candidates (the previous step's answer counts as
//! one), then `cai`'s judge compares every pair in both orders — all
//! comparisons at once, so the critical path is one candidate call and one
//! judge call — and the candidate with the highest total preference wins.

use futures::future::try_join_all;

use crate::engine::ItemError;
use crate::feedback::judge::JudgeEndpoint;
use crate::provider::Message;

use super::{Answer, Ctx};
use crate::serve::error::ApiError;

pub async fn run(
    ctx: &Ctx,
    messages: &[Message],
    prev: Option<Answer>,
    n: u32,
) -> Result<Answer, ApiError> {
    let mut candidates = ctx.candidates(messages, prev, n.max(1)).await?;
    let best = pick(ctx, messages, &candidates).await?;
    let mut full = String::new();
    for (i, c) in candidates.iter().enumerate() {
        let mark = if i == best {
            " (chosen by the judge)"
        } else {
            ""
        };
        full.push_str(&format!("Candidate {}{mark}:\n{}\n\n", i + 1, c.trim()));
    }
    Ok(Answer::stop(candidates.swap_remove(best)).with_full(full.trim_end().to_string()))
}

/// The index of the judge's favourite among `candidates`. Identical
/// candidates are judged once; a judge that cannot give a readable verdict
/// leaves the first candidate.
pub async fn pick(
    ctx: &Ctx,
    messages: &[Message],
    candidates: &[String],
) -> Result<usize, ApiError> {
    let distinct: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[..i].contains(&candidates[i]))
        .collect();
    if distinct.len() < 2 {
        return Ok(0);
    }
    let judge = &ctx.shared.judge;
    let ep = JudgeEndpoint {
        label: format!(
            "{}:{}",
            ctx.engine.provider().name(),
            ctx.engine.provider().model()
        ),
        model: ctx.engine.provider().model().to_string(),
        engine: ctx.engine.clone(),
    };
    let prompt = super::last_user(messages);
    let mut pairs = Vec::new();
    for (a, &i) in distinct.iter().enumerate() {
        for &j in &distinct[a + 1..] {
            pairs.push((i, j));
        }
    }
    // Both orders of every pair, all at once.
    let mut questions = Vec::with_capacity(pairs.len() * 2);
    for &(i, j) in &pairs {
        let principle = judge
            .principle(&ctx.key, &format!("bon{i}-{j}"))
            .to_string();
        questions.push(judge.render(prompt, &candidates[i], &candidates[j], &principle));
        questions.push(judge.render(prompt, &candidates[j], &candidates[i], &principle));
    }
    let questions = match questions.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(q) => q,
        Err(e) => return judge_failed(e),
    };
    let verdicts = try_join_all(questions.iter().map(|q| judge.one_order(&ep, &ctx.key, q))).await;
    let verdicts = match verdicts {
        Ok(v) => v,
        Err(e) => return judge_failed(e),
    };
    let mut score = vec![0.0f64; candidates.len()];
    for (k, &(i, j)) in pairs.iter().enumerate() {
        let p_first = verdicts[2 * k].0;
        let p_second = 1.0 - verdicts[2 * k + 1].0;
        let p = (p_first + p_second) / 2.0;
        score[i] += p;
        score[j] += 1.0 - p;
    }
    let mut best = distinct[0];
    for &i in &distinct {
        if score[i] > score[best] + 1e-12 {
            best = i;
        }
    }
    Ok(best)
}

fn judge_failed(e: ItemError) -> Result<usize, ApiError> {
    match e {
        ItemError::Reject(why) if !crate::serve::record::last_failed() => {
            tracing::debug!("bon: the judge gave no verdict, first candidate kept: {why}");
            Ok(0)
        }
        e => Err(ApiError::upstream(e, crate::serve::record::last_status())),
    }
}
