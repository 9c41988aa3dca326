//! The arithmetic of one encoder pass: a matrix product against weights packed once at load,
//! layer norm, GELU and a softmax, all on plain slices.
//!
//! Why not candle's ops: for a 17-token message every product is 17 rows against a 384 × 384 or
//! 384 × 1536 weight, and a general GEMM repacks that weight on every call (in a one-off scratch
//! program the `gemm` crate candle calls reached 16–30 GFLOP/s on these shapes on 2 cores);
//! every candle op also allocates its output. Here the weights are packed in the kernel's order
//! when the model loads, and the pass writes into buffers it owns.
//!
//! The products run on 16-bit integers. A message's pass is compute-bound (its 21 MB of
//! weights stay in L3 from one message to the next), and AVX2's `vpmaddwd` does sixteen
//! multiply-adds of 16-bit pairs per instruction where an f32 FMA does eight: on docs/dev/speed.md's
//! Zen 3 machine it issues two a cycle against one FMA per 1.3 cycles (a scratch loop of twelve
//! independent chains each), and needs no f16 → f32 widening of the weights beside it. The f16
//! kernel this replaced took a message's pass 4.0 ms, this one 3.0. Weights are quantized per
//! output column to ±511 (10 bits, finer than the 8 bits of the usual int8 recipes, which
//! `vpmaddubsw` would need and whose pair sums saturate), each row of activations per row to
//! the widest range for which no sum of the product can overflow an `i32` (±10,944 for 384
//! inputs, ±2,736 for 1,536: 11–13 bits, so BERT's outlier dimensions leave the small values
//! enough steps). The sums are exact integers; one scale per row and one per column turn them
//! back into floats.

/// Output columns one kernel call produces: two AVX2 registers of eight.
pub(crate) const PANEL: usize = 16;

/// Rows one kernel call handles: 6 rows × 2 registers = 12 accumulators, which with the two
/// weight registers and the broadcast leaves the 16 AVX2 registers just enough.
const ROWS: usize = 6;

/// The largest quantized weight magnitude: 10 bits with the sign.
const WEIGHT_LIMIT: i32 = 511;

/// A linear layer `y = x Wᵀ + b` whose weight (`[out, in]`, PyTorch's layout) is quantized per
/// output column and stored as panels of [`PANEL`] output columns: panel `p` holds, for each
/// pair of input indices `(2q, 2q+1)`, the 16 columns' weights as pairs side by side
/// (`W[c][2q], W[c][2q+1]` for `c` in `p·16 .. p·16+16`), the order in which `vpmaddwd` multiplies
/// a broadcast pair of one row's activations, so the kernel reads the weight strictly forwards.
pub(crate) struct PackedLinear {
    inputs: usize,
    /// Input pairs: `inputs` rounded up to even, halved (an odd last input pairs with a zero).
    pairs: usize,
    outputs: usize,
    panels: Vec<i16>,
    /// What one quantized step of each output column's weights is worth.
    weight_scales: Vec<f32>,
    bias: Vec<f32>,
    /// The largest quantized activation magnitude for this layer's rows (see [`activation_limit`]).
    activation_limit: f32,
}

/// The largest |value| of `values` (0 for none): what a quantization scale maps to its limit.
fn largest_magnitude(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The largest activation magnitude `a` for which a row's sum cannot overflow: every pair sum
/// `vpmaddwd` forms is at most `2 · a · 511` and a row adds `pairs` of them, so
/// `a = ⌊(2³¹ − 1) / (511 · 2 · pairs)⌋` (capped to fit an `i16`).
fn activation_limit(pairs: usize) -> f32 {
    let per_unit = WEIGHT_LIMIT as usize * 2 * pairs.max(1);
    (i32::MAX as usize / per_unit).min(i16::MAX as usize) as f32
}

impl PackedLinear {
    /// Quantizes and packs `weight` (`outputs × inputs`, row-major) and keeps `bias` (`outputs`).
    pub(crate) fn new(weight: &[f32], bias: &[f32], outputs: usize, inputs: usize) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight is {outputs} × {inputs}");
        assert_eq!(bias.len(), outputs, "one bias per output");
        assert_eq!(outputs % PANEL, 0, "outputs must be a multiple of {PANEL}");
        let pairs = inputs.div_ceil(2);
        let weight_scales: Vec<f32> = (0..outputs)
            .map(|c| largest_magnitude(&weight[c * inputs..(c + 1) * inputs]) / WEIGHT_LIMIT as f32)
            .collect();
        let quantized = |c: usize, i: usize| -> i16 {
            let scale = weight_scales[c];
            if i >= inputs || scale == 0.0 {
                return 0;
            }
            (weight[c * inputs + i] / scale)
                .round()
                .clamp(-WEIGHT_LIMIT as f32, WEIGHT_LIMIT as f32) as i16
        };
        let mut panels = vec![0i16; outputs * pairs * 2];
        for p in 0..outputs / PANEL {
            for q in 0..pairs {
                let at = (p * pairs + q) * PANEL * 2;
                for j in 0..PANEL {
                    panels[at + 2 * j] = quantized(p * PANEL + j, 2 * q);
                    panels[at + 2 * j + 1] = quantized(p * PANEL + j, 2 * q + 1);
                }
            }
        }
        Self {
            inputs,
            pairs,
            outputs,
            panels,
            weight_scales,
            bias: bias.to_vec(),
            activation_limit: activation_limit(pairs),
        }
    }

    /// `out[r] = x[r] Wᵀ + b` for each of the `rows` rows of `x` (`rows × inputs`, row-major),
    /// into `out` (`rows × outputs`). `quantized` is scratch for the rows in the kernel's form
    /// (see below), kept by the caller so that a batch's megabytes are not allocated, faulted
    /// in and zeroed again for every product. The panels are split between rayon's threads;
    /// each thread runs every row against its panels.
    ///
    /// Why the rows are quantized and regrouped first ([`QuantizedRows`]) and walked in blocks:
    /// the kernel reads six rows at once, one input pair of each per step. Read straight from
    /// `x`, those are six streams `inputs` values apart; regrouped, a group's six pairs sit side
    /// by side, and a block of groups stays in L2 while the thread runs all its panels over it.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        quantized: &mut QuantizedRows,
    ) {
        assert_eq!(x.len(), rows * self.inputs, "input is {rows} × {}", self.inputs);
        assert_eq!(out.len(), rows * self.outputs, "output is {rows} × {}", self.outputs);
        quantized.fill(x, rows, self.inputs, self.activation_limit);
        let quantized = &*quantized;
        let panels = self.outputs / PANEL;
        let threads = rayon::current_num_threads().clamp(1, panels);
        let per_thread = panels.div_ceil(threads);
        let out_ptr = DisjointWrites(out.as_mut_ptr());
        let block = block_rows(self.pairs);
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
                            unsafe { self.panel_forward(quantized, first..last, p, out_ptr.get()) };
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
    unsafe fn panel_forward(
        &self,
        quantized: &QuantizedRows,
        rows: std::ops::Range<usize>,
        p: usize,
        out: *mut f32,
    ) {
        let panel = &self.panels[p * self.pairs * PANEL * 2..(p + 1) * self.pairs * PANEL * 2];
        let columns = simd::Columns {
            weights: panel,
            scales: &self.weight_scales[p * PANEL..(p + 1) * PANEL],
            bias: &self.bias[p * PANEL..(p + 1) * PANEL],
        };
        let mut r = rows.start;
        while r < rows.end {
            let n = (rows.end - r).min(ROWS);
            let group = &quantized.pairs[r * self.pairs..(r + n) * self.pairs];
            simd::group_times_panel(
                group,
                &quantized.scales[r..r + n],
                self.pairs,
                &columns,
                out.add(r * self.outputs + p * PANEL),
                self.outputs,
            );
            r += n;
        }
    }
}

/// Rows per block of [`PackedLinear::forward`]: a block of regrouped rows (up to 192 KB) stays
/// in the 1 MB L2 while a thread runs its panels over it. A whole number of groups.
fn block_rows(pairs: usize) -> usize {
    let rows = (192 * 1024 / 4) / pairs.max(1);
    (rows / ROWS).max(1) * ROWS
}

/// Rows of activations in the kernel's form: each row quantized to 16-bit integers with its
/// own scale, its inputs paired (an `i32` holds inputs `2q` and `2q+1`, low half first, the
/// order `vpmaddwd` pairs them in), and rows in groups of [`ROWS`] (the last may be smaller)
/// within which pair `q` of row `r` sits at `q · n + r`, so the kernel reads the group's pairs
/// for one step side by side. A group starts where its first row's pairs would start.
#[derive(Default)]
pub(crate) struct QuantizedRows {
    pairs: Vec<i32>,
    /// What one quantized step of each row is worth (0 for a row of zeros).
    scales: Vec<f32>,
}

impl QuantizedRows {
    /// The values allocated, for the caller's decision to keep or free them.
    pub(crate) fn capacity(&self) -> usize {
        self.pairs.capacity() + self.scales.capacity()
    }

    /// Quantizes `x` (`rows × inputs`) with each row's largest magnitude mapped to `limit`.
    pub(crate) fn fill(&mut self, x: &[f32], rows: usize, inputs: usize, limit: f32) {
        use rayon::prelude::*;
        let pairs = inputs.div_ceil(2);
        // Every element is written below; resizing only keeps the lengths right.
        self.pairs.resize(rows * pairs, 0);
        self.scales.resize(rows, 0.0);
        let quantize = |(g, (dst, scales)): (usize, (&mut [i32], &mut [f32]))| {
            let (first, n) = (g * ROWS, scales.len());
            for (r, scale) in scales.iter_mut().enumerate() {
                let src = &x[(first + r) * inputs..(first + r + 1) * inputs];
                let largest = largest_magnitude(src);
                // A row of zeros (or one whose largest value is not finite, which the pass never
                // produces from finite weights) gets zeros and scale 0: its products are the bias.
                let to_steps =
                    if largest > 0.0 && largest.is_finite() { limit / largest } else { 0.0 };
                *scale = if to_steps > 0.0 { largest / limit } else { 0.0 };
                // An i16's bits, zero-extended, so that the high half can be or-ed above it.
                let step = |v: f32| -> i32 { (v * to_steps).round() as i16 as u16 as i32 };
                for (q, pair) in src.chunks(2).enumerate() {
                    let high = pair.get(1).map_or(0, |&v| step(v));
                    dst[q * n + r] = step(pair[0]) | (high << 16);
                }
            }
        };
        let group_len = (ROWS * pairs).max(1);
        // A message's few groups are quantized before a second thread could have woken up.
        if rows >= 16 * ROWS {
            self.pairs
                .par_chunks_mut(group_len)
                .zip(self.scales.par_chunks_mut(ROWS))
                .enumerate()
                .for_each(quantize);
        } else {
            self.pairs
                .chunks_mut(group_len)
                .zip(self.scales.chunks_mut(ROWS))
                .enumerate()
                .for_each(quantize);
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

/// One group of `n` quantized rows (≤ 6, see [`QuantizedRows`]) times one packed panel, plus
/// bias, into `out` (row stride `ldo`). The integer sums are exact, and both versions turn them
/// into floats with the same operations (`sum · (row scale · column scale) + bias`, fused), so
/// the SIMD kernel equals the scalar one bit for bit; the scalar one is the reference it is
/// tested against, and what builds without AVX2/FMA use.
pub(crate) mod simd {
    use super::PANEL;

    /// One panel: its packed weights, and its 16 columns' scales and biases.
    pub(crate) struct Columns<'a> {
        pub weights: &'a [i16],
        pub scales: &'a [f32],
        pub bias: &'a [f32],
    }

    /// # Safety
    /// `out` must be valid for `row_scales.len()` rows of stride `ldo`, 16 floats each.
    pub(crate) unsafe fn group_times_panel(
        group: &[i32],
        row_scales: &[f32],
        pairs: usize,
        columns: &Columns,
        out: *mut f32,
        ldo: usize,
    ) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            match row_scales.len() {
                6 => avx2::kernel::<6>(group, row_scales, pairs, columns, out, ldo),
                5 => avx2::kernel::<5>(group, row_scales, pairs, columns, out, ldo),
                4 => avx2::kernel::<4>(group, row_scales, pairs, columns, out, ldo),
                3 => avx2::kernel::<3>(group, row_scales, pairs, columns, out, ldo),
                2 => avx2::kernel::<2>(group, row_scales, pairs, columns, out, ldo),
                _ => avx2::kernel::<1>(group, row_scales, pairs, columns, out, ldo),
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        scalar(group, row_scales, pairs, columns, out, ldo)
    }

    /// # Safety
    /// As [`group_times_panel`].
    #[allow(dead_code)] // used only without AVX2, and by the tests
    pub(crate) unsafe fn scalar(
        group: &[i32],
        row_scales: &[f32],
        pairs: usize,
        columns: &Columns,
        out: *mut f32,
        ldo: usize,
    ) {
        let n = row_scales.len();
        for (r, &row_scale) in row_scales.iter().enumerate() {
            for c in 0..PANEL {
                let mut sum = 0i32;
                for q in 0..pairs {
                    let x = group[q * n + r];
                    let w = &columns.weights[(q * PANEL + c) * 2..][..2];
                    sum += (x as i16) as i32 * w[0] as i32 + (x >> 16) * w[1] as i32;
                }
                *out.add(r * ldo + c) =
                    (sum as f32).mul_add(row_scale * columns.scales[c], columns.bias[c]);
            }
        }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    mod avx2 {
        use std::arch::x86_64::*;

        use super::{Columns, PANEL};

        /// `R` rows at once: per input pair, two weight registers are loaded (16 columns' pairs)
        /// and each row's pair is broadcast into two `vpmaddwd`s, added into `i32` accumulators
        /// (12 at `R` = 6, which with the two weight registers and the broadcast fills AVX2's 16).
        #[inline(always)]
        pub(super) unsafe fn kernel<const R: usize>(
            group: &[i32],
            row_scales: &[f32],
            pairs: usize,
            columns: &Columns,
            out: *mut f32,
            ldo: usize,
        ) {
            debug_assert!(
                group.len() >= R * pairs
                    && columns.weights.len() >= pairs * PANEL * 2
                    && row_scales.len() == R
            );
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            let (xp, wp) = (group.as_ptr(), columns.weights.as_ptr() as *const __m256i);
            for q in 0..pairs {
                let w0 = _mm256_loadu_si256(wp.add(2 * q));
                let w1 = _mm256_loadu_si256(wp.add(2 * q + 1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let v = _mm256_set1_epi32(*xp.add(q * R + r));
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(v, w0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(v, w1));
                }
            }
            let (s0, s1) = (
                _mm256_loadu_ps(columns.scales.as_ptr()),
                _mm256_loadu_ps(columns.scales.as_ptr().add(8)),
            );
            let (b0, b1) = (
                _mm256_loadu_ps(columns.bias.as_ptr()),
                _mm256_loadu_ps(columns.bias.as_ptr().add(8)),
            );
            for (r, acc) in acc.iter().enumerate() {
                let row = _mm256_set1_ps(row_scales[r]);
                _mm256_storeu_ps(
                    out.add(r * ldo),
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[0]), _mm256_mul_ps(row, s0), b0),
                );
                _mm256_storeu_ps(
                    out.add(r * ldo + 8),
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[1]), _mm256_mul_ps(row, s1), b1),
                );
            }
        }
    }
}

/// `x[r] = LayerNorm(x[r] + residual[r])` for each row of width `gamma.len()`.
pub(crate) fn add_layer_norm(
    x: &mut [f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
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
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
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
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
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
        let scalar =
            |v: &mut f32| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
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
                    _mm256_storeu_ps(
                        c.as_mut_ptr(),
                        avx2::exp_nonpositive8(_mm256_loadu_ps(c.as_ptr())),
                    );
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
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm256_sub_ps(
                _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693_145_75))),
                _mm256_mul_ps(n, _mm256_set1_ps(1.428_606_8e-6)),
            );
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
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
            _mm256_storeu_ps(
                p,
                _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), _mm256_add_ps(one, erf)),
            );
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

    /// The largest error the quantization can make in `x · w` (inputs `x`, one column `w`):
    /// each value is off by at most half a step of its own scale, so the product is off by at
    /// most `Σ |x|·½s_w + |w|·½s_x + ¼s_x·s_w`, plus the float rounding of the plain sum.
    fn quantization_bound(x: &[f32], w: &[f32], x_limit: f32) -> f32 {
        let x_step = largest_magnitude(x) / x_limit;
        let w_step = largest_magnitude(w) / WEIGHT_LIMIT as f32;
        let bound: f32 = x
            .iter()
            .zip(w)
            .map(|(x, w)| x.abs() * w_step / 2.0 + w.abs() * x_step / 2.0 + x_step * w_step / 4.0)
            .sum();
        bound * 1.001 + 1e-5
    }

    /// The packed product against the plain definition, within the quantization's bound, for
    /// row counts that exercise every kernel width (1–6), the remainder after whole groups of
    /// six, an odd number of inputs (whose last one pairs with a zero), and (with 1,536 inputs,
    /// where a block is 30 rows) several blocks with a ragged last one. Over all outputs the
    /// rms error must also stay near what rounding weights spread evenly over ±1 to ±511 steps
    /// alone gives, 1/(2·511) ≈ 0.1% of the products' rms (per-tensor scales, or a lost bit,
    /// would be several times that).
    #[test]
    fn packed_linear_equals_the_plain_product_within_its_quantization() {
        for (outputs, inputs, row_counts) in
            [(48, 37, &[1, 2, 3, 4, 5, 6, 7, 13, 17][..]), (32, 1536, &[29, 31, 67][..])]
        {
            let w = lcg(1, outputs * inputs);
            let b = lcg(2, outputs);
            let layer = PackedLinear::new(&w, &b, outputs, inputs);
            for &rows in row_counts {
                let x = lcg(3 + rows as u64, rows * inputs);
                let mut out = vec![0.0; rows * outputs];
                layer.forward(&x, rows, &mut out, &mut QuantizedRows::default());
                let (mut squared_error, mut squared_value) = (0.0f64, 0.0f64);
                for r in 0..rows {
                    let xr = &x[r * inputs..(r + 1) * inputs];
                    for o in 0..outputs {
                        let wo = &w[o * inputs..(o + 1) * inputs];
                        let product: f32 = xr.iter().zip(wo).map(|(x, w)| x * w).sum();
                        let got = out[r * outputs + o];
                        let bound = quantization_bound(xr, wo, layer.activation_limit);
                        assert!(
                            (got - b[o] - product).abs() <= bound,
                            "{inputs} inputs, rows {rows}, row {r}, column {o}: {got} vs {}",
                            b[o] + product
                        );
                        squared_error += f64::from(got - b[o] - product).powi(2);
                        squared_value += f64::from(product).powi(2);
                    }
                }
                let relative = (squared_error / squared_value).sqrt();
                assert!(
                    relative < 1.5e-3,
                    "{inputs} inputs, {rows} rows: rms error {relative} of the products' rms"
                );
            }
        }
    }

    /// The SIMD kernel and the scalar fallback (what non-AVX2 builds run) agree bit for bit:
    /// the integer sums are exact and both turn them into floats the same way.
    #[test]
    fn simd_kernel_equals_the_scalar_fallback() {
        let (outputs, inputs) = (PANEL, 29);
        let layer = PackedLinear::new(&lcg(7, outputs * inputs), &lcg(8, outputs), outputs, inputs);
        let columns = simd::Columns {
            weights: &layer.panels,
            scales: &layer.weight_scales,
            bias: &layer.bias,
        };
        for n in 1..=6 {
            let mut rows = QuantizedRows::default();
            rows.fill(&lcg(9, n * inputs), n, inputs, layer.activation_limit);
            let (mut fast, mut slow) = (vec![0.0f32; n * PANEL], vec![0.0f32; n * PANEL]);
            unsafe {
                simd::group_times_panel(
                    &rows.pairs,
                    &rows.scales,
                    layer.pairs,
                    &columns,
                    fast.as_mut_ptr(),
                    PANEL,
                );
                simd::scalar(
                    &rows.pairs,
                    &rows.scales,
                    layer.pairs,
                    &columns,
                    slow.as_mut_ptr(),
                    PANEL,
                );
            }
            assert_eq!(
                fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{n} rows"
            );
        }
    }

    /// The activation limit is what keeps the `i32` sums from overflowing: rows whose every
    /// value is at the limit, against columns whose every weight is at ±511 with the same sign,
    /// give the largest sum there is, and it still comes out right (an overflow would flip its
    /// sign), for the encoder's two input widths and an odd one.
    #[test]
    fn the_largest_sums_do_not_overflow() {
        for inputs in [384, 1536, 1537] {
            let outputs = PANEL;
            let w: Vec<f32> = (0..outputs * inputs)
                .map(|i| if i / inputs % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            let layer = PackedLinear::new(&w, &vec![0.0; outputs], outputs, inputs);
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; 6 * inputs];
                let mut out = vec![0.0; 6 * outputs];
                layer.forward(&x, 6, &mut out, &mut QuantizedRows::default());
                for (i, got) in out.iter().enumerate() {
                    let want =
                        if (i % outputs).is_multiple_of(2) { sign } else { -sign } * inputs as f32;
                    assert!(
                        (got - want).abs() <= want.abs() * 1e-6,
                        "{inputs} inputs, output {i}: {got} vs {want}"
                    );
                }
            }
            assert!(
                f64::from(layer.activation_limit) * 511.0 * 2.0 * layer.pairs as f64
                    <= f64::from(i32::MAX),
                "{inputs} inputs"
            );
        }
    }

    /// Rows of zeros give the bias (their scale is 0, not a division by zero).
    #[test]
    fn a_row_of_zeros_gives_the_bias() {
        let (outputs, inputs) = (PANEL, 40);
        let b = lcg(12, outputs);
        let layer = PackedLinear::new(&lcg(13, outputs * inputs), &b, outputs, inputs);
        let mut out = vec![f32::NAN; 2 * outputs];
        layer.forward(&[0.0; 80], 2, &mut out, &mut QuantizedRows::default());
        assert_eq!(&out[..outputs], &b[..]);
        assert_eq!(&out[outputs..], &b[..]);
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
