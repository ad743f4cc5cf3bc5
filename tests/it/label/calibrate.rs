//! `cai label --calibrate`, `--calibration FILE` and `--format arena`
//! against two fake judges biased in known ways: one favours the option
//! shown first, the other the longer answer, both over-confident (their
//! log-odds ×3), each with its own error, while the humans' labels depend
//! on answer quality alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::support::*;

// A deterministic generator, so the data set is fixed.
use cai_fake::lcg::Lcg;

struct Synth {
    id: String,
    a: String,
    b: String,
    human: &'static str,
}

/// `n` pairs: true log-odds q of A over B in (−2, 2) carried by the
/// `score=` markers; answers padded to unrelated lengths; humans pick from
/// q only, ties likelier when q is small. `labelled: false` leaves the
/// labels out.
fn synthetic(n: usize, seed: u64, prefix: &str, labelled: bool) -> Vec<Synth> {
    let mut r = Lcg(seed);
    (0..n)
        .map(|i| {
            let q = (r.next() - 0.5) * 4.0;
            let pad = |r: &mut Lcg| "word ".repeat((r.next() * 60.0) as usize);
            let a = format!("score={:.6} answer {i} {}", (q / 2.0).exp(), pad(&mut r));
            let b = format!("score={:.6} reply {i} {}", (-q / 2.0).exp(), pad(&mut r));
            let tie = 0.4 * (-q.abs()).exp();
            let pa = (1.0 - tie) / (1.0 + (-q).exp());
            let pb = (1.0 - tie) / (1.0 + q.exp());
            let x = r.next();
            let human = if !labelled {
                ""
            } else if x < pa {
                "a"
            } else if x < pa + pb {
                "b"
            } else {
                "tie"
            };
            Synth {
                id: format!("{prefix}{i}"),
                a: a.trim_end().to_string(),
                b: b.trim_end().to_string(),
                human,
            }
        })
        .collect()
}

fn write_pairs(dir: &Path, name: &str, data: &[Synth]) -> std::path::PathBuf {
    let rows: Vec<Row> = data
        .iter()
        .map(|s| Row {
            id: &s.id,
            a: &s.a,
            b: &s.b,
            model_a: "m1",
            model_b: "m2",
            human: s.human,
        })
        .collect();
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    pairs_csv(&sub, &rows)
}

/// A fake judge and its count of judge requests.
type Served = (
    wiremock::MockServer,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
);

/// The two biased judges: (position judge, length judge).
async fn judges() -> (Served, Served) {
    let position = biased_server(Fake {
        mode: Mode::Logprobs,
        bias: 3.0,
        sharpen: 3.0,
        length_bias: 0.0,
        noise: 1.0,
        salt: 1,
        honour_n: true,
        judge_requests: Default::default(),
    })
    .await;
    let length = biased_server(Fake {
        mode: Mode::Logprobs,
        bias: 1.0,
        sharpen: 3.0,
        length_bias: 1.5,
        noise: 1.0,
        salt: 2,
        honour_n: true,
        judge_requests: Default::default(),
    })
    .await;
    (position, length)
}

fn run(pairs: &Path, out: &Path, urls: [&str; 2]) -> assert_cmd::Command {
    let mut c = cai();
    c.args(["label", "--quiet", "--concurrency", "8", "--seed", "7"])
        .arg("--pairs")
        .arg(pairs)
        .arg("--out")
        .arg(out)
        .arg("--judge")
        .arg(format!("openai:position@{}/v1", urls[0]))
        .arg("--judge")
        .arg(format!("openai:length@{}/v1", urls[1]));
    c
}

/// `submission.csv` as (header, rows of id → [a, b, tie]) in file order.
fn submission(path: &Path) -> (Vec<String>, Vec<(String, [f64; 3])>) {
    let mut r = csv::Reader::from_path(path).expect("submission.csv");
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| {
            let x = x.unwrap();
            let p = |i: usize| x[i].parse::<f64>().unwrap();
            (x[0].to_string(), [p(1), p(2), p(3)])
        })
        .collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn calibration_beats_raw_and_constant_recovers_biases_and_reapplies() {
    let ((s1, n1), (s2, n2)) = judges().await;
    let urls = [s1.uri(), s2.uri()];
    let urls = [urls[0].as_str(), urls[1].as_str()];
    let dir = tempfile::tempdir().unwrap();
    let train = synthetic(300, 11, "t", true);
    let pairs = write_pairs(dir.path(), "train", &train);
    let cal_dir = dir.path().join("cal");

    let out = run(&pairs, &cal_dir, urls)
        .args(["--calibrate", "--folds", "5", "--format", "arena"])
        .assert()
        .code(0)
        .get_output()
        .clone();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    eprintln!(
        "{}",
        std::fs::read_to_string(cal_dir.join("calibration.json")).unwrap()
    );
    assert!(table.contains("held-out: calibrated"), "{table}");

    let report = read_json(&cal_dir.join("report.json"));
    let h = &report["calibration"];
    let (before, after, constant) = (
        f(&h["before"]["log_loss"]),
        f(&h["after"]["log_loss"]),
        f(&h["constant"]["log_loss"]),
    );
    assert_eq!(h["pairs"], 300);
    assert_eq!(h["folds"], 5);
    assert!(
        after < before,
        "held-out log-loss {after} not below raw {before}"
    );
    assert!(
        after < constant,
        "held-out log-loss {after} not below constant {constant}"
    );
    assert!(
        f(&h["after"]["accuracy"]) > f(&h["constant"]["accuracy"]),
        "{h}"
    );

    let cal = read_json(&cal_dir.join("calibration.json"));
    let judge = |name: &str| {
        cal["judges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["judge"] == name)
            .unwrap_or_else(|| panic!("no {name} in {cal}"))
            .clone()
    };
    let (pos, len) = (judge("openai:position"), judge("openai:length"));
    // ln 3 ≈ 1.10 for the judge that favours the option shown first; none
    // for the other.
    let bias = f(&pos["position_bias"]);
    assert!((bias - 3f64.ln()).abs() < 0.05, "{pos}");
    assert!(f(&len["position_bias"]).abs() < 0.05, "{len}");
    // The length judge favours longer answers, the humans do not: the
    // length term must take it away.
    assert!(f(&cal["length"]) < 0.0, "{cal}");
    // Both over-confident: temperatures above 1.
    assert!(f(&pos["temperature"]) > 1.5, "{pos}");
    assert!(f(&len["temperature"]) > 1.5, "{len}");

    // The arena file: its columns, in order, one row per pair in input
    // order, each summing to 1.
    let (header, rows) = submission(&cal_dir.join("submission.csv"));
    assert_eq!(
        header,
        ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    );
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<&str> = train.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, want);
    for (id, p) in &rows {
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-8, "{id}: {p:?}");
        assert!(p.iter().all(|x| (0.0..=1.0).contains(x)), "{id}: {p:?}");
    }

    // Unlabelled pairs: 40 of the same and 20 new ones, calibrated by the
    // saved file. The shared ones get exactly the probabilities the fitted
    // calibration gave them above.
    let mut fresh = synthetic(40, 11, "t", false);
    fresh.extend(synthetic(20, 99, "new", false));
    let fresh_pairs = write_pairs(dir.path(), "fresh", &fresh);
    let apply_dir = dir.path().join("apply");
    run(&fresh_pairs, &apply_dir, urls)
        .arg("--calibration")
        .arg(cal_dir.join("calibration.json"))
        .args(["--format", "arena"])
        .assert()
        .code(0);
    let before: HashMap<String, [f64; 3]> = rows.into_iter().collect();
    let (_, applied) = submission(&apply_dir.join("submission.csv"));
    assert_eq!(applied.len(), 60);
    for (id, p) in &applied {
        if let Some(q) = before.get(id) {
            assert_eq!(p, q, "{id}");
        }
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-8, "{id}: {p:?}");
    }
    // labels.csv carries the same calibrated values (6 decimals).
    let labels = read_records(&apply_dir.join("labels.csv"));
    let applied: HashMap<String, [f64; 3]> = applied.into_iter().collect();
    for r in &labels {
        let p = applied[&r[0]];
        for k in 0..3 {
            close(r[1 + k].parse().unwrap(), (p[k] * 1e6).round() / 1e6, &r[0]);
        }
    }
    let judged = read_jsonl(&apply_dir.join("judgments.jsonl"));
    assert!(judged.iter().all(|j| j["calibrated"].is_array()));

    // A bad calibration file or one for other judges: exit 2, naming the
    // JSON path, before any request.
    let sent = n1.load(Ordering::SeqCst) + n2.load(Ordering::SeqCst);
    let bad = dir.path().join("bad.json");
    let mut text = std::fs::read_to_string(cal_dir.join("calibration.json")).unwrap();
    text = text.replacen("\"temperature\": ", "\"temperature\": \"hot\", \"x\": ", 1);
    std::fs::write(&bad, &text).unwrap();
    let err = run(&fresh_pairs, &dir.path().join("bad"), urls)
        .arg("--calibration")
        .arg(&bad)
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("bad.json: judges[0].temperature: expected a positive number"),
        "{err}"
    );
    let other = run(&fresh_pairs, &dir.path().join("other"), [urls[0], urls[0]])
        .arg("--judge")
        .arg(format!("openai:third@{}/v1", urls[1]))
        .arg("--calibration")
        .arg(cal_dir.join("calibration.json"))
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let other = String::from_utf8_lossy(&other);
    assert!(
        other.contains("calibration.json: judges: fitted for the judges openai:length, openai:position, but this run's judges are"),
        "{other}"
    );
    assert_eq!(n1.load(Ordering::SeqCst) + n2.load(Ordering::SeqCst), sent);
}

#[tokio::test(flavor = "multi_thread")]
async fn calibrate_without_human_labels_is_refused_before_any_request() {
    let ((s1, n1), (s2, n2)) = judges().await;
    let dir = tempfile::tempdir().unwrap();
    let pairs = write_pairs(dir.path(), "p", &synthetic(30, 3, "u", false));
    let err = run(&pairs, &dir.path().join("out"), [&s1.uri(), &s2.uri()])
        .arg("--calibrate")
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("--calibrate needs at least 20 pairs with human labels"),
        "{err}"
    );
    assert_eq!(n1.load(Ordering::SeqCst) + n2.load(Ordering::SeqCst), 0);
}
