//! The report's metrics on a small pairs file, against figures worked out
//! by hand from the fake judge's rule P(A) = 2·sA / (2·sA + sB).

use super::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn report_metrics_match_hand_computed_figures() {
    let (s, _) = server(Mode::Logprobs, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let long = format!("score=3 {}", "long ".repeat(20));
    let long_b = format!("score=4 {}", "long ".repeat(20));
    let long_a4 = format!("score=1 {}", "long ".repeat(20));
    let rows = [
        // first 6/7, second 3/5 → P 0.7286, a; consistent; human a.
        Row {
            id: "r1",
            a: &long,
            b: "score=1 short",
            model_a: "judge-m",
            model_b: "other",
            human: "a",
        },
        // first 2/3, second 1/3 → P 0.5, tie; inconsistent; human tie.
        Row {
            id: "r2",
            a: "score=1 same",
            b: "score=1 same",
            model_a: "x",
            model_b: "y",
            human: "tie",
        },
        // first 1/3, second 1/9 → P 2/9, b; consistent; human a.
        Row {
            id: "r3",
            a: "score=1 tiny",
            b: &long_b,
            model_a: "other",
            model_b: "judge-m",
            human: "a",
        },
        // first 1/2, second 1/5 → P 0.35, b; inconsistent (first order undecided); human b.
        Row {
            id: "r4",
            a: &long_a4,
            b: "score=2 x",
            model_a: "x",
            model_b: "y",
            human: "b",
        },
    ];
    let pairs = pairs_csv(dir.path(), &rows);
    let out = dir.path().join("out");
    let assert = label(&s.uri(), &pairs, &out)
        .args(["--concurrency", "1"])
        .assert()
        .code(0);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(stdout.contains("accuracy (a/b/tie)"), "{stdout}");
    assert!(stdout.contains("position consistency"), "{stdout}");

    let r = read_json(&out.join("report.json"));
    assert_eq!(r["judged"], 4);
    assert_eq!(r["human_labelled"], 4);
    assert_eq!(r["ties"], 1);
    close(f(&r["accuracy"]), 0.75, "accuracy");
    close(
        f(&r["accuracy_decisive"]),
        2.0 / 3.0,
        "accuracy on decisive",
    );
    let p1a: f64 = (6.0 / 7.0) * 0.6;
    let p2tie: f64 = 1.0 - 2.0 / 9.0 - 2.0 / 9.0;
    let p3a: f64 = (1.0 / 3.0) * (1.0 / 9.0);
    let p4b: f64 = 0.5 * 0.8;
    let ll = -(p1a.ln() + p2tie.ln() + p3a.ln() + p4b.ln()) / 4.0;
    close(f(&r["log_loss"]), ll, "log-loss");
    close(f(&r["position_consistency"]), 0.5, "position consistency");
    close(
        f(&r["per_judge"][0]["first_position_wins"]),
        5.0 / 7.0,
        "first position wins",
    );
    // Judge: r1 longer a wins, r3 longer b wins, r4 shorter b wins → 2/3.
    // Humans: r1 longer wins, r3 and r4 shorter wins → 1/3 (r2 same length).
    assert_eq!(r["verbosity"]["judge_pairs"], 3);
    close(
        f(&r["verbosity"]["judge_longer_wins"]),
        2.0 / 3.0,
        "judge verbosity",
    );
    assert_eq!(r["verbosity"]["human_pairs"], 3);
    close(
        f(&r["verbosity"]["human_longer_wins"]),
        1.0 / 3.0,
        "human verbosity",
    );
    // judge-m wrote r1's a and r3's b: the judge picks both, humans one.
    let se = &r["self_enhancement"][0];
    assert_eq!(se["judge"], "openai:judge-m");
    assert_eq!(se["pairs"], 2);
    close(f(&se["judge_win_rate"]), 1.0, "judge self win rate");
    close(
        f(&se["human_win_rate"]),
        0.5,
        "human win rate of the judge model",
    );
}
