//! What the user sees while a run goes: a progress bar on a terminal, a
//! one-line summary every few seconds elsewhere (CI logs), or JSON events
//! (`--log-format json`), or nothing (`--quiet`). With an endpoint pool,
//! each shows requests, failures, latency and state per endpoint.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Stats;
use crate::provider::pool::EndpointStats;
use crate::provider::Provider;

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

/// The endpoints of a pool in a few words each: `host:port 120 req, 3 failed,
/// 210 ms` (and `ejected`/`probing` when not healthy). `None` for one endpoint.
fn endpoints_text(eps: &[EndpointStats]) -> Option<String> {
    if eps.is_empty() {
        return None;
    }
    let parts: Vec<String> = eps
        .iter()
        .map(|e| {
            let host = e
                .url
                .split("://")
                .nth(1)
                .unwrap_or(&e.url)
                .split('/')
                .next()
                .unwrap_or(&e.url);
            let mut t = format!(
                "{host} {} req, {} failed, {:.0} ms",
                e.requests, e.failures, e.mean_latency_ms
            );
            if e.state != "healthy" {
                t.push_str(", ");
                t.push_str(&e.state);
            }
            t
        })
        .collect();
    Some(format!("endpoints: {}", parts.join("; ")))
}

/// The pace of a run: rows per second, or seconds per row below one row
/// per second (a slow local model would otherwise show `0.0 rows/s` for
/// minutes). With nothing finished yet, at least the time so far per row.
fn speed(done: u64, secs: f64) -> String {
    if done == 0 {
        return format!(">{secs:.0} s/row");
    }
    let rate = done as f64 / secs;
    if rate >= 1.0 {
        format!("{rate:.1} rows/s")
    } else {
        format!("{:.1} s/row", secs / done as f64)
    }
}

fn line(
    stats: &Stats,
    rows: &Rows,
    total: u64,
    start: Instant,
    eps: &[EndpointStats],
) -> (String, serde_json::Value) {
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
        "{done}/{total} rows ({rejected} rejected) · {} · eta {eta} · in flight {} · requests {} (+{} cached) · retries {} · 429s {} · tokens {} in / {} out",
        speed(done, secs), s.in_flight, s.requests, s.cached, s.retries, s.throttled_429, s.tokens_in, s.tokens_out
    );
    push_cache_and_cost(&mut text, &s, "cost ");
    let mut json = serde_json::json!({
        "event": "progress",
        "rows": done,
        "total": total,
        "rejected": rejected,
        "rows_per_s": rate,
        "elapsed_s": secs,
        "stats": s,
    });
    if let Some(t) = endpoints_text(eps) {
        text.push_str(" · ");
        text.push_str(&t);
        json["endpoints"] = serde_json::to_value(eps).unwrap_or_default();
    }
    (text, json)
}

/// Appends ` · prompt cache N read / M written` when the provider reported
/// any cache use, and ` · {cost_label}$X` when the run has a cost.
fn push_cache_and_cost(text: &mut String, s: &super::StatsSnapshot, cost_label: &str) {
    use std::fmt::Write;
    if s.tokens_cached > 0 || s.tokens_cache_write > 0 {
        let _ = write!(
            text,
            " · prompt cache {} read / {} written",
            s.tokens_cached, s.tokens_cache_write
        );
    }
    if s.cost_micro_usd > 0 {
        let _ = write!(
            text,
            " · {cost_label}${:.4}",
            crate::cost::from_micros(s.cost_micro_usd)
        );
    }
}

/// The bar's message: requests in flight, retries, rejects, tokens, cost
/// and the pool's endpoints.
fn bar_message(stats: &Stats, rows: &Rows, endpoints: &[EndpointStats]) -> String {
    let s = stats.snapshot();
    let mut msg = format!(
        "in flight {} · retries {} · 429s {} · rejected {} · tokens {}/{}",
        s.in_flight,
        s.retries,
        s.throttled_429,
        rows.rejected.load(Ordering::Relaxed),
        s.tokens_in,
        s.tokens_out
    );
    push_cache_and_cost(&mut msg, &s, "");
    if let Some(t) = endpoints_text(endpoints) {
        msg.push_str(" · ");
        msg.push_str(&t);
    }
    msg
}

impl Reporter {
    /// Starts reporting; `provider` is asked for its per-endpoint figures
    /// (a pool has some, one endpoint none).
    pub fn start(
        display: Display,
        stats: Arc<Stats>,
        rows: Arc<Rows>,
        total: u64,
        provider: Option<Arc<dyn Provider>>,
    ) -> Self {
        let endpoints = move || {
            provider
                .as_ref()
                .map(|p| p.endpoint_stats())
                .unwrap_or_default()
        };
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
                        "{bar:30} {pos}/{len} rows · {speed} · eta {eta} · {msg}",
                    )
                    .map(|st| {
                        st.with_key(
                            "speed",
                            |p: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                let _ = w.write_str(&speed(p.pos(), p.elapsed().as_secs_f64()));
                            },
                        )
                    })
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                crate::logging::attach_bar(&bar);
                let b = bar.clone();
                let task = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    loop {
                        tick.tick().await;
                        b.set_position(rows.done.load(Ordering::Relaxed));
                        b.set_message(bar_message(&stats, &rows, &endpoints()));
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
                        let (text, json) = line(&stats, &rows, total, start, &endpoints());
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
            crate::logging::detach_bar();
            b.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if self.bar.is_some() {
            crate::logging::detach_bar();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str, requests: u64, failures: u64, state: &'static str) -> EndpointStats {
        EndpointStats {
            url: url.into(),
            weight: 1.0,
            requests,
            failures,
            ejections: u64::from(state == "ejected"),
            mean_latency_ms: 212.4,
            state: state.into(),
        }
    }

    #[test]
    fn a_pool_shows_each_endpoint_and_one_endpoint_nothing() {
        assert_eq!(endpoints_text(&[]), None);
        let t = endpoints_text(&[
            ep("http://10.0.0.1:8000/v1", 120, 0, "healthy"),
            ep("http://10.0.0.2:8000/v1", 7, 3, "ejected"),
        ])
        .unwrap();
        assert_eq!(
            t,
            "endpoints: 10.0.0.1:8000 120 req, 0 failed, 212 ms; 10.0.0.2:8000 7 req, 3 failed, 212 ms, ejected"
        );
        let rows = Rows::default();
        let (text, json) = line(
            &Stats::default(),
            &rows,
            10,
            Instant::now(),
            &[ep("http://a:1/v1", 1, 0, "healthy")],
        );
        assert!(
            text.ends_with("endpoints: a:1 1 req, 0 failed, 212 ms"),
            "{text}"
        );
        assert_eq!(json["endpoints"][0]["requests"], 1);
    }

    #[test]
    fn below_one_row_per_second_the_pace_is_seconds_per_row() {
        assert_eq!(speed(50, 10.0), "5.0 rows/s");
        assert_eq!(speed(10, 10.0), "1.0 rows/s");
        assert_eq!(speed(3, 125.0), "41.7 s/row");
        assert_eq!(speed(0, 30.0), ">30 s/row");
        let rows = Rows::default();
        rows.done.store(2, Ordering::Relaxed);
        let start = Instant::now() - Duration::from_secs(90);
        let (text, _) = line(&Stats::default(), &rows, 8, start, &[]);
        assert!(text.contains(" · 45.0 s/row · eta 270s · "), "{text}");
        assert!(!text.contains("rows/s"), "{text}");
    }
}
