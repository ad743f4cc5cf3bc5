//! Model families against llama.cpp, without real models: for each family
//! a tiny random-weight GGUF and what llama.cpp (llama-cpp-python) makes of
//! it, both written by `scripts/make_local_fixtures.py` into
//! `crates/cai-local/tests/fixtures/`. Token ids must match exactly on a multilingual
//! string set; logits at every position of a sentence within
//! [`TOLERANCE`], on every ISA path of the kernels this CPU can run.

use std::path::PathBuf;

use cai_local::{Isa, LoadOptions, Model};
use serde_json::Value;

/// Largest allowed |ours − llama.cpp| per logit, relative to the row's
/// largest magnitude. The references are llama.cpp's exact f32 path (an
/// f32 KV cache); the embedded model keeps keys and values in f16, like
/// llama.cpp's default cache, and that rounding alone moves these random
/// weights' logits by up to 1.3e-3 (1.5e-6 with an f32 cache: summation
/// order). A wrong architecture detail moves them by whole units.
const TOLERANCE: f64 = 2.5e-3;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}"))
}

fn reference(name: &str, isa: Isa) -> (Model, Value) {
    let options = LoadOptions {
        isa: Some(isa),
        ..LoadOptions::default()
    };
    let model = Model::load(&fixture(&format!("{name}.gguf")), options)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).expect("reference file");
    (model, serde_json::from_str(&text).expect("reference JSON"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|i| i.as_u64().expect("id") as u32)
        .collect()
}

fn check_family(name: &str) {
    for isa in Isa::available() {
        check_family_on(name, isa);
    }
}

fn check_family_on(name: &str, isa: Isa) {
    let (model, r) = reference(name, isa);
    let mut mismatches = Vec::new();
    for case in r["tokenize"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let got = model.tokenizer().encode(text);
        if got != ids(&case["ids"]) {
            mismatches.push(format!("{text:?}: ours {got:?}, llama.cpp {}", case["ids"]));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{name} tokenization:\n{}",
        mismatches.join("\n")
    );

    let seq = ids(&r["logits"]["ids"]);
    let got = model.position_logits(&seq).expect("forward pass");
    let want = r["logits"]["rows"].as_array().expect("rows");
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for (pos, (g, w)) in got.iter().zip(want).enumerate() {
        let w: Vec<f64> = w
            .as_array()
            .expect("row")
            .iter()
            .map(|v| v.as_f64().expect("logit"))
            .collect();
        assert_eq!(g.len(), w.len(), "{name}: vocabulary size");
        let scale = w.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (a, b) in g.iter().zip(&w) {
            worst = worst.max((f64::from(*a) - b).abs() / scale);
        }
        let argmax = |xs: &[f64]| {
            xs.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        let g64: Vec<f64> = g.iter().map(|v| f64::from(*v)).collect();
        assert_eq!(
            argmax(&g64),
            argmax(&w),
            "{name} ({isa}): top token at position {pos}"
        );
    }
    eprintln!("{name} ({isa}): worst relative logit difference {worst:.2e}");
    assert!(
        worst <= TOLERANCE,
        "{name} ({isa}): logits differ by {worst:.2e} (> {TOLERANCE:.0e})"
    );
}

#[test]
fn llama_with_a_sentencepiece_vocabulary_matches_llama_cpp() {
    check_family("llama-spm");
}

#[test]
fn llama3_with_its_bpe_pre_tokenizer_matches_llama_cpp() {
    check_family("llama3");
}

#[test]
fn qwen2_with_attention_biases_matches_llama_cpp() {
    check_family("qwen2");
}

#[test]
fn qwen3_with_query_key_norms_matches_llama_cpp() {
    check_family("qwen3");
}

#[test]
fn gemma_with_scaled_embeddings_and_gelu_matches_llama_cpp() {
    check_family("gemma");
}

/// Post-block norms, a sliding window on every other layer, soft-capped
/// attention scores and logits, and Gemma's SentencePiece setup.
#[test]
fn gemma2_with_sliding_windows_and_soft_caps_matches_llama_cpp() {
    check_family("gemma2");
}

/// Five sliding-window layers with their own rotary base to each global
/// one (whose rotary is linearly scaled), and q/k norms.
#[test]
fn gemma3_with_local_and_global_layers_matches_llama_cpp() {
    check_family("gemma3");
}
