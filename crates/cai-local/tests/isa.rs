//! Every ISA path this CPU can run, in one process: the kernels of a CPU
//! without AVX-VNNI or AVX-512 are tested on any machine that has them.
//!
//! Paths may differ in the last bits of a logit (summation order). Greedy
//! decoding must then give the same tokens as the scalar path wherever the
//! two paths' logits are bit-identical, and may only part ways at a near
//! tie: where the scalar path's two candidates are within twice the
//! reference tolerance of each other (each path is within the tolerance of
//! llama.cpp, `families.rs`).

use std::path::{Path, PathBuf};

use cai_local::{GenRequest, Isa, LoadOptions, Model, Sampling};

/// As in `families.rs`: |ours − llama.cpp| per logit, relative to the row's
/// largest magnitude.
const TOLERANCE: f32 = 2.5e-3;
/// As the sampler's repetition penalty (sampling.rs): greedy decoding
/// picks the largest logit after it.
const REPEAT_WINDOW: usize = 64;
const REPEAT_PENALTY: f32 = 1.1;

fn load(path: &Path, isa: Isa) -> Model {
    let options = LoadOptions {
        isa: Some(isa),
        ..LoadOptions::default()
    };
    Model::load(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn greedy(prompt: &str, max_tokens: u32) -> GenRequest {
    GenRequest {
        prompt: prompt.to_string(),
        sampling: Sampling {
            max_tokens,
            temperature: 0.0,
            ..Sampling::default()
        },
    }
}

/// The logits greedy decoding compares after `generated`: the repetition
/// penalty applied to its recent tokens.
fn penalised(mut logits: Vec<f32>, generated: &[u32]) -> Vec<f32> {
    let mut recent: Vec<u32> = generated[generated.len().saturating_sub(REPEAT_WINDOW)..].to_vec();
    recent.sort_unstable();
    recent.dedup();
    for id in recent {
        let l = &mut logits[id as usize];
        *l = if *l > 0.0 {
            *l / REPEAT_PENALTY
        } else {
            *l * REPEAT_PENALTY
        };
    }
    logits
}

/// Greedy decoding of `prompt` on every path against the scalar path.
fn check(path: PathBuf, prompt: &str, max_tokens: u32) {
    let scalar = load(&path, Isa::Scalar);
    let want = scalar
        .generate(greedy(prompt, max_tokens))
        .expect("generates");
    assert!(!want.tokens.is_empty());
    let ids = scalar.prompt_ids(prompt);
    let seq: Vec<u32> = ids.iter().chain(&want.tokens).copied().collect();
    let reference = scalar.position_logits(&seq).expect("forward pass");
    for isa in Isa::available().into_iter().filter(|i| *i != Isa::Scalar) {
        let model = load(&path, isa);
        assert_eq!(model.isa(), isa);
        let got = model
            .generate(greedy(prompt, max_tokens))
            .expect("generates");
        let identical = model.position_logits(&seq).expect("forward pass") == reference;
        eprintln!(
            "{}: {isa} logits {} scalar's",
            path.display(),
            if identical {
                "identical to"
            } else {
                "differ from"
            }
        );
        if identical {
            assert_eq!(got.tokens, want.tokens, "{isa}");
            assert_eq!(got.text, want.text, "{isa}");
            continue;
        }
        let Some(t) = got
            .tokens
            .iter()
            .zip(&want.tokens)
            .position(|(a, b)| a != b)
        else {
            // One is a prefix of the other only if a token limit differs.
            assert_eq!(got.tokens.len(), want.tokens.len(), "{isa}");
            continue;
        };
        // Both paths saw the same tokens up to `t`; the scalar logits
        // predicting token `t` come after prompt position `ids.len() + t - 1`.
        let row = penalised(reference[ids.len() + t - 1].clone(), &want.tokens[..t]);
        let scale = row.iter().fold(1f32, |m, v| m.max(v.abs()));
        let (a, b) = (row[want.tokens[t] as usize], row[got.tokens[t] as usize]);
        assert!(
            (a - b).abs() <= 2.0 * TOLERANCE * scale,
            "{isa} parts from scalar at token {t} without a near tie: {a} vs {b} (scale {scale})"
        );
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.gguf"))
}

#[test]
fn greedy_decoding_agrees_across_isa_paths_on_every_family() {
    for name in ["llama-spm", "llama3", "qwen2", "qwen3"] {
        check(
            fixture(name),
            "The quick brown fox jumps over the lazy dog.",
            24,
        );
    }
}

#[test]
fn greedy_decoding_agrees_across_isa_paths_on_the_default_model() {
    let Some(path) = std::env::var_os("CAI_TEST_MODEL").map(PathBuf::from) else {
        eprintln!("SKIP: CAI_TEST_MODEL not set (scripts/test.sh sets it)");
        return;
    };
    check(
        path,
        "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
        32,
    );
}

#[test]
fn an_isa_this_cpu_lacks_is_an_error() {
    let best = Isa::detect();
    assert_eq!(best.check(), Ok(best));
    assert!(Isa::available().contains(&Isa::Scalar));
    #[cfg(target_arch = "x86_64")]
    if best != Isa::Avx512 {
        let err = Model::load(
            &fixture("qwen3"),
            LoadOptions {
                isa: Some(Isa::Avx512),
                ..LoadOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot run the avx512"), "{err}");
    }
}

/// `CAI_LOCAL_ISA` is read once per process, so its errors are checked in
/// a child process of this test binary.
#[test]
fn a_bad_isa_variable_is_an_error_naming_it() {
    for value in ["sse9", "avx512"] {
        if value == "avx512" && Isa::available().iter().any(|i| i.name() == "avx512") {
            continue;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "child_loads_a_fixture",
                "--nocapture",
            ])
            .env("CAI_LOCAL_ISA", value)
            .output()
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("CHILD-ERR CAI_LOCAL_ISA=\""),
            "{value}: {stdout}"
        );
        assert!(stdout.contains(value), "{stdout}");
    }
}

#[test]
#[ignore = "run by a_bad_isa_variable_is_an_error_naming_it"]
fn child_loads_a_fixture() {
    match Model::load(&fixture("qwen3"), LoadOptions::default()) {
        Ok(m) => println!("CHILD-OK {}", m.isa()),
        Err(e) => println!("CHILD-ERR {e}"),
    }
}
