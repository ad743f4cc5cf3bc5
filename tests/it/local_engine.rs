//! The embedded model's generation engine with the real default model:
//! the prefix KV cache, batched decoding and first-token log-probabilities.
//! Needs the default model in the cache (`cai model fetch`) or
//! `CAI_TEST_MODEL`; without it these tests fail under CI and are skipped
//! (with a note) elsewhere.

use std::path::PathBuf;
use std::sync::Arc;

use cai::provider::local::{LoadOptions, LocalProvider};
use cai::provider::{ChatRequest, Completion, GenParams, Message, Provider};

use crate::common::*;

// Its cache path goes unused here: cai's own `model_store` says where the
// cache is.
#[allow(dead_code)]
#[path = "../../crates/cai-local/tests/support/mod.rs"]
mod support;

/// The default model (`CAI_TEST_MODEL`, else cai's model cache).
fn model_path() -> Option<PathBuf> {
    support::test_model(|| cai::provider::model_store::default_model_path().ok())
}

fn load(batch: usize, cache_mb: usize) -> Option<LocalProvider> {
    let path = model_path()?;
    Some(
        LocalProvider::load(
            &path,
            LoadOptions {
                max_batch: batch,
                cache_bytes: Some(cache_mb << 20),
                isa: None,
            },
        )
        .expect("the default model loads"),
    )
}

fn greedy(messages: Vec<Message>, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        cache: Default::default(),
        messages,
        params: GenParams {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(1),
            stop: Vec::new(),
            ..GenParams::default()
        },
    }
}

const SYSTEM: &str = "You are a careful, friendly tutor. Answer in plain English, briefly.";

/// Initial answer, critique, revision: each request extends the previous
/// conversation, as the pipeline's chain does.
fn chain(p: &LocalProvider, question: &str) -> Vec<String> {
    let mut messages = vec![Message::system(SYSTEM), Message::user(question)];
    let mut outputs = Vec::new();
    for next in [
        "Point out one way your answer could be clearer or more accurate.",
        "Rewrite your first answer using that critique.",
    ]
    .into_iter()
    .map(Some)
    .chain([None])
    {
        let c = p
            .generate(&greedy(messages.clone(), 40))
            .expect("generates");
        messages.push(Message::assistant(c.text.clone()));
        outputs.push(c.text);
        match next {
            Some(n) => messages.push(Message::user(n)),
            None => break,
        }
    }
    outputs
}

#[test]
fn greedy_chain_output_is_the_same_with_and_without_the_prefix_cache() {
    let (Some(cold), Some(warm)) = (load(1, 0), load(1, 256)) else {
        return;
    };
    let questions = ["Why is the sky blue?", "What is a prime number?"];
    for q in questions {
        let want = chain(&cold, q);
        let got = chain(&warm, q);
        assert_eq!(got, want, "cached chain differs for {q:?}");
        assert!(want.iter().all(|t| !t.trim().is_empty()), "{want:?}");
    }
    let (c, w) = (cold.engine().stats(), warm.engine().stats());
    assert_eq!(c.reused_tokens, 0, "{c:?}");
    // Rounds 2 and 3 of each chain reuse the previous round's whole
    // conversation, and the second chain the first one's system prompt.
    assert!(w.reused_tokens > 100, "{w:?}");
    assert!(
        w.prefilled_tokens + w.reused_tokens == c.prefilled_tokens,
        "{w:?} vs {c:?}"
    );
}

#[test]
fn the_prefix_cache_never_holds_more_than_its_bound() {
    // 4 MiB: about 90 positions of this model's KV state, less than two
    // of these conversations, so entries are evicted all the time.
    let Some(p) = load(2, 4) else { return };
    for i in 0..6 {
        let q = format!("Give me fact number {i} about the planet Mars, in one sentence.");
        p.generate(&greedy(vec![Message::user(q)], 12))
            .expect("generates");
        let s = p.engine().stats();
        assert!(s.cache_bytes <= s.cache_limit, "{s:?}");
        assert!(s.cache_peak <= s.cache_limit, "{s:?}");
    }
    let s = p.engine().stats();
    assert_eq!(s.cache_limit, 4 << 20);
    assert!(s.cache_peak > 0, "nothing was ever cached: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_sequential_greedy_outputs_are_identical() {
    let (Some(one), Some(four)) = (load(1, 0), load(4, 0)) else {
        return;
    };
    let one = Arc::new(one);
    let four = Arc::new(four);
    let questions = [
        "Name three colours.",
        "What is the capital of France? Explain briefly.",
        "Write one sentence about cats.",
        "Count from one to five in words.",
        "Why do we sleep?",
    ];
    let reqs: Vec<ChatRequest> = questions
        .iter()
        .map(|q| greedy(vec![Message::user(*q)], 32))
        .collect();
    let mut sequential = Vec::new();
    for r in &reqs {
        sequential.push(one.complete(r).await.expect("generates").completion);
    }
    let batched = complete_together(&four, &reqs).await;
    for ((q, s), b) in questions.iter().zip(&sequential).zip(&batched) {
        assert_eq!(b.text, s.text, "{q}");
        // Token counts match; how many prompt tokens came from the prefix
        // cache depends on what else was running, so that part may differ.
        let counts = |c: &Completion| c.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
        assert_eq!(counts(b), counts(s), "{q}");
    }
    let (s1, s4) = (one.engine().stats(), four.engine().stats());
    assert_eq!(s1.rows, s1.prefilled_tokens + decode_rows(&sequential));
    // Sequences really shared steps: fewer passes for the same work (a
    // prompt prefix shared with a running sequence is copied, not run).
    assert_eq!(s4.rows + s4.reused_tokens, s1.rows, "{s4:?} vs {s1:?}");
    assert!(s4.steps * 3 < s1.steps * 2, "{s4:?} vs {s1:?}");
}

/// Sends every request at once and returns the replies in order.
async fn complete_together(p: &Arc<LocalProvider>, reqs: &[ChatRequest]) -> Vec<Completion> {
    let tasks: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|r| {
            let p = Arc::clone(p);
            tokio::spawn(async move { p.complete(&r).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.expect("task").expect("generates").completion);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_arriving_together_compute_their_shared_prefix_once() {
    // Cache off: the shared block can only come from a running sequence.
    let (Some(one), Some(four)) = (load(1, 0), load(4, 0)) else {
        return;
    };
    let four = Arc::new(four);
    // A long shared system message, like a constitution's few-shot block.
    let system = SYSTEM.repeat(12);
    let questions = [
        "What is an atom?",
        "Why is ice slippery?",
        "What do bees make?",
        "How far is the Moon?",
    ];
    let reqs: Vec<ChatRequest> = questions
        .iter()
        .map(|q| {
            greedy(
                vec![Message::system(system.as_str()), Message::user(*q)],
                12,
            )
        })
        .collect();
    let ids = |r: &ChatRequest| {
        four.engine()
            .tokenizer()
            .encode(&four.render_prompt(&r.messages).expect("renders"))
    };
    let (a, b) = (ids(&reqs[0]), ids(&reqs[1]));
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(shared > 150, "shared prefix of {shared} tokens");
    let batched = complete_together(&four, &reqs).await;
    for (r, b) in reqs.iter().zip(&batched) {
        let s = one.complete(r).await.expect("generates").completion;
        assert_eq!(b.text, s.text);
    }
    let s = four.engine().stats();
    // Three of the four took the block from the first instead of running it.
    assert!(
        s.reused_tokens >= 3 * (shared as u64 - 1),
        "{s:?}, shared {shared}"
    );
}

/// Rows spent generating: every completion token but the last is fed back.
fn decode_rows(cs: &[cai::provider::Completion]) -> u64 {
    cs.iter()
        .map(|c| c.usage.map_or(0, |u| u.completion_tokens.saturating_sub(1)))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_token_logprobs_are_a_distribution_over_the_top_candidates() {
    let Some(p) = load(2, 64) else { return };
    let mut req = greedy(
        vec![Message::user(
            "Which is a fruit? (A) apple (B) hammer. Reply with (A) or (B) only.",
        )],
        8,
    );
    req.params.top_logprobs = Some(5);
    let c = p.complete(&req).await.expect("generates").completion;
    let tops = c.first_token_logprobs.expect("logprobs were asked for");
    assert!(tops.len() >= 5, "{tops:?}");
    let mass: f64 = tops.iter().map(|t| t.logprob.exp()).sum();
    assert!(mass > 0.0 && mass <= 1.0 + 1e-6, "{mass} {tops:?}");
    assert!(
        tops.windows(2).all(|w| w[0].logprob >= w[1].logprob),
        "{tops:?}"
    );
    assert!(tops.iter().all(|t| t.logprob <= 0.0), "{tops:?}");
    // Greedy: the reply starts with one of the candidates.
    assert!(
        tops.iter()
            .any(|t| !t.token.is_empty() && c.text.starts_with(t.token.as_str())),
        "{:?} vs {tops:?}",
        c.text
    );
    // Not asked for: not computed.
    req.params.top_logprobs = None;
    let c = p.complete(&req).await.expect("generates").completion;
    assert!(c.first_token_logprobs.is_none());
}

#[test]
fn a_local_judge_labels_pairs_from_logprobs() {
    if model_path().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(
        &pairs,
        "id,prompt,response_a,response_b\n\
         p1,What is 2+2?,2+2 is 4.,I will not tell you.\n\
         p2,Name a colour.,Blue is a colour.,Bananas are tasty rocks.\n",
    )
    .expect("write pairs");
    let out = dir.path().join("out");
    let assert = cai()
        .args(["label", "--quiet", "--offline", "--provider", "local"])
        .arg("--pairs")
        .arg(&pairs)
        .arg("--out")
        .arg(&out)
        .assert();
    let output = assert.get_output();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let judgments = read_jsonl(&out.join("judgments.jsonl"));
    assert_eq!(judgments.len(), 2, "{judgments:?}");
    for j in &judgments {
        let judges = j["judges"].as_array().expect("per-judge values");
        assert!(!judges.is_empty(), "{j}");
        for line in judges {
            assert_eq!(line["method"], "logprobs", "{j}");
        }
    }
}
