//! What the user sees while a run goes: a progress bar on a terminal, a
//! one-line summary every few seconds elsewhere (CI logs), or JSON events
//! (`--log-format json`), or nothing (`--quiet`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Stats;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    Bar,
    Lines,
    Json,
    Quiet,
}

impl Display {
    /// `--quiet` wins; then `--log-format json`; then a bar on a terminal.
    pub fn choose(quiet: bool, json: bool) -> Self {
        match (quiet, json) {
            (true, _) => Display::Quiet,
            (false, true) => Display::Json,
            (false, false) if std::io::stderr().is_terminal() => Display::Bar,
            _ => Display::Lines,
        }
    }
}

/// Rows finished in this invocation, shared with the reporter.
#[derive(Debug, Default)]
pub struct Rows {
    pub done: AtomicU64,
    pub rejected: AtomicU64,
}

/// A running reporter; dropping it stops it.
pub struct Reporter {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
    display: Display,
}

const LINE_EVERY: Duration = Duration::from_secs(10);

fn line(stats: &Stats, rows: &Rows, total: u64, start: Instant) -> (String, serde_json::Value) {
    let s = stats.snapshot();
    let done = rows.done.load(Ordering::Relaxed);
    let rejected = rows.rejected.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    let mut text = format!(
        "{done}/{total} rows ({rejected} rejected) · {rate:.1} rows/s · eta {eta} · in flight {} · requests {} (+{} cached) · retries {} · 429s {} · tokens {} in / {} out",
        s.in_flight, s.requests, s.cached, s.retries, s.throttled_429, s.tokens_in, s.tokens_out
    );
    if s.cost_micro_usd > 0 {
        text.push_str(&format!(
            " · cost ${:.4}",
            crate::cost::from_micros(s.cost_micro_usd)
        ));
    }
    let json = serde_json::json!({
        "event": "progress",
        "rows": done,
        "total": total,
        "rejected": rejected,
        "rows_per_s": rate,
        "elapsed_s": secs,
        "stats": s,
    });
    (text, json)
}

impl Reporter {
    pub fn start(display: Display, stats: Arc<Stats>, rows: Arc<Rows>, total: u64) -> Self {
        let start = Instant::now();
        match display {
            Display::Quiet => Self {
                task: None,
                bar: None,
                display,
            },
            Display::Bar => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} rows · {per_sec} · eta {eta} · {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                let b = bar.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    loop {
                        tick.tick().await;
                        let s = stats.snapshot();
                        b.set_position(rows.done.load(Ordering::Relaxed));
                        let mut msg = format!(
                            "in flight {} · retries {} · 429s {} · rejected {} · tokens {}/{}",
                            s.in_flight,
                            s.retries,
                            s.throttled_429,
                            rows.rejected.load(Ordering::Relaxed),
                            s.tokens_in,
                            s.tokens_out
                        );
                        if s.cost_micro_usd > 0 {
                            msg.push_str(&format!(
                                " · ${:.4}",
                                crate::cost::from_micros(s.cost_micro_usd)
                            ));
                        }
                        b.set_message(msg);
                    }
                });
                Self {
                    task: Some(task),
                    bar: Some(bar),
                    display,
                }
            }
            Display::Lines | Display::Json => {
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(LINE_EVERY);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let (text, json) = line(&stats, &rows, total, start);
                        if display == Display::Json {
                            eprintln!("{json}");
                        } else {
                            eprintln!("cai: {text}");
                        }
                    }
                });
                Self {
                    task: Some(task),
                    bar: None,
                    display,
                }
            }
        }
    }

    /// Prints a message without breaking the bar.
    pub fn note(&self, text: &str) {
        match (&self.bar, self.display) {
            (Some(bar), _) => bar.suspend(|| eprintln!("cai: {text}")),
            (None, Display::Json) => {
                eprintln!(
                    "{}",
                    serde_json::json!({ "event": "note", "message": text })
                )
            }
            (None, _) => eprintln!("cai: {text}"),
        }
    }

    pub fn display(&self) -> Display {
        self.display
    }

    pub fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
