//! End to end: `cai label` on a 200-row arena-format file with a two-judge
//! ensemble (and a resume), and `cai generate --samples 4 --preference
//! judge` on 50 prompts, with request counts that match the documented
//! schemes exactly.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::support::*;

fn arena_rows(n: usize) -> Vec<(String, String, String, String, String, String)> {
    (0..n)
        .map(|i| {
            let (sa, sb) = (1 + i % 5, 1 + (i * 7) % 5);
            let a = format!("score={sa} answer {i} {}", "word ".repeat(i % 13));
            let b = format!("score={sb} reply {i} {}", "word ".repeat((i * 3) % 11));
            let human = match i % 3 {
                0 => "a",
                1 => "b",
                _ => "tie",
            };
            let model_a = if i % 4 == 0 { "judge-one" } else { "gpt-x" };
            (
                format!("row{i}"),
                a,
                b,
                model_a.to_string(),
                "llama-y".to_string(),
                human.to_string(),
            )
        })
        .collect()
}

/// `cai generate` of model `gen-m` against the judge-aware mock at `base`,
/// with the native test constitution, quiet.
fn generate(base: &str, prompts: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = cai();
    c.args(["generate", "--quiet", "--provider", "openai"])
        .args(["--model", "gen-m"])
        .arg("--base-url")
        .arg(format!("{base}/v1"))
        .arg("--prompts")
        .arg(prompts)
        .arg("--constitution")
        .arg(repo("tests/fixtures/native.json"))
        .arg("--out")
        .arg(out);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn label_200_arena_rows_with_two_judges_and_resume() {
    let (s1, n1) = server(Mode::Logprobs, 1.0).await;
    let (s2, n2) = server(Mode::Logprobs, 1.5).await;
    let dir = tempfile::tempdir().unwrap();
    let data = arena_rows(200);
    let rows: Vec<Row> = data
        .iter()
        .map(|(id, a, b, ma, mb, h)| Row {
            id,
            a,
            b,
            model_a: ma,
            model_b: mb,
            human: h,
        })
        .collect();
    let pairs = pairs_csv(dir.path(), &rows);
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut c = cai();
        c.args(["label", "--quiet", "--concurrency", "8", "--pairs"])
            .arg(&pairs)
            .arg("--out")
            .arg(&out)
            .arg("--constitution")
            .arg(repo("principles/harmless.json"))
            .arg("--judge")
            .arg(format!("openai:judge-one@{}/v1", s1.uri()))
            .arg("--judge")
            .arg(format!("openai:judge-two@{}/v1", s2.uri()))
            .args(extra);
        c
    };
    // Stopped by the budget part-way, then resumed to the end.
    run(&["--max-requests", "300"]).assert().code(3);
    let partial = read_records(&out.join("labels.csv")).len();
    assert!(partial > 0 && partial < 200, "{partial}");
    run(&[]).assert().code(0);

    // 2 orders × 2 judges × 200 pairs, none sent twice across the resume.
    let (c1, c2) = (n1.load(Ordering::SeqCst), n2.load(Ordering::SeqCst));
    assert_eq!(c1 + c2, 2 * 2 * 200);
    assert_eq!((c1, c2), (400, 400));

    let labels = read_records(&out.join("labels.csv"));
    assert_eq!(labels.len(), 200);
    let ids: HashSet<String> = labels.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(ids.len(), 200, "no row written twice");
    for r in &labels {
        let sum: f64 = (1..=3).map(|i| r[i].parse::<f64>().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{r:?}");
        let judges: serde_json::Value = serde_json::from_str(&r[5]).unwrap();
        assert_eq!(judges.as_array().unwrap().len(), 2);
    }
    // The principles come from the constitution, drawn per pair.
    let j = read_jsonl(&out.join("judgments.jsonl"));
    let principles: HashSet<&str> = j.iter().map(|x| x["principle"].as_str().unwrap()).collect();
    assert!(principles.len() > 3, "{principles:?}");

    let r = read_json(&out.join("report.json"));
    assert_eq!(r["judged"], 200);
    assert_eq!(r["human_labelled"], 200);
    assert_eq!(r["status"], "done");
    assert!(
        r["accuracy"].is_number() && r["log_loss"].is_number(),
        "{r}"
    );
    assert_eq!(r["per_judge"].as_array().unwrap().len(), 2);
    // judge-one wrote model_a of every fourth row: its self-enhancement row.
    let se = r["self_enhancement"].as_array().unwrap();
    assert_eq!(se.len(), 1);
    assert_eq!(se[0]["judge"], "openai:judge-one");
    assert_eq!(se[0]["pairs"], 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_best_of_4_by_judge_tournament_on_50_prompts() {
    let (s, judged) = server(Mode::Logprobs, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.csv");
    let mut text = String::from("id,prompt\n");
    for i in 0..50 {
        text.push_str(&format!("q{i},Question {i}?\n"));
    }
    std::fs::write(&prompts, text).unwrap();
    let out = dir.path().join("out");
    generate(&s.uri(), &prompts, &out)
        .args(["--samples", "4", "--preference", "judge"])
        .assert()
        .code(0);

    // Per prompt: 1 initial request (n = 4) + critique + revision, then a
    // round robin over M = 5 candidates: C(5,2) = 10 pairs × 2 orders × 1 judge.
    let total = s.received_requests().await.unwrap().len();
    assert_eq!(judged.load(Ordering::SeqCst), 50 * 2 * 10);
    assert_eq!(total, 50 * (1 + 2 + 2 * 10));

    // Candidates score 1..4 (samples) and 10 (revision): the revision is
    // chosen, sample 0 rejected, with mean win probabilities as scores.
    let chosen_score: f64 = [1.0, 2.0, 3.0, 4.0]
        .iter()
        .map(|s| 10.0 / (10.0 + s))
        .sum::<f64>()
        / 4.0;
    let rejected_score: f64 = [2.0, 3.0, 4.0, 10.0]
        .iter()
        .map(|s| 1.0 / (1.0 + s))
        .sum::<f64>()
        / 4.0;
    let rows = read_records(&out.join("preference.csv"));
    assert_eq!(rows.len(), 50);
    let header = std::fs::read_to_string(out.join("preference.csv")).unwrap();
    assert!(header.starts_with("id,prompt,chosen,rejected,chosen_score,rejected_score,principle\n"));
    for r in &rows {
        assert!(
            r[2].starts_with("better ") && r[2].ends_with("score=10."),
            "{r:?}"
        );
        assert!(r[3].contains("choice 0 score=1."), "{r:?}");
        close(r[4].parse().unwrap(), chosen_score, "chosen_score");
        close(r[5].parse().unwrap(), rejected_score, "rejected_score");
        assert!(r[6].starts_with("Which answer is kinder?"), "{r:?}");
    }
    let pref = read_jsonl(&out.join("preference.jsonl"));
    assert_eq!(pref.len(), 50);
    assert!(pref[0]["prompt"].is_array() && pref[0]["chosen"][0]["role"] == "assistant");
    assert_eq!(pref[0]["tie"], false);
    let sft = read_records(&out.join("sft.csv"));
    assert_eq!(sft.len(), 50);
    let trace = read_jsonl(&out.join("trace.jsonl"));
    assert_eq!(trace[0]["samples"].as_array().unwrap().len(), 3);
    assert_eq!(trace[0]["judgments"].as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn samples_without_n_support_are_topped_up_with_seeded_requests() {
    let (s, _) = server_with(Mode::Logprobs, 1.0, false).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.csv");
    std::fs::write(&prompts, "id,prompt\na,One?\nb,Two?\n").unwrap();
    let out = dir.path().join("out");
    generate(&s.uri(), &prompts, &out)
        .args(["--samples", "3", "--preference", "judge", "--seed", "7"])
        .assert()
        .code(0);
    // 3 initial requests (n ignored) + 2 + C(4,2)·2 = 12 judge requests.
    assert_eq!(s.received_requests().await.unwrap().len(), 2 * (3 + 2 + 12));
    let b = bodies(&s).await;
    let initial_seeds: HashSet<u64> = b
        .iter()
        .filter(|x| {
            x["messages"].as_array().unwrap().len() == 8
                && options(x["messages"][7]["content"].as_str().unwrap_or("")).is_none()
        })
        .filter_map(|x| x["seed"].as_u64())
        .collect();
    assert!(initial_seeds.len() >= 3, "{initial_seeds:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn heuristic_selection_sends_no_judge_requests() {
    let (s, judged) = server(Mode::Logprobs, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.csv");
    std::fs::write(&prompts, "id,prompt\na,One?\nb,Two?\n").unwrap();
    let out = dir.path().join("out");
    generate(&s.uri(), &prompts, &out)
        .args(["--samples", "4", "--select", "heuristic"])
        .assert()
        .code(0);
    assert_eq!(judged.load(Ordering::SeqCst), 0);
    assert_eq!(s.received_requests().await.unwrap().len(), 2 * 3);
    let rows = read_records(&out.join("preference.csv"));
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][6], "");
}

#[tokio::test(flavor = "multi_thread")]
async fn preference_judge_compares_final_revision_with_initial_answer() {
    let (s, judged) = server(Mode::Logprobs, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.csv");
    std::fs::write(&prompts, "id,prompt\na,One?\nb,Two?\nc,Three?\n").unwrap();
    let out = dir.path().join("out");
    generate(&s.uri(), &prompts, &out)
        .args(["--preference", "judge"])
        .assert()
        .code(0);
    // initial + critique + revision + 2 orders of the one comparison.
    assert_eq!(judged.load(Ordering::SeqCst), 3 * 2);
    assert_eq!(s.received_requests().await.unwrap().len(), 3 * 5);
    let rows = read_records(&out.join("preference.csv"));
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(r[2].ends_with("score=10."), "{r:?}");
        assert!(r[3].starts_with("Answer "), "{r:?}");
        close(r[4].parse().unwrap(), 10.0 / 11.0, "chosen_score");
        close(r[5].parse().unwrap(), 1.0 / 11.0, "rejected_score");
    }
    // A resume with everything done sends nothing more.
    let before = s.received_requests().await.unwrap().len();
    generate(&s.uri(), &prompts, &out)
        .args(["--preference", "judge"])
        .assert()
        .code(0);
    assert_eq!(s.received_requests().await.unwrap().len(), before);
    assert_eq!(read_records(&out.join("preference.csv")).len(), 3);
}
