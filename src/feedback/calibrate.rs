//! Calibrating a judge ensemble against human labels (`cai label
//! --calibrate`), and applying a saved calibration (`--calibration FILE`).
//!
//! **The model** is a constrained multinomial logistic regression over the
//! three outcomes (A wins, B wins, tie). For one pair, with judge j's
//! per-order probabilities P(A | A shown first) = f_j and
//! P(A | A shown second) = s_j, ℓ = logit (probabilities clipped to
//! [1e-4, 1 − 1e-4]):
//!
//! ```text
//! m_j = (logit f_j + logit s_j) / 2            judge j's log-odds, position bias cancels
//! b_j = mean over the fit's pairs of (logit f_j − logit s_j) / 2
//!                                              judge j's position bias (> 0: favours the answer shown first)
//! f̃_j = σ(logit f_j − b_j), s̃_j = σ(logit s_j + b_j)   the orders with that bias taken out
//! D   = mean_j |f̃_j − s̃_j|                     order disagreement
//! G   = |mean_j f̃_j s̃_j − mean_j (1 − f̃_j)(1 − s̃_j)|   |p_a − p_b| of the de-biased ensemble
//! Δ   = ln((1 + len_a) / (1 + len_b))           length difference (characters, log scale)
//!
//! u      = β₀ + Σ_j w_j · m_j / T_j + β_len · Δ
//! z_A    = u / 2,   z_B = −u / 2,   z_tie = α₀ + α_D · D + α_G · G
//! P(·)   = softmax(z_A, z_B, z_tie)
//! ```
//!
//! T_j is judge j's **temperature** (above 1: the judge is over-confident),
//! w_j its **ensemble weight**, β_len the **length term** (negative when the
//! judges favour longer answers more than the humans do, i.e. it removes
//! verbosity bias), and the tie model gives P(tie) from D and G instead of
//! a fixed margin around 0.5. The A/B part is antisymmetric, so swapping A
//! and B swaps P(A) and P(B) (up to β₀, the humans' own lean towards A).
//!
//! **The objective** is the mean log-loss (−ln P(human label)) plus
//! λ/2 · ‖θ‖² over the slopes (w, β_len, α_D, α_G) and a fixed 1e-4/2 ·
//! (β₀² + α₀²), which keeps the intercepts finite when a class never
//! occurs. It is convex; [`newton`] minimises it exactly (Newton steps with a
//! backtracking line search, no randomness). The fit has two stages: T_j =
//! 1 / c_j from the same model fitted on judge j alone (u = β₀ + c_j m_j, its
//! own D and G; a judge with c_j ≤ [`MIN_SLOPE`] carries no signal: T_j is
//! infinite and the judge drops out), then the joint model above gives the
//! weights, the length term and the tie model.
//!
//! **Cross-validation**: λ is chosen from [`LAMBDAS`] by k-fold
//! cross-validated log-loss. The figures reported before/after are
//! held-out: each of the k folds is predicted by a model (λ chosen by an
//! inner k-fold split of the other folds) fitted without it, so no reported
//! number saw its own label. Folds are stratified by human label and
//! shuffled by `--seed` (pairs taken in id order, whatever order they were
//! judged in), so the same seed gives the same calibration.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::feedback::metrics::Judgment;
use crate::input::pairs::Winner;
use crate::input::walk::Walker;
use crate::input::{InputError, InputErrors, Location};

/// Judge probabilities are clipped to [CLIP, 1 − CLIP] before the logit, so
/// a sampled verdict (P = 0 or 1) has a finite log-odds (±9.2).
pub const CLIP: f64 = 1e-4;
/// The L2 strengths tried by cross-validation (on the mean log-loss).
pub const LAMBDAS: [f64; 4] = [1e-4, 1e-3, 1e-2, 1e-1];
/// Fixed L2 strength on the two intercepts.
const INTERCEPT_L2: f64 = 1e-4;
/// A judge whose own slope is at most this carries no signal.
pub const MIN_SLOPE: f64 = 1e-3;
/// Probabilities scored by log-loss are clipped to [1e-15, 1], as in
/// [`crate::feedback::metrics`].
const LOSS_CLIP: f64 = 1e-15;
/// The version of the `calibration.json` layout.
pub const FORMAT: &str = "cai-calibration-1";

/// P(A wins), P(B wins), P(tie) — the arena's column order.
pub type Probs = [f64; 3];

/// One judge's part of a calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeCalibration {
    /// `provider:model`, as in `labels.csv`.
    pub judge: String,
    /// T_j; `None` (JSON null) when the judge carried no signal.
    pub temperature: Option<f64>,
    /// w_j.
    pub weight: f64,
    /// b_j, in log-odds (> 0: favours the answer shown first).
    pub position_bias: f64,
}

/// The tie model's coefficients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TieModel {
    pub intercept: f64,
    /// α_D, on the order disagreement D.
    pub disagreement: f64,
    /// α_G, on |p_a − p_b|.
    pub margin: f64,
}

/// Log-loss and accuracy of one predictor on held-out folds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub log_loss: f64,
    pub accuracy: f64,
}

/// What cross-validation measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// Labelled pairs the fit used.
    pub pairs: u64,
    pub folds: u32,
    pub seed: u64,
    /// The raw ensemble (`labels.csv` without calibration).
    pub before: Scores,
    /// The calibrated model, each fold predicted by a model fitted without it.
    pub after: Scores,
    /// The training folds' label frequencies.
    pub constant: Scores,
}

/// A fitted calibration: the contents of `calibration.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub format: String,
    pub judges: Vec<JudgeCalibration>,
    /// β₀: the humans' lean towards A, in log-odds.
    pub intercept: f64,
    /// β_len, per unit of ln((1 + len_a) / (1 + len_b)).
    pub length: f64,
    pub tie: TieModel,
    /// Label frequencies (a, b, tie) of the pairs fitted: the prediction
    /// for a pair without a verdict in the arena file.
    pub prior: Probs,
    /// The L2 strength chosen by cross-validation.
    pub lambda: f64,
    /// How the calibration did on held-out folds (informative; not read
    /// back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOut>,
}

/// One pair as the calibration sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// Per judge (in the calibration's order): P(A) with A shown first,
    /// with A shown second.
    pub orders: Vec<(f64, f64)>,
    pub len_a: usize,
    pub len_b: usize,
    /// The raw ensemble's (p_a, p_b, p_tie) and prediction, for "before".
    pub raw: Probs,
    pub raw_predicted: Winner,
    pub human: Option<Winner>,
}

impl Pair {
    /// The pair of a judgment, its judges in the order of `judges`; `None`
    /// when the judgment lacks one of them.
    pub fn from_judgment(j: &Judgment, judges: &[String]) -> Option<Pair> {
        let orders = judges
            .iter()
            .map(|name| {
                j.judges
                    .iter()
                    .find(|l| &l.judge == name)
                    .map(|l| (l.p_first, l.p_second))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Pair {
            orders,
            len_a: j.len_a,
            len_b: j.len_b,
            raw: [j.p_a, j.p_b, j.p_tie],
            raw_predicted: j.predicted,
            human: j.human,
        })
    }
}

fn class(w: Winner) -> usize {
    match w {
        Winner::A => 0,
        Winner::B => 1,
        Winner::Tie => 2,
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn logit(p: f64) -> f64 {
    let p = if p.is_finite() { p } else { 0.5 };
    let p = p.clamp(CLIP, 1.0 - CLIP);
    (p / (1.0 - p)).ln()
}

/// The features of one pair given the judges' position biases (see the
/// module docs): the log-odds m_j, D, G and Δ.
struct Features {
    m: Vec<f64>,
    disagreement: f64,
    margin: f64,
    length: f64,
}

fn features(p: &Pair, bias: &[f64], only: Option<usize>) -> Features {
    let mut m = Vec::with_capacity(p.orders.len());
    let (mut d, mut pa, mut pb, mut k) = (0.0, 0.0, 0.0, 0.0);
    for (j, &(first, second)) in p.orders.iter().enumerate() {
        let (l1, l2) = (logit(first), logit(second));
        m.push((l1 + l2) / 2.0);
        if only.is_some_and(|o| o != j) {
            continue;
        }
        let f = sigmoid(l1 - bias[j]);
        let s = sigmoid(l2 + bias[j]);
        d += (f - s).abs();
        pa += f * s;
        pb += (1.0 - f) * (1.0 - s);
        k += 1.0;
    }
    let k = f64::max(k, 1.0);
    Features {
        m,
        disagreement: d / k,
        margin: ((pa - pb) / k).abs(),
        length: ((1.0 + p.len_a as f64) / (1.0 + p.len_b as f64)).ln(),
    }
}

/// The rows of a multinomial fit: per pair the A/B covariates `xu`, the tie
/// covariates `xt` (each starting with the intercept's 1) and the class.
struct Design {
    xu: Vec<Vec<f64>>,
    xt: Vec<Vec<f64>>,
    y: Vec<usize>,
    /// L2 strength per parameter (u's, then t's).
    l2: Vec<f64>,
}

impl Design {
    fn new(lambda: f64, pu: usize, pt: usize) -> Design {
        let mut l2 = vec![lambda; pu + pt];
        l2[0] = INTERCEPT_L2;
        l2[pu] = INTERCEPT_L2;
        Design {
            xu: Vec::new(),
            xt: Vec::new(),
            y: Vec::new(),
            l2,
        }
    }

    fn pu(&self) -> usize {
        self.l2.len() - self.pt()
    }

    fn pt(&self) -> usize {
        self.xt.first().map_or(3, Vec::len)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// softmax(u/2, −u/2, t).
fn softmax3(u: f64, t: f64) -> Probs {
    let z = [u / 2.0, -u / 2.0, t];
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e = z.map(|x| (x - max).exp());
    let s: f64 = e.iter().sum();
    e.map(|x| x / s)
}

/// Mean log-loss + penalty at `theta`, with its gradient and Hessian when
/// `derivatives` is set.
// Index loops: they follow the matrix formulas term by term.
#[allow(clippy::needless_range_loop)]
fn objective(d: &Design, theta: &[f64], derivatives: bool) -> (f64, Vec<f64>, Vec<Vec<f64>>) {
    let (pu, p) = (d.pu(), d.l2.len());
    let n = d.y.len().max(1) as f64;
    let mut loss = 0.0;
    let mut g = vec![0.0; if derivatives { p } else { 0 }];
    let mut h = vec![vec![0.0; if derivatives { p } else { 0 }]; if derivatives { p } else { 0 }];
    for i in 0..d.y.len() {
        let u = dot(&d.xu[i], &theta[..pu]);
        let t = dot(&d.xt[i], &theta[pu..]);
        let pr = softmax3(u, t);
        let y = d.y[i];
        loss -= pr[y].max(1e-300).ln();
        if !derivatives {
            continue;
        }
        // dL/dz = p − onehot(y); z = M θ with M's rows (xu/2, 0),
        // (−xu/2, 0), (0, xt).
        let r: Vec<f64> = (0..3)
            .map(|k| pr[k] - if k == y { 1.0 } else { 0.0 })
            .collect();
        let mut row = vec![[0.0f64; 3]; p];
        for (a, x) in d.xu[i].iter().enumerate() {
            row[a] = [x / 2.0, -x / 2.0, 0.0];
        }
        for (a, x) in d.xt[i].iter().enumerate() {
            row[pu + a] = [0.0, 0.0, *x];
        }
        // W = diag(p) − p pᵀ; H += Mᵀ W M.
        let w = |k: usize, l: usize| if k == l { pr[k] } else { 0.0 } - pr[k] * pr[l];
        let mw: Vec<[f64; 3]> = row
            .iter()
            .map(|mr| {
                let mut o = [0.0; 3];
                for (l, ol) in o.iter_mut().enumerate() {
                    *ol = (0..3).map(|k| mr[k] * w(k, l)).sum();
                }
                o
            })
            .collect();
        for a in 0..p {
            g[a] += (0..3).map(|k| row[a][k] * r[k]).sum::<f64>();
            for b in a..p {
                let v: f64 = (0..3).map(|l| mw[a][l] * row[b][l]).sum();
                h[a][b] += v;
            }
        }
    }
    loss /= n;
    let mut pen = 0.0;
    for a in 0..p {
        pen += 0.5 * d.l2[a] * theta[a] * theta[a];
    }
    if derivatives {
        for a in 0..p {
            g[a] = g[a] / n + d.l2[a] * theta[a];
            for b in a..p {
                h[a][b] /= n;
                if a == b {
                    h[a][b] += d.l2[a];
                }
                h[b][a] = h[a][b];
            }
        }
    }
    (loss + pen, g, h)
}

/// Solves `h x = g` by Cholesky; `None` when `h` is not positive definite.
// Index loops: they follow the matrix formulas term by term.
#[allow(clippy::needless_range_loop)]
fn solve(h: &[Vec<f64>], g: &[f64]) -> Option<Vec<f64>> {
    let n = g.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let v = h[i][i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i][j] = v.sqrt();
            } else {
                l[i][j] = (h[i][j] - s) / l[j][j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (g[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    Some(x)
}

/// Minimises [`objective`] from θ = 0 by Newton's method with a
/// backtracking (Armijo) line search; falls back to a gradient step when
/// the Hessian is not positive definite. Deterministic.
fn newton(d: &Design) -> Vec<f64> {
    let p = d.l2.len();
    let mut theta = vec![0.0; p];
    for _ in 0..100 {
        let (f, g, h) = objective(d, &theta, true);
        let dir: Vec<f64> = match solve(&h, &g) {
            Some(x) => x.iter().map(|v| -v).collect(),
            None => g.iter().map(|v| -v).collect(),
        };
        let slope = dot(&g, &dir);
        if slope >= 0.0 || slope.abs() < 1e-14 {
            break;
        }
        let mut step = 1.0;
        let next = loop {
            let cand: Vec<f64> = theta.iter().zip(&dir).map(|(t, v)| t + step * v).collect();
            let (fc, _, _) = objective(d, &cand, false);
            if fc <= f + 1e-4 * step * slope {
                break Some(cand);
            }
            step /= 2.0;
            if step < 1e-10 {
                break None;
            }
        };
        let Some(next) = next else { break };
        let moved = theta
            .iter()
            .zip(&next)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        theta = next;
        if moved < 1e-10 {
            break;
        }
    }
    theta
}

/// A calibration fitted on `pairs` (all labelled) with L2 strength `lambda`.
// Index loops: they follow the matrix formulas term by term.
#[allow(clippy::needless_range_loop)]
fn fit(pairs: &[&Pair], names: &[String], lambda: f64) -> Calibration {
    let nj = names.len();
    let mut bias = vec![0.0; nj];
    for p in pairs {
        for (j, &(f, s)) in p.orders.iter().enumerate() {
            bias[j] += (logit(f) - logit(s)) / 2.0;
        }
    }
    for b in &mut bias {
        *b /= pairs.len().max(1) as f64;
    }
    let label = |p: &Pair| p.human.map_or(2, class);

    // Stage 1: each judge alone gives its temperature.
    let mut temperature = vec![None; nj];
    for (j, t) in temperature.iter_mut().enumerate() {
        let mut d = Design::new(lambda, 2, 3);
        for p in pairs {
            let x = features(p, &bias, Some(j));
            d.xu.push(vec![1.0, x.m[j]]);
            d.xt.push(vec![1.0, x.disagreement, x.margin]);
            d.y.push(label(p));
        }
        let theta = newton(&d);
        *t = (theta[1] > MIN_SLOPE).then(|| 1.0 / theta[1]);
    }

    // Stage 2: weights over the tempered log-odds, length and ties.
    let mut d = Design::new(lambda, nj + 2, 3);
    for p in pairs {
        let x = features(p, &bias, None);
        let mut xu = Vec::with_capacity(nj + 2);
        xu.push(1.0);
        for j in 0..nj {
            xu.push(temperature[j].map_or(0.0, |t| x.m[j] / t));
        }
        xu.push(x.length);
        d.xu.push(xu);
        d.xt.push(vec![1.0, x.disagreement, x.margin]);
        d.y.push(label(p));
    }
    let theta = newton(&d);
    let mut prior = [0.0; 3];
    for p in pairs {
        prior[label(p)] += 1.0;
    }
    let n = pairs.len().max(1) as f64;
    Calibration {
        format: FORMAT.into(),
        judges: (0..nj)
            .map(|j| JudgeCalibration {
                judge: names[j].clone(),
                temperature: temperature[j],
                weight: if temperature[j].is_some() {
                    theta[1 + j]
                } else {
                    0.0
                },
                position_bias: bias[j],
            })
            .collect(),
        intercept: theta[0],
        length: theta[nj + 1],
        tie: TieModel {
            intercept: theta[nj + 2],
            disagreement: theta[nj + 3],
            margin: theta[nj + 4],
        },
        prior: prior.map(|c| c / n),
        lambda,
        held_out: None,
    }
}

impl Calibration {
    /// Judge names in the calibration's order.
    pub fn judge_names(&self) -> Vec<String> {
        self.judges.iter().map(|j| j.judge.clone()).collect()
    }

    /// Calibrated (P(A), P(B), P(tie)) of a pair whose judges are in this
    /// calibration's order.
    pub fn predict(&self, p: &Pair) -> Probs {
        let bias: Vec<f64> = self.judges.iter().map(|j| j.position_bias).collect();
        let x = features(p, &bias, None);
        let mut u = self.intercept + self.length * x.length;
        for (j, jc) in self.judges.iter().enumerate() {
            if let Some(t) = jc.temperature {
                u += jc.weight * x.m[j] / t;
            }
        }
        let t = self.tie.intercept
            + self.tie.disagreement * x.disagreement
            + self.tie.margin * x.margin;
        softmax3(u, t)
    }

    /// Calibrated probabilities of a judgment (its judges matched by name).
    pub fn predict_judgment(&self, j: &Judgment) -> Option<Probs> {
        Pair::from_judgment(j, &self.judge_names()).map(|p| self.predict(&p))
    }
}

/// The outcome with the highest probability (A, then B, then tie on an
/// exact draw).
pub fn argmax(p: &Probs) -> Winner {
    if p[0] >= p[1] && p[0] >= p[2] {
        Winner::A
    } else if p[1] >= p[2] {
        Winner::B
    } else {
        Winner::Tie
    }
}

/// −ln p(label), clipped as in `report.json`.
pub fn loss(p: &Probs, label: Winner) -> f64 {
    -p[class(label)].clamp(LOSS_CLIP, 1.0).ln()
}

/// Fold of each pair: stratified by label, shuffled by `seed`.
fn folds(pairs: &[&Pair], k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    // A stable sort by label keeps the shuffle within each label, so every
    // fold gets its share of each label.
    order.sort_by_key(|&i| pairs[i].human.map_or(3, class));
    let mut fold = vec![0; pairs.len()];
    for (pos, &i) in order.iter().enumerate() {
        fold[i] = pos % k;
    }
    fold
}

fn split<'a>(pairs: &[&'a Pair], fold: &[usize], f: usize) -> (Vec<&'a Pair>, Vec<&'a Pair>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, p) in pairs.iter().enumerate() {
        if fold[i] == f {
            test.push(*p);
        } else {
            train.push(*p);
        }
    }
    (train, test)
}

/// The λ of [`LAMBDAS`] with the lowest k-fold cross-validated log-loss on
/// `pairs` (the smallest λ on an exact draw).
fn choose_lambda(pairs: &[&Pair], names: &[String], k: usize, seed: u64) -> f64 {
    let fold = folds(pairs, k, seed);
    let mut best = (f64::INFINITY, LAMBDAS[0]);
    for &lambda in &LAMBDAS {
        let mut total = 0.0;
        for f in 0..k {
            let (train, test) = split(pairs, &fold, f);
            if train.is_empty() || test.is_empty() {
                continue;
            }
            let c = fit(&train, names, lambda);
            total += test
                .iter()
                .filter_map(|p| p.human.map(|h| loss(&c.predict(p), h)))
                .sum::<f64>();
        }
        if total < best.0 {
            best = (total, lambda);
        }
    }
    best.1
}

/// Why a calibration cannot be fitted.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(
        "--calibrate needs at least {need} judged pairs with human labels for {folds} folds; found {found}"
    )]
    TooFew {
        need: usize,
        found: usize,
        folds: u32,
    },
    #[error("--calibrate: the judged pairs name no judge")]
    NoJudges,
}

/// The fewest labelled pairs `--calibrate` accepts with `folds` folds:
/// every inner training split must still hold a few pairs per fold.
pub fn min_pairs(folds: u32) -> usize {
    (folds as usize * 4).max(12)
}

/// Fits a calibration on the labelled `judgments` with `folds`-fold
/// cross-validation (see the module docs), seeded by `seed`.
pub fn calibrate(
    judgments: &[Judgment],
    folds_k: u32,
    seed: u64,
) -> Result<Calibration, CalibrateError> {
    let names: Vec<String> = judgments
        .iter()
        .find(|j| j.human.is_some())
        .map(|j| j.judges.iter().map(|l| l.judge.clone()).collect())
        .ok_or(CalibrateError::TooFew {
            need: min_pairs(folds_k),
            found: 0,
            folds: folds_k,
        })?;
    if names.is_empty() {
        return Err(CalibrateError::NoJudges);
    }
    // judgments.jsonl is in completion order, which concurrency varies:
    // sorted by id, the folds depend on the data and the seed only.
    let mut labelled: Vec<&Judgment> = judgments.iter().filter(|j| j.human.is_some()).collect();
    labelled.sort_by(|a, b| a.id.cmp(&b.id));
    let owned: Vec<Pair> = labelled
        .iter()
        .filter_map(|j| Pair::from_judgment(j, &names))
        .collect();
    let pairs: Vec<&Pair> = owned.iter().collect();
    if pairs.len() < min_pairs(folds_k) {
        return Err(CalibrateError::TooFew {
            need: min_pairs(folds_k),
            found: pairs.len(),
            folds: folds_k,
        });
    }
    let k = folds_k as usize;
    let fold = folds(&pairs, k, seed);
    let (mut before, mut after, mut constant) = ([0.0; 2], [0.0; 2], [0.0; 2]);
    for f in 0..k {
        let (train, test) = split(&pairs, &fold, f);
        // The inner split gets its own seed, so it is not the outer one.
        let lambda = choose_lambda(&train, &names, k, seed.wrapping_add(1 + f as u64));
        let c = fit(&train, &names, lambda);
        for p in &test {
            let Some(h) = p.human else { continue };
            let q = c.predict(p);
            after[0] += loss(&q, h);
            after[1] += f64::from(u8::from(argmax(&q) == h));
            before[0] += loss(&p.raw, h);
            before[1] += f64::from(u8::from(p.raw_predicted == h));
            constant[0] += loss(&c.prior, h);
            constant[1] += f64::from(u8::from(argmax(&c.prior) == h));
        }
    }
    let n = pairs.len() as f64;
    let scores = |s: [f64; 2]| Scores {
        log_loss: s[0] / n,
        accuracy: s[1] / n,
    };
    let lambda = choose_lambda(&pairs, &names, k, seed);
    let mut c = fit(&pairs, &names, lambda);
    c.held_out = Some(HeldOut {
        pairs: pairs.len() as u64,
        folds: folds_k,
        seed,
        before: scores(before),
        after: scores(after),
        constant: scores(constant),
    });
    Ok(c)
}

/// Reads `calibration.json` written by `--calibrate`, reporting every
/// problem with its JSON path.
pub fn load(path: &Path) -> Result<Calibration, InputErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        InputError::new(
            path,
            Location::File,
            format!("cannot read calibration: {e}"),
        )
    })?;
    parse(path, &text)
}

/// Parses calibration JSON; `path` is for error messages.
///
/// Long because it checks every field of the file with its JSON path and
/// collects every problem before returning.
pub fn parse(path: &Path, text: &str) -> Result<Calibration, InputErrors> {
    let value = crate::input::parse_json(path, text)?;
    let mut r = Walker::new(path);
    let Some(obj) = value.as_object() else {
        r.err("", "a calibration must be a JSON object");
        return Err(InputErrors(r.errors));
    };
    match obj.get("format").and_then(Value::as_str) {
        Some(FORMAT) => {}
        Some(other) => r.err(
            "format",
            format!("`{other}` is not a format this version reads (expected `{FORMAT}`)"),
        ),
        None => r.err(
            "format",
            format!(
                "missing (expected `{FORMAT}`; the file is written by `cai label --calibrate`)"
            ),
        ),
    }
    let intercept = r.number(obj, "", "intercept");
    let length = r.number(obj, "", "length");
    let lambda = r.number(obj, "", "lambda");
    let empty = Map::new();
    let t = match obj.get("tie") {
        Some(Value::Object(t)) => t,
        other => {
            r.err(
                "tie",
                format!(
                    "expected an object {{intercept, disagreement, margin}}, found {}",
                    other.map_or("nothing", crate::input::json_kind)
                ),
            );
            &empty
        }
    };
    let tie = TieModel {
        intercept: r.number(t, "tie", "intercept"),
        disagreement: r.number(t, "tie", "disagreement"),
        margin: r.number(t, "tie", "margin"),
    };
    let mut prior = [0.0; 3];
    match obj.get("prior") {
        Some(Value::Array(a)) if a.len() == 3 => {
            for (i, v) in a.iter().enumerate() {
                match v.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => prior[i] = x,
                    _ => r.err(&format!("prior[{i}]"), "expected a probability in [0, 1]"),
                }
            }
        }
        _ => r.err("prior", "expected three probabilities [a, b, tie]"),
    }
    let mut judges = Vec::new();
    match obj.get("judges") {
        Some(Value::Array(a)) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                let at = format!("judges[{i}]");
                let Some(o) = r.object(v, &at) else {
                    continue;
                };
                let judge = match o.get("judge") {
                    Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                    _ => {
                        r.err(
                            &format!("{at}.judge"),
                            "expected the judge's `provider:model`",
                        );
                        String::new()
                    }
                };
                let temperature = match o.get("temperature") {
                    Some(Value::Null) => None,
                    Some(v) if v.as_f64().is_some_and(|t| t > 0.0 && t.is_finite()) => v.as_f64(),
                    _ => {
                        r.err(
                            &format!("{at}.temperature"),
                            "expected a positive number, or null for a judge without signal",
                        );
                        None
                    }
                };
                judges.push(JudgeCalibration {
                    judge,
                    temperature,
                    weight: r.number(o, &at, "weight"),
                    position_bias: r.number(o, &at, "position_bias"),
                });
            }
        }
        _ => r.err("judges", "expected a non-empty array of judges"),
    }
    if !r.errors.is_empty() {
        return Err(InputErrors(r.errors));
    }
    Ok(Calibration {
        format: FORMAT.into(),
        judges,
        intercept,
        length,
        tie,
        prior,
        lambda,
        held_out: obj
            .get("held_out")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use cai_fake::lcg::Lcg;

    /// Pairs whose true log-odds q = quality difference; humans answer from
    /// q (ties likelier when q is small); each judge sees q with its own
    /// noise; judge 0 is sharpened ×3 and favours the answer shown first,
    /// judge 1 is sharpened ×3 and favours the longer answer.
    fn synthetic(n: usize, seed: u64) -> Vec<Pair> {
        let mut r = Lcg(seed);
        (0..n)
            .map(|_| {
                let q = (r.next() - 0.5) * 4.0;
                let (len_a, len_b) = (
                    20 + (r.next() * 400.0) as usize,
                    20 + (r.next() * 400.0) as usize,
                );
                let dl = ((1.0 + len_a as f64) / (1.0 + len_b as f64)).ln();
                let tie = 0.4 * (-q.abs()).exp();
                let (pa, pb) = ((1.0 - tie) * sigmoid(q), (1.0 - tie) * sigmoid(-q));
                let x = r.next();
                let human = if x < pa {
                    Winner::A
                } else if x < pa + pb {
                    Winner::B
                } else {
                    Winner::Tie
                };
                let (e0, e1) = (r.next() * 2.0 - 1.0, r.next() * 2.0 - 1.0);
                let j0 = (sigmoid(3.0 * (q + e0) + 1.2), sigmoid(3.0 * (q + e0) - 1.2));
                let l1 = 3.0 * (q + e1 + 1.5 * dl);
                let j1 = (sigmoid(l1), sigmoid(l1));
                let raw_p = (j0.0 + j0.1 + j1.0 + j1.1) / 4.0;
                let pxa = (j0.0 * j0.1 + j1.0 * j1.1) / 2.0;
                let pxb = ((1.0 - j0.0) * (1.0 - j0.1) + (1.0 - j1.0) * (1.0 - j1.1)) / 2.0;
                Pair {
                    orders: vec![j0, j1],
                    len_a,
                    len_b,
                    raw: [pxa, pxb, 1.0 - pxa - pxb],
                    raw_predicted: if (raw_p - 0.5).abs() <= 0.05 {
                        Winner::Tie
                    } else if raw_p > 0.5 {
                        Winner::A
                    } else {
                        Winner::B
                    },
                    human: Some(human),
                }
            })
            .collect()
    }

    fn names() -> Vec<String> {
        vec!["j:position".into(), "j:length".into()]
    }

    #[test]
    fn newton_recovers_a_known_multinomial_model() {
        // Data drawn from u = 0.3 + 2x, t = −1 + 1.5|x|: the fit must land
        // near the generating coefficients.
        let mut r = Lcg(7);
        let mut d = Design::new(1e-6, 2, 2);
        for _ in 0..20000 {
            let x = (r.next() - 0.5) * 3.0;
            let pr = softmax3(0.3 + 2.0 * x, -1.0 + 1.5 * x.abs());
            let v = r.next();
            let y = if v < pr[0] {
                0
            } else if v < pr[0] + pr[1] {
                1
            } else {
                2
            };
            d.xu.push(vec![1.0, x]);
            d.xt.push(vec![1.0, x.abs()]);
            d.y.push(y);
        }
        let t = newton(&d);
        for (got, want) in t.iter().zip([0.3, 2.0, -1.0, 1.5]) {
            assert!((got - want).abs() < 0.15, "{t:?}");
        }
    }

    #[test]
    fn held_out_loss_beats_the_raw_ensemble_and_the_constant() {
        let owned = synthetic(400, 3);
        let pairs: Vec<&Pair> = owned.iter().collect();
        let fold = folds(&pairs, 5, 9);
        let (mut raw, mut cal, mut con) = (0.0, 0.0, 0.0);
        for f in 0..5 {
            let (train, test) = split(&pairs, &fold, f);
            let c = fit(&train, &names(), 1e-3);
            for p in test {
                let h = p.human.unwrap();
                raw += loss(&p.raw, h);
                cal += loss(&c.predict(p), h);
                con += loss(&c.prior, h);
            }
        }
        assert!(cal < raw && cal < con, "cal {cal} raw {raw} const {con}");
        let c = fit(&pairs, &names(), 1e-3);
        assert!(c.judges[0].position_bias > 0.5, "{c:?}");
        assert!(c.judges[1].position_bias.abs() < 1e-9, "{c:?}");
        assert!(c.length < 0.0, "{c:?}");
        for j in &c.judges {
            assert!(j.temperature.is_some_and(|t| t > 1.0), "{c:?}");
        }
    }

    #[test]
    fn the_calibration_does_not_depend_on_the_order_pairs_were_judged_in() {
        use crate::feedback::metrics::JudgeLine;
        let judgments: Vec<Judgment> = synthetic(60, 4)
            .into_iter()
            .enumerate()
            .map(|(i, p)| Judgment {
                id: format!("id{i}"),
                principle: String::new(),
                p: 0.5,
                p_a: p.raw[0],
                p_b: p.raw[1],
                p_tie: p.raw[2],
                calibrated: None,
                predicted: p.raw_predicted,
                written: true,
                len_a: p.len_a,
                len_b: p.len_b,
                model_a: None,
                model_b: None,
                human: p.human,
                judges: names()
                    .into_iter()
                    .zip(&p.orders)
                    .map(|(judge, &(p_first, p_second))| JudgeLine {
                        judge,
                        model: String::new(),
                        p: (p_first + p_second) / 2.0,
                        p_first,
                        p_second,
                        method: "logprobs".into(),
                    })
                    .collect(),
            })
            .collect();
        let a = calibrate(&judgments, 3, 5).unwrap();
        let reversed: Vec<Judgment> = judgments.iter().rev().cloned().collect();
        assert_eq!(a, calibrate(&reversed, 3, 5).unwrap());
        assert_ne!(a, calibrate(&judgments, 3, 6).unwrap());
    }

    #[test]
    fn folds_are_stratified_and_seeded() {
        let owned = synthetic(100, 1);
        let pairs: Vec<&Pair> = owned.iter().collect();
        let a = folds(&pairs, 5, 1);
        assert_eq!(a, folds(&pairs, 5, 1));
        assert_ne!(a, folds(&pairs, 5, 2));
        for w in [Winner::A, Winner::B, Winner::Tie] {
            let mut per = [0usize; 5];
            for (i, p) in pairs.iter().enumerate() {
                if p.human == Some(w) {
                    per[a[i]] += 1;
                }
            }
            let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(hi - lo <= 1, "{w:?}: {per:?}");
        }
    }

    #[test]
    fn swapping_a_and_b_swaps_the_prediction() {
        let owned = synthetic(200, 5);
        let pairs: Vec<&Pair> = owned.iter().collect();
        let mut c = fit(&pairs, &names(), 1e-2);
        c.intercept = 0.0;
        for p in owned.iter().take(20) {
            let q = c.predict(p);
            // Swapping A and B: P(A) first ↔ 1 − P(B) first, i.e. the two
            // orders trade places and flip; lengths trade places.
            let swapped = Pair {
                orders: p.orders.iter().map(|&(f, s)| (1.0 - s, 1.0 - f)).collect(),
                len_a: p.len_b,
                len_b: p.len_a,
                ..p.clone()
            };
            let r = c.predict(&swapped);
            assert!(
                (q[0] - r[1]).abs() < 1e-9 && (q[2] - r[2]).abs() < 1e-9,
                "{q:?} {r:?}"
            );
            assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn a_saved_calibration_reads_back_identically_and_bad_ones_name_the_path() {
        let owned = synthetic(120, 2);
        let pairs: Vec<&Pair> = owned.iter().collect();
        let c = fit(&pairs, &names(), 1e-2);
        let text = serde_json::to_string_pretty(&c).unwrap();
        let back = parse(Path::new("cal.json"), &text).unwrap();
        // serde_json may read a float back one ulp off; `cai label` reads
        // its own file back before using it, so both runs agree exactly.
        assert_eq!(back.judge_names(), c.judge_names());
        for p in &owned {
            let (a, b) = (back.predict(p), c.predict(p));
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12));
        }
        let errs = parse(
            Path::new("cal.json"),
            r#"{"format": "cai-calibration-1", "judges": [{"judge": "a:b", "temperature": -1, "weight": 1, "position_bias": "x"}],
                "intercept": 0, "length": 0, "lambda": 0.01, "tie": {"intercept": 0, "margin": 1}, "prior": [0.3, 0.3]}"#,
        )
        .unwrap_err()
        .to_string();
        for want in [
            "cal.json: tie.disagreement: missing",
            "cal.json: prior: expected three probabilities",
            "cal.json: judges[0].temperature: expected a positive number",
            "cal.json: judges[0].position_bias: expected a number",
        ] {
            assert!(errs.contains(want), "missing {want:?} in {errs}");
        }
    }
}
