//! Multi-label F1 scores.

use serde::Serialize;

/// F1 scores of multi-label predictions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct F1Report {
    /// Mean of the per-label F1s: every emotion counts the same, however rare.
    pub macro_f1: f64,
    /// F1 over all (message, label) decisions pooled.
    pub micro_f1: f64,
    /// F1 of each label, in label order.
    pub per_label: Vec<f64>,
}

/// Scores `predicted` against `gold`; both are per-message label sets over `num_labels` labels.
pub fn f1_report(gold: &[Vec<usize>], predicted: &[Vec<usize>], num_labels: usize) -> F1Report {
    assert_eq!(gold.len(), predicted.len(), "one prediction per message");
    let mut tp = vec![0u64; num_labels];
    let mut fp = vec![0u64; num_labels];
    let mut fn_ = vec![0u64; num_labels];
    for (g, p) in gold.iter().zip(predicted) {
        for &l in p {
            if g.contains(&l) {
                tp[l] += 1
            } else {
                fp[l] += 1
            }
        }
        for &l in g {
            if !p.contains(&l) {
                fn_[l] += 1;
            }
        }
    }
    let f1 = |tp: u64, fp: u64, fn_: u64| {
        if tp == 0 {
            0.0
        } else {
            2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
        }
    };
    let per_label: Vec<f64> = (0..num_labels).map(|l| f1(tp[l], fp[l], fn_[l])).collect();
    F1Report {
        macro_f1: per_label.iter().sum::<f64>() / num_labels as f64,
        micro_f1: f1(tp.iter().sum(), fp.iter().sum(), fn_.iter().sum()),
        per_label,
    }
}

/// The labels each message is predicted to carry: those whose probability reaches the label's
/// threshold.
pub fn predict(probabilities: &[Vec<f32>], thresholds: &[f32]) -> Vec<Vec<usize>> {
    probabilities
        .iter()
        .map(|p| (0..thresholds.len()).filter(|&l| p[l] >= thresholds[l]).collect())
        .collect()
}

/// The threshold in 0.01..=0.99 that maximises one label's F1, given each message's
/// probability for the label and whether the label is gold.
pub fn best_threshold(probs: &[f32], gold: &[bool]) -> (f32, f64) {
    let mut best = (0.5f32, -1.0f64);
    for step in 1..100 {
        let t = step as f32 / 100.0;
        let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
        for (&p, &g) in probs.iter().zip(gold) {
            match (p >= t, g) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        let f = if tp == 0 { 0.0 } else { 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64 };
        if f > best.1 {
            best = (t, f);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_on_known_inputs() {
        // label 0: tp 1, fn 1 -> 2/3; label 1: tp 1, fp 1 -> 2/3; label 2: never right -> 0.
        let gold = vec![vec![0], vec![0, 1], vec![2]];
        let pred = vec![vec![0], vec![1], vec![1]];
        let r = f1_report(&gold, &pred, 3);
        assert!((r.per_label[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_label[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.per_label[2], 0.0);
        assert!((r.macro_f1 - 4.0 / 9.0).abs() < 1e-12);
        // pooled: tp 2, fp 1, fn 2 -> 4/7
        assert!((r.micro_f1 - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn perfect_predictions_score_one() {
        let gold = vec![vec![0, 1], vec![1]];
        let r = f1_report(&gold, &gold, 2);
        assert_eq!((r.macro_f1, r.micro_f1), (1.0, 1.0));
    }

    #[test]
    fn the_best_threshold_separates_the_classes() {
        let probs = [0.1, 0.2, 0.35, 0.7, 0.8];
        let gold = [false, false, false, true, true];
        let (t, f) = best_threshold(&probs, &gold);
        assert!(t > 0.35 && t <= 0.7, "{t}");
        assert_eq!(f, 1.0);
    }
}
