//! The statistics behind every number the harness reports: rank correlations, bootstrap
//! intervals, and the tests `eval compare` uses to say a change is real.
//!
//! Written here rather than pulled in because each is a few lines, and because the resampling
//! must be reproducible from a seed across releases: the generator is SplitMix64, whose output
//! is fixed by its definition, not by a crate's version.

/// FNV-1a of `text`: a hash that is the same on every machine and every build (the standard
/// library's hasher is not), for keys and splits that must not move between runs.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A tiny deterministic generator (SplitMix64, Steele et al. 2014): the same seed gives the same
/// resamples on every machine and every version of Rapport.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (n > 0). Lemire's multiply-shift; its bias is below 2^-32 for
    /// the sample sizes here.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// The arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// The median; `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// The `q`-quantile (0..=1) by linear interpolation between order statistics (type 7, the
/// default of R and NumPy; `rapport_core::percentile`).
pub use rapport_core::percentile::interpolated as quantile;

/// Ranks starting at 1, ties given the mean of the ranks they span (what Spearman needs).
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Pearson's r; `None` with fewer than two pairs or when either side is constant (the
/// correlation is undefined then, and reporting 0 would hide that the judge gave one score).
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "paired samples");
    if x.len() < 2 {
        return None;
    }
    let (mx, my) = (mean(x)?, mean(y)?);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Spearman's ρ: Pearson's r of the ranks (ties averaged).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&ranks(x), &ranks(y))
}

/// Kendall's τ-b, which corrects for ties on either side (judges on a 1–10 scale tie a lot).
/// O(n²), fine for calibration sets of hundreds.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "paired samples");
    let n = x.len();
    if n < 2 {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = (x[i] - x[j]).signum() as i64 * i64::from(x[i] != x[j]);
            let dy = (y[i] - y[j]).signum() as i64 * i64::from(y[i] != y[j]);
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => ties_x += 1,
                (_, 0) => ties_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n1 = (concordant + discordant + ties_x) as f64;
    let n2 = (concordant + discordant + ties_y) as f64;
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    Some((concordant - discordant) as f64 / (n1 * n2).sqrt())
}

/// A point estimate with its bootstrap 95% percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    /// On the whole sample.
    pub value: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
    /// Sample size.
    pub n: usize,
    /// Bootstrap resamples on which the statistic was undefined (a resample of a few items can
    /// be constant): left out of the interval, which then describes only the rest. When every
    /// resample was, there is no interval at all ([`Estimate::has_interval`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: usize,
    /// Resamples drawn (0 where the interval is not a bootstrap's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resamples: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Estimate {
    /// Whether the interval means anything: false when every bootstrap resample was undefined
    /// (the low and high then equal the value, which is not certainty but no information).
    pub fn has_interval(&self) -> bool {
        self.resamples == 0 || self.dropped < self.resamples
    }

    /// `0.42 [0.30, 0.52]`, or the value with why it has no interval, and the share of
    /// undefined resamples when there were any.
    pub fn display(&self, decimals: usize) -> String {
        if !self.has_interval() {
            return format!("{:+.decimals$} [no interval: every resample undefined]", self.value);
        }
        let mut out = format!(
            "{:+.decimals$} [{:+.decimals$}, {:+.decimals$}]",
            self.value, self.low, self.high
        );
        if self.dropped > 0 {
            out.push_str(&format!(" ({} of {} resamples undefined)", self.dropped, self.resamples));
        }
        out
    }
}

/// Resamples `n` indices with replacement `resamples` times and applies `statistic` to each
/// resample; resamples where the statistic is undefined are dropped (a resample of a few
/// items can be constant). `None` when the statistic is undefined on the sample itself.
pub fn bootstrap(
    n: usize,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> Option<f64>,
) -> Option<Estimate> {
    let all: Vec<usize> = (0..n).collect();
    let value = statistic(&all)?;
    let mut rng = SplitMix64::new(seed);
    let mut draws = Vec::with_capacity(resamples);
    let mut idx = vec![0usize; n];
    for _ in 0..resamples {
        for slot in idx.iter_mut() {
            *slot = rng.below(n);
        }
        if let Some(v) = statistic(&idx) {
            draws.push(v);
        }
    }
    let dropped = resamples - draws.len();
    if draws.is_empty() {
        return Some(Estimate { value, low: value, high: value, n, dropped, resamples });
    }
    draws.sort_by(f64::total_cmp);
    Some(Estimate {
        value,
        low: quantile(&draws, 0.025),
        high: quantile(&draws, 0.975),
        n,
        dropped,
        resamples,
    })
}

/// The mean with a bootstrap interval.
pub fn mean_ci(values: &[f64], seed: u64) -> Option<Estimate> {
    bootstrap(values.len(), 2000, seed, |idx| {
        mean(&idx.iter().map(|&i| values[i]).collect::<Vec<_>>())
    })
}

/// A correlation with a bootstrap interval over pairs.
pub fn correlation_ci(
    x: &[f64],
    y: &[f64],
    seed: u64,
    f: fn(&[f64], &[f64]) -> Option<f64>,
) -> Option<Estimate> {
    bootstrap(x.len(), 1000, seed, |idx| {
        let xs: Vec<f64> = idx.iter().map(|&i| x[i]).collect();
        let ys: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
        f(&xs, &ys)
    })
}

/// How B differs from A on one measure.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    /// mean(B) − mean(A), with a bootstrap 95% interval.
    pub delta: Estimate,
    /// Two-sided permutation p-value (sign-flip when paired).
    pub p_value: f64,
    /// Whether the samples were paired (same persona, simulator and seed in both runs).
    pub paired: bool,
}

/// Compares two samples. Paired when `pairs` is given (indices into `a` and `b` of the same
/// dialogue in both runs): the statistic is then the mean of per-pair differences, resampled by
/// pair and tested by random sign flips. Otherwise two independent samples, resampled within
/// each and tested by shuffling labels. 5,000 permutations: p-values down to 2·10⁻⁴.
pub fn difference(
    a: &[f64],
    b: &[f64],
    pairs: Option<&[(usize, usize)]>,
    seed: u64,
) -> Option<Difference> {
    const PERMUTATIONS: usize = 5000;
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    if let Some(pairs) = pairs {
        let d: Vec<f64> = pairs.iter().map(|&(i, j)| b[j] - a[i]).collect();
        let delta = mean_ci(&d, seed)?;
        let observed = delta.value.abs();
        let mut extreme = 0;
        for _ in 0..PERMUTATIONS {
            let s: f64 =
                d.iter().map(|v| if rng.next_u64() & 1 == 1 { *v } else { -*v }).sum::<f64>()
                    / d.len() as f64;
            if s.abs() >= observed - 1e-12 {
                extreme += 1;
            }
        }
        return Some(Difference {
            delta,
            p_value: (extreme + 1) as f64 / (PERMUTATIONS + 1) as f64,
            paired: true,
        });
    }
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let value = mean(b)? - mean(a)?;
    let mut draws = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let ma = (0..a.len()).map(|_| a[rng.below(a.len())]).sum::<f64>() / a.len() as f64;
        let mb = (0..b.len()).map(|_| b[rng.below(b.len())]).sum::<f64>() / b.len() as f64;
        draws.push(mb - ma);
    }
    draws.sort_by(f64::total_cmp);
    let delta = Estimate {
        value,
        low: quantile(&draws, 0.025),
        high: quantile(&draws, 0.975),
        n: a.len() + b.len(),
        dropped: 0,
        resamples: draws.len(),
    };
    let mut pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let mut extreme = 0;
    for _ in 0..PERMUTATIONS {
        // Fisher–Yates on the pooled values; the first |a| are "A".
        for i in (1..pooled.len()).rev() {
            pooled.swap(i, rng.below(i + 1));
        }
        let ma = pooled[..a.len()].iter().sum::<f64>() / a.len() as f64;
        let mb = pooled[a.len()..].iter().sum::<f64>() / b.len() as f64;
        if (mb - ma).abs() >= value.abs() - 1e-12 {
            extreme += 1;
        }
    }
    Some(Difference {
        delta,
        p_value: (extreme + 1) as f64 / (PERMUTATIONS + 1) as f64,
        paired: false,
    })
}

/// Holm–Bonferroni adjusted p-values, in the input's order: comparing many criteria at once
/// would otherwise call one in twenty a change by chance.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p_values[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
    }

    #[test]
    fn spearman_and_kendall_match_scipy_on_known_inputs() {
        // Reference values from an independent implementation of the textbook definitions
        // (they agree with scipy.stats.spearmanr and kendalltau's default tau-b).
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [5.0, 6.0, 7.0, 8.0, 7.0];
        assert!(close(spearman(&x, &y).unwrap(), 0.8207826816681233));
        assert!(close(kendall_tau_b(&x, &y).unwrap(), 0.7378647873726218));
        // Perfect agreement and perfect reversal.
        assert!(close(spearman(&x, &x).unwrap(), 1.0));
        let rev: Vec<f64> = x.iter().rev().copied().collect();
        assert!(close(kendall_tau_b(&x, &rev).unwrap(), -1.0));
        // Ties on both sides: x=[1,1,2,3], y=[1,2,2,3] → tau-b = 4 / √(5·5) = 0.8.
        assert!(close(kendall_tau_b(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 2.0, 3.0]).unwrap(), 0.8));
    }

    #[test]
    fn a_constant_side_has_no_correlation() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), None);
        assert_eq!(pearson(&[1.0], &[2.0]), None);
    }

    #[test]
    fn undefined_resamples_are_counted_and_none_left_means_no_interval() {
        // Defined only when both items are drawn: about half the resamples of two items.
        let e = bootstrap(2, 1000, 7, |idx| (idx.contains(&0) && idx.contains(&1)).then_some(1.0))
            .unwrap();
        assert!(e.dropped > 350 && e.dropped < 650, "{e:?}");
        assert!(e.has_interval());
        assert!(e.display(2).contains("resamples undefined"), "{}", e.display(2));
        // Defined only on the sample itself: no resample counts, so no interval is claimed.
        let all: Vec<usize> = (0..10).collect();
        let e = bootstrap(10, 200, 7, |idx| (idx == all.as_slice()).then_some(0.5)).unwrap();
        assert_eq!((e.dropped, e.resamples), (200, 200));
        assert!(!e.has_interval());
        assert!(e.display(2).contains("no interval"), "{}", e.display(2));
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_reproducible() {
        let values: Vec<f64> = (0..50).map(|i| (i % 7) as f64).collect();
        let a = mean_ci(&values, 7).unwrap();
        let b = mean_ci(&values, 7).unwrap();
        assert_eq!(a, b);
        assert!(a.low < a.value && a.value < a.high, "{a:?}");
        // The standard error of this sample's mean is about 0.29: the 95% interval is ~±0.57.
        assert!(a.high - a.low > 0.8 && a.high - a.low < 1.5, "{a:?}");
        let c = mean_ci(&values, 8).unwrap();
        assert_ne!(a.low, c.low, "another seed draws other resamples");
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!(close(quantile(&v, 0.5), 2.5));
        assert!(close(quantile(&v, 0.025), 1.075));
    }

    #[test]
    fn a_clear_shift_is_significant_and_noise_is_not() {
        let a: Vec<f64> = (0..30).map(|i| 3.0 + ((i * 7) % 5) as f64 * 0.1).collect();
        let b: Vec<f64> = a.iter().map(|v| v + 1.0).collect();
        let d = difference(&a, &b, None, 1).unwrap();
        assert!(close(d.delta.value, 1.0));
        assert!(d.p_value < 0.001 && d.delta.low > 0.5, "{d:?}");
        let same = difference(&a, &a, None, 1).unwrap();
        assert!(same.p_value > 0.5, "{same:?}");
        let pairs: Vec<(usize, usize)> = (0..30).map(|i| (i, i)).collect();
        let paired = difference(&a, &b, Some(&pairs), 1).unwrap();
        assert!(paired.paired && paired.p_value < 0.001 && close(paired.delta.value, 1.0));
    }

    #[test]
    fn holm_matches_its_definition() {
        // p = [0.01, 0.04, 0.03] → sorted 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06.
        let adj = holm(&[0.01, 0.04, 0.03]);
        assert!(close(adj[0], 0.03) && close(adj[1], 0.06) && close(adj[2], 0.06), "{adj:?}");
    }

    #[test]
    fn splitmix_is_the_published_sequence() {
        // First output of SplitMix64 seeded with 0 (reference implementation by Vigna).
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220A8397B1DCDAF);
    }
}
