//! A calibration mapping: the judge's scores in, the score people would give out.
//!
//! Per rated dimension, a ridge regression over the judge's scores on every criterion of the
//! rubric (one conversation's wit says something about how interesting people found it),
//! fitted on the training split of a rated set and applied to anything judged later. Small and
//! transparent on purpose: a handful of weights a reader can print, not a model that can learn
//! the training split by heart. The ridge strength is chosen by 5-fold cross-validation inside
//! the training split, so the held-out split is touched only to report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::{self, Estimate};

/// Ridge strengths tried by cross-validation (on standardised features).
const LAMBDAS: [f64; 6] = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0];

/// One dimension's fitted regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimensionFit {
    /// Predicted human score when every feature is at its training mean.
    pub intercept: f64,
    /// Per feature (in [`Mapping::features`] order), the weight on its standardised value.
    pub weights: Vec<f64>,
    /// Training mean of each feature.
    pub means: Vec<f64>,
    /// Training standard deviation of each feature (1 where it was constant).
    pub scales: Vec<f64>,
    /// The ridge strength cross-validation chose.
    pub lambda: f64,
    /// Training items the fit used.
    pub n_train: usize,
}

impl DimensionFit {
    /// The calibrated score for one item's features.
    pub fn predict(&self, features: &[f64]) -> f64 {
        self.intercept
            + features
                .iter()
                .zip(&self.weights)
                .zip(self.means.iter().zip(&self.scales))
                .map(|((x, w), (m, s))| w * (x - m) / s)
                .sum::<f64>()
    }
}

/// How the held-out split agreed with people, raw and calibrated, on one dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutAgreement {
    /// Held-out items with a human score and every feature.
    pub n: usize,
    /// Spearman's ρ of the judge's own score for this criterion.
    pub raw: Option<Estimate>,
    /// Spearman's ρ of the calibrated score.
    pub calibrated: Option<Estimate>,
}

/// A fitted mapping, saved next to its rubric and applied by reports judged the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    /// The rubric it was fitted for.
    pub rubric: String,
    /// The judge it was fitted for: model, method, prompt and rubric text
    /// ([`crate::judge::Judge::key`]). Applied only to scores judged under the same key.
    pub judge_key: String,
    /// The judge's model, for people.
    pub judge_model: String,
    /// The judge's method.
    pub method: String,
    /// The rated set it was fitted on.
    pub data: String,
    /// Criterion ids whose judged scores are the features, in order.
    pub features: Vec<String>,
    /// By dimension.
    pub dimensions: BTreeMap<String, DimensionFit>,
    /// Agreement on the held-out split, by dimension: how far its calibrated scores can be
    /// trusted.
    pub held_out: BTreeMap<String, HeldOutAgreement>,
}

/// The shipped rubrics' calibrations as they were when the binary was built, so that an
/// installed binary states a judge's agreement with people from any directory.
const SHIPPED: &[(&str, &str)] = &[
    ("chitchat", include_str!("../rubrics/chitchat.calibration.json")),
    ("coach", include_str!("../rubrics/coach.calibration.json")),
];

impl Mapping {
    /// The saved calibration of a rubric (a shipped id or a TOML path), if it has one: the file
    /// next to it ([`crate::rubric::mapping_path`]) when present, so a fresh `--fit` counts at
    /// once; otherwise, for a shipped rubric, the one built into the binary.
    pub fn saved(rubric: &str) -> Result<Option<Self>, crate::EvalError> {
        let path = crate::rubric::mapping_path(rubric);
        if path.exists() {
            return Self::load(&path).map(Some);
        }
        match SHIPPED.iter().find(|(id, _)| *id == rubric) {
            Some((id, text)) => serde_json::from_str(text).map(Some).map_err(|e| {
                crate::EvalError::Invalid(format!("the built-in calibration of {id}: {e}"))
            }),
            None => Ok(None),
        }
    }

    /// Reads a mapping file.
    pub fn load(path: &std::path::Path) -> Result<Self, crate::EvalError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::EvalError::Io(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| crate::EvalError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The calibrated score of `dimension` from an item's judged scores by criterion id;
    /// `None` when the dimension has no fit or a feature is missing.
    pub fn apply(&self, dimension: &str, scores: &BTreeMap<String, Option<f64>>) -> Option<f64> {
        let fit = self.dimensions.get(dimension)?;
        let x: Option<Vec<f64>> =
            self.features.iter().map(|f| scores.get(f).copied().flatten()).collect();
        Some(fit.predict(&x?))
    }
}

/// Fits one dimension: `x` rows of features, `y` human scores. `None` with fewer than ten items.
pub fn fit_dimension(x: &[Vec<f64>], y: &[f64]) -> Option<DimensionFit> {
    let n = y.len();
    if n < 10 || x.len() != n {
        return None;
    }
    let lambda = LAMBDAS
        .iter()
        .copied()
        .map(|l| (l, cross_validated_error(x, y, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(l, _)| l)?;
    Some(ridge(x, y, lambda))
}

/// Mean squared error over 5 folds (items assigned round-robin, so no shuffle is needed to be
/// reproducible; the rated file is already in random order).
fn cross_validated_error(x: &[Vec<f64>], y: &[f64], lambda: f64) -> f64 {
    let folds = 5;
    let mut sse = 0.0;
    for k in 0..folds {
        let (mut tx, mut ty) = (Vec::new(), Vec::new());
        for i in (0..y.len()).filter(|i| i % folds != k) {
            tx.push(x[i].clone());
            ty.push(y[i]);
        }
        let fit = ridge(&tx, &ty, lambda);
        for i in (0..y.len()).filter(|i| i % folds == k) {
            sse += (fit.predict(&x[i]) - y[i]).powi(2);
        }
    }
    sse / y.len() as f64
}

/// Ridge regression on standardised features: (XᵀX + λI) β = Xᵀ(y − ȳ).
pub fn ridge(x: &[Vec<f64>], y: &[f64], lambda: f64) -> DimensionFit {
    let n = y.len();
    let d = x.first().map_or(0, Vec::len);
    let means: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64).collect();
    let scales: Vec<f64> = (0..d)
        .map(|j| {
            let var = x.iter().map(|r| (r[j] - means[j]).powi(2)).sum::<f64>() / n as f64;
            if var > 1e-12 {
                var.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    let z: Vec<Vec<f64>> =
        x.iter().map(|r| (0..d).map(|j| (r[j] - means[j]) / scales[j]).collect()).collect();
    let y_mean = y.iter().sum::<f64>() / n as f64;
    let mut a = vec![vec![0.0; d]; d];
    let mut b = vec![0.0; d];
    for (row, &yi) in z.iter().zip(y) {
        for i in 0..d {
            b[i] += row[i] * (yi - y_mean);
            for j in 0..d {
                a[i][j] += row[i] * row[j];
            }
        }
    }
    for (i, r) in a.iter_mut().enumerate() {
        r[i] += lambda;
    }
    let weights = solve(a, b);
    DimensionFit { intercept: y_mean, weights, means, scales, lambda, n_train: n }
}

/// Gaussian elimination with partial pivoting; the ridge term keeps the system regular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let d = b.len();
    for col in 0..d {
        let pivot = (col..d).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()));
        let Some(pivot) = pivot else { break };
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-12 {
            continue;
        }
        for row in col + 1..d {
            let f = a[row][col] / p;
            let (upper, lower) = a.split_at_mut(row);
            for (x, y) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *x -= f * y;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; d];
    for row in (0..d).rev() {
        let s: f64 = (row + 1..d).map(|k| a[row][k] * x[k]).sum();
        x[row] = if a[row][row].abs() < 1e-12 { 0.0 } else { (b[row] - s) / a[row][row] };
    }
    x
}

/// Spearman's ρ of `b` minus that of `a`, both against `y`, resampled by item: the paired
/// bootstrap that says whether one scorer agrees with people better than another on the same
/// items. `None` when either correlation is undefined on the sample.
pub fn spearman_difference(a: &[f64], b: &[f64], y: &[f64], seed: u64) -> Option<Estimate> {
    stats::bootstrap(y.len(), 2000, seed, |idx| {
        let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let ys = pick(y);
        Some(stats::spearman(&pick(b), &ys)? - stats::spearman(&pick(a), &ys)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_relation_and_ignores_noise_features() {
        // y = 2 + 3·x0, x1 unrelated.
        let x: Vec<Vec<f64>> =
            (0..60).map(|i| vec![i as f64 / 10.0, ((i * 37) % 11) as f64]).collect();
        let y: Vec<f64> = x.iter().map(|r| 2.0 + 3.0 * r[0]).collect();
        let fit = fit_dimension(&x, &y).unwrap();
        assert!(fit.lambda <= 0.1, "an exact relation needs little shrinkage: {fit:?}");
        for r in x.iter().take(5) {
            assert!((fit.predict(r) - (2.0 + 3.0 * r[0])).abs() < 0.05, "{fit:?}");
        }
        assert!(fit.weights[1].abs() < 0.05 * fit.weights[0].abs(), "{fit:?}");
    }

    #[test]
    fn pure_noise_is_shrunk_towards_the_mean() {
        let x: Vec<Vec<f64>> = (0..50).map(|i| vec![((i * 7919) % 13) as f64]).collect();
        let y: Vec<f64> = (0..50).map(|i| ((i * 104729) % 17) as f64).collect();
        let fit = fit_dimension(&x, &y).unwrap();
        assert!(fit.lambda >= 10.0, "{fit:?}");
        assert!(fit.weights[0].abs() < 1.0, "{fit:?}");
        assert!(fit_dimension(&x[..5], &y[..5]).is_none(), "too few items to fit");
    }

    #[test]
    fn shipped_calibrations_are_found_from_any_directory() {
        // The tests run in eval/, where eval/rubrics/… is not a path: the built-in copy answers.
        assert!(!crate::rubric::mapping_path("coach").exists());
        let coach = Mapping::saved("coach").unwrap().expect("the coach rubric is calibrated");
        assert_eq!(coach.rubric, "coach");
        assert!(coach.held_out["empathy_shown"].n >= 30, "{:?}", coach.held_out);
        assert!(Mapping::saved("chitchat").unwrap().is_some());
        assert!(Mapping::saved("default").unwrap().is_none(), "no human ratings: no mapping");
    }

    #[test]
    fn a_mapping_applies_only_with_every_feature() {
        let fit = ridge(&[vec![1.0], vec![2.0], vec![3.0]], &[1.0, 2.0, 3.0], 0.0);
        let m = Mapping {
            rubric: "r".into(),
            judge_key: "k".into(),
            judge_model: "m".into(),
            method: "expected".into(),
            data: "d".into(),
            features: vec!["a".into()],
            dimensions: [("a".to_string(), fit)].into(),
            held_out: BTreeMap::new(),
        };
        let scores = [("a".to_string(), Some(2.5))].into();
        assert!((m.apply("a", &scores).unwrap() - 2.5).abs() < 1e-9);
        assert!(m.apply("a", &[("a".to_string(), None)].into()).is_none());
        assert!(m.apply("b", &scores).is_none());
    }

    #[test]
    fn a_better_scorer_shows_a_positive_paired_difference() {
        let y: Vec<f64> = (0..80).map(|i| i as f64).collect();
        let good: Vec<f64> = y.iter().map(|v| v + ((*v as usize * 31) % 7) as f64).collect();
        let poor: Vec<f64> = y.iter().map(|v| v + ((*v as usize * 31) % 97) as f64).collect();
        let d = spearman_difference(&poor, &good, &y, 3).unwrap();
        assert!(d.value > 0.0 && d.low > 0.0, "{d:?}");
    }
}
