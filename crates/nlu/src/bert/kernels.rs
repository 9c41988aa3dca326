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
    /// into `out` (`rows × outputs`). `grouped` is scratch for the regrouped rows (see below),
    /// kept by the caller so that a batch's megabytes are not allocated, faulted in and zeroed
    /// again for every product. The panels are split between rayon's threads; each thread runs
    /// every row against its panels.
    ///
    /// Why the rows are regrouped first ([`pack_rows`]) and walked in blocks: the kernel reads
    /// six rows at once, one value of each per input index. Read straight from `x`, those are
    /// six streams `inputs` floats apart; regrouped, a group's six values sit side by side, and
    /// a block of groups stays in L2 while the thread runs all its panels over it. (Widening a
    /// panel to f32 once per block, to spare the kernel its conversions, measured no faster.)
    pub(crate) fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], grouped: &mut Vec<f32>) {
        assert_eq!(x.len(), rows * self.inputs, "input is {rows} × {}", self.inputs);
        assert_eq!(out.len(), rows * self.outputs, "output is {rows} × {}", self.outputs);
        pack_rows(x, rows, self.inputs, grouped);
        let grouped = &grouped[..];
        let panels = self.outputs / PANEL;
        let threads = rayon::current_num_threads().clamp(1, panels);
        let per_thread = panels.div_ceil(threads);
        let out_ptr = DisjointWrites(out.as_mut_ptr());
        let block = block_rows(self.inputs);
        rayon::scope(|s| {
            for t in 0..threads {
                let range = (t * per_thread)..((t + 1) * per_thread).min(panels);
                let out_ptr = &out_ptr;
                s.spawn(move |_| {
                    for first in (0..rows).step_by(block) {
                        let last = (first + block).min(rows);
                        for p in range.clone() {
                            // SAFETY: each panel writes only its own 16 columns of `out`, and
                            // panel ranges do not overlap between threads; `out` outlives the
                            // scope.
                            unsafe { self.panel_forward(grouped, first..last, p, out_ptr.get()) };
                        }
                    }
                });
            }
        });
    }

    /// Columns `p·16 .. p·16+16` of rows `rows` (whole groups, or the tail).
    ///
    /// # Safety
    /// `out` must point to `rows × outputs` writable floats that no one else writes in those
    /// columns meanwhile.
    unsafe fn panel_forward(&self, grouped: &[f32], rows: std::ops::Range<usize>, p: usize, out: *mut f32) {
        let panel = &self.panels[p * self.inputs * PANEL..(p + 1) * self.inputs * PANEL];
        let bias = &self.bias[p * PANEL..(p + 1) * PANEL];
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(ROWS);
            let group = &grouped[r * self.inputs..(r + n) * self.inputs];
            simd::group_times_panel(group, n, self.inputs, panel, bias, out.add(r * self.outputs + p * PANEL), self.outputs);
            r += n;
        }
    }
}

/// Rows per block of [`PackedLinear::forward`]: a block of regrouped rows (up to 192 KB) stays
/// in the 1 MB L2 while a thread runs its panels over it. A whole number of groups.
fn block_rows(inputs: usize) -> usize {
    let rows = (192 * 1024 / 4) / inputs.max(1);
    (rows / ROWS).max(1) * ROWS
}

/// `x` (`rows × inputs`) regrouped for the kernel into `grouped`: rows go in groups of
/// [`ROWS`] (the last may be smaller), and within a group of `n` rows, input index `i` of row
/// `r` sits at `i · n + r`, so the kernel reads the group's values for one input index side by
/// side. A group starts where its first row started in `x`.
pub(crate) fn pack_rows(x: &[f32], rows: usize, inputs: usize, grouped: &mut Vec<f32>) {
    use rayon::prelude::*;
    // Every element is written below; resizing only keeps the length right.
    grouped.resize(rows * inputs, 0.0);
    let regroup = |(g, dst): (usize, &mut [f32])| {
        let (first, n) = (g * ROWS, dst.len() / inputs.max(1));
        for r in 0..n {
            let src = &x[(first + r) * inputs..(first + r + 1) * inputs];
            for (i, &v) in src.iter().enumerate() {
                dst[i * n + r] = v;
            }
        }
    };
    let group_len = (ROWS * inputs).max(1);
    // A message's few groups are copied before a second thread could have woken up.
    if rows >= 16 * ROWS {
        grouped.par_chunks_mut(group_len).enumerate().for_each(regroup);
    } else {
        grouped.chunks_mut(group_len).enumerate().for_each(regroup);
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

/// One group of `n` rows (≤ 6, regrouped by [`pack_rows`]) times one packed panel, plus
/// bias, into `out` (row stride `ldo`). The scalar version is the reference the SIMD one is
/// tested against, and what builds without AVX2/FMA use.
pub(crate) mod simd {
    use super::PANEL;

    /// # Safety
    /// `out` must be valid for `n` rows of stride `ldo`, 16 floats each.
    pub(crate) unsafe fn group_times_panel(group: &[f32], n: usize, k: usize, panel: &[u16], bias: &[f32], out: *mut f32, ldo: usize) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            match n {
                6 => avx2::kernel::<6>(group, k, panel, bias, out, ldo),
                5 => avx2::kernel::<5>(group, k, panel, bias, out, ldo),
                4 => avx2::kernel::<4>(group, k, panel, bias, out, ldo),
                3 => avx2::kernel::<3>(group, k, panel, bias, out, ldo),
                2 => avx2::kernel::<2>(group, k, panel, bias, out, ldo),
                _ => avx2::kernel::<1>(group, k, panel, bias, out, ldo),
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        scalar(group, n, k, panel, bias, out, ldo)
    }

    /// # Safety
    /// As [`group_times_panel`].
    #[allow(dead_code)] // used only without AVX2, and by the tests
    pub(crate) unsafe fn scalar(group: &[f32], n: usize, k: usize, panel: &[u16], bias: &[f32], out: *mut f32, ldo: usize) {
        for r in 0..n {
            let mut acc = [0f32; PANEL];
            acc.copy_from_slice(bias);
            for i in 0..k {
                let xv = group[i * n + r];
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
        /// widened) and each row's value is broadcast into two fused multiply-adds (12
        /// accumulators at `R` = 6, which with the two weight registers and the broadcast
        /// fills AVX2's 16).
        #[inline(always)]
        pub(super) unsafe fn kernel<const R: usize>(group: &[f32], k: usize, panel: &[u16], bias: &[f32], out: *mut f32, ldo: usize) {
            debug_assert!(group.len() >= R * k && panel.len() >= k * PANEL && bias.len() == PANEL);
            let b0 = _mm256_loadu_ps(bias.as_ptr());
            let b1 = _mm256_loadu_ps(bias.as_ptr().add(8));
            let mut acc = [[b0, b1]; R];
            let (xp, wp) = (group.as_ptr(), panel.as_ptr());
            for i in 0..k {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i * PANEL) as *const __m128i));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i * PANEL + 8) as *const __m128i));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let v = _mm256_broadcast_ss(&*xp.add(i * R + r));
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
///
/// Written out in AVX2 rather than left to the compiler: the scalar loop did not vectorise
/// (8–12 ms of a 64-message batch's layer, against ~1 ms vectorised), and a batch's 2 million
/// values are split between rayon's threads.
pub(crate) fn gelu_erf(x: &mut [f32]) {
    use rayon::prelude::*;
    // Below this a second thread costs more to wake than it saves.
    const PER_THREAD: usize = 1 << 15;
    if x.len() < 2 * PER_THREAD {
        vector_math::gelu_erf(x);
    } else {
        x.par_chunks_mut(PER_THREAD).for_each(vector_math::gelu_erf);
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
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
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
    row.iter_mut().for_each(|v| *v -= max);
    vector_math::exp_nonpositive(row);
    let inv = 1.0 / row.iter().sum::<f32>();
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// [`erf`]/GELU and [`exp_nonpositive`] over slices, eight lanes at a time where AVX2 is there,
/// the scalar functions (the reference the tests hold these to) for the tail and elsewhere.
mod vector_math {
    use super::{erf, exp_nonpositive as exp_scalar};

    pub(super) fn gelu_erf(x: &mut [f32]) {
        let scalar = |v: &mut f32| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                // SAFETY: `c` is exactly 8 floats.
                unsafe { avx2::gelu8(c.as_mut_ptr()) };
            }
            chunks.into_remainder().iter_mut().for_each(scalar);
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        x.iter_mut().for_each(scalar);
    }

    /// `x[i] = e^x[i]` for values ≤ 0.
    pub(super) fn exp_nonpositive(x: &mut [f32]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            let mut chunks = x.chunks_exact_mut(8);
            for c in &mut chunks {
                // SAFETY: `c` is exactly 8 floats.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm256_storeu_ps(c.as_mut_ptr(), avx2::exp_nonpositive8(_mm256_loadu_ps(c.as_ptr())));
                }
            }
            chunks.into_remainder().iter_mut().for_each(|v| *v = exp_scalar(*v));
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        x.iter_mut().for_each(|v| *v = exp_scalar(*v));
    }

    /// The scalar functions' algorithms, step for step, on eight lanes.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    mod avx2 {
        use std::arch::x86_64::*;

        #[inline(always)]
        pub(super) unsafe fn exp_nonpositive8(x: __m256) -> __m256 {
            let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
            let r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693_145_75))), _mm256_mul_ps(n, _mm256_set1_ps(1.428_606_8e-6)));
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
            _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
        }

        /// GELU of the 8 floats at `p`, in place.
        #[inline(always)]
        pub(super) unsafe fn gelu8(p: *mut f32) {
            let x = _mm256_loadu_ps(p);
            let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0));
            let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), z);
            let one = _mm256_set1_ps(1.0);
            let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), a, one));
            let mut poly = _mm256_set1_ps(1.061_405_4);
            for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
                poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
            }
            poly = _mm256_mul_ps(poly, t);
            let e = exp_nonpositive8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
            let erf = _mm256_or_ps(_mm256_fnmadd_ps(poly, e, one), sign);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), _mm256_add_ps(one, erf)));
        }
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
    /// packing stores them), for row counts that exercise every kernel width (1–6), the
    /// remainder after whole groups of six, and (with 1,536 inputs, where a block is 30 rows)
    /// several blocks with a ragged last one.
    #[test]
    fn packed_linear_equals_the_plain_product() {
        for (outputs, inputs, row_counts) in [(48, 37, &[1, 2, 3, 4, 5, 6, 7, 13, 17][..]), (32, 1536, &[29, 31, 67][..])] {
            let w: Vec<f32> = lcg(1, outputs * inputs).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let b = lcg(2, outputs);
            let layer = PackedLinear::new(&w, &b, outputs, inputs);
            for &rows in row_counts {
                let x = lcg(3 + rows as u64, rows * inputs);
                let mut out = vec![0.0; rows * outputs];
                layer.forward(&x, rows, &mut out, &mut Vec::new());
                for r in 0..rows {
                    for o in 0..outputs {
                        let want: f32 = b[o] + (0..inputs).map(|i| x[r * inputs + i] * w[o * inputs + i]).sum::<f32>();
                        let got = out[r * outputs + o];
                        let tolerance = 1e-4 * (inputs as f32 / 37.0).sqrt();
                        assert!((got - want).abs() < tolerance, "{inputs} inputs, rows {rows}, row {r}, column {o}: {got} vs {want}");
                    }
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
            let mut x = Vec::new();
            pack_rows(&lcg(9, n * inputs), n, inputs, &mut x);
            let (mut fast, mut slow) = (vec![0.0; n * PANEL], vec![0.0; n * PANEL]);
            unsafe {
                simd::group_times_panel(&x, n, inputs, &layer.panels, &layer.bias, fast.as_mut_ptr(), PANEL);
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

    /// The eight-lane GELU and exp agree with the scalar functions the test above holds to
    /// the standard library, over lengths with and without a tail.
    #[test]
    fn vectorised_gelu_and_exp_equal_the_scalar_ones() {
        for len in [7, 8, 61, 70_000] {
            let x: Vec<f32> = lcg(len as u64, len).iter().map(|v| v * 6.0).collect();
            let mut fast = x.clone();
            gelu_erf(&mut fast);
            for (f, v) in fast.iter().zip(&x) {
                let want = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
                assert!((f - want).abs() <= 1e-6 * (1.0 + want.abs()), "gelu({v}) = {f} vs {want}");
            }
            let mut fast: Vec<f32> = x.iter().map(|v| -v.abs() * 15.0).collect();
            let inputs = fast.clone();
            vector_math::exp_nonpositive(&mut fast);
            for (f, v) in fast.iter().zip(&inputs) {
                let want = exp_nonpositive(*v);
                assert!((f - want).abs() <= want * 1e-6 + 1e-37, "exp({v}) = {f} vs {want}");
            }
        }
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
