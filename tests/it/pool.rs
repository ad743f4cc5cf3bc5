//! Endpoint pools: `--base-url` repeated spreads requests over replicas by
//! load and speed, ejects a failing one, and retries its failures on the
//! others; the manifest counts requests per endpoint.

use std::collections::HashSet;
use std::time::Duration;

use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_ejects_the_failing_endpoint_and_gives_the_slow_one_less_work() {
    let latency = Duration::from_millis(20);
    let healthy = FakeServer::start(FakeConfig {
        latency,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let failing = FakeServer::start(FakeConfig {
        latency,
        rate_500: 0.5,
        seed: 3,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let slow = fake_with_latency(250).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 80);
    let out = dir.path().join("out");
    let urls: Vec<String> = [&healthy, &failing, &slow]
        .iter()
        .map(|f| format!("{}/v1", f.url()))
        .collect();
    let o = cai()
        .args([
            "generate",
            "--provider",
            "openai",
            "--quiet",
            "--model",
            "fake-model",
        ])
        .args([
            "--base-url",
            &urls[0],
            "--base-url",
            &urls[1],
            "--base-url",
            &urls[2],
        ])
        .args(["--concurrency", "8", "--max-retries", "3"])
        .args(harmless_files(&prompts, &out))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let rows = read_csv(&out.join("sft.csv"));
    let ids: HashSet<&String> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(
        (rows.len(), ids.len()),
        (80, 80),
        "every prompt written once"
    );

    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let eps = m["endpoints"].as_array().expect("per-endpoint counters");
    assert_eq!(eps.len(), 3);
    let n = |i: usize, k: &str| eps[i][k].as_u64().unwrap();
    for (i, fake) in [&healthy, &failing, &slow].iter().enumerate() {
        assert_eq!(eps[i]["url"], urls[i]);
        assert_eq!(n(i, "requests"), fake.stats().chat_requests, "endpoint {i}");
    }
    assert!(n(1, "failures") > 0 && n(1, "ejections") >= 1, "{eps:?}");
    assert!(n(1, "requests") < n(0, "requests"), "{eps:?}");
    assert!(2 * n(2, "requests") < n(0, "requests"), "slow one: {eps:?}");
    assert_eq!(n(0, "failures") + n(2, "failures"), 0);

    // The run's HTML report shows the same counters per endpoint.
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("Endpoints of the pool"), "no pool table");
    for (i, url) in urls.iter().enumerate() {
        let row = format!("<tr><td>{url}</td><td>1</td><td>{}</td>", n(i, "requests"));
        assert!(page.contains(&row), "report row for {url}: {row}");
    }
}
