//! The engine with the real default model (SmolLM2-135M-Instruct Q4_1):
//! tokenizer ids, determinism, token limits, stop strings, resumed replies,
//! concurrent requests, and the load errors.
//!
//! The model is read from `CAI_TEST_MODEL`, else from cai's model cache
//! (`$CAI_HOME`, `$XDG_CACHE_HOME/cai` or `~/.cache/cai`, where
//! `cai model fetch` puts it). When it is absent these tests fail under CI
//! (`CI` set) and otherwise print a skip note.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cai_local::{Finish, GenRequest, Generation, LoadOptions, LocalError, Model, Sampling};

mod support;

/// The default model (`CAI_TEST_MODEL`, else cai's model cache).
fn model_path() -> Option<PathBuf> {
    support::test_model(support::cached_model)
}

/// The model, loaded once for all tests of this binary.
fn model() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            support::test_model(support::cached_model).map(|p| {
                match Model::load(&p, LoadOptions::default()) {
                    Ok(m) => m,
                    Err(e) => panic!("loading {}: {e}", p.display()),
                }
            })
        })
        .as_ref()
}

/// SmolLM2's chat format around one user turn (the template itself is
/// rendered by cai; here the engine only sees text).
fn chat(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn request(user: &str, max_tokens: u32, temperature: f32, seed: Option<u64>) -> GenRequest {
    GenRequest {
        prompt: chat(user),
        sampling: Sampling {
            max_tokens,
            temperature,
            top_p: 0.95,
            seed,
            ..Sampling::default()
        },
    }
}

/// What two generations must agree on to be the same reply.
fn output(g: &Generation) -> (&str, Finish, usize, usize) {
    (
        &g.text,
        g.finish,
        g.stats.prompt_tokens,
        g.stats.completion_tokens,
    )
}

// Reference ids: a Hugging Face `tokenizers` BPE built in Python from this
// GGUF's own `tokenizer.ggml.tokens`/`merges` (read with the `gguf` package)
// with SmolLM2's pre-tokenizer, Sequence[Digits(individual_digits=True),
// ByteLevel(add_prefix_space=False)], and its 17 control tokens added as
// special tokens; then `tokenizer.encode(s).ids`. llama-cpp-python 0.3.36
// (`Llama(vocab_only=True).tokenize(s, add_bos=False, special=True)`) gives
// the same ids for every string.
const KNOWN_IDS: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    (
        "The year 2024 had 366 days.",
        &[
            504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30,
        ],
    ),
    (
        "  leading spaces\n\n\ttabs and\r\nnewlines  ",
        &[
            216, 2899, 5600, 1116, 197, 100, 7366, 284, 201, 198, 2241, 5110, 256,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        &[
            1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198,
        ],
    ),
    (
        "naïve café — 日本語のテキスト 🤖 emoji",
        &[
            3546, 46494, 37366, 1841, 17097, 241, 115, 40993, 179, 120, 248, 26453, 11100, 224,
            10391, 251, 10391, 134, 11100, 226, 15107, 114, 240, 649, 33777,
        ],
    ),
    (
        "don't you'll I'm we've they're it's",
        &[
            12420, 982, 346, 3060, 339, 5248, 392, 3543, 502, 2316, 357, 506,
        ],
    ),
    (
        "a  b   c\n \n x",
        &[81, 216, 278, 256, 265, 198, 3717, 1792],
    ),
    (
        "Ünïcödé Ω≈ç√∫ 12345.678",
        &[
            142, 246, 94, 25972, 83, 7466, 84, 2756, 5664, 119, 40533, 226, 11512, 22052, 244,
            22052, 121, 216, 33, 34, 35, 36, 37, 30, 38, 39, 40,
        ],
    ),
    (
        "def f(x):\n    return x**2  # square\n",
        &[
            1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5222, 198,
        ],
    ),
];
#[test]
fn tokenizer_matches_reference_ids_and_round_trips() {
    let Some(m) = model() else { return };
    let tok = m.tokenizer();
    for (text, want) in KNOWN_IDS {
        let ids = tok.encode(text);
        assert_eq!(&ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids, false), *text, "round trip of {text:?}");
    }
    assert_eq!(tok.special_id("<|im_start|>"), Some(1));
    assert!(tok.is_end(2), "<|im_end|> ends a turn");
}

#[test]
fn metadata_describes_the_model() {
    let Some(m) = model() else { return };
    let meta = m.metadata();
    assert_eq!(meta.family, "llama");
    assert_eq!(meta.context_length, 8192);
    assert_eq!(meta.vocab_size, 49152);
    assert_eq!(meta.eos_token, "<|im_end|>");
    let template = meta
        .chat_template
        .as_deref()
        .expect("SmolLM2 has a template");
    assert!(template.contains("<|im_start|>"), "{template}");
    assert_eq!(m.max_batch(), cai_local::DEFAULT_MAX_BATCH);
    // Sized by need: the KV state of 1024 tokens for each running sequence
    // and one more (30 layers x 2 x 192 values x 2 bytes per token).
    assert_eq!(
        m.stats().cache_limit,
        30 * 2 * 192 * 2 * 1024 * (cai_local::DEFAULT_MAX_BATCH + 1)
    );
}

#[test]
fn a_seed_with_temperature_gives_identical_output_twice() {
    let Some(m) = model() else { return };
    let req = request("Tell me a short story about a cat.", 40, 0.9, Some(1234));
    let a = m.generate(req.clone()).unwrap();
    let b = m.generate(req).unwrap();
    assert!(!a.text.is_empty());
    assert_eq!(output(&a), output(&b));
    // Another seed samples differently (all 40 tokens agreeing would be a
    // sign the seed is ignored).
    let c = m
        .generate(request(
            "Tell me a short story about a cat.",
            40,
            0.9,
            Some(99),
        ))
        .unwrap();
    assert_ne!(a.text, c.text);
}

#[test]
fn greedy_answer_is_english() {
    let Some(m) = model() else { return };
    let g = m
        .generate(request(
            "What color is the sky on a clear day?",
            40,
            0.0,
            None,
        ))
        .unwrap();
    let text = g.text.trim();
    assert!(text.contains("blue"), "{text:?}");
    let letters = text.chars().filter(|c| c.is_ascii_alphabetic()).count();
    assert!(letters * 2 > text.chars().count(), "{text:?}");
    assert!(
        g.stats.prompt_tokens > 20 && g.stats.completion_tokens > 0,
        "{:?}",
        g.stats
    );
}

#[test]
fn max_tokens_is_honoured() {
    let Some(m) = model() else { return };
    let g = m
        .generate(request("Write a long essay about the sea.", 5, 0.0, None))
        .unwrap();
    assert_eq!(g.finish, Finish::Length);
    assert_eq!(g.stats.completion_tokens, 5);
    assert!(!g.text.is_empty());
}

/// cai's engine retries a reply cut off by its token limit with twice the
/// limit; the model goes on from where the first reply stopped (nothing is
/// generated twice) and the text is exactly what a fresh generation with
/// the larger limit gives, sampled with a seed.
#[test]
fn a_cut_off_reply_retried_with_a_larger_limit_goes_on_where_it_stopped() {
    let Some(path) = model_path() else { return };
    let first = Model::load(&path, LoadOptions::default()).unwrap();
    let fresh = Model::load(&path, LoadOptions::default()).unwrap();
    let short = request(
        "Write a long essay about the history of the sea.",
        12,
        0.8,
        Some(3),
    );
    let mut long = short.clone();
    long.sampling.max_tokens = 24;
    let cut = first.generate(short).unwrap();
    assert_eq!(cut.finish, Finish::Length);
    let before = first.stats();
    let resumed = first.generate(long.clone()).unwrap();
    let after = first.stats();
    let want = fresh.generate(long).unwrap();
    assert_eq!(output(&resumed), output(&want));
    assert!(
        resumed.text.starts_with(&cut.text),
        "{:?} / {:?}",
        cut.text,
        resumed.text
    );
    assert_eq!(after.resumed, before.resumed + 1);
    // No prompt token computed again, and only the new tokens' steps run.
    assert_eq!(after.prefilled_tokens, before.prefilled_tokens);
    let new_tokens = (want.stats.completion_tokens - 12) as u64;
    assert!(
        after.steps - before.steps <= new_tokens,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn stop_strings_end_the_reply_before_the_stop() {
    let Some(m) = model() else { return };
    let free = request("List three colours, one per line.", 40, 0.0, None);
    let full = m.generate(free.clone()).unwrap();
    let space = full.text.find(' ').expect("greedy reply has a space");
    assert!(space > 0, "{:?}", full.text);
    let mut stopped = free;
    stopped.sampling.stop = vec![" ".into(), "never-seen-stop".into()];
    let g = m.generate(stopped).unwrap();
    assert_eq!(g.finish, Finish::Stop);
    assert_eq!(g.text, full.text[..space]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_sequential_ones() {
    let Some(m) = model() else { return };
    let a = request("Name a fruit.", 16, 0.7, Some(5));
    let b = request("Name a planet.", 16, 0.7, Some(6));
    let (ra, rb) = tokio::join!(m.submit(a.clone()).unwrap(), m.submit(b.clone()).unwrap());
    // One after the other: `generate` blocks, so the futures are awaited in
    // turn instead.
    let sa = m.submit(a).unwrap().await.unwrap();
    let sb = m.submit(b).unwrap().await.unwrap();
    assert_eq!(output(&ra.unwrap()), output(&sa));
    assert_eq!(output(&rb.unwrap()), output(&sb));
}

#[test]
fn a_prompt_longer_than_the_context_is_rejected_for_that_request() {
    let Some(m) = model() else { return };
    let long = "word ".repeat(9000);
    let err = m.submit(request(&long, 4, 0.0, None)).unwrap_err();
    assert!(matches!(err, LocalError::PromptTooLong { .. }), "{err:?}");
    assert!(err.is_per_request());
    assert!(err.to_string().contains("8192"), "{err}");
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cai-local-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_model_is_a_named_error() {
    let err = Model::load(Path::new("/no/such/model.gguf"), LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LocalError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/no/such/model.gguf"), "{err}");
}

#[test]
fn a_file_that_is_not_gguf_is_corrupt() {
    let dir = temp_dir("notgguf");
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"<html>not a model</html>").unwrap();
    let err = Model::load(&path, LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LocalError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    // A GGUF magic followed by garbage.
    std::fs::write(&path, b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let err = Model::load(&path, LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LocalError::Corrupt { .. }), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_truncated_model_is_corrupt() {
    let Some(real) = model_path() else { return };
    let dir = temp_dir("truncated");
    let path = dir.join("cut.gguf");
    let mut head = vec![0u8; 4 << 20];
    std::fs::File::open(&real)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    std::fs::write(&path, &head).unwrap();
    let err = Model::load(&path, LoadOptions::default()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, LocalError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn an_unsupported_architecture_is_named() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let dir = temp_dir("bert");
    let path = dir.join("bert.gguf");
    let t = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let arch = Value::String("bert".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
    drop(f);
    let err = Model::load(&path, LoadOptions::default()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(&err, LocalError::UnsupportedArchitecture { arch, .. } if arch == "bert"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bert.gguf") && msg.contains("\"bert\""),
        "{msg}"
    );
}
