//! Where the tests and benchmarks that need the real default model
//! (SmolLM2-135M-Instruct Q4_1) find it. One file, included with `#[path]`
//! by `cai-local`'s tests and `bench_local` and by `cai`'s local-model tests,
//! since test code cannot be shared through a crate without shipping it.

use std::path::PathBuf;

/// The file name `cai model fetch` gives the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where cai's model cache keeps the default model, in the order of
/// `cai model path`: `$CAI_HOME`, `$XDG_CACHE_HOME/cai`, `~/.cache/cai`.
pub fn cached_model() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("CAI_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("cai")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("cai")))?;
    Some(dir.join(DEFAULT_MODEL_FILE))
}

/// The model the tests run: `CAI_TEST_MODEL`, else `cached` (the default
/// model's place in the cache). When the file is absent: a panic under CI
/// (`CI` set), else a skip note and `None`.
pub fn test_model(cached: impl FnOnce() -> Option<PathBuf>) -> Option<PathBuf> {
    let path = std::env::var_os("CAI_TEST_MODEL")
        .map(PathBuf::from)
        .or_else(cached)?;
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
