//! Small inline SVG charts: histograms, horizontal bars, lines and a
//! calibration plot. Plain SVG elements with presentation attributes (no
//! `style=` attributes, which the page's content security policy forbids),
//! every label escaped, a `<title>` on each mark for the exact numbers.

use std::fmt::Write as _;

use super::html;

/// Series colours (colour-blind safe, Okabe–Ito).
pub const PALETTE: [&str; 4] = ["#0072b2", "#e69f00", "#009e73", "#cc79a7"];

const W: f64 = 560.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 44.0;

/// One named set of values.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

/// Counts per bin of a histogram over `[lo, hi]`; values beyond either end
/// go to the end bins.
pub fn bin_counts(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins.max(1)];
    let width = (hi - lo).max(f64::MIN_POSITIVE);
    for &v in values {
        if !v.is_finite() {
            continue;
        }
        let k = (((v - lo) / width) * bins as f64).floor();
        let k = if k < 0.0 {
            0
        } else {
            (k as usize).min(bins - 1)
        };
        counts[k] += 1;
    }
    counts
}

/// The value below which a share `q` of `sorted` lies (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// A step of 1, 2 or 5 × 10^k giving about `target` ticks up to `max`.
pub fn nice_step(max: f64, target: usize) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// `1234567` → `1,234,567`.
pub fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// A short number for an axis: integers without decimals, else up to 3
/// significant digits.
pub fn num(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        int_signed(x as i64)
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn int_signed(n: i64) -> String {
    if n < 0 {
        format!("-{}", int(n.unsigned_abs()))
    } else {
        int(n as u64)
    }
}

fn open(out: &mut String, h: f64, label: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"{}\" font-family=\"system-ui, sans-serif\" font-size=\"11\"><title>{}</title>",
        html::attr(label),
        html::text(label)
    );
}

fn legend(out: &mut String, names: &[&str]) {
    let mut x = LEFT;
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"8\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"17\" fill=\"#333\">{}</text>",
            PALETTE[i % PALETTE.len()],
            x + 14.0,
            html::text(name)
        );
        x += 24.0 + 7.0 * name.chars().count() as f64;
    }
}

/// Horizontal grid lines and labels of a count (or value) axis from 0 to
/// `max`, plotted over height `ph`.
fn y_axis(out: &mut String, max: f64, ph: f64, fmt: &dyn Fn(f64) -> String) {
    let step = nice_step(max, 4);
    let mut v = 0.0;
    while v <= max * 1.0001 + f64::EPSILON {
        let y = TOP + ph - v / max * ph;
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            html::text(&fmt(v))
        );
        v += step;
    }
}

fn x_label(out: &mut String, h: f64, label: &str) {
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        LEFT + (W - LEFT - RIGHT) / 2.0,
        h - 6.0,
        html::text(label)
    );
}

/// Overlaid histograms of several series on one range, bars side by side
/// within each bin.
pub fn histogram(
    label: &str,
    axis: &str,
    series: &[Series],
    (lo, hi): (f64, f64),
    bins: usize,
    fmt_x: &dyn Fn(f64) -> String,
) -> String {
    let h = 250.0;
    let (pw, ph) = (W - LEFT - RIGHT, h - TOP - BOTTOM);
    let counts: Vec<Vec<u64>> = series
        .iter()
        .map(|s| bin_counts(s.values, lo, hi, bins))
        .collect();
    let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let ymax = {
        let step = nice_step(max, 4);
        (max / step).ceil() * step
    };
    let mut out = String::new();
    open(&mut out, h, label);
    legend(&mut out, &series.iter().map(|s| s.name).collect::<Vec<_>>());
    y_axis(&mut out, ymax, ph, &|v| num(v));
    let bw = pw / bins as f64;
    let n = series.len().max(1) as f64;
    let width = (hi - lo) / bins as f64;
    for (si, (s, c)) in series.iter().zip(&counts).enumerate() {
        for (k, &count) in c.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let bh = count as f64 / ymax * ph;
            let x = LEFT + k as f64 * bw + bw * 0.05 + si as f64 * bw * 0.9 / n;
            let edge = if k + 1 == bins { " and above" } else { "" };
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{}: {}–{}{edge}: {}</title></rect>",
                TOP + ph - bh,
                (bw * 0.9 / n - 0.5).max(0.5),
                PALETTE[si % PALETTE.len()],
                html::text(s.name),
                html::text(&fmt_x(lo + k as f64 * width)),
                html::text(&fmt_x(lo + (k + 1) as f64 * width)),
                int(count)
            );
        }
    }
    // x ticks at about six bin edges.
    let every = bins.div_ceil(6).max(1);
    for k in (0..=bins).step_by(every) {
        let x = LEFT + k as f64 * bw;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 16.0,
            html::text(&fmt_x(lo + k as f64 * width))
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#888\"/>",
        W - RIGHT,
        TOP + ph,
        TOP + ph
    );
    x_label(&mut out, h, axis);
    out.push_str("</svg>");
    out
}

/// Labels longer than this are cut (the full text is in the bar's title).
const LABEL_CHARS: usize = 34;

/// Horizontal bars, one per item, scaled to `max` (or the largest value).
pub fn hbars(
    label: &str,
    items: &[(String, f64)],
    max: Option<f64>,
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let row = 22.0;
    let label_w = 220.0;
    let h = 16.0 + items.len().max(1) as f64 * row + 8.0;
    let max = max
        .unwrap_or_else(|| items.iter().map(|i| i.1).fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let pw = W - label_w - RIGHT - 64.0;
    let mut out = String::new();
    open(&mut out, h, label);
    for (i, (name, v)) in items.iter().enumerate() {
        let y = 12.0 + i as f64 * row;
        let short: String = if name.chars().count() > LABEL_CHARS {
            name.chars().take(LABEL_CHARS - 1).chain(['…']).collect()
        } else {
            name.clone()
        };
        let bw = (v / max * pw).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#333\">{}<title>{}</title></text><rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {}</title></rect><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text>",
            label_w - 8.0,
            y + 13.0,
            html::text(&short),
            html::text(name),
            row - 6.0,
            PALETTE[0],
            html::text(name),
            html::text(&fmt(*v)),
            label_w + bw + 6.0,
            y + 13.0,
            html::text(&fmt(*v))
        );
    }
    out.push_str("</svg>");
    out
}

/// Lines through points `(x, y)`, one per series, with a dot per point.
pub fn lines(label: &str, axis: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let h = 250.0;
    let (pw, ph) = (W - LEFT - RIGHT, h - TOP - BOTTOM);
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    if (x1 - x0).abs() < f64::EPSILON {
        x1 = x0 + 1.0;
    }
    let step = nice_step(y1 - y0, 4);
    let (y0, y1) = (
        (y0 / step).floor() * step,
        ((y1 / step).ceil() * step).max(y0 + step),
    );
    let mut out = String::new();
    open(&mut out, h, label);
    legend(&mut out, &series.iter().map(|s| s.0).collect::<Vec<_>>());
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    let mut v = y0;
    while v <= y1 + step * 1e-6 {
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            sy(v) + 4.0,
            html::text(&num(v)),
            y = sy(v)
        );
        v += step;
    }
    let xstep = nice_step(x1 - x0, 6).max(1.0);
    let mut x = (x0 / xstep).ceil() * xstep;
    while x <= x1 + 1e-9 {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            sx(x),
            TOP + ph + 16.0,
            html::text(&num(x))
        );
        x += xstep;
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{} at {}: {}</title></circle>",
                sx(x),
                sy(y),
                html::text(name),
                html::text(&num(x)),
                html::text(&num(y))
            );
        }
    }
    x_label(&mut out, h, axis);
    out.push_str("</svg>");
    out
}

/// One bin of a calibration plot.
pub struct CalBin {
    pub predicted: f64,
    pub observed: f64,
    pub count: u64,
}

/// Observed against predicted probability, a dot per bin sized by its
/// count, and the diagonal of perfect calibration.
pub fn calibration(label: &str, x_axis: &str, bins: &[CalBin]) -> String {
    let h = 300.0;
    let ph = h - TOP - BOTTOM;
    let pw = ph; // square plot
    let sx = |x: f64| LEFT + x.clamp(0.0, 1.0) * pw;
    let sy = |y: f64| TOP + ph - y.clamp(0.0, 1.0) * ph;
    let mut out = String::new();
    open(&mut out, h, label);
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{v}</text><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{v}</text>",
            LEFT + pw,
            LEFT - 6.0,
            sy(v) + 4.0,
            sx(v),
            TOP + ph + 16.0,
            y = sy(v)
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>",
        sx(0.0),
        sy(0.0),
        sx(1.0),
        sy(1.0)
    );
    let most = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    for b in bins.iter().filter(|b| b.count > 0) {
        let r = 3.0 + 9.0 * (b.count as f64 / most).sqrt();
        let _ = write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r:.1}\" fill=\"{}\" fill-opacity=\"0.7\"><title>predicted {}, observed {}, {} pairs</title></circle>",
            sx(b.predicted),
            sy(b.observed),
            PALETTE[0],
            num(b.predicted),
            num(b.observed),
            int(b.count)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#333\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">share of human labels for A</text>",
        LEFT + pw / 2.0,
        h - 6.0,
        html::text(x_axis),
        LEFT + pw + 16.0,
        TOP + 10.0
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_put_values_in_range_and_clamp_the_ends() {
        let v = [0.0, 0.1, 0.5, 0.99, 1.0, 7.0, -3.0, f64::NAN];
        assert_eq!(bin_counts(&v, 0.0, 1.0, 4), vec![3, 0, 1, 3]);
    }

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(100.0, 4), 50.0);
        assert_eq!(nice_step(7.0, 4), 2.0);
        assert_eq!(nice_step(0.9, 4), 0.5);
        assert_eq!(nice_step(0.0, 4), 1.0);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(int(12), "12");
        assert_eq!(pct(0.4567), "45.7%");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.125), "0.125");
        assert_eq!(num(1.5), "1.5");
    }

    #[test]
    fn histogram_draws_a_bar_per_non_empty_bin_and_series() {
        let a = [1.0, 2.0, 2.0, 9.0];
        let b = [5.0];
        let svg = histogram(
            "lengths",
            "characters",
            &[
                Series {
                    name: "initial",
                    values: &a,
                },
                Series {
                    name: "final <b>",
                    values: &b,
                },
            ],
            (0.0, 10.0),
            5,
            &|x| num(x),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // initial: bins 0 (1), 1 (2, 2) and 4 (9); final: bin 2. Two
        // more rects are the legend's.
        assert_eq!(svg.matches("<rect x=").count() - 2, 4, "{svg}");
        assert!(svg.contains("initial: 2–4: 2</title>"));
        assert!(svg.contains("initial: 8–10 and above: 1</title>"));
        assert!(svg.contains("final &lt;b&gt;"));
        assert!(!svg.contains("<b>"));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn bar_labels_are_escaped_and_cut() {
        let long = format!("<script>{}</script>", "x".repeat(80));
        let svg = hbars(
            "usage",
            &[(long.clone(), 3.0), ("b".into(), 1.0)],
            None,
            &|v| num(v),
        );
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("…"));
        assert_eq!(svg.matches("<rect").count(), 2);
        // The larger value fills the plot width.
        assert!(svg.contains("width=\"260.0\""), "{svg}");
    }

    #[test]
    fn calibration_places_points_and_the_diagonal() {
        let svg = calibration(
            "cal",
            "P(A)",
            &[
                CalBin {
                    predicted: 0.25,
                    observed: 0.25,
                    count: 4,
                },
                CalBin {
                    predicted: 0.75,
                    observed: 0.5,
                    count: 0,
                },
            ],
        );
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn lines_draw_each_point() {
        let svg = lines(
            "reward",
            "depth",
            &[
                ("best", vec![(0.0, 0.1), (1.0, 0.5), (2.0, 0.7)]),
                ("mean", vec![(0.0, 0.1), (1.0, 0.3)]),
            ],
        );
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
