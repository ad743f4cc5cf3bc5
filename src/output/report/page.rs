//! The HTML page: summary, figures, rejects and the rows browser, written
//! as static markup (readable with JavaScript off); the inline script only
//! filters rows, reading their facets from an embedded JSON block.

use std::fmt::Write as _;

use serde::Serialize;

use super::diff::{word_diff, Change};
use super::html::{self, attr, one_line as preview, push_text, text};
use super::load::{winner_name, GenData, GenRow, LabelData, OptimizeData, RunData};
use super::load::{PrefData, PrefView};
use super::svg::{self, int, num, pct, CalBin, Series};
use crate::feedback::judge::Comparison;
use crate::feedback::metrics::Judgment;
use crate::output::manifest::{AnyManifest, Manifest, MergedManifest};
use crate::output::optimize::DepthReward;
use crate::output::trace::TraceLine;
use crate::output::RejectLine;
use crate::pipeline::Round;
use crate::provider::pool::EndpointStats;

const CSS: &str = include_str!("report.css");
const JS: &str = include_str!("report.js");

/// What the filters match a row on (one entry per row element, in order).
#[derive(Serialize)]
struct Facet<'a> {
    id: &'a str,
    /// Principles of the row's rounds.
    p: Vec<String>,
    /// Round numbers the row has (a reject: the round it failed in).
    r: Vec<u32>,
    /// Stage: `done` for a finished row, the reject's stage, or `label`.
    s: &'a str,
    /// Index of the reject reason group, if a reject.
    x: Option<usize>,
}

struct Page<'a> {
    out: String,
    facets: Vec<Facet<'a>>,
}

/// Renders the whole page.
pub fn render(data: &RunData, title: &str) -> Result<String, serde_json::Error> {
    let mut p = Page {
        out: String::with_capacity(1 << 20),
        facets: Vec::new(),
    };
    let script_hash = html::csp_hash(JS);
    let style_hash = html::csp_hash(CSS);
    let _ = write!(
        p.out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src {script_hash}; style-src {style_hash}; img-src data:; base-uri 'none'; form-action 'none'\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<link rel=\"icon\" href=\"data:,\">\
<title>cai report — {}</title><style>{CSS}</style></head><body>",
        text(title)
    );
    header(&mut p, data, title);
    summary(&mut p, data);
    figures(&mut p, data);
    rejects(&mut p, data);
    rows(&mut p, data);
    let facets = html::json_for_script(&p.facets)?;
    let _ = writeln!(
        p.out,
        "<footer>Written by cai {}. This page is one file: it loads nothing from elsewhere.</footer>\
<script type=\"application/json\" id=\"cai-facets\">{facets}</script><script>{JS}</script></body></html>",
        text(crate::VERSION)
    );
    Ok(p.out)
}

fn header(p: &mut Page, data: &RunData, title: &str) {
    let _ = write!(
        p.out,
        "<header><h1>cai report <span class=\"dir\">{}</span></h1><p class=\"sub\">{} run",
        text(title),
        text(&data.kinds().join(" + "))
    );
    if let Some(s) = data
        .manifest
        .as_ref()
        .map(AnyManifest::status)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            data.label
                .as_ref()
                .and_then(|l| l.report.as_ref().map(|r| r.status.as_str()))
                .filter(|s| !s.is_empty())
        })
        .or_else(|| {
            data.optimize
                .as_ref()
                .map(|o| o.report.status.as_str())
                .filter(|s| !s.is_empty())
        })
    {
        let _ = write!(p.out, " · status <b>{}</b>", text(s));
    }
    if data.torn_lines > 0 {
        let _ = write!(
            p.out,
            " · {} unfinished last line(s) skipped (run still writing?)",
            data.torn_lines
        );
    }
    p.out.push_str("</p><nav><a href=\"#summary\">Summary</a> <a href=\"#figures\">Figures</a> <a href=\"#rejects\">Rejects</a> <a href=\"#rows\">Rows</a></nav></header>");
}

/// A definition list entry, skipped when the value is missing or empty.
fn kv(out: &mut String, key: &str, value: Option<String>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        let _ = write!(
            out,
            "<div><dt>{}</dt><dd>{}</dd></div>",
            text(key),
            text(&v)
        );
    }
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!(
            "{}h {:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else if s >= 60.0 {
        format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.2}s")
    }
}

/// `2026-12-01 10:35:58 UTC` from Unix seconds.
pub fn utc(unix: u64) -> String {
    let t = crate::date::Utc::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn summary(p: &mut Page, data: &RunData) {
    p.out.push_str("<section id=\"summary\"><h2>Summary</h2>");
    match &data.manifest {
        Some(AnyManifest::Run(m)) => {
            manifest_summary(&mut p.out, m);
            endpoints_table(&mut p.out, &m.endpoints);
        }
        Some(AnyManifest::Merged(m)) => merged_summary(&mut p.out, m),
        None => {}
    }
    if let Some(l) = &data.label {
        label_summary(&mut p.out, l);
    }
    if let Some(opt) = &data.optimize {
        optimize_summary(&mut p.out, opt);
    }
    p.out.push_str("</section>");
}

/// What `manifest.json` says about the run. A field the file did not
/// have reads as its default: an empty text and a zero start time are not
/// shown.
fn manifest_summary(o: &mut String, m: &Manifest) {
    o.push_str("<dl class=\"kv\">");
    kv(o, "model", Some(m.model.clone()));
    kv(o, "provider", Some(m.provider.clone()));
    kv(o, "endpoint", Some(m.endpoint.clone()));
    kv(o, "prompts", Some(m.prompts_file.clone()));
    kv(
        o,
        "constitution",
        Some(match m.constitution_format.as_str() {
            "" => m.constitution_file.clone(),
            k => format!("{} ({k})", m.constitution_file),
        })
        .filter(|_| !m.constitution_file.is_empty()),
    );
    kv(o, "rounds", Some(m.rounds.to_string()));
    kv(o, "preference", Some(m.preference.clone()));
    kv(o, "seed", Some(m.seed.to_string()));
    kv(o, "prompts in input", Some(int(m.prompts_total)));
    kv(
        o,
        "done before this invocation",
        if_any(m.prompts_already_done),
    );
    let c = &m.counts;
    kv(o, "SFT rows", Some(int(c.sft_rows)));
    kv(o, "preference rows", Some(int(c.preference_rows)));
    kv(
        o,
        "pairs skipped (revision = initial)",
        Some(int(c.preference_skipped_identical)),
    );
    // Written only when a tie was dropped (`--ties drop`).
    kv(o, "pairs skipped (tie)", if_any(c.preference_skipped_tie));
    kv(o, "rejected", Some(int(c.rejected)));
    requests(o, &m.requests);
    cost(o, m.cost_usd);
    kv(o, "budget", m.max_cost.map(|c| format!("${c:.2}")));
    kv(o, "wall time", Some(secs(m.wall_time_s)));
    kv(o, "time to first row", m.first_row_s.map(secs));
    kv(
        o,
        "requests per second",
        Some(format!("{:.1}", m.requests_per_s)),
    );
    kv(
        o,
        "started",
        (m.started_at_unix > 0).then(|| utc(m.started_at_unix)),
    );
    kv(o, "cai version", Some(m.cai_version.clone()));
    o.push_str("</dl>");
}

/// What the manifest of a merged directory says: where its rows came
/// from and what was left out.
fn merged_summary(o: &mut String, m: &MergedManifest) {
    o.push_str("<dl class=\"kv\">");
    kv(o, "prompts", Some(m.prompts_file.clone()));
    kv(o, "prompts in input", Some(int(m.counts.prompts)));
    kv(
        o,
        "directories merged",
        Some(int(m.merged_from.len() as u64)),
    );
    kv(o, "SFT rows", Some(int(m.counts.sft_rows)));
    kv(o, "preference rows", Some(int(m.counts.preference_rows)));
    kv(o, "rejected", Some(int(m.counts.rejected)));
    kv(
        o,
        "rows of edited prompts left out",
        if_any(m.counts.superseded),
    );
    kv(
        o,
        "rows of removed prompts left out",
        if_any(m.counts.removed),
    );
    kv(o, "prompts with no row", if_any(m.counts.missing));
    requests(o, &m.requests);
    cost(o, m.cost_usd);
    kv(o, "cai version", Some(m.cai_version.clone()));
    o.push_str("</dl>");
    if !m.merged_from.is_empty() {
        o.push_str("<table><caption>Directories merged</caption><thead><tr><th>directory</th><th>shard</th><th>status</th></tr></thead><tbody>");
        for d in &m.merged_from {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&d.dir),
                text(d.shard.as_deref().unwrap_or("all")),
                text(&d.status)
            );
        }
        o.push_str("</tbody></table>");
    }
    if !m.gaps.is_empty() {
        o.push_str("<h3>Left out (--partial)</h3><ul>");
        for g in &m.gaps {
            let _ = write!(o, "<li>{}</li>", text(g));
        }
        o.push_str("</ul>");
    }
}

/// A count worth a line only when something was counted.
fn if_any(n: u64) -> Option<String> {
    (n > 0).then(|| int(n))
}

/// The spend, or why it is unknown.
fn cost(o: &mut String, usd: Option<f64>) {
    kv(
        o,
        "cost",
        Some(usd.map_or_else(
            || "unknown (no price for this model)".into(),
            |c| format!("${c:.4}"),
        )),
    );
}

/// The endpoints of a pool (none for one endpoint).
fn endpoints_table(o: &mut String, endpoints: &[EndpointStats]) {
    if !endpoints.is_empty() {
        o.push_str("<table><caption>Endpoints of the pool</caption><thead><tr><th>endpoint</th><th>weight</th><th>requests</th><th>failures</th><th>ejections</th><th>mean latency</th></tr></thead><tbody>");
        for e in endpoints {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0} ms</td></tr>",
                text(&e.url),
                num(e.weight),
                int(e.requests),
                int(e.failures),
                int(e.ejections),
                e.mean_latency_ms
            );
        }
        o.push_str("</tbody></table>");
    }
}

/// What `cai optimize`'s report says.
fn optimize_summary(o: &mut String, opt: &OptimizeData) {
    let r = &opt.report;
    o.push_str("<h3>Optimisation</h3><dl class=\"kv\">");
    kv(o, "depths", Some(r.reward_per_depth.len().to_string()));
    let best = r.best_reward.or_else(|| {
        r.reward_per_depth
            .iter()
            .map(|d| d.best)
            .filter(|b| b.is_finite())
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
    });
    kv(o, "best reward", best.map(num));
    kv(o, "search.jsonl lines", Some(int(opt.search_lines)));
    // All zero: a report.json without counters (older, or not written yet).
    if r.requests != crate::engine::StatsSnapshot::default() {
        requests(o, &r.requests);
    }
    kv(
        o,
        "wall time",
        Some(r.wall_time_s).filter(|&t| t > 0.0).map(secs),
    );
    o.push_str("</dl>");
}

fn requests(o: &mut String, r: &crate::engine::StatsSnapshot) {
    kv(o, "requests", Some(int(r.requests)));
    kv(o, "answered from the journal", Some(int(r.cached)));
    kv(o, "retries", Some(int(r.retries)));
    kv(o, "429 replies", Some(int(r.throttled_429)));
    kv(o, "failed requests", Some(int(r.failed)));
    kv(
        o,
        "tokens in / out",
        Some(format!("{} / {}", int(r.tokens_in), int(r.tokens_out))),
    );
    // Shown even at 0 when the run counted them: "no cache hits" is worth
    // seeing when the prefix was expected to be cached.
    kv(
        o,
        "input tokens from the prompt cache (read / written)",
        Some(format!(
            "{} / {}{}",
            int(r.tokens_cached),
            int(r.tokens_cache_write),
            if r.tokens_in > 0 && r.tokens_cached > 0 {
                format!(
                    " ({} of the input read)",
                    pct(r.tokens_cached as f64 / r.tokens_in as f64)
                )
            } else {
                String::new()
            }
        )),
    );
}

fn opt_pct(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), pct)
}

fn label_summary(o: &mut String, l: &LabelData) {
    o.push_str("<h3>Labels</h3><dl class=\"kv\">");
    kv(o, "judged pairs (judgments.jsonl)", Some(int(l.total)));
    kv(o, "with a human label", Some(int(l.human)));
    let Some(r) = &l.report else {
        o.push_str("</dl><p>No report.json yet.</p>");
        return;
    };
    kv(o, "judges", Some(r.judges.join(", ")));
    kv(o, "pairs in input", Some(int(r.pairs_total)));
    kv(o, "written to labels.csv", Some(int(r.written)));
    kv(o, "ties", Some(int(r.ties)));
    kv(o, "rejected", Some(int(r.rejected)));
    kv(o, "accuracy vs humans", r.accuracy.map(pct));
    kv(
        o,
        "accuracy (decisive human labels)",
        r.accuracy_decisive.map(pct),
    );
    kv(o, "log loss", r.log_loss.map(|x| format!("{x:.4}")));
    kv(o, "position consistency", r.position_consistency.map(pct));
    kv(
        o,
        "judge picks the longer answer",
        r.verbosity
            .judge_longer_wins
            .map(|x| format!("{} of {} pairs", pct(x), int(r.verbosity.judge_pairs))),
    );
    kv(
        o,
        "humans pick the longer answer",
        r.verbosity
            .human_longer_wins
            .map(|x| format!("{} of {} pairs", pct(x), int(r.verbosity.human_pairs))),
    );
    if let Some(q) = r.requests {
        requests(o, &q);
    }
    kv(
        o,
        "wall time",
        Some(r.wall_time_s).filter(|&t| t > 0.0).map(secs),
    );
    kv(
        o,
        "cai version",
        Some(r.cai_version.clone()).filter(|v| !v.is_empty()),
    );
    o.push_str("</dl>");
    if !r.per_judge.is_empty() {
        o.push_str("<table><caption>Per judge</caption><thead><tr><th>judge</th><th>pairs</th><th>position consistency</th><th>first position wins</th></tr></thead><tbody>");
        for j in &r.per_judge {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&j.judge),
                int(j.pairs),
                opt_pct(j.position_consistency),
                opt_pct(j.first_position_wins)
            );
        }
        o.push_str("</tbody></table>");
    }
    if !r.self_enhancement.is_empty() {
        o.push_str("<table><caption>Self-enhancement (a judge rating its own model's answers)</caption><thead><tr><th>judge</th><th>pairs</th><th>win rate by the judge</th><th>win rate by humans</th></tr></thead><tbody>");
        for s in &r.self_enhancement {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ({} pairs)</td></tr>",
                text(&s.judge),
                int(s.pairs),
                opt_pct(s.judge_win_rate),
                opt_pct(s.human_win_rate),
                int(s.human_pairs)
            );
        }
        o.push_str("</tbody></table>");
    }
}

fn figure(out: &mut String, title: &str, svg: &str, caption: &str) {
    let _ = write!(
        out,
        "<figure><h3>{}</h3>{svg}<figcaption>{}</figcaption></figure>",
        text(title),
        text(caption)
    );
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

fn figures(p: &mut Page, data: &RunData) {
    p.out
        .push_str("<section id=\"figures\"><h2>Figures</h2><div class=\"figs\">");
    let before = p.out.len();
    if let Some(g) = &data.gen {
        gen_figures(&mut p.out, g);
    }
    if let Some(l) = &data.label {
        label_figures(&mut p.out, l);
    }
    if let Some(o) = &data.optimize {
        optimize_figures(&mut p.out, o);
    }
    if p.out.len() == before {
        p.out.push_str("<p>No rows to draw yet.</p>");
    }
    p.out.push_str("</div></section>");
}

fn gen_figures(out: &mut String, g: &GenData) {
    if g.rows_total == 0 {
        return;
    }
    length_figure(out, g);
    principles_figure(out, g);
    edits_figure(out, g);
    verbosity_figure(out, &g.pref);
    scores_figure(out, &g.pref);
    consistency_figure(out, g);
}

/// Answer lengths, initial against final.
fn length_figure(out: &mut String, g: &GenData) {
    let (si, sf) = (sorted(&g.initial_chars), sorted(&g.final_chars));
    // The middle 98% of both, so one huge answer does not squash the rest
    // into a bar or two; the end bins hold the outliers.
    let q = |s: &[f64], x: f64| svg::quantile(s, x).unwrap_or(0.0);
    let lo = q(&si, 0.01).min(q(&sf, 0.01));
    let hi = q(&si, 0.99).max(q(&sf, 0.99)).max(lo + 10.0);
    let step = svg::nice_step(hi - lo, 30);
    let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let med = |s: &[f64]| svg::quantile(s, 0.5).map_or_else(|| "—".into(), num);
    figure(
        out,
        "Answer length: initial vs final revision",
        &svg::histogram(
            "Answer length in characters, initial answers and final revisions",
            "characters (the end bins include anything shorter or longer)",
            &[
                Series {
                    name: "initial",
                    values: &g.initial_chars,
                },
                Series {
                    name: "final revision",
                    values: &g.final_chars,
                },
            ],
            (lo, hi),
            (((hi - lo) / step).round() as usize).clamp(1, 40),
            &|x| num(x),
        ),
        &format!(
            "{} rows. Median length: initial {} characters, final {}.",
            int(g.rows_total),
            med(&si),
            med(&sf)
        ),
    );
}

/// Rounds per principle, the 20 most used by name.
fn principles_figure(out: &mut String, g: &GenData) {
    if !g.principles.is_empty() {
        let mut items: Vec<(String, f64)> = g
            .principles
            .iter()
            .map(|(k, &v)| (k.clone(), v as f64))
            .collect();
        items.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown = 20;
        if items.len() > shown {
            let rest: f64 = items[shown..].iter().map(|i| i.1).sum();
            let n = items.len() - shown;
            items.truncate(shown);
            items.push((format!("{n} other principles"), rest));
        }
        let total: u64 = g.principles.values().sum();
        figure(
            out,
            "Principle usage",
            &svg::hbars("Rounds per principle", &items, None, &|v| int(v as u64)),
            &format!(
                "{} critique→revision rounds over {} principles.",
                int(total),
                g.principles.len()
            ),
        );
    }
}

/// How much the revisions changed the answers.
fn edits_figure(out: &mut String, g: &GenData) {
    let se = sorted(&g.edit_shares);
    figure(
        out,
        "How much the revisions changed",
        &svg::histogram(
            "Share of words removed or added between the initial answer and the final revision",
            "words removed + added, as a share of all words (word-level edit distance)",
            &[Series {
                name: "rows",
                values: &g.edit_shares,
            }],
            (0.0, 1.0),
            20,
            &|x| format!("{:.0}%", x * 100.0),
        ),
        &format!(
            "{} of {} final revisions are identical to the initial answer; median share changed {}.",
            int(g.unchanged),
            int(g.rows_total),
            svg::quantile(&se, 0.5).map_or_else(|| "—".into(), pct)
        ),
    );
}

/// Whether the chosen answer is the longer one.
fn verbosity_figure(out: &mut String, pr: &PrefData) {
    if pr.rows > 0 {
        let n = pr.rows as f64;
        figure(
            out,
            "Verbosity: is the chosen answer longer?",
            &svg::hbars(
                "Chosen answer longer, same length or shorter than the rejected one",
                &[
                    ("chosen longer".into(), pr.chosen_longer as f64 / n),
                    ("same length".into(), pr.same_length as f64 / n),
                    ("chosen shorter".into(), pr.chosen_shorter as f64 / n),
                ],
                Some(1.0),
                &pct,
            ),
            &format!(
                "{} preference rows; the chosen answer is longer in {}.",
                int(pr.rows),
                pct(pr.chosen_longer as f64 / n)
            ),
        );
    }
}

/// The judge's scores of chosen and rejected answers.
fn scores_figure(out: &mut String, pr: &PrefData) {
    if !pr.chosen_scores.is_empty() {
        let all: Vec<f64> = sorted(
            &pr.chosen_scores
                .iter()
                .chain(pr.rejected_scores.iter())
                .copied()
                .collect::<Vec<_>>(),
        );
        let (mut lo, mut hi) = (all[0], all[all.len() - 1]);
        if lo >= 0.0 && hi <= 1.0 {
            (lo, hi) = (0.0, 1.0);
        } else if (hi - lo).abs() < f64::EPSILON {
            hi = lo + 1.0;
        }
        figure(
            out,
            "Judge scores",
            &svg::histogram(
                "Scores of chosen and rejected answers",
                "score",
                &[
                    Series {
                        name: "chosen",
                        values: &pr.chosen_scores,
                    },
                    Series {
                        name: "rejected",
                        values: &pr.rejected_scores,
                    },
                ],
                (lo, hi),
                20,
                &|x| num((x * 1000.0).round() / 1000.0),
            ),
            &format!(
                "{} scored pairs, {} flagged as ties.",
                int(pr.chosen_scores.seen()),
                int(pr.ties)
            ),
        );
    }
}

/// Position consistency per judge.
fn consistency_figure(out: &mut String, g: &GenData) {
    if !g.judges.is_empty() {
        let mut items = Vec::new();
        for (name, t) in &g.judges {
            if t.decided > 0 {
                items.push((
                    format!("{name}: same answer in both orders"),
                    t.consistent as f64 / t.decided as f64,
                ));
            }
            if t.single > 0 {
                items.push((
                    format!("{name}: answer shown first wins"),
                    t.first_wins as f64 / t.single as f64,
                ));
            }
        }
        if !items.is_empty() {
            figure(
                out,
                "Position consistency of the judge",
                &svg::hbars("Position consistency per judge", &items, Some(1.0), &pct),
                &format!(
                    "Over {} comparisons, each judged in both orders. An unbiased judge prefers the same answer in both orders, and the first-shown answer about half the time.",
                    int(g.comparisons)
                ),
            );
        }
    }
}

fn label_figures(out: &mut String, l: &LabelData) {
    if l.total > 0 {
        figure(
            out,
            "Soft labels",
            &svg::histogram(
                "Distribution of P(A better) over judged pairs",
                "P(A better) = p_a + p_tie / 2",
                &[Series {
                    name: "pairs",
                    values: &l.p_a,
                }],
                (0.0, 1.0),
                20,
                &|x| num((x * 100.0).round() / 100.0),
            ),
            &format!("{} judged pairs.", int(l.total)),
        );
    }
    if l.human > 0 {
        let bins: Vec<CalBin> = l
            .calibration
            .iter()
            .filter(|b| b.2 > 0)
            .map(|b| CalBin {
                predicted: b.0 / b.2 as f64,
                observed: b.1 / b.2 as f64,
                count: b.2,
            })
            .collect();
        figure(
            out,
            "Calibration against human labels",
            &svg::calibration(
                "Observed share of human labels for A against the judge's P(A better), per tenth",
                "judge's P(A better)",
                &bins,
            ),
            &format!(
                "{} pairs with a human label (a tie counts ½). Points on the dashed line are perfectly calibrated; dot area grows with the pairs in the bin.",
                int(l.human)
            ),
        );
    }
    if let Some(r) = &l.report {
        let mut items = Vec::new();
        for j in &r.per_judge {
            if let Some(x) = j.position_consistency {
                items.push((format!("{}: same answer in both orders", j.judge), x));
            }
            if let Some(x) = j.first_position_wins {
                items.push((format!("{}: answer shown first wins", j.judge), x));
            }
        }
        if let Some(x) = r.verbosity.judge_longer_wins {
            items.push(("judge picks the longer answer".into(), x));
        }
        if let Some(x) = r.verbosity.human_longer_wins {
            items.push(("humans pick the longer answer".into(), x));
        }
        if let Some(x) = r.accuracy {
            items.push(("accuracy vs humans".into(), x));
        }
        if !items.is_empty() {
            figure(
                out,
                "Judge metrics",
                &svg::hbars("Metrics of report.json", &items, Some(1.0), &pct),
                "From report.json: position bias, verbosity bias and agreement with humans.",
            );
        }
    }
}

fn optimize_figures(out: &mut String, o: &OptimizeData) {
    let d = &o.report.reward_per_depth;
    if d.is_empty() {
        return;
    }
    // NaN (written as `null`): no reward at that depth, no point drawn.
    let points = |y: fn(&DepthReward) -> f64| -> Vec<(f64, f64)> {
        d.iter()
            .map(|p| (p.depth as f64, y(p)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let best = points(|p| p.best);
    let mean = points(|p| p.mean);
    let mut series = Vec::new();
    if !best.is_empty() {
        series.push(("best", best));
    }
    if !mean.is_empty() {
        series.push(("mean", mean));
    }
    figure(
        out,
        "Reward per search depth",
        &svg::lines(
            "Best and mean reward of the candidates at each depth",
            "depth",
            &series,
        ),
        &format!("{} depths, from report.json.", d.len()),
    );
}

fn rejects(p: &mut Page, data: &RunData) {
    let r = &data.rejects;
    p.out.push_str("<section id=\"rejects\"><h2>Rejects</h2>");
    if r.total == 0 {
        p.out.push_str("<p>No rejected rows.</p></section>");
        return;
    }
    let _ = write!(
        p.out,
        "<p>{} rejected, by reason (most frequent first).</p><table class=\"rejects\"><thead><tr><th>count</th><th>stage</th><th>reason</th><th>examples</th></tr></thead><tbody>",
        int(r.total)
    );
    for g in &r.groups {
        let _ = write!(
            p.out,
            "<tr><td>{}</td><td>{}</td><td class=\"t\">{}</td><td>",
            int(g.count),
            text(&g.stage),
            text(&g.reason)
        );
        for e in &g.examples {
            let _ = write!(p.out, "<div class=\"ex\"><b>{}</b> ", text(&e.id));
            push_text(&mut p.out, &preview(&e.prompt, 160));
            p.out.push_str("</div>");
        }
        p.out.push_str("</td></tr>");
    }
    if r.other > 0 {
        let _ = write!(
            p.out,
            "<tr><td>{}</td><td></td><td>other reasons</td><td></td></tr>",
            int(r.other)
        );
    }
    p.out.push_str("</tbody></table></section>");
}

fn rows<'a>(p: &mut Page<'a>, data: &'a RunData) {
    p.out.push_str("<section id=\"rows\"><h2>Rows</h2>");
    let gen_total = data.gen.as_ref().map_or(0, |g| g.rows_total);
    let gen_shown = data.gen.as_ref().map_or(0, |g| g.rows.len());
    let label_total = data.label.as_ref().map_or(0, |l| l.total);
    let label_shown = data.label.as_ref().map_or(0, |l| l.rows.len());
    let _ = write!(
        p.out,
        "<p>The page holds the first {} of {} finished rows",
        int(gen_shown as u64),
        int(gen_total)
    );
    if data.label.is_some() {
        let _ = write!(
            p.out,
            ", the first {} of {} judged pairs",
            int(label_shown as u64),
            int(label_total)
        );
    }
    let _ = write!(
        p.out,
        " and the first {} of {} rejects; the figures count every row.</p>",
        int(data.rejects.sample.len() as u64),
        int(data.rejects.total)
    );
    filters(p, data);
    p.out.push_str("<div id=\"rowlist\">");
    if let Some(g) = &data.gen {
        for row in &g.rows {
            gen_row(p, row);
        }
    }
    if let Some(l) = &data.label {
        for j in &l.rows {
            label_row(p, j);
        }
    }
    for r in &data.rejects.sample {
        reject_row(p, r, data.rejects.group_of(r));
    }
    p.out.push_str("</div></section>");
}

fn select(out: &mut String, name: &str, label: &str, options: &[(String, String)]) {
    let _ = write!(
        out,
        "<label>{} <select name=\"{name}\" id=\"f-{name}\"><option value=\"\">any</option>",
        text(label)
    );
    for (value, shown) in options {
        let _ = write!(
            out,
            "<option value=\"{}\">{}</option>",
            attr(value),
            text(shown)
        );
    }
    out.push_str("</select></label>");
}

fn filters(p: &mut Page, data: &RunData) {
    p.out.push_str("<noscript><p>Filtering needs JavaScript; every row on the page is listed below.</p></noscript>");
    p.out.push_str("<form id=\"filters\" hidden><label>Search <input type=\"search\" name=\"q\" id=\"f-q\" placeholder=\"any text\"></label><label>Id <input type=\"search\" name=\"id\" id=\"f-id\" placeholder=\"id contains\"></label>");
    if let Some(g) = &data.gen {
        let principles: Vec<(String, String)> = g
            .principles
            .keys()
            .map(|k| (k.clone(), preview(k, 60)))
            .collect();
        select(&mut p.out, "principle", "Principle", &principles);
        let rounds: Vec<(String, String)> = (1..=g.rounds_max.max(1))
            .map(|r| (r.to_string(), r.to_string()))
            .collect();
        select(&mut p.out, "round", "Round", &rounds);
    }
    let mut stages: Vec<String> = Vec::new();
    if data.gen.is_some() {
        stages.push("done".into());
    }
    if data.label.is_some() {
        stages.push("label".into());
    }
    for g in &data.rejects.groups {
        if !stages.contains(&g.stage) {
            stages.push(g.stage.clone());
        }
    }
    let stages: Vec<(String, String)> = stages
        .into_iter()
        .map(|s| {
            let shown = match s.as_str() {
                "done" => "finished rows".to_string(),
                "label" => "judged pairs".to_string(),
                other => format!("rejected at {other}"),
            };
            (s, shown)
        })
        .collect();
    select(&mut p.out, "stage", "Stage", &stages);
    let reasons: Vec<(String, String)> = data
        .rejects
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            (
                i.to_string(),
                format!("{} ({})", preview(&g.reason, 60), g.count),
            )
        })
        .collect();
    if !reasons.is_empty() {
        select(&mut p.out, "reason", "Reject reason", &reasons);
    }
    p.out.push_str("<button type=\"reset\">Clear</button> <button type=\"button\" id=\"f-expand\">Expand shown</button> <button type=\"button\" id=\"f-collapse\">Collapse all</button> <output id=\"f-count\"></output></form>");
}

fn block(out: &mut String, label: &str, body: &str) {
    let _ = write!(out, "<h4>{}</h4><pre class=\"t\">", text(label));
    push_text(out, body);
    out.push_str("</pre>");
}

fn gen_row<'a>(p: &mut Page<'a>, row: &'a GenRow) {
    let t = &row.trace;
    let principles: Vec<String> = t.rounds.iter().map(|r| r.principle()).collect();
    p.facets.push(Facet {
        id: &t.id,
        p: principles.clone(),
        r: t.rounds.iter().map(|r| r.round).collect(),
        s: "done",
        x: None,
    });
    let o = &mut p.out;
    let _ = write!(
        o,
        "<article class=\"row\" data-row><details><summary><span class=\"rid\">{}</span> <span class=\"tag\">{} round{}</span> <span class=\"tag\">{} changed</span> <span class=\"pv\">{}</span></summary><div class=\"body\">",
        text(&t.id),
        t.rounds.len(),
        if t.rounds.len() == 1 { "" } else { "s" },
        pct(row.edit_share),
        text(&preview(&t.prompt, 140))
    );
    if let Some(s) = &t.system {
        block(o, "System", s);
    }
    block(o, "Prompt", &t.prompt);
    block(o, "Initial answer", &t.init_response);
    for r in t.rounds.iter() {
        round_block(o, r);
    }
    if !t.rounds.is_empty() {
        diff_block(o, t, row.edit_share);
    }
    for (i, s) in t.samples.iter().enumerate() {
        block(o, &format!("Sample {}", i + 2), s);
    }
    if let Some(pr) = &row.pref {
        pair_block(o, pr);
    }
    if let Some(js) = t.judgments.as_ref().filter(|j| !j.is_empty()) {
        comparisons_table(o, js);
    }
    o.push_str("</div></details></article>");
}

/// One critique→revision round of a row.
fn round_block(o: &mut String, r: &Round) {
    let _ = write!(
        o,
        "<div class=\"round\"><h4>Round {} · <span class=\"pr\">{}</span></h4><details class=\"req\"><summary>critique request</summary><pre class=\"t\">",
        r.round,
        text(&r.principle())
    );
    push_text(o, &r.critique_request);
    o.push_str("</pre></details>");
    block(o, "Critique", &r.critique);
    o.push_str("<details class=\"req\"><summary>revision request</summary><pre class=\"t\">");
    push_text(o, &r.revision_request);
    o.push_str("</pre></details>");
    block(o, "Revision", &r.revision);
    o.push_str("</div>");
}

/// The word diff from the initial answer to the final revision.
fn diff_block(o: &mut String, t: &TraceLine, edit_share: f64) {
    let (spans, aligned) = word_diff(&t.init_response, t.final_answer());
    let _ = write!(
        o,
        "<h4>Initial → final revision ({} of the words changed{})</h4><pre class=\"t diff\">",
        pct(edit_share),
        if aligned {
            ""
        } else {
            "; too long to align word by word"
        }
    );
    let mut open: Option<Change> = None;
    for s in &spans {
        if open != Some(s.change) {
            match open {
                Some(Change::Removed) => o.push_str("</del>"),
                Some(Change::Added) => o.push_str("</ins>"),
                _ => {}
            }
            match s.change {
                Change::Removed => o.push_str("<del>"),
                Change::Added => o.push_str("<ins>"),
                Change::Same => {}
            }
            open = Some(s.change);
        }
        push_text(o, s.text);
    }
    match open {
        Some(Change::Removed) => o.push_str("</del>"),
        Some(Change::Added) => o.push_str("</ins>"),
        _ => {}
    }
    o.push_str("</pre>");
}

/// The preference pair of a row.
fn pair_block(o: &mut String, pr: &PrefView) {
    let score = |s: Option<f64>| s.map(|x| format!(" (score {x:.3})")).unwrap_or_default();
    o.push_str("<div class=\"pair\">");
    block(o, &format!("Chosen{}", score(pr.chosen_score)), &pr.chosen);
    block(
        o,
        &format!("Rejected{}", score(pr.rejected_score)),
        &pr.rejected,
    );
    o.push_str("</div>");
    if let Some(pp) = pr.principle.as_deref().filter(|s| !s.is_empty()) {
        let _ = write!(o, "<p>Comparison principle: {}</p>", text(pp));
    }
    if pr.tie {
        o.push_str("<p><b>Tie</b>: the scores are within the tie margin.</p>");
    }
}

/// The judge's comparisons of a row's candidates.
fn comparisons_table(o: &mut String, js: &[Comparison]) {
    o.push_str("<table class=\"cmp\"><caption>Judge comparisons (candidates: 0 = initial answer, then samples, last = final revision)</caption><thead><tr><th>x vs y</th><th>P(x better)</th><th>P(tie)</th><th>judges: P(x) with x first / second</th><th>principle</th></tr></thead><tbody>");
    for c in js {
        let _ = write!(
            o,
            "<tr><td>{} vs {}</td><td>{:.3}</td><td>{:.3}</td><td>",
            c.x, c.y, c.p, c.p_tie
        );
        for v in &c.judges {
            let _ = write!(
                o,
                "<div>{}: {:.3} / {:.3} ({})</div>",
                text(&v.judge),
                v.p_first,
                v.p_second,
                v.method.as_str()
            );
        }
        let _ = write!(
            o,
            "</td><td class=\"t\">{}</td></tr>",
            text(&preview(&c.principle, 120))
        );
    }
    o.push_str("</tbody></table>");
}

fn label_row<'a>(p: &mut Page<'a>, j: &'a Judgment) {
    p.facets.push(Facet {
        id: &j.id,
        p: Vec::new(),
        r: Vec::new(),
        s: "label",
        x: None,
    });
    let o = &mut p.out;
    let _ = write!(
        o,
        "<article class=\"row\" data-row><details><summary><span class=\"rid\">{}</span> <span class=\"tag\">judge: {}</span> <span class=\"tag\">human: {}</span> <span class=\"pv\">P(A) {:.3} · lengths {} / {}</span></summary><div class=\"body\"><dl class=\"kv\">",
        text(&j.id),
        text(winner_name(j.predicted)),
        text(j.human.map_or("—", winner_name)),
        j.p_a + j.p_tie / 2.0,
        int(j.len_a as u64),
        int(j.len_b as u64)
    );
    kv(
        o,
        "p_a / p_b / p_tie",
        Some(format!("{:.3} / {:.3} / {:.3}", j.p_a, j.p_b, j.p_tie)),
    );
    kv(o, "written to labels.csv", Some(j.written.to_string()));
    kv(o, "model A", j.model_a.clone());
    kv(o, "model B", j.model_b.clone());
    o.push_str("</dl>");
    block(o, "Principle", &j.principle);
    if !j.judges.is_empty() {
        o.push_str("<table class=\"cmp\"><thead><tr><th>judge</th><th>model</th><th>P(A)</th><th>A first</th><th>A second</th><th>method</th></tr></thead><tbody>");
        for v in &j.judges {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                text(&v.judge),
                text(&v.model),
                v.p,
                v.p_first,
                v.p_second,
                text(&v.method)
            );
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("</div></details></article>");
}

fn reject_row<'a>(p: &mut Page<'a>, r: &'a RejectLine<'static>, group: Option<usize>) {
    p.facets.push(Facet {
        id: &r.id,
        p: Vec::new(),
        r: r.round.into_iter().collect(),
        s: &r.stage,
        x: group,
    });
    let o = &mut p.out;
    let _ = write!(
        o,
        "<article class=\"row rej\" data-row><details><summary><span class=\"rid\">{}</span> <span class=\"tag bad\">rejected at {}{}</span> <span class=\"pv\">{}</span></summary><div class=\"body\">",
        text(&r.id),
        text(if r.stage.is_empty() { "?" } else { &r.stage }),
        r.round.map(|n| format!(", round {n}")).unwrap_or_default(),
        text(&preview(&r.reason, 140))
    );
    block(o, "Reason", &r.reason);
    if !r.prompt.is_empty() {
        block(o, "Prompt", &r.prompt);
    }
    o.push_str("</div></details></article>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_from_unix_seconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_128_558), "2026-12-01 12:35:58 UTC");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(secs(1.234), "1.23s");
        assert_eq!(secs(125.0), "2m 05s");
        assert_eq!(secs(3_725.0), "1h 02m");
    }

    #[test]
    fn preview_is_one_cut_line() {
        assert_eq!(preview("a\n  b\tc", 10), "a b c");
        assert_eq!(preview("abcdefghij", 5), "abcd…");
    }
}
