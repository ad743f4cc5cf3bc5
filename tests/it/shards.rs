//! Array jobs and `cai merge`: shards picked from the array job's
//! environment (`--shard auto`), run in parallel, joined into one dataset
//! identical to an unsharded run; a missing shard is named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::common::*;

const ARRAY_VARS: [&str; 7] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "CAI_SHARDS",
];

/// `cai generate` against the fake, with no array-job variables inherited.
fn generate(base: &str, prompts: &Path, out: &Path) -> Command {
    let mut c = fake_generate(base, prompts, out);
    for v in ARRAY_VARS {
        c.env_remove(v);
    }
    c.stdout(Stdio::null());
    c
}

fn merge(dirs: &[PathBuf], out: &Path) -> (i32, String) {
    let o = cai()
        .arg("merge")
        .args(dirs)
        .arg("--out")
        .arg(out)
        .output()
        .expect("cai runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Every line of a JSONL file, as a set (asserting none repeats).
fn lines(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let set: BTreeSet<String> = text.lines().map(str::to_string).collect();
    assert_eq!(
        set.len(),
        text.lines().count(),
        "a line repeats in {path:?}"
    );
    set
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn four_slurm_array_shards_merge_into_the_unsharded_dataset() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 41);

    // Four array tasks at once, as `sbatch --array=0-3` starts them.
    let shards: Vec<PathBuf> = (0..4)
        .map(|i| dir.path().join(format!("shard-{i}")))
        .collect();
    let children: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, out)| {
            generate(&fake.url(), &prompts, out)
                .args(["--shard", "auto"])
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", "4")
                .env("SLURM_ARRAY_TASK_MIN", "0")
                .env("SLURM_ARRAY_TASK_MAX", "3")
                .spawn()
                .expect("cai starts")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "shard {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(manifest(&shards[i])["shard"], format!("{}/4", i + 1));
    }
    let whole = dir.path().join("whole");
    let o = generate(&fake.url(), &prompts, &whole).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let merged = dir.path().join("merged");
    let (code, stderr) = merge(&shards, &merged);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("merged 41 SFT rows"), "{stderr}");
    // Same rows (header once: a second header would be a row here).
    let rows = |d: &Path, f: &str| read_csv(&d.join(f)).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(rows(&merged, "sft.csv").len(), 41);
    for f in ["sft.csv", "preference.csv"] {
        assert_eq!(rows(&merged, f), rows(&whole, f), "{f}");
    }
    for f in ["sft.jsonl", "preference.jsonl", "trace.jsonl"] {
        assert_eq!(lines(&merged.join(f)), lines(&whole.join(f)), "{f}");
    }
    let m = manifest(&merged);
    assert_eq!(m["status"], "done");
    assert_eq!(m["counts"]["sft_rows"], 41);
    let shard_requests: u64 = shards
        .iter()
        .map(|s| manifest(s)["requests"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(m["requests"]["requests"].as_u64(), Some(shard_requests));
    assert_eq!(shard_requests, 41 * 3);

    // Shard 3/4 left out: named, nothing written.
    let without = [shards[0].clone(), shards[1].clone(), shards[3].clone()];
    let partial = dir.path().join("partial");
    let (code, stderr) = merge(&without, &partial);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("shard 3/4 is missing"), "{stderr}");
    assert!(!partial.join("sft.csv").exists());
    let o = cai()
        .arg("merge")
        .args(&without)
        .arg("--out")
        .arg(&partial)
        .arg("--partial")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let m = manifest(&partial);
    assert_eq!(m["status"], "partial");
    assert_eq!(m["counts"]["missing"], 10);
    assert_eq!(read_csv(&partial.join("sft.csv")).len(), 31);

    // The same shard twice is an overlap, not a dataset.
    let twice = [shards[0].clone(), shards[0].clone()];
    let (code, stderr) = merge(&twice, &dir.path().join("twice"));
    assert_eq!(code, 2);
    assert!(stderr.contains("are both shard 1/4"), "{stderr}");
}

#[test]
fn shard_auto_without_an_array_job_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    // No server at this address: a request would fail differently.
    let o = generate("http://127.0.0.1:9", &prompts, &dir.path().join("o"))
        .args(["--shard", "auto"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("neither SLURM_ARRAY_TASK_ID"), "{stderr}");
    let o = generate("http://127.0.0.1:9", &prompts, &dir.path().join("o"))
        .args(["--shard", "auto"])
        .env("JOB_COMPLETION_INDEX", "2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--shards N or set CAI_SHARDS"), "{stderr}");
}
