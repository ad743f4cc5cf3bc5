//! Report benchmark: writes a synthetic `generate` run of N rows (default
//! 100,000; realistic sizes: ~1 KB answers, one critique→revision round,
//! the trace's per-step copies, 1% rejects), then times `write_report` on
//! it. Prints figures; asserts nothing.
//!
//! ```text
//! cargo run --example bench_report [-- ROWS]
//! ```

use std::io::{BufWriter, Write};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

const WORDS: [&str; 32] = [
    "the",
    "answer",
    "should",
    "be",
    "safe",
    "and",
    "helpful",
    "because",
    "people",
    "often",
    "ask",
    "questions",
    "that",
    "need",
    "care",
    "about",
    "risks",
    "legal",
    "advice",
    "instead",
    "consider",
    "talking",
    "to",
    "someone",
    "you",
    "trust",
    "a",
    "better",
    "approach",
    "is",
    "clear",
    "kind",
];

fn words(rng: &mut ChaCha8Rng, n: usize) -> String {
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// A revision: most words kept, some replaced, some added.
fn revise(rng: &mut ChaCha8Rng, text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for w in text.split(' ') {
        match rng.random_range(0..10) {
            0 => out.push(WORDS[rng.random_range(0..WORDS.len())]),
            1 => {
                out.push(w);
                out.push(WORDS[rng.random_range(0..WORDS.len())]);
            }
            _ => out.push(w),
        }
    }
    out.join(" ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let run = dir.path();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let principles = [
        "harmful-content",
        "legal-risk",
        "privacy",
        "manipulation",
        "tone",
        "honesty",
    ];
    let t0 = Instant::now();
    let mut trace = BufWriter::new(std::fs::File::create(run.join("trace.jsonl"))?);
    let mut pref = BufWriter::new(std::fs::File::create(run.join("preference.jsonl"))?);
    let mut rejects = BufWriter::new(std::fs::File::create(run.join("rejects.jsonl"))?);
    let mut done = 0u64;
    for i in 0..rows {
        let id = format!("p{i:06}");
        let prompt = words(&mut rng, 25);
        if i % 100 == 99 {
            serde_json::to_writer(
                &mut rejects,
                &json!({"id": id, "prompt": prompt, "stage": "revision", "round": 1,
                        "reason": "empty reply after 8 retries"}),
            )?;
            rejects.write_all(b"\n")?;
            continue;
        }
        let n = rng.random_range(80..260);
        let initial = words(&mut rng, n);
        let critique = words(&mut rng, 70);
        let revision = revise(&mut rng, &initial);
        let p = rng.random_range(0..principles.len());
        let (creq, rreq) = (
            format!("Identify how the answer is {}.", principles[p]),
            "Rewrite the answer to fix it.".to_string(),
        );
        let step = |stage: &str, request: &str, response: &str| {
            json!({"stage": stage, "round": if stage == "initial" {0} else {1},
                   "request": request, "response": response, "raw_response": response,
                   "usage": {"prompt_tokens": 300, "completion_tokens": 200}})
        };
        serde_json::to_writer(
            &mut trace,
            &json!({
                "id": id, "prompt": prompt, "system": null,
                "init_prompt": prompt, "init_response": initial,
                "critic_prompt": creq, "critic_response": critique,
                "revision_prompt": rreq, "revision_response": revision,
                "rounds": [{"round": 1, "principle_index": p, "principle_name": principles[p],
                            "critique_request": creq, "critique": critique,
                            "revision_request": rreq, "revision": revision}],
                "steps": [step("initial", &prompt, &initial), step("critique", &creq, &critique),
                          step("revision", &rreq, &revision)],
            }),
        )?;
        trace.write_all(b"\n")?;
        serde_json::to_writer(
            &mut pref,
            &json!({"id": id, "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": revision}],
                    "rejected": [{"role": "assistant", "content": initial}]}),
        )?;
        pref.write_all(b"\n")?;
        done += 1;
    }
    trace.flush()?;
    pref.flush()?;
    rejects.flush()?;
    std::fs::write(
        run.join("manifest.json"),
        serde_json::to_vec_pretty(&json!({
            "status": "done", "provider": "openai", "model": "synthetic", "rounds": 1,
            "preference": "revision", "prompts_total": rows,
            "counts": {"sft_rows": done, "preference_rows": done, "rejected": rows as u64 - done},
            "requests": {"requests": done * 3, "retries": 0, "throttled_429": 0},
            "wall_time_s": 1.0
        }))?,
    )?;
    let input_mb: f64 = ["trace.jsonl", "preference.jsonl", "rejects.jsonl"]
        .iter()
        .map(|f| std::fs::metadata(run.join(f)).map_or(0, |m| m.len()))
        .sum::<u64>() as f64
        / 1e6;
    println!(
        "synthetic run: {rows} prompts ({done} rows), {input_mb:.0} MB of JSONL, written in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let page = cai::output::report::write_report(run, None)?;
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&page)?.len() as f64 / 1e6;
    println!(
        "cai report: {secs:.2}s for {rows} rows ({:.0} MB/s of JSONL), page {size:.1} MB",
        input_mb / secs
    );
    Ok(())
}
