//! Percentiles, in the two meanings Rapport needs — one place for both, so that every report
//! computes them the same way.
//!
//! A latency report shows [`nearest_rank`]: always a value that was observed, so the p99 of 20
//! samples is the slowest one rather than an interpolation past it. A bootstrap interval takes
//! [`interpolated`] quantiles of its resamples (type 7, the default of R and NumPy), which is
//! what published intervals use.

/// The `p`th percentile (0–100) of ascending `sorted` values by nearest rank; NaN when empty.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The `q`-quantile (0–1) of ascending `sorted` values by linear interpolation between order
/// statistics (type 7); NaN when empty.
pub fn interpolated(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_is_an_observed_value() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            (nearest_rank(&v, 50.0), nearest_rank(&v, 95.0), nearest_rank(&v, 100.0)),
            (50.0, 95.0, 100.0)
        );
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
        assert_eq!(nearest_rank(&[7.0], 95.0), 7.0);
        assert!(nearest_rank(&[], 50.0).is_nan());
    }

    #[test]
    fn interpolated_matches_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((interpolated(&v, 0.5) - 2.5).abs() < 1e-12);
        assert!((interpolated(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!(interpolated(&[], 0.5).is_nan());
    }
}
