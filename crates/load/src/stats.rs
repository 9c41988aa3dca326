//! Percentiles and the other summaries a load report shows.

use serde::{Deserialize, Serialize};

/// A distribution of one measure (milliseconds, or whatever the caller fed it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Distribution {
    /// Summarises `values`; all zero when there are none.
    pub fn of(values: &[f64]) -> Distribution {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Distribution::default();
        }
        sorted.sort_by(f64::total_cmp);
        Distribution {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: percentile(&sorted, 50.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
            max: *sorted.last().expect("not empty"),
        }
    }
}

/// The `p`th percentile of sorted values, nearest-rank (an observed value).
pub use rapport_core::percentile::nearest_rank as percentile;

/// Jain's fairness index of per-user means: 1 when every user waited the same, 1/n when one user
/// got all the service. Queueing is fair when it stays near 1 as users are added.
pub fn jain_index(per_user: &[f64]) -> f64 {
    let n = per_user.len() as f64;
    let sum: f64 = per_user.iter().sum();
    let squares: f64 = per_user.iter().map(|x| x * x).sum();
    if n == 0.0 || squares == 0.0 {
        return 1.0;
    }
    sum * sum / (n * squares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Distribution::of(&values);
        assert_eq!((d.p50, d.p95, d.p99, d.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Distribution::of(&[7.0]).p99, 7.0);
        assert_eq!(Distribution::of(&[]).count, 0);
    }

    #[test]
    fn fairness_index_bounds() {
        assert!((jain_index(&[3.0, 3.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_observed_values(values in proptest::collection::vec(0.0f64..1e6, 1..200)) {
            let d = Distribution::of(&values);
            prop_assert!(d.p50 <= d.p95 && d.p95 <= d.p99 && d.p99 <= d.max);
            prop_assert!(values.contains(&d.p50) && values.contains(&d.p99));
            let j = jain_index(&values);
            prop_assert!(j <= 1.0 + 1e-9 && j >= 1.0 / values.len() as f64 - 1e-9);
        }
    }
}
