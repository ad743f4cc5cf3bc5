//! Benchmark of the embedded local model.
//!
//! `cargo run --release --example bench_local -- [MODEL.gguf]` (default: the
//! cached default model, fetched when missing) prints model load time, prompt-processing and
//! generation tokens/s with one and with two concurrent sequences, and the
//! peak resident memory of the process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cai::provider::local::{GenStats, LocalProvider};
use cai::provider::{ChatRequest, GenParams, Message, Provider};

const PARAGRAPH: &str = "The lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had taught him, and lit the great lamp that warned the fishing boats away from the rocks. ";

fn request(user: String, max_tokens: u32, seed: u64) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::user(user)],
        params: GenParams {
            max_tokens,
            temperature: 0.8,
            top_p: 0.95,
            seed: Some(seed),
            stop: Vec::new(),
            ..GenParams::default()
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let path = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        // The default model, downloaded into the cache when missing.
        None => rt.block_on(cai::provider::model_store::fetch_default(true))?,
    };
    let start = Instant::now();
    let provider = Arc::new(LocalProvider::load(&path)?.with_max_concurrent(2));
    let load = start.elapsed();
    println!("model            {}", path.display());
    println!("threads          {}", rayon::current_num_threads());
    println!("load time        {:.1} ms", load.as_secs_f64() * 1e3);

    // Warm-up (page in the mapped weights).
    provider.generate(&request("Hi".into(), 4, 0))?;

    // Prompt processing: ~500 prompt tokens, one generated token; best of 3.
    let long = PARAGRAPH.repeat(12) + "Summarise the story.";
    let mut best = GenStats::default();
    for i in 0..3 {
        let (_, s) = provider.generate(&request(long.clone(), 1, i))?;
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

    // Generation, one sequence: sampled so it runs to the token limit.
    let story = "Write a long, detailed story about a dragon who learns to bake bread.";
    let mut toks = 0;
    let mut time = Duration::ZERO;
    for i in 0..3 {
        let (_, s) = provider.generate(&request(story.into(), 128, 10 + i))?;
        toks += s.completion_tokens;
        time += s.decode;
    }
    println!(
        "generate x1      {toks} tokens in {:.2} s: {:.1} tokens/s",
        time.as_secs_f64(),
        per_sec(toks, time)
    );

    // Two sequences at once through the async provider, as the pipeline runs them.
    let (toks, wall) = rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let p = Arc::clone(&provider);
            tasks.push(tokio::spawn(async move {
                p.complete(&request(story.into(), 128, 20 + i)).await
            }));
        }
        let mut toks = 0u64;
        for t in tasks {
            let reply = t.await??;
            toks += reply.completion.usage.map_or(0, |u| u.completion_tokens);
        }
        Ok::<_, Box<dyn std::error::Error>>((toks, start.elapsed()))
    })?;
    println!(
        "generate x2      {toks} tokens in {:.2} s: {:.1} tokens/s total (4 requests, 2 at a time, incl. prompts)",
        wall.as_secs_f64(),
        per_sec(toks as usize, wall)
    );
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS         {mib:.0} MiB");
    }
    Ok(())
}
