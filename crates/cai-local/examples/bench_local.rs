//! Benchmark of the embedded local model.
//!
//! `cargo run --release -p cai-local --example bench_local -- [MODEL.gguf]`
//! (default: the default model in cai's cache, where `cai model fetch`
//! puts it) prints model load time,
//! prompt-processing tokens/s, aggregate generation tokens/s with 1, 2 and 4
//! sequences generated together (batched decoding; each the median of five
//! interleaved rounds), the peak resident
//! memory of the process, and the machine's load average before and after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cai_local::{GenRequest, GenStats, LoadOptions, Model, Sampling};

// Only the cache path is used here; the test-model lookup serves the tests.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

const PARAGRAPH: &str = "The lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had taught him, and lit the great lamp that warned the fishing boats away from the rocks. ";

/// One user turn in the ChatML format of the default model (SmolLM2).
fn request(user: String, max_tokens: u32, seed: u64) -> GenRequest {
    GenRequest {
        prompt: format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
        sampling: Sampling {
            max_tokens,
            temperature: 0.8,
            top_p: 0.95,
            seed: Some(seed),
            ..Sampling::default()
        },
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn per_sec(tokens: usize, time: Duration) -> f64 {
    tokens as f64 / time.as_secs_f64().max(1e-9)
}

/// The machine's load averages, to print next to the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => support::cached_model().ok_or("no cache directory: pass MODEL.gguf")?,
    };
    if !path.is_file() {
        return Err(format!("{} not found: run `cai model fetch`", path.display()).into());
    }
    println!("load average     {} (before)", load_average());
    let start = Instant::now();
    // Cache off: every figure below is computed work, not reuse.
    let model = Model::load(
        &path,
        LoadOptions {
            max_batch: 4,
            cache_bytes: Some(0),
            isa: None,
        },
    )?;
    let load = start.elapsed();
    println!("model            {}", path.display());
    println!(
        "threads          {}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("kernels          {}", model.isa());
    println!("load time        {:.1} ms", load.as_secs_f64() * 1e3);

    // Warm-up (page in the mapped weights).
    model.generate(request("Hi".into(), 4, 0))?;

    // Prompt processing: ~500 prompt tokens, one generated token; best of 3.
    let long = PARAGRAPH.repeat(12) + "Summarise the story.";
    let mut best = GenStats::default();
    for i in 0..3 {
        let s = model.generate(request(long.clone(), 1, i))?.stats;
        if best.prefill.is_zero() || s.prefill < best.prefill {
            best = s;
        }
    }
    println!(
        "prompt           {} tokens in {:.1} ms: {:.0} tokens/s",
        best.prompt_tokens,
        best.prefill.as_secs_f64() * 1e3,
        per_sec(best.prompt_tokens, best.prefill)
    );

    // Generation with 1, 2 and 4 sequences at once: all submitted, then
    // awaited (sampled, so each runs to the token limit). The machine is
    // shared and noisy: the three are measured in turn, five times over, so
    // a slow spell hits all of them, and each figure is the median.
    let story = "Write a long, detailed story about a dragon who learns to bake bread.";
    let widths = [1u64, 2, 4];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); widths.len()];
    for round in 0..5u64 {
        for (w, &n) in widths.iter().enumerate() {
            let start = Instant::now();
            let pending = (0..n)
                .map(|i| model.submit(request(story.into(), 128, 100 * round + 10 * n + i)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut toks = 0;
            for p in pending {
                toks += p.wait()?.stats.completion_tokens;
            }
            rates[w].push(per_sec(toks, start.elapsed()));
        }
    }
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let one = median(&mut rates[0].clone());
    for (w, &n) in widths.iter().enumerate() {
        let m = median(&mut rates[w]);
        println!(
            "generate x{n}      {m:.1} tokens/s in all, median of 5 ({:.2}x one sequence; {n} x 128 tokens, short prompts included; range {:.1}-{:.1})",
            m / one,
            rates[w][0],
            rates[w][rates[w].len() - 1]
        );
    }
    let s = model.stats();
    println!(
        "engine           {} steps, {:.2} rows per step",
        s.steps,
        s.rows as f64 / s.steps.max(1) as f64
    );
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS         {mib:.0} MiB");
    }
    println!("load average     {} (after)", load_average());
    Ok(())
}
