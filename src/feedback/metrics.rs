//! The metrics of a label run (`report.json`), computed over every line of
//! `judgments.jsonl`, so a resumed run reports on all of it:
//!
//! * `accuracy`: `predicted` equals the human label (a, b or tie), over pairs
//!   with a human label; `accuracy_decisive`: the same over pairs the human
//!   did not call a tie;
//! * `log_loss`: mean −ln p(human label) of (p_a, p_b, p_tie), p clipped to
//!   [1e-15, 1] — the calibrated probabilities when `--calibration FILE`
//!   was applied (then `log_loss_raw` is the judges' own);
//! * `position_consistency`, per judge and overall: share of (judge, pair)
//!   whose two orders prefer the same answer (both P > 0.5 or both < 0.5);
//!   `first_position_wins`: share of single-order verdicts that chose the
//!   answer shown first;
//! * `verbosity`: among pairs whose answers differ in length (characters),
//!   how often the longer one wins — for the judge over its decisive
//!   predictions, for humans over their decisive labels;
//! * `self_enhancement`, per judge whose model name equals `model_a` or
//!   `model_b` (exactly one of them): win rate of that model's answers (win
//!   1, tie ½, loss 0) by the judge's own P and by the humans.

use serde::{Deserialize, Serialize};

use crate::engine::StatsSnapshot;
use crate::feedback::calibrate::loss;
use crate::feedback::calibrate::{HeldOut, Probs};
use crate::feedback::judge::{is_tie, JudgeOptions};
use crate::input::pairs::Winner;

/// One line of `judgments.jsonl`, written by `label` and read by the
/// report; a field an older run did not write reads as its default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Judgment {
    pub id: String,
    pub principle: String,
    /// P(A better), mean over orders and judges.
    pub p: f64,
    pub p_a: f64,
    pub p_b: f64,
    pub p_tie: f64,
    /// (p_a, p_b, p_tie) after `--calibration FILE`; `predicted` is then
    /// the likeliest of the three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<Probs>,
    pub predicted: Winner,
    /// Written to `labels.csv` (false for a tie under `--ties drop`).
    pub written: bool,
    pub len_a: usize,
    pub len_b: usize,
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub human: Option<Winner>,
    pub judges: Vec<JudgeLine>,
}

/// One judge's values in `judgments.jsonl` and `labels.csv`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeLine {
    pub judge: String,
    /// The judge's model name (for self-enhancement).
    pub model: String,
    /// P(A better), mean of the orders.
    pub p: f64,
    /// P(A better) when A was shown first / second.
    pub p_first: f64,
    pub p_second: f64,
    pub method: String,
}

/// Position consistency of one judge.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Consistency {
    pub judge: String,
    pub pairs: u64,
    /// Share of pairs whose two orders prefer the same answer.
    pub position_consistency: Option<f64>,
    /// Share of single-order verdicts (P ≠ 0.5) that chose the answer shown first.
    pub first_position_wins: Option<f64>,
}

/// How often the longer answer wins.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Verbosity {
    /// Pairs (decisive judge verdict, lengths differ) behind `judge_longer_wins`.
    pub judge_pairs: u64,
    pub judge_longer_wins: Option<f64>,
    /// Pairs (decisive human label, lengths differ) behind `human_longer_wins`.
    pub human_pairs: u64,
    pub human_longer_wins: Option<f64>,
}

/// A judge model rating its own answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SelfEnhancement {
    pub judge: String,
    pub pairs: u64,
    /// Win rate of the judge model's own answers by its own verdicts.
    pub judge_win_rate: Option<f64>,
    /// The same answers' win rate by human labels (pairs with one).
    pub human_pairs: u64,
    pub human_win_rate: Option<f64>,
}

/// `report.json`, written by `label` and read by the report; a field an
/// older run did not write reads as its default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub cai_version: String,
    pub status: String,
    pub judges: Vec<String>,
    pub pairs_total: u64,
    pub judged: u64,
    pub written: u64,
    pub ties: u64,
    pub rejected: u64,
    pub human_labelled: u64,
    pub accuracy: Option<f64>,
    pub accuracy_decisive: Option<f64>,
    pub log_loss: Option<f64>,
    /// The judges' own log-loss when a calibration was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss_raw: Option<f64>,
    pub position_consistency: Option<f64>,
    pub per_judge: Vec<Consistency>,
    pub verbosity: Verbosity,
    pub self_enhancement: Vec<SelfEnhancement>,
    /// `--calibrate`: log-loss and accuracy on held-out folds, before and
    /// after calibration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<HeldOut>,
    /// `--format arena`: rows of the submission file filled with the prior
    /// because their pair has no verdict (rejected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submission_prior_rows: Option<u64>,
    pub requests: Option<StatsSnapshot>,
    pub wall_time_s: f64,
    pub arguments: Vec<String>,
}

fn ratio(num: f64, den: u64) -> Option<f64> {
    (den > 0).then(|| num / den as f64)
}

fn side(p: f64) -> i8 {
    if p > 0.5 {
        1
    } else if p < 0.5 {
        -1
    } else {
        0
    }
}

impl Report {
    /// The metrics of the module docs over `judgments`.
    ///
    /// Long because it is one pass over the judgments that counts every metric
    /// side by side; splitting it would pass the same tallies between helpers.
    pub fn compute(judgments: &[Judgment], opts: &JudgeOptions) -> Report {
        let mut r = Report {
            judged: judgments.len() as u64,
            written: judgments.iter().filter(|j| j.written).count() as u64,
            ties: judgments
                .iter()
                .filter(|j| j.predicted == Winner::Tie)
                .count() as u64,
            ..Report::default()
        };
        let labelled: Vec<(&Judgment, Winner)> = judgments
            .iter()
            .filter_map(|j| j.human.map(|h| (j, h)))
            .collect();
        r.human_labelled = labelled.len() as u64;
        let correct = labelled.iter().filter(|(j, h)| j.predicted == *h).count();
        r.accuracy = ratio(correct as f64, labelled.len() as u64);
        let decisive: Vec<_> = labelled.iter().filter(|(_, h)| *h != Winner::Tie).collect();
        let dc = decisive.iter().filter(|(j, h)| j.predicted == *h).count();
        r.accuracy_decisive = ratio(dc as f64, decisive.len() as u64);
        let n = labelled.len() as u64;
        let raw = |j: &Judgment| [j.p_a, j.p_b, j.p_tie];
        let ll = |probs: &dyn Fn(&Judgment) -> Probs| {
            let sum: f64 = labelled.iter().map(|(j, h)| loss(&probs(j), *h)).sum();
            ratio(sum, n)
        };
        r.log_loss = ll(&|j| j.calibrated.unwrap_or_else(|| raw(j)));
        if labelled.iter().any(|(j, _)| j.calibrated.is_some()) {
            r.log_loss_raw = ll(&raw);
        }

        let mut names: Vec<String> = Vec::new();
        for j in judgments {
            for l in &j.judges {
                if !names.contains(&l.judge) {
                    names.push(l.judge.clone());
                }
            }
        }
        let (mut all_pairs, mut all_consistent) = (0u64, 0u64);
        for name in &names {
            let lines: Vec<&JudgeLine> = judgments
                .iter()
                .flat_map(|j| j.judges.iter().filter(|l| &l.judge == name))
                .collect();
            let consistent = lines
                .iter()
                .filter(|l| side(l.p_first) != 0 && side(l.p_first) == side(l.p_second))
                .count() as u64;
            // Shown first: A in the first order (P(A) > 0.5), B in the
            // second (P(A) < 0.5 there means B, shown first, won).
            let (mut first, mut decided) = (0u64, 0u64);
            for l in &lines {
                for (p, a_first) in [(l.p_first, true), (l.p_second, false)] {
                    if side(p) != 0 {
                        decided += 1;
                        if (side(p) > 0) == a_first {
                            first += 1;
                        }
                    }
                }
            }
            all_pairs += lines.len() as u64;
            all_consistent += consistent;
            r.per_judge.push(Consistency {
                judge: name.clone(),
                pairs: lines.len() as u64,
                position_consistency: ratio(consistent as f64, lines.len() as u64),
                first_position_wins: ratio(first as f64, decided),
            });
        }
        r.position_consistency = ratio(all_consistent as f64, all_pairs);

        let longer = |j: &Judgment| -> Option<Winner> {
            match j.len_a.cmp(&j.len_b) {
                std::cmp::Ordering::Greater => Some(Winner::A),
                std::cmp::Ordering::Less => Some(Winner::B),
                std::cmp::Ordering::Equal => None,
            }
        };
        let (mut jn, mut jw, mut hn, mut hw) = (0u64, 0u64, 0u64, 0u64);
        for j in judgments {
            let Some(l) = longer(j) else { continue };
            if j.predicted != Winner::Tie {
                jn += 1;
                jw += u64::from(j.predicted == l);
            }
            if let Some(h) = j.human.filter(|h| *h != Winner::Tie) {
                hn += 1;
                hw += u64::from(h == l);
            }
        }
        r.verbosity = Verbosity {
            judge_pairs: jn,
            judge_longer_wins: ratio(jw as f64, jn),
            human_pairs: hn,
            human_longer_wins: ratio(hw as f64, hn),
        };

        for name in &names {
            let mut s = SelfEnhancement {
                judge: name.clone(),
                ..SelfEnhancement::default()
            };
            let (mut jsum, mut hsum) = (0.0, 0.0);
            for j in judgments {
                let Some(l) = j.judges.iter().find(|l| &l.judge == name) else {
                    continue;
                };
                let own_a = j.model_a.as_deref() == Some(l.model.as_str());
                let own_b = j.model_b.as_deref() == Some(l.model.as_str());
                if own_a == own_b {
                    continue;
                }
                s.pairs += 1;
                let p_own = if own_a { l.p } else { 1.0 - l.p };
                jsum += if is_tie(p_own, opts.tie_margin) {
                    0.5
                } else if p_own > 0.5 {
                    1.0
                } else {
                    0.0
                };
                if let Some(h) = j.human {
                    s.human_pairs += 1;
                    hsum += match (h, own_a) {
                        (Winner::Tie, _) => 0.5,
                        (Winner::A, true) | (Winner::B, false) => 1.0,
                        _ => 0.0,
                    };
                }
            }
            if s.pairs > 0 {
                s.judge_win_rate = ratio(jsum, s.pairs);
                s.human_win_rate = ratio(hsum, s.human_pairs);
                r.self_enhancement.push(s);
            }
        }
        r
    }

    /// The report as a small text table.
    pub fn table(&self) -> String {
        let f = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
        let mut rows: Vec<(String, String)> = vec![
            (
                "pairs judged".into(),
                format!("{} of {}", self.judged, self.pairs_total),
            ),
            ("rows in labels.csv".into(), self.written.to_string()),
            ("ties".into(), self.ties.to_string()),
            ("rejected".into(), self.rejected.to_string()),
            ("with human labels".into(), self.human_labelled.to_string()),
            ("accuracy (a/b/tie)".into(), f(self.accuracy)),
            (
                "accuracy (human a/b only)".into(),
                f(self.accuracy_decisive),
            ),
        ];
        if self.log_loss_raw.is_some() {
            rows.push(("log-loss (calibrated)".into(), f(self.log_loss)));
            rows.push((
                "log-loss (judges, uncalibrated)".into(),
                f(self.log_loss_raw),
            ));
        } else {
            rows.push(("log-loss".into(), f(self.log_loss)));
        }
        rows.extend([
            ("position consistency".into(), f(self.position_consistency)),
            (
                "longer answer wins: judge / humans".into(),
                format!(
                    "{} / {}",
                    f(self.verbosity.judge_longer_wins),
                    f(self.verbosity.human_longer_wins)
                ),
            ),
        ]);
        if let Some(h) = &self.calibration {
            let s = |x: &crate::feedback::calibrate::Scores| {
                format!("log-loss {:.3}, accuracy {:.3}", x.log_loss, x.accuracy)
            };
            rows.push((
                format!("held-out ({} folds, {} pairs): raw", h.folds, h.pairs),
                s(&h.before),
            ));
            rows.push(("held-out: calibrated".into(), s(&h.after)));
            rows.push(("held-out: constant (label shares)".into(), s(&h.constant)));
        }
        for c in &self.per_judge {
            rows.push((
                format!("{}: consistency / first wins", c.judge),
                format!(
                    "{} / {}",
                    f(c.position_consistency),
                    f(c.first_position_wins)
                ),
            ));
        }
        for s in &self.self_enhancement {
            rows.push((
                format!("{}: own answers win, judge / humans", s.judge),
                format!(
                    "{} / {} ({} pairs)",
                    f(s.judge_win_rate),
                    f(s.human_win_rate),
                    s.pairs
                ),
            ));
        }
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<w$}  {v}\n"));
        }
        out
    }
}
