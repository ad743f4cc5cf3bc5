//! Refresh for CI: re-running on an edited prompts file sends only the
//! prompts that are new or whose text changed, and `cai merge` writes the
//! current dataset (edited prompts' old rows and removed prompts left out).

use std::collections::BTreeSet;
use std::path::Path;

use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::common::*;

fn write_prompts(path: &Path, rows: &[(&str, &str)]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["id", "prompt"]).unwrap();
    for (id, text) in rows {
        w.write_record([id, text]).unwrap();
    }
    w.flush().unwrap();
}

/// The prompts (among `texts`) that the fake was asked about.
fn sent(fake: &FakeServer, texts: &[&str]) -> (usize, BTreeSet<String>) {
    let reqs = fake.recent_requests();
    let mut seen = BTreeSet::new();
    for r in &reqs {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let all = body["messages"].to_string();
        for t in texts {
            if all.contains(t) {
                seen.insert(t.to_string());
            }
        }
    }
    (reqs.len(), seen)
}

fn run(base: &str, prompts: &Path, out: &Path) {
    generate_openai(base, prompts, &repo("principles/harmless.json"), out)
        .assert()
        .code(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_prompts_file_sends_only_edited_and_added_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.csv");
    let out = dir.path().join("run");
    let v1 = [
        ("a", "Refresh prompt a, first text"),
        ("b", "Refresh prompt b, first text"),
        ("c", "Refresh prompt c, first text"),
        ("d", "Refresh prompt d, first text"),
        ("e", "Refresh prompt e, first text"),
        ("f", "Refresh prompt f, first text"),
    ];
    write_prompts(&prompts, &v1);
    let first = FakeServer::start(FakeConfig::default()).await.unwrap();
    run(&first.url(), &prompts, &out);

    // Edit b and c, remove d, add g, h, i.
    let v2 = [
        ("a", "Refresh prompt a, first text"),
        ("b", "Refresh prompt b, EDITED text"),
        ("c", "Refresh prompt c, EDITED text"),
        ("e", "Refresh prompt e, first text"),
        ("g", "Refresh prompt g, added"),
        ("f", "Refresh prompt f, first text"),
        ("h", "Refresh prompt h, added"),
        ("i", "Refresh prompt i, added"),
    ];
    write_prompts(&prompts, &v2);
    let second = FakeServer::start(FakeConfig {
        record_last: 1000,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    run(&second.url(), &prompts, &out);
    let texts: Vec<&str> = v1.iter().chain(&v2).map(|(_, t)| *t).collect();
    let (requests, asked) = sent(&second, &texts);
    let want: BTreeSet<String> = [
        "Refresh prompt b, EDITED text",
        "Refresh prompt c, EDITED text",
        "Refresh prompt g, added",
        "Refresh prompt h, added",
        "Refresh prompt i, added",
    ]
    .map(str::to_string)
    .into();
    assert_eq!(asked, want);
    assert_eq!(requests, 5 * 3, "initial, critique, revision per prompt");

    // A third run on the same file sends nothing.
    let third = FakeServer::start(FakeConfig::default()).await.unwrap();
    run(&third.url(), &prompts, &out);
    assert_eq!(third.stats().chat_requests, 0);

    // The run directory keeps every row ever written; merge writes the
    // current dataset.
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 6 + 5);
    let dataset = dir.path().join("dataset");
    cai()
        .args(["merge"])
        .arg(&out)
        .arg("--out")
        .arg(&dataset)
        .assert()
        .code(0);
    let rows: BTreeSet<(String, String)> = read_csv(&dataset.join("sft.csv"))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let current: BTreeSet<(String, String)> = v2
        .iter()
        .map(|(i, t)| (i.to_string(), t.to_string()))
        .collect();
    assert_eq!(rows, current);
    let ids: Vec<String> = read_jsonl(&dataset.join("preference.jsonl"))
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 8);
    let m: Value =
        serde_json::from_slice(&std::fs::read(dataset.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["counts"]["superseded"], 2);
    assert_eq!(m["counts"]["removed"], 1);

    // The next scheduled refresh merges into the same directory.
    cai()
        .args(["merge"])
        .arg(&out)
        .arg("--out")
        .arg(&dataset)
        .assert()
        .code(0);
    assert_eq!(read_csv(&dataset.join("sft.csv")).len(), 8);
}
