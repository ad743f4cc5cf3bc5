//! Shared support: a `cai` command isolated from the developer's own
//! configuration and keys, deterministic fake replies, output readers.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use crate::common::{fixture, read_csv, read_jsonl, repo};
use sha2::{Digest, Sha256};

/// Every variable that could pick a provider, a key or a setting.
const SCRUB: &[&str] = &[
    "OPENAI_API_KEY",
    "HF_TOKEN",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "TOGETHER_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENROUTER_API_KEY",
];

/// `cai` run in `dir`, with `dir` as HOME and `dir/xdg` as the config home,
/// so neither the developer's config nor their keys are read.
pub fn cai_in(dir: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("cai").expect("binary builds");
    c.current_dir(dir)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"));
    for v in SCRUB {
        c.env_remove(v);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("CAI_") {
            c.env_remove(k);
        }
    }
    c
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A reply recognisable by stage, unique per conversation.
pub fn fake_reply(last: &str, whole: &str) -> String {
    let h = short_hash(whole);
    if last.contains("CRITIQUE-REQ") || last.to_lowercase().contains("critique") {
        format!("Critique: the answer has a flaw {h}.")
    } else if last.contains("REVISION-REQ") || last.to_lowercase().contains("rewrite") {
        format!("Revision: a better answer {h}.")
    } else {
        format!("An initial answer {h}.")
    }
}

pub fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
        .expect("manifest JSON")
}

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Asserts no file under `dir` contains `secret`.
pub fn assert_not_in_files(dir: &Path, secret: &str) {
    for f in walk(dir) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).expect("read")).to_string();
        assert!(!text.contains(secret), "secret leaked into {}", f.display());
    }
}

/// `generate` arguments over `prompts` with the native test constitution.
pub fn generate_args(prompts: &Path, out: &Path) -> Vec<String> {
    vec![
        "generate".into(),
        "--quiet".into(),
        "--prompts".into(),
        prompts.display().to_string(),
        "--constitution".into(),
        fixture("native.json").display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
}

pub fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

pub fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

/// Writes a CSV of `n` plain prompts with ids `p0..` (the cost tests count
/// their characters).
pub fn prompts_csv(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("prompts.csv");
    let mut w = csv::Writer::from_path(&path).expect("create csv");
    w.write_record(["id", "prompt"]).expect("header");
    for i in 0..n {
        w.write_record([format!("p{i}"), format!("Question number {i}?")])
            .expect("row");
    }
    w.flush().expect("flush");
    path
}
