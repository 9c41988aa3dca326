//! The arithmetic of one encoder pass: a matrix product against weights packed once at load,
//! layer norm, GELU and a softmax, all on plain `f32` slices.
//!
//! Why not candle's ops: for a 17-token message every product is 17 rows against a 384 × 384 or
//! 384 × 1536 weight, and a general GEMM repacks that weight on every call (in a one-off scratch
//! program the `gemm` crate candle calls reached 16–30 GFLOP/s on these shapes on 2 cores, the
//! kernel below 44–55; `benches/nlu.rs` measures the whole encoder against candle's); every
//! candle op also allocates its output. Here the weights are packed in the kernel's order when
//! the model loads, and the pass writes into buffers it owns.
//!
//! The packed weights are stored as f16 and widened to f32 in the kernel (products and sums stay
//! f32). A message's pass reads every weight once, so its speed is the speed of streaming the
//! weights: 42 MB in f32, more than the 36 MB L3 of the machine the README measures, against
//! 21 MB in f16, which stays in L3 from one message to the next.

/// Output columns one kernel call produces: two AVX2 registers of eight.
pub(crate) const PANEL: usize = 16;

/// Rows one kernel call handles: 6 rows × 2 registers = 12 accumulators, which with the two
/// weight registers and the broadcast leaves the 16 AVX2 registers just enough.
const ROWS: usize = 6;

/// A linear layer `y = x Wᵀ + b` whose weight (`[out, in]`, PyTorch's layout) is stored as
/// panels of [`PANEL`] output columns: panel `p` holds, for each input index `i`, the 16 weights
/// `W[p·16 .. p·16+16][i]` next to each other, so the kernel reads the weight strictly forwards.
pub(crate) struct PackedLinear {
    inputs: usize,
    outputs: usize,
    /// f16 bit patterns.
    panels: Vec<u16>,
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight` (`outputs × inputs`, row-major) and `bias` (`outputs`).
    pub(crate) fn new(weight: &[f32], bias: &[f32], outputs: usize, inputs: usize) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight is {outputs} × {inputs}");
        assert_eq!(bias.len(), outputs, "one bias per output");
        assert_eq!(outputs % PANEL, 0, "outputs must be a multiple of {PANEL}");
        let mut panels = vec![0u16; outputs * inputs];
        for p in 0..outputs / PANEL {
            for i in 0..inputs {
                for j in 0..PANEL {
                    panels[(p * inputs + i) * PANEL + j] = half::f16::from_f32(weight[(p * PANEL + j) * inputs + i]).to_bits();
                }
            }
        }
        Self { inputs, outputs, panels, bias: bias.to_vec() }
    }

    /// `out[r] = x[r] Wᵀ + b` for each of the `rows` rows of `x` (`rows × inputs`, row-major),
    /// into `out` (`rows × outputs`). The panels are split between rayon's threads; each thread
    /// runs every row against its panels, so a panel is read from memory once per call.
    pub(crate) fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inputs, "input is {rows} × {}", self.inputs);
        assert_eq!(out.len(), rows * self.outputs, "output is {rows} × {}", self.outputs);
        let panels = self.outputs / PANEL;
        let threads = rayon::current_num_threads().clamp(1, panels);
        let per_thread = panels.div_ceil(threads);
        let out_ptr = DisjointWrites(out.as_mut_ptr());
        rayon::scope(|s| {
            for t in 0..threads {
                let range = (t * per_thread)..((t + 1) * per_thread).min(panels);
                let out_ptr = &out_ptr;
                s.spawn(move |_| {
                    for p in range {
                        // SAFETY: each panel writes only its own 16 columns of `out`, and panel
                        // ranges do not overlap between threads; `out` outlives the scope.
                        unsafe { self.panel_forward(x, rows, p, out_ptr.get()) };
                    }
                });
            }
        });
    }

    /// Columns `p·16 .. p·16+16` of every row.
    ///
    /// # Safety
    /// `out` must point to `rows × outputs` writable floats that no one else writes in those
    /// columns meanwhile.
    unsafe fn panel_forward(&self, x: &[f32], rows: usize, p: usize, out: *mut f32) {
        let panel = &self.panels[p * self.inputs * PANEL..(p + 1) * self.inputs * PANEL];
        let bias = &self.bias[p * PANEL..(p + 1) * PANEL];
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(ROWS);
            let x_rows = &x[r * self.inputs..(r + n) * self.inputs];
            let out_rows = out.add(r * self.outputs + p * PANEL);
            simd::rows_times_panel(x_rows, n, self.inputs, panel, bias, out_rows, self.outputs);
            r += n;
        }
    }
}

/// An output buffer that parallel jobs write into, each to elements no other job writes: the
/// panels of [`PackedLinear::forward`], the (text, head) blocks of the encoder's attention.
pub(crate) struct DisjointWrites(pub(crate) *mut f32);

// SAFETY: every user writes disjoint elements, and the buffer outlives the parallel section
// (each use says why at its `unsafe` block).
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    // A method, not `.0`: a closure naming `out.0` would capture the raw pointer itself, which
    // is not `Sync`, instead of this wrapper.
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `n` rows (≤ 6) of `x` times one packed panel, plus bias, into `out` (row stride `ldo`).
/// The scalar version is the reference the SIMD one is tested against, and what builds without
/// AVX2/FMA use.
pub(crate) mod simd {
    use super::PANEL;

    /// # Safety
    /// `out` must be valid for `n` rows of stride `ldo`, 16 floats each.
    pub(crate) unsafe fn rows_times_panel(x: &[f32], n: usize, k: usize, panel: &[u16], bias: &[f32], out: *mut f32, ldo: usize) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            match n {
                6 => avx2::kernel::<6>(x, k, panel, bias, out, ldo),
                5 => avx2::kernel::<5>(x, k, panel, bias, out, ldo),
                4 => avx2::kernel::<4>(x, k, panel, bias, out, ldo),
                3 => avx2::kernel::<3>(x, k, panel, bias, out, ldo),
                2 => avx2::kernel::<2>(x, k, panel, bias, out, ldo),
                _ => avx2::kernel::<1>(x, k, panel, bias, out, ldo),
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        scalar(x, n, k, panel, bias, out, ldo)
    }

    /// # Safety
    /// As [`rows_times_panel`].
    #[allow(dead_code)] // used only without AVX2, and by the tests
    pub(crate) unsafe fn scalar(x: &[f32], n: usize, k: usize, panel: &[u16], bias: &[f32], out: *mut f32, ldo: usize) {
        for r in 0..n {
            let mut acc = [0f32; PANEL];
            acc.copy_from_slice(bias);
            for i in 0..k {
                let xv = x[r * k + i];
                for (a, w) in acc.iter_mut().zip(&panel[i * PANEL..(i + 1) * PANEL]) {
                    *a += xv * half::f16::from_bits(*w).to_f32();
                }
            }
            std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * ldo), PANEL);
        }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    mod avx2 {
        use std::arch::x86_64::*;

        use super::PANEL;

        /// `R` rows at once: per input index, two weight registers are loaded (16 f16 values,
        /// widened) and each row's value is broadcast into two fused multiply-adds.
        #[inline(always)]
        pub(super) unsafe fn kernel<const R: usize>(x: &[f32], k: usize, panel: &[u16], bias: &[f32], out: *mut f32, ldo: usize) {
            debug_assert!(x.len() >= R * k && panel.len() >= k * PANEL && bias.len() == PANEL);
            let b0 = _mm256_loadu_ps(bias.as_ptr());
            let b1 = _mm256_loadu_ps(bias.as_ptr().add(8));
            let mut acc = [[b0, b1]; R];
            let (xp, wp) = (x.as_ptr(), panel.as_ptr());
            for i in 0..k {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i * PANEL) as *const __m128i));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i * PANEL + 8) as *const __m128i));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let v = _mm256_broadcast_ss(&*xp.add(r * k + i));
                    acc[0] = _mm256_fmadd_ps(v, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(v, w1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(r * ldo), acc[0]);
                _mm256_storeu_ps(out.add(r * ldo + 8), acc[1]);
            }
        }
    }
}

/// `x[r] = LayerNorm(x[r] + residual[r])` for each row of width `gamma.len()`.
pub(crate) fn add_layer_norm(x: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    for (row, res) in x.chunks_exact_mut(width).zip(residual.chunks_exact(width)) {
        for (v, r) in row.iter_mut().zip(res) {
            *v += r;
        }
        layer_norm_row(row, gamma, beta, eps);
    }
}

/// LayerNorm of one row in place (two passes: the mean, then the variance around it, which
/// keeps the precision a one-pass sum of squares loses).
pub(crate) fn layer_norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// GELU with the exact (erf) form BERT was trained with, in place.
pub(crate) fn gelu_erf(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷ in exact arithmetic, < 10⁻⁶ in
/// f32, where `1 − poly·e^{−x²}` cancels near 0; GELU multiplies it by x/2), branch-free so the
/// loop above vectorises.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_nonpositive(-a * a);
    y.copysign(x)
}

/// `e^x` for `x ≤ 0` (0 below −87, where f32 underflows): 2^n · p(r) with a degree-6
/// polynomial on r ∈ [−ln2/2, ln2/2]; relative error < 10⁻⁶. Branch-free, so it vectorises.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 in two parts (Cody–Waite): n · LN2_HI is exact in f32, so the reduction loses no
    // digits where n is large.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n by building the exponent bits; n ≥ −126 here, so the result is a normal float.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Softmax of one row in place.
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The packed product against the plain definition (with the weights rounded to f16 as
    /// packing stores them), for row counts that exercise every kernel width (1–6) and the
    /// remainder after whole groups of six.
    #[test]
    fn packed_linear_equals_the_plain_product() {
        let (outputs, inputs) = (48, 37);
        let w: Vec<f32> = lcg(1, outputs * inputs).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let b = lcg(2, outputs);
        let layer = PackedLinear::new(&w, &b, outputs, inputs);
        for rows in [1, 2, 3, 4, 5, 6, 7, 13, 17] {
            let x = lcg(3 + rows as u64, rows * inputs);
            let mut out = vec![0.0; rows * outputs];
            layer.forward(&x, rows, &mut out);
            for r in 0..rows {
                for o in 0..outputs {
                    let want: f32 = b[o] + (0..inputs).map(|i| x[r * inputs + i] * w[o * inputs + i]).sum::<f32>();
                    let got = out[r * outputs + o];
                    assert!((got - want).abs() < 1e-4, "rows {rows}, row {r}, column {o}: {got} vs {want}");
                }
            }
        }
    }

    /// The SIMD kernel and the scalar fallback agree (the fallback is what non-AVX2 builds run).
    #[test]
    fn simd_kernel_equals_the_scalar_fallback() {
        let (outputs, inputs) = (PANEL, 29);
        let w = lcg(7, outputs * inputs);
        let b = lcg(8, outputs);
        let layer = PackedLinear::new(&w, &b, outputs, inputs);
        for n in 1..=6 {
            let x = lcg(9, n * inputs);
            let (mut fast, mut slow) = (vec![0.0; n * PANEL], vec![0.0; n * PANEL]);
            unsafe {
                simd::rows_times_panel(&x, n, inputs, &layer.panels, &layer.bias, fast.as_mut_ptr(), PANEL);
                simd::scalar(&x, n, inputs, &layer.panels, &layer.bias, slow.as_mut_ptr(), PANEL);
            }
            for (f, s) in fast.iter().zip(&slow) {
                assert!((f - s).abs() < 1e-5, "{n} rows: {f} vs {s}");
            }
        }
    }

    #[test]
    fn erf_and_exp_match_the_standard_library() {
        for i in -4000..=4000 {
            let x = i as f32 / 1000.0;
            let e = libm_erf(f64::from(x));
            assert!((f64::from(erf(x)) - e).abs() < 1e-6, "erf({x}) = {} vs {e}", erf(x));
        }
        for i in 0..=9000 {
            let x = -(i as f32) / 100.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= want * 1e-6 + 1e-37, "exp({x}) = {got} vs {want}");
        }
        assert_eq!(exp_nonpositive(-1000.0), exp_nonpositive(-87.0));
    }

    /// erf in f64 from its Taylor series (|x| ≤ 2) or continued fraction, as an independent
    /// reference (std has no erf).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a <= 2.5 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), converges fast for a > 2.
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
        };
        v.copysign(x)
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = vec![1.0, 3.0, -2.0, 3.0, 0.5];
        softmax_row(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[1] > row[0] && row[0] > row[4] && row[4] > row[2]);
        assert_eq!(row[1], row[3]);
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance() {
        let mut row = lcg(11, 384).iter().map(|v| v * 5.0 + 2.0).collect::<Vec<_>>();
        layer_norm_row(&mut row, &vec![1.0; 384], &vec![0.0; 384], 1e-12);
        let mean = row.iter().sum::<f32>() / 384.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 384.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "mean {mean}, var {var}");
    }
}
