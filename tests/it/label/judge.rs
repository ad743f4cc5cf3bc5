//! Soft labels from a fake judge with controlled log-probabilities and
//! verdicts: exact probabilities, both orders, CoT clamp, ties, ensembles,
//! sampled verdicts and unparseable verdicts.

use super::support::*;

fn one_pair(dir: &std::path::Path, a: &str, b: &str) -> std::path::PathBuf {
    pairs_csv(
        dir,
        &[Row {
            id: "p1",
            a,
            b,
            model_a: "m1",
            model_b: "m2",
            human: "",
        }],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn logprob_probabilities_are_exact_and_both_orders_are_averaged() {
    // The judge favours whatever is shown as (A) twice over: P(A) = 2·sA/(2·sA + sB).
    let (s, n) = server(Mode::Logprobs, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let pairs = one_pair(dir.path(), "score=3 good", "score=1 bad");
    let out = dir.path().join("out");
    label(&s.uri(), &pairs, &out).assert().code(0);

    // a first: 6/7; b first: P(A) = 2/5, so P(a) = 3/5.
    let (first, second) = (6.0 / 7.0, 0.6);
    let rows = read_records(&out.join("labels.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][0], "p1");
    close(f(&rows[0][1].into()), first * second, "p_a");
    close(f(&rows[0][2].into()), (1.0 - first) * (1.0 - second), "p_b");
    close(
        f(&rows[0][3].into()),
        1.0 - first * second - (1.0 - first) * (1.0 - second),
        "p_tie",
    );
    assert_eq!(&rows[0][4], "a");
    let judges: serde_json::Value = serde_json::from_str(&rows[0][5]).unwrap();
    close(f(&judges[0]["p_a"]), (first + second) / 2.0, "judge p_a");
    close(f(&judges[0]["p_a_first"]), first, "first order");
    close(f(&judges[0]["p_a_second"]), second, "second order");
    assert_eq!(judges[0]["method"], "logprobs");
    assert_eq!(judges[0]["judge"], "openai:judge-m");

    // Exactly two requests, with the options swapped and logprobs asked for.
    assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2);
    let q0 = b[0]["messages"][0]["content"].as_str().unwrap();
    let q1 = b[1]["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        options(q0).unwrap(),
        ("score=3 good".into(), "score=1 bad".into())
    );
    assert_eq!(
        options(q1).unwrap(),
        ("score=1 bad".into(), "score=3 good".into())
    );
    assert!(q0.contains("Consider the following principle: "), "{q0}");
    assert!(q0.contains("Human: Question p1?"), "{q0}");
    assert!(q0.trim_end().ends_with("The answer is:"), "{q0}");
    assert_eq!(b[0]["logprobs"], true);
    assert_eq!(b[0]["top_logprobs"], 20);
    assert_eq!(b[0]["temperature"], 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_of_thought_probabilities_are_clamped() {
    let (s, n) = server(Mode::Cot, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let pairs = one_pair(dir.path(), "score=3 good", "score=1 bad");
    let out = dir.path().join("out");
    label(&s.uri(), &pairs, &out)
        .args(["--judge-cot", "--max-tokens", "300"])
        .assert()
        .code(0);
    // Each order's verdict is certain (P = 1 or 0); clamped to 0.6 / 0.4.
    let rows = read_records(&out.join("labels.csv"));
    close(f(&rows[0][1].into()), 0.36, "p_a");
    close(f(&rows[0][2].into()), 0.16, "p_b");
    close(f(&rows[0][3].into()), 0.48, "p_tie");
    assert_eq!(&rows[0][4], "a");
    let judges: serde_json::Value = serde_json::from_str(&rows[0][5]).unwrap();
    close(f(&judges[0]["p_a"]), 0.6, "clamped mean");
    assert_eq!(judges[0]["method"], "samples");
    assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
    let b = bodies(&s).await;
    assert!(b[0].get("top_logprobs").is_none(), "{}", b[0]);
    assert_eq!(b[0]["max_tokens"], 300);
    let q = b[0]["messages"][0]["content"].as_str().unwrap();
    assert!(q.contains("Let's think step by step"), "{q}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ties_are_kept_flagged_or_dropped() {
    let (s, _) = server(Mode::Logprobs, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let rows_in = [
        Row {
            id: "even",
            a: "score=1 x",
            b: "score=1 y",
            model_a: "m1",
            model_b: "m2",
            human: "",
        },
        // P = 0.52: inside the default margin 0.05.
        Row {
            id: "close",
            a: "score=13 x",
            b: "score=12 y",
            model_a: "m1",
            model_b: "m2",
            human: "",
        },
        Row {
            id: "clear",
            a: "score=3 x",
            b: "score=1 y",
            model_a: "m1",
            model_b: "m2",
            human: "",
        },
    ];
    let pairs = pairs_csv(dir.path(), &rows_in);
    let keep = dir.path().join("keep");
    label(&s.uri(), &pairs, &keep)
        .args(["--concurrency", "1"])
        .assert()
        .code(0);
    let rows = read_records(&keep.join("labels.csv"));
    let predicted: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[0].to_string(), r[4].to_string()))
        .collect();
    assert_eq!(
        predicted,
        [
            ("even".to_string(), "tie".to_string()),
            ("close".into(), "tie".into()),
            ("clear".into(), "a".into())
        ]
    );

    let drop = dir.path().join("drop");
    label(&s.uri(), &pairs, &drop)
        .args(["--concurrency", "1", "--ties", "drop"])
        .assert()
        .code(0);
    let rows = read_records(&drop.join("labels.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][0], "clear");
    let j = read_jsonl(&drop.join("judgments.jsonl"));
    assert_eq!(j.len(), 3, "dropped ties are still recorded");
    assert_eq!(j[0]["written"], false);
    let report = read_json(&drop.join("report.json"));
    assert_eq!(report["ties"], 2);
    assert_eq!(report["written"], 1);

    // A narrower margin makes the close pair decisive.
    let narrow = dir.path().join("narrow");
    label(&s.uri(), &pairs, &narrow)
        .args(["--concurrency", "1", "--tie-margin", "0.01"])
        .assert()
        .code(0);
    let rows = read_records(&narrow.join("labels.csv"));
    assert_eq!(&rows[1][4], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn ensembles_average_judges_and_keep_each_value() {
    let (s1, n1) = server(Mode::Logprobs, 1.0).await;
    let (s2, n2) = server(Mode::Logprobs, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let pairs = one_pair(dir.path(), "score=3 good", "score=1 bad");
    let out = dir.path().join("out");
    cai()
        .args(["label", "--quiet", "--pairs"])
        .arg(&pairs)
        .arg("--out")
        .arg(&out)
        .arg("--judge")
        .arg(format!("openai:judge-one@{}/v1", s1.uri()))
        .arg("--judge")
        .arg(format!("openai:judge-two@{}/v1", s2.uri()))
        .assert()
        .code(0);
    assert_eq!(n1.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(n2.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Judge one: 0.75 in both orders; judge two: 6/7 and 3/5.
    let (f1, s1v, f2, s2v) = (0.75, 0.75, 6.0 / 7.0, 0.6);
    let rows = read_records(&out.join("labels.csv"));
    close(
        f(&rows[0][1].into()),
        (f1 * s1v + f2 * s2v) / 2.0,
        "ensemble p_a",
    );
    let judges: serde_json::Value = serde_json::from_str(&rows[0][5]).unwrap();
    assert_eq!(judges[0]["judge"], "openai:judge-one");
    assert_eq!(judges[1]["judge"], "openai:judge-two");
    close(f(&judges[0]["p_a"]), 0.75, "judge one");
    close(f(&judges[1]["p_a"]), (f2 + s2v) / 2.0, "judge two");
    let j = read_jsonl(&out.join("judgments.jsonl"));
    close(f(&j[0]["p"]), (0.75 + (f2 + s2v) / 2.0) / 2.0, "ensemble P");
}

#[tokio::test(flavor = "multi_thread")]
async fn sampled_verdicts_use_n_or_one_request_each() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = one_pair(dir.path(), "score=3 good", "score=1 bad");
    for (honour_n, requests) in [(true, 2), (false, 8)] {
        let (s, n) = server_with(Mode::Text, 1.0, honour_n).await;
        let out = dir.path().join(format!("out-{honour_n}"));
        label(&s.uri(), &pairs, &out)
            .args(["--judge-samples", "4"])
            .assert()
            .code(0);
        // P(A) = 0.75 both ways round; 3 of 4 verdicts in each order.
        let j = read_jsonl(&out.join("judgments.jsonl"));
        let expect = if honour_n { 0.75 } else { 1.0 };
        close(f(&j[0]["p"]), expect, "sampled P");
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), requests);
        let b = bodies(&s).await;
        assert_eq!(b[0]["n"], 4);
        assert_eq!(b[0]["temperature"], 1.0);
        if !honour_n {
            let seeds: std::collections::HashSet<u64> =
                b.iter().map(|x| x["seed"].as_u64().unwrap()).collect();
            assert_eq!(
                seeds.len(),
                4,
                "each order's top-up requests have their own seeds"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unparseable_verdicts_are_retried_then_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = one_pair(dir.path(), "score=3 good", "score=1 bad");

    // Unreadable at temperature 0, readable on a fresh sample: one retry per order.
    let (s, n) = server(Mode::GarbageFirst, 1.0).await;
    let out = dir.path().join("retry");
    label(&s.uri(), &pairs, &out).assert().code(0);
    assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 4);
    let b = bodies(&s).await;
    assert_eq!(b[1]["temperature"], 1.0);
    assert_ne!(b[0]["seed"], b[1]["seed"]);
    let rows = read_records(&out.join("labels.csv"));
    assert_eq!(&rows[0][4], "a");

    // Never readable: the first order gives up after 1 + 2 fresh samples and
    // the pair is rejected, with no label row.
    let (s, n) = server(Mode::Garbage, 1.0).await;
    let out = dir.path().join("reject");
    label(&s.uri(), &pairs, &out).assert().code(1);
    assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(read_records(&out.join("labels.csv")).is_empty());
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["id"], "p1");
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no readable verdict"),
        "{}",
        rejects[0]
    );
    assert_eq!(read_json(&out.join("report.json"))["rejected"], 1);
}
