//! Prompt caching against the in-repo fake behaving like the providers'
//! caches: every request of a stage starts with the same bytes; Anthropic
//! gets `cache_control` breakpoints where each stage's shared prefix and
//! each prompt's repeated conversation end (and none below the model's
//! minimum); `prompt_cache_key` goes to OpenAI's endpoint only; cached
//! tokens reach the manifest, the report and `cai serve`'s usage.

use std::path::Path;
use std::process::Command;

use cai_fake::{FakeConfig, FakeServer};
use serde_json::{json, Value};

use crate::common::*;

/// The cache minimum the fake applies: Anthropic's and OpenAI's 1,024.
const MIN: u64 = 1024;

async fn fake() -> FakeServer {
    FakeServer::start(FakeConfig {
        cache_min_tokens: Some(MIN),
        record_last: 1000,
        ..FakeConfig::default()
    })
    .await
    .expect("fake starts")
}

/// `cai generate --provider anthropic` against the fake's Messages route,
/// one request at a time so each prompt's writes precede the next reads.
fn anthropic(base: &str, model: &str, prompts: &Path, out: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("cai"));
    c.env_remove("OPENAI_API_KEY")
        .env_remove("HF_TOKEN")
        .env("ANTHROPIC_API_KEY", "sk-ant-fake")
        .args(["generate", "--provider", "anthropic", "--quiet"])
        .args(["--model", model, "--base-url", base])
        .args(["--concurrency", "1", "--seed", "7"])
        .args(harmless_files(prompts, out))
        .stdin(std::process::Stdio::null());
    c
}

fn run(c: &mut Command) -> (i32, String) {
    let out = c.output().expect("cai runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

fn bodies(fake: &FakeServer) -> Vec<(String, Value)> {
    fake.recent_requests()
        .into_iter()
        .map(|r| {
            let text = String::from_utf8(r.body.to_vec()).unwrap();
            let v = serde_json::from_str(&text).unwrap();
            (text, v)
        })
        .collect()
}

/// The system text of a request body, either API's shape.
fn system_of(v: &Value) -> String {
    if let Some(s) = v["system"].as_str() {
        return s.to_string();
    }
    if let Some(blocks) = v["system"].as_array() {
        return blocks.iter().filter_map(|b| b["text"].as_str()).collect();
    }
    v["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The harmless constitution's stage of a request, by its system message.
fn stage_of(v: &Value) -> &'static str {
    let c: Value =
        serde_json::from_slice(&std::fs::read(repo("principles/harmless.json")).unwrap()).unwrap();
    let sys = system_of(v);
    if sys == c["system_message_critique"] {
        "critique"
    } else if sys == c["system_message_revision"] {
        "revision"
    } else {
        assert_eq!(sys, c["system_message_user_prompt"].as_str().unwrap());
        "initial"
    }
}

/// The text of a turn (a string, or its blocks joined).
fn turn_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(b) => b.iter().filter_map(|b| b["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Checks that two serialized requests of one stage for different prompts
/// are the same bytes up to the first turn that differs (the first
/// prompt-specific one), and differ after it.
fn same_bytes_until_the_prompt(a: &(String, Value), b: &(String, Value), stage: &str) {
    let (ta, va) = a;
    let (tb, vb) = b;
    let ma = va["messages"].as_array().unwrap();
    let mb = vb["messages"].as_array().unwrap();
    let first = (0..ma.len().min(mb.len()))
        .find(|&i| ma[i] != mb[i])
        .expect("the prompts differ");
    // The byte where that turn starts: its text is the prompt-specific part.
    let text = turn_text(&ma[first]);
    let escaped = serde_json::to_string(&text).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    let at = ta.find(escaped).expect("turn text in the body");
    let turn_start = ta[..at].rfind("{\"role\"").unwrap();
    let common = ta
        .bytes()
        .zip(tb.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(
        common >= turn_start,
        "{stage}: requests differ at byte {common}, before the first prompt-specific turn at {turn_start}:\n…{}",
        &ta[common.saturating_sub(80)..(common + 80).min(ta.len())]
    );
    assert!(
        common < at + escaped.len(),
        "{stage}: the prompt-specific turn is the same"
    );
    assert!(
        turn_start > 4000,
        "{stage}: the shared prefix holds the system message and few-shots ({turn_start} bytes)"
    );
}

/// For each stage, two requests of different prompts.
fn pairs_by_stage(bodies: &[(String, Value)]) -> Vec<(&'static str, usize, usize)> {
    let mut out = Vec::new();
    for stage in ["initial", "critique", "revision"] {
        // Same stage and same round (same number of turns), different prompt.
        let of: Vec<usize> = (0..bodies.len())
            .filter(|&i| stage_of(&bodies[i].1) == stage)
            .collect();
        let len = |i: usize| bodies[i].1["messages"].as_array().unwrap().len();
        let a = of[0];
        let b = *of
            .iter()
            .find(|&&j| j != a && len(j) == len(a))
            .expect("two requests of the stage and round");
        out.push((stage, a, b));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_of_a_stage_starts_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    // OpenAI's shape.
    let f = fake().await;
    let out = dir.path().join("openai");
    let (code, err) =
        run(fake_generate(&f.url(), &prompts, &out).args(["--rounds", "1", "--concurrency", "1"]));
    assert_eq!(code, 0, "{err}");
    let b = bodies(&f);
    assert_eq!(b.len(), 9);
    for (stage, x, y) in pairs_by_stage(&b) {
        same_bytes_until_the_prompt(&b[x], &b[y], stage);
    }
    // Anthropic's shape, with breakpoints.
    let f = fake().await;
    let out = dir.path().join("anthropic");
    let (code, err) =
        run(anthropic(&f.url(), "claude-sonnet-4-5", &prompts, &out).args(["--rounds", "1"]));
    assert_eq!(code, 0, "{err}");
    let b = bodies(&f);
    assert_eq!(b.len(), 9);
    for (stage, x, y) in pairs_by_stage(&b) {
        same_bytes_until_the_prompt(&b[x], &b[y], stage);
    }
}

/// The turns (system excluded) that carry `cache_control`.
fn marks(v: &Value) -> Vec<usize> {
    let system: usize = v["system"].as_array().map_or(0, |b| {
        b.iter()
            .filter(|b| b.get("cache_control").is_some())
            .count()
    });
    assert_eq!(system, 0, "the system block is not the end of the prefix");
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m["content"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b.get("cache_control").is_some()))
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_breakpoints_sit_where_each_stage_and_conversation_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let f = fake().await;
    let out = dir.path().join("out");
    let (code, err) =
        run(anthropic(&f.url(), "claude-sonnet-4-5", &prompts, &out).args(["--rounds", "2"]));
    assert_eq!(code, 0, "{err}");
    let b = bodies(&f);
    assert_eq!(b.len(), 2 * 5);
    // harmless.json: 4 few-shots of 6 turns, so turn 23 ends the shared
    // prefix of every stage; each stage has its own system message, so a
    // conversation repeats only within a stage, round after round.
    for (_, v) in &b {
        let turns = v["messages"].as_array().unwrap().len();
        let expected: Vec<usize> = match (stage_of(v), turns) {
            // The initial request: the few-shots only.
            ("initial", 25) => vec![23],
            // Round 1: the whole conversation, which round 2 extends.
            ("critique", 27) => vec![23, 26],
            ("revision", 29) => vec![23, 28],
            // Round 2 (the last): reads round 1's request of its stage.
            ("critique", 31) => vec![23, 26],
            ("revision", 33) => vec![23, 28],
            other => panic!("unexpected request {other:?}"),
        };
        assert_eq!(marks(v), expected, "{} with {turns} turns", stage_of(v));
    }
    let stats = f.stats();
    assert_eq!(stats.cache_control_requests, 10);
    assert!(stats.cached_tokens > 0 && stats.cache_write_tokens > 0);
    let m = manifest(&out);
    assert_eq!(m["requests"]["tokens_cached"], stats.cached_tokens);
    assert_eq!(
        m["requests"]["tokens_cache_write"],
        stats.cache_write_tokens
    );
    assert_eq!(m["requests"]["tokens_in"], stats.prompt_tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_below_the_models_minimum_gets_no_breakpoint_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let f = fake().await;
    let out = dir.path().join("out");
    // Haiku 4.5 caches from 4,096 tokens; harmless.json's prefix is ~1,500.
    let (code, err) = run(
        anthropic(&f.url(), "claude-haiku-4-5", &prompts, &out).args([
            "--rounds",
            "1",
            "--log-level",
            "debug",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    for (_, v) in bodies(&f) {
        assert_eq!(marks(&v), Vec::<usize>::new());
    }
    assert!(
        err.contains("below the model's minimum cacheable length") && err.contains("4096"),
        "{err}"
    );
    assert_eq!(f.stats().cached_tokens, 0);
    assert_eq!(manifest(&out)["requests"]["tokens_cached"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_cached_tokens_reach_the_manifest_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 4);
    let f = fake().await;
    let out = dir.path().join("out");
    let (code, err) = run(
        fake_generate_model(&f.url(), "gpt-4o-mini", &prompts, &out).args([
            "--rounds",
            "2",
            "--concurrency",
            "1",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    let stats = f.stats();
    // The fake's host is not OpenAI's: no prompt_cache_key.
    assert_eq!(stats.prompt_cache_keys, 0);
    assert!(stats.cached_tokens > stats.prompt_tokens / 2, "{stats:?}");
    let m = manifest(&out);
    assert_eq!(m["requests"]["tokens_cached"], stats.cached_tokens);
    assert_eq!(m["requests"]["tokens_cache_write"], 0);
    let report = cai().arg("report").arg(&out).output().unwrap();
    assert!(report.status.success());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("input tokens from the prompt cache"),
        "report shows the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_sums_the_cached_tokens_of_its_upstream_calls() {
    let f = fake().await;
    let mut serve = crate::serve_support::Serve::start(&format!("{}/v1", f.url()), &[], &[]);
    let long = "Be careful and kind. ".repeat(300);
    let body = json!({
        "model": "up-model",
        "messages": [{"role": "system", "content": long}, {"role": "user", "content": "Hi?"}]
    });
    let client = reqwest::Client::new();
    let mut cached = Vec::new();
    for _ in 0..2 {
        let r: Value = client
            .post(format!("{}/chat/completions", serve.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        cached.push(r["usage"]["prompt_tokens_details"]["cached_tokens"].clone());
    }
    serve.terminate();
    // OpenAI reports 0 or leaves the field out when nothing was cached.
    assert!(
        cached[0].is_null() || cached[0] == 0,
        "nothing cached the first time: {cached:?}"
    );
    assert!(cached[1].as_u64().is_some_and(|n| n >= MIN), "{cached:?}");
}

#[test]
fn prompt_cache_key_goes_only_to_openais_own_endpoint() {
    use cai::provider::build::{self, Flags, Keys};
    use cai::provider::registry::ProviderKind;
    use cai::provider::{CacheHint, ChatRequest, Message};
    let req = ChatRequest {
        messages: vec![Message::system("S"), Message::user("p")],
        params: Default::default(),
        cache: CacheHint {
            shared: 1,
            previous: 0,
            extended: false,
            scope: Some("initial:abc".into()),
        },
    };
    let key_sent = |kind: ProviderKind, base: &[String], on: bool| {
        let flags = Flags {
            provider: Some(kind),
            base_urls: base,
            model: Some("gpt-4o-mini"),
            api_key_env: None,
            chat_template: "chatml",
            timeout: 10.0,
            max_reply_bytes: None,
            offline: true,
            local_parallel: None,
            local_cache_mb: None,
            prompt_cache: on,
            api: Default::default(),
        };
        let provider = build::plan(&flags, 1, Keys::Optional)
            .and_then(|p| p.build())
            .expect("builds");
        let v = provider.preview(&req).expect("preview");
        v["body"].get("prompt_cache_key").cloned()
    };
    let key = key_sent(ProviderKind::named("openai").unwrap(), &[], true).expect("sent to OpenAI");
    assert!(key.as_str().is_some_and(|k| k.starts_with("cai-")));
    // The same host given explicitly is still OpenAI's.
    let own = ["https://api.openai.com/v1".to_string()];
    assert_eq!(
        key_sent(ProviderKind::named("openai").unwrap(), &own, true),
        Some(key)
    );
    assert_eq!(
        key_sent(ProviderKind::named("openai").unwrap(), &[], false),
        None
    );
    let local = ["http://127.0.0.1:9/v1".to_string()];
    assert_eq!(
        key_sent(ProviderKind::named("openai").unwrap(), &local, true),
        None
    );
    assert_eq!(
        key_sent(ProviderKind::named("groq").unwrap(), &[], true),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_cache_off_sends_neither_breakpoints_nor_keys() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let f = fake().await;
    let out = dir.path().join("out");
    let (code, err) = run(
        anthropic(&f.url(), "claude-sonnet-4-5", &prompts, &out).args([
            "--rounds",
            "2",
            "--prompt-cache",
            "off",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    for (text, v) in bodies(&f) {
        assert!(!text.contains("cache_control"), "{text}");
        assert!(v["messages"][0]["content"].is_string(), "plain turns");
    }
    let stats = f.stats();
    assert_eq!((stats.cache_control_requests, stats.cached_tokens), (0, 0));
    assert_eq!(manifest(&out)["requests"]["tokens_cached"], 0);
}

/// Spend of a run, from its manifest.
fn cost(out: &Path) -> f64 {
    manifest(out)["cost_usd"].as_f64().expect("priced")
}

#[tokio::test(flavor = "multi_thread")]
async fn max_cost_counts_cache_reads_at_the_cached_price() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 8);
    async fn go(
        prompts: &Path,
        out: &Path,
        cache: &str,
        cap: Option<f64>,
    ) -> ((i32, String), cai_fake::Stats) {
        let f = fake().await;
        let mut c = anthropic(&f.url(), "claude-sonnet-4-5", prompts, out);
        c.args([
            "--rounds",
            "2",
            "--max-tokens",
            "64",
            "--prompt-cache",
            cache,
        ]);
        if let Some(cap) = cap {
            c.args(["--max-cost", &cap.to_string()]);
        }
        let r = run(&mut c);
        (r, f.stats())
    }
    let ((code, err), _) = go(&prompts, &dir.path().join("full"), "off", None).await;
    assert_eq!(code, 0, "{err}");
    let ((code, err), stats) = go(&prompts, &dir.path().join("cached"), "auto", None).await;
    assert_eq!(code, 0, "{err}");
    let (full, cached) = (
        cost(&dir.path().join("full")),
        cost(&dir.path().join("cached")),
    );
    // Sonnet: reads at $0.30, writes at $3.75, the rest at $3 per million.
    let expected = (stats.cached_tokens as f64 * 0.30
        + stats.cache_write_tokens as f64 * 3.75
        + (stats.prompt_tokens - stats.cached_tokens - stats.cache_write_tokens) as f64 * 3.0
        + stats.completion_tokens as f64 * 15.0)
        / 1e6;
    assert!((cached - expected).abs() < 1e-5, "{cached} vs {expected}");
    assert!(cached < 0.6 * full, "cached {cached} vs full {full}");
    // A cap between the two: the cached run fits (its reservations are
    // the full worst case, so leave room for one), the uncached one stops.
    let cap = (cached + full) / 2.0;
    let ((code, err), _) = go(&prompts, &dir.path().join("capped-off"), "off", Some(cap)).await;
    assert_eq!(code, 3, "stops at the cap without the cache: {err}");
    let ((code, err), _) = go(&prompts, &dir.path().join("capped-auto"), "auto", Some(cap)).await;
    assert_eq!(code, 0, "fits under the cap with the cache: {err}");
}

/// A dollar figure following `label` in the dry run's text.
fn dollars_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
    let rest = &text[at + label.len()..];
    let rest = rest.trim_start().trim_start_matches('$');
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("no figure after {label:?}: {rest}"))
}

/// The number after `~` that precedes `label` in the dry run's cache line.
fn tokens_before(text: &str, label: &str) -> u64 {
    let at = text.find(label).expect("label present");
    let head = &text[..at];
    let start = head.rfind('~').expect("a ~figure before the label") + 1;
    head[start..].trim().parse().expect("a token count")
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prices_caching_and_batch_and_a_run_confirms_the_cache_reads() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 8);
    let f = fake().await;
    let dry = |cache: &str, batch: bool| {
        let mut c = anthropic(
            &f.url(),
            "claude-sonnet-4-5",
            &prompts,
            &dir.path().join("dry"),
        );
        c.args(["--rounds", "2", "--max-tokens", "64"]).args([
            "--prompt-cache",
            cache,
            "--dry-run",
        ]);
        if batch {
            c.arg("--batch");
        }
        let out = c.output().expect("cai runs");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = dry("auto", false);
    assert_eq!(f.stats().requests, 0, "a dry run sends nothing");
    let naive = dollars_after(&text, "estimated cost:");
    let cached = dollars_after(&text, "with prompt caching:");
    let batch = dollars_after(&text, "with --batch:");
    let both = dollars_after(&text, "with --batch and prompt caching:");
    // The four figures: Sonnet reads at 0.1× and batch halves every rate,
    // so batch + caching is the cheapest.
    assert!(
        cached < 0.7 * naive,
        "caching {cached} vs naive {naive}\n{text}"
    );
    assert!((batch - naive / 2.0).abs() < 1e-3, "{text}");
    assert!((both - cached / 2.0).abs() < 1e-3, "{text}");
    // With --batch the estimate is at the batch price already, and the
    // live figures are the ones beside it (not halved twice).
    let batched = dry("auto", true);
    assert!(
        (dollars_after(&batched, "estimated cost:") - batch).abs() < 1e-3,
        "{batched}"
    );
    assert!(
        (dollars_after(&batched, "with prompt caching:") - both).abs() < 1e-3,
        "{batched}"
    );
    assert!(
        (dollars_after(&batched, "live (without --batch):") - naive).abs() < 1e-3,
        "{batched}"
    );
    assert!(
        (dollars_after(&batched, "live with prompt caching:") - cached).abs() < 1e-3,
        "{batched}"
    );
    // Without the cache: no caching line at all.
    let off = dry("off", false);
    assert!(!off.contains("with prompt caching"), "{off}");
    assert!((dollars_after(&off, "estimated cost:") - naive).abs() < 1e-9);

    // The run the estimate describes, live (no --batch): the fake's cache
    // reads land near the estimate's (both count 4 characters a token).
    let estimated_reads = tokens_before(&text, "input tokens read from the cache");
    let out = dir.path().join("run");
    let (code, err) = run(
        anthropic(&f.url(), "claude-sonnet-4-5", &prompts, &out).args([
            "--rounds",
            "2",
            "--max-tokens",
            "64",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    let read = f.stats().cached_tokens as f64;
    let ratio = read / estimated_reads as f64;
    assert!(
        (0.8..1.25).contains(&ratio),
        "dry run ~{estimated_reads} cached tokens, the run read {read}\n{text}"
    );
}

/// The OpenAI chat body's fields go out in one fixed order (a server's
/// prefix cache hashes bytes): model, messages, the sampling fields, then
/// the optional ones.
#[tokio::test(flavor = "multi_thread")]
async fn openai_body_fields_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    let f = fake().await;
    let out = dir.path().join("out");
    let (code, err) = run(
        fake_generate_model(&f.url(), "gpt-4o-mini", &prompts, &out).args([
            "--seed",
            "3",
            "--concurrency",
            "1",
        ]),
    );
    assert_eq!(code, 0, "{err}");
    let sent = bodies(&f);
    assert!(!sent.is_empty());
    for (text, v) in &sent {
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "model",
                "messages",
                "max_tokens",
                "temperature",
                "top_p",
                "seed"
            ],
            "{text}"
        );
    }
}
