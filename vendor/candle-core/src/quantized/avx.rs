use super::k_quants::{
    ColumnsOut, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, QK8_0, QK8_1, QK_K,
};
use byteorder::{ByteOrder, LittleEndian};
use half::f16;

#[cfg(target_arch = "x86")]
use core::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

#[inline(always)]
pub(crate) unsafe fn sum_i16_pairs_float(x: __m256i) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    let summed_pairs = _mm256_madd_epi16(ones, x);
    _mm256_cvtepi32_ps(summed_pairs)
}

#[inline(always)]
pub(crate) unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    sum_i16_pairs_float(dot)
}

#[inline(always)]
pub(crate) unsafe fn hsum_float_8(x: __m256) -> f32 {
    let res = _mm256_extractf128_ps(x, 1);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// RAPPORT PATCH (see vendor/PATCHES.md): `d_x * d_y` of two f16 block scales, broadcast.
/// `f16::to_f32` builds a vector whose only used lane is the first, so LLVM inserts the half
/// into whatever register is at hand (`vpinsrw` into the accumulator, seen in the binary): each
/// block's scale then waited for the previous block's sum. Converting both halves from one
/// integer (`vmovd`, which writes the whole register) keeps them independent; the product is
/// the same f32 multiplication, so results do not change.
#[inline(always)]
pub(crate) unsafe fn scale_product(dx: f16, dy: f16) -> __m256 {
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128((dx.to_bits() as u32 | ((dy.to_bits() as u32) << 16)) as i32));
    _mm256_broadcastss_ps(_mm_mul_ss(both, _mm_movehdup_ps(both)))
}

/// RAPPORT PATCH (see vendor/PATCHES.md): one block of 32 activations quantized to bytes, bit
/// for bit as upstream's scalar `quantize_row_q8_0` / `quantize_row_q8_1` do it: `d` is the
/// largest magnitude over 127 (a division, as there), each value times `1 / d` rounded half away
/// from zero (`f32::round`: truncate, then step away from zero where the dropped part is at
/// least one half, which is exact, where adding 0.5 is not) and saturated into `i8`; a NaN
/// becomes 0 as `as i8` makes it. Writes the 32 bytes into `qs` and returns `d` and the bytes
/// as a register (for a caller that sums them). The scalar loop, one
/// value at a time, was 3% of a batched SmolLM2 decoding step and 5.6% of the server's time
/// under load (`perf`): every Q4_1 product quantizes its activation rows first.
#[inline(always)]
pub(crate) fn quantize_block_q8(xs: &[f32], qs: &mut [i8; 32]) -> (f32, __m256i) {
    assert!(xs.len() >= 32);
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
        // `max(|x|, amax)` keeps `amax` when `|x|` is NaN, as `f32::max` does.
        let mut amax = _mm256_setzero_ps();
        for v in v {
            amax = _mm256_max_ps(_mm256_andnot_ps(sign, v), amax);
        }
        let amax = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let amax = _mm_max_ps(amax, _mm_movehl_ps(amax, amax));
        let amax = _mm_cvtss_f32(_mm_max_ss(amax, _mm_movehdup_ps(amax)));
        let d = amax / ((1 << 7) - 1) as f32;
        let id = _mm256_set1_ps(if d != 0f32 { 1. / d } else { 0. });
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let q = v.map(|v| {
            let x = _mm256_mul_ps(v, id);
            let truncated = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
            let dropped = _mm256_andnot_ps(sign, _mm256_sub_ps(x, truncated));
            let away = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(dropped, half), _mm256_or_ps(_mm256_and_ps(x, sign), one));
            let rounded = _mm256_and_ps(_mm256_add_ps(truncated, away), _mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
            _mm256_cvttps_epi32(rounded)
        });
        // Saturating packs interleave the 128-bit halves; the permutation puts the bytes back in
        // order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes);
        (d, bytes)
    }
}

/// The sum of 32 signed bytes.
#[inline(always)]
pub(crate) fn sum_i8_32(bytes: __m256i) -> i32 {
    unsafe { hsum_i32_8(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), bytes), _mm256_set1_epi16(1))) }
}

#[inline(always)]
pub(crate) unsafe fn bytes_from_nibbles_32(rsi: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(rsi as *const __m128i);
    let bytes = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4));
    let low_mask = _mm256_set1_epi8(0xF);
    _mm256_and_si256(low_mask, bytes)
}

#[inline(always)]
pub(crate) unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8_pairs_float(ax, sy)
}

#[inline(always)]
pub(crate) fn vec_dot_q4_0_q8_0(n: usize, xs: &[BlockQ4_0], ys: &[BlockQ8_0]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK8_0),
        "vec_dot_q4_0_q8_0: {n} is not divisible by {QK8_0}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = scale_product(x.d, y.d);
            let bx = bytes_from_nibbles_32(x.qs.as_ptr());
            let off = _mm256_set1_epi8(8);
            let bx = _mm256_sub_epi8(bx, off);
            let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            let q = mul_sum_i8_pairs_float(bx, by);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): upstream's integer steps (the sign trick and
/// `maddubs`), with the float steps defined per block so that [`q8_0_rows_by_eight_columns`],
/// which holds one column per lane, computes every result bit for bit as this kernel does: the
/// block's exact integer sum (at most 32 x 128 x 127 in magnitude, exact in f32) times
/// `d_x * d_y`, fused-added to the column's sum. Upstream kept eight float lanes per column
/// and added them at the end, an order no eight-column kernel can reproduce. Used for the
/// columns left over after the groups of eight.
#[inline(always)]
pub(crate) fn vec_dot_q8_0_q8_0(n: usize, xs: &[BlockQ8_0], ys: &[BlockQ8_0]) -> f32 {
    let [sum] = vec_dot_q8_0_q8_0_rows::<1>(n, xs, [ys]);
    sum
}

/// RAPPORT PATCH (see vendor/PATCHES.md): Q4_1 weights against Q8_1 activations. Upstream has
/// only the scalar `vec_dot_unopt` for Q4_1, so a Q4_1 model ran its decode on scalar code.
/// A weight is `d * q + m` with `q` in 0..16; an activation is `dy * qy`, and the block of the
/// activation also stores `s = dy * sum(qy)`. So a block's dot product is
/// `d * dy * sum(q * qy) + m * s`: the integer part with unsigned-by-signed byte products
/// (`maddubs`, which needs no sign trick since `q` is unsigned).
///
/// The float steps are defined per block so that [`q4_1_rows_by_eight_columns`], which holds
/// one column per lane, computes every result bit for bit as this kernel does: the block's
/// exact integer `sum(q * qy)` as f32 times `d * dy` is fused-added to the sum, then `m * s`.
/// (The first AVX2 kernel kept eight float lanes per column and added them at the end, an
/// order no eight-column kernel can reproduce.)
#[inline(always)]
pub(crate) fn vec_dot_q4_1_q8_1(n: usize, xs: &[BlockQ4_1], ys: &[BlockQ8_1]) -> f32 {
    let [sum] = vec_dot_q4_1_q8_1_rows::<1>(n, xs, [ys]);
    sum
}

/// RAPPORT PATCH: `vec_dot_q4_1_q8_1` for one weight column and `R` activation rows: each weight
/// block is unpacked once, and every row goes through the same steps as alone.
#[inline(always)]
pub(crate) fn vec_dot_q4_1_q8_1_rows<const R: usize>(n: usize, xs: &[BlockQ4_1], ys: [&[BlockQ8_1]; R]) -> [f32; R] {
    debug_assert!(
        n.is_multiple_of(QK8_1),
        "vec_dot_q4_1_q8_1_rows: {n} is not divisible by {QK8_1}"
    );
    let blocks = xs.len().min(ys.iter().map(|y| y.len()).min().unwrap_or(0));
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [0f32; R];
        for i in 0..blocks {
            let x = xs.get_unchecked(i);
            let qx = bytes_from_nibbles_32(x.qs.as_ptr());
            let (d, m) = (x.d.to_f32(), x.m.to_f32());
            for r in 0..R {
                let y = ys[r].get_unchecked(i);
                let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                let sum = hsum_i32_8(_mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones));
                acc[r] = (sum as f32).mul_add(d * y.d.to_f32(), acc[r]);
                acc[r] = m.mul_add(y.s.to_f32(), acc[r]);
            }
        }
        acc
    }
}

/// RAPPORT PATCH: a Q8_1 block's `d` and `s` as f32, each broadcast to every lane.
#[inline(always)]
unsafe fn q8_1_scales(y: &BlockQ8_1) -> (__m256, __m256) {
    // `d` and `s` are the block's first two halves: one 32-bit load, one conversion.
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128((y as *const BlockQ8_1 as *const i32).read_unaligned()));
    (_mm256_broadcastss_ps(both), _mm256_broadcastss_ps(_mm_movehdup_ps(both)))
}

/// RAPPORT PATCH: block `i` of eight Q4_1 columns, interleaved in registers for
/// [`q4_1_rows_by_eight_columns`]: `weights[g]` holds, for each column (one per 32-bit lane),
/// the low nibbles of its bytes `4g..4g + 4` (weights `4g..4g + 4`), `weights[4 + g]` their high
/// nibbles (weights `16 + 4g..`); then the columns' `d` and `m` as f32 lanes. Read in place,
/// unlike Q4_K's re-laid copy: a Q4_1 block is small enough to interleave per use, which lets
/// one decoding row (the one-stream case) take this kernel too.
#[inline(always)]
unsafe fn q4_1_eight_blocks(x: [&BlockQ4_1; 8]) -> ([__m256i; 8], __m256, __m256) {
    let quants = |c: usize| _mm_loadu_si128(x[c].qs.as_ptr() as *const __m128i);
    // Columns c and c + 4 side by side, then a 4x4 transpose of 32-bit groups in each half.
    let a: [__m256i; 4] = std::array::from_fn(|c| _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(quants(c)), quants(c + 4)));
    let t0 = _mm256_unpacklo_epi32(a[0], a[1]);
    let t1 = _mm256_unpackhi_epi32(a[0], a[1]);
    let t2 = _mm256_unpacklo_epi32(a[2], a[3]);
    let t3 = _mm256_unpackhi_epi32(a[2], a[3]);
    let groups = [_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2), _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)];
    let low = _mm256_set1_epi8(0xF);
    let weights = std::array::from_fn(|j| {
        let g = groups[j % 4];
        if j < 4 { _mm256_and_si256(g, low) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(g), low) }
    });
    // Each block opens with `d` then `m`: one 32-bit word per column, split into the two
    // halves' registers ([d0..d3 m0..m3 | d4..d7 m4..m7], then the middle quarters swapped).
    // Inserted word by word: eight scalar stores read back as one vector would stall on
    // store forwarding (seen in the profile, ~20% of the kernel).
    let word = |c: usize| (x[c] as *const BlockQ4_1 as *const i32).read_unaligned();
    let four = |c: usize| _mm_insert_epi32::<3>(_mm_insert_epi32::<2>(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(word(c)), word(c + 1)), word(c + 2)), word(c + 3));
    let dm = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(four(0)), four(4));
    let halves = _mm256_packus_epi32(_mm256_and_si256(dm, _mm256_set1_epi32(0xFFFF)), _mm256_srli_epi32::<16>(dm));
    let halves = _mm256_permute4x64_epi64::<0b11_01_10_00>(halves);
    (weights, _mm256_cvtph_ps(_mm256_castsi256_si128(halves)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(halves)))
}

/// RAPPORT PATCH (see vendor/PATCHES.md): `R` activation rows times eight Q4_1 weight columns,
/// each result bit-identical to `vec_dot_q4_1_q8_1` on that row and column.
///
/// Per block and row, eight `maddubs` of a broadcast group of four activation bytes by the
/// interleaved weights, added as 16-bit integers (at most 8 x 2 x 15 x 127 = 30480 in
/// magnitude, inside i16: Q8_1 activations lie in -127..=127), one `madd` into each column's
/// exact block sum; no horizontal sums. The one-column kernel spends most of its time on the
/// per-block scales and sums that here serve eight columns at once.
///
/// `next` (the following eight columns, or fewer, or none) is brought into cache over the
/// blocks, a share per block.
#[inline(always)]
pub(crate) fn q4_1_rows_by_eight_columns<const R: usize>(cols: [&[BlockQ4_1]; 8], next: &[BlockQ4_1], rows: [&[BlockQ8_1]; R]) -> [[f32; 8]; R] {
    let blocks = cols.iter().map(|c| c.len()).chain(rows.iter().map(|r| r.len())).min().unwrap_or(0);
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..blocks {
            // The next group's eight blocks of this position, 8 x 20 = 160 bytes.
            prefetch_share(next, i, 8 * std::mem::size_of::<BlockQ4_1>());
            let block = q4_1_eight_blocks(std::array::from_fn(|c| cols[c].get_unchecked(i)));
            q4_1_add_block_of_rows(&block, i, rows, ones, &mut acc);
        }
        acc.map(|a| by_column(a))
    }
}

/// Block `i` of eight Q4_1 columns (as [`q4_1_eight_blocks`] lays it out) times block `i` of
/// `R` rows, added to each row's per-column sums.
#[inline(always)]
unsafe fn q4_1_add_block_of_rows<const R: usize>((weights, d, m): &([__m256i; 8], __m256, __m256), i: usize, rows: [&[BlockQ8_1]; R], ones: __m256i, acc: &mut [__m256; R]) {
    for r in 0..R {
        let y = rows[r].get_unchecked(i);
        let act = |g: usize| _mm256_set1_epi32((y.qs.as_ptr() as *const i32).add(g).read_unaligned());
        let mut sum = _mm256_maddubs_epi16(weights[0], act(0));
        for g in 1..8 {
            sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(weights[g], act(g)));
        }
        let (dy, sy) = q8_1_scales(y);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sum, ones)), _mm256_mul_ps(*d, dy), acc[r]);
        acc[r] = _mm256_fmadd_ps(*m, sy, acc[r]);
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): eight Q4_1 columns interleaved once for a prompt's
/// rows. [`q4_1_rows_by_eight_columns`] interleaves each block again for every four rows, a
/// quarter of its work; a prompt of hundreds of rows keeps the interleaved copy instead.
#[derive(Default)]
pub(crate) struct Q4_1EightColumns {
    blocks: Vec<([__m256i; 8], __m256, __m256)>,
}

impl EightColumns for Q4_1EightColumns {
    type Block = BlockQ4_1;
    /// Below eight rows the blocks are interleaved where they lie, at most twice per block.
    const MIN_ROWS: usize = 8;

    fn pack(&mut self, columns: &[BlockQ4_1], blocks: usize) {
        debug_assert_eq!(columns.len(), 8 * blocks);
        self.blocks.clear();
        self.blocks.extend((0..blocks).map(|i| unsafe { q4_1_eight_blocks(std::array::from_fn(|c| columns.get_unchecked(c * blocks + i))) }));
    }
}

impl RowsByEightColumns for Q4_1EightColumns {
    type Row = BlockQ8_1;

    #[inline(always)]
    fn rows<const R: usize>(&self, rows: [&[BlockQ8_1]; R]) -> [[f32; 8]; R] {
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); R];
            for (i, block) in self.blocks.iter().enumerate() {
                q4_1_add_block_of_rows(block, i, rows, ones, &mut acc);
            }
            acc.map(|a| by_column(a))
        }
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): `vec_dot_q8_0_q8_0` for one weight column and `R`
/// activation rows: each weight block is loaded and its magnitudes taken once for all the rows,
/// and every row goes through the same steps as alone.
#[inline(always)]
pub(crate) fn vec_dot_q8_0_q8_0_rows<const R: usize>(n: usize, xs: &[BlockQ8_0], ys: [&[BlockQ8_0]; R]) -> [f32; R] {
    debug_assert!(
        n.is_multiple_of(QK8_0),
        "vec_dot_q8_0_q8_0_rows: {n} is not divisible by {QK8_0}"
    );
    let blocks = xs.len().min(ys.iter().map(|y| y.len()).min().unwrap_or(0));
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [0f32; R];
        for i in 0..blocks {
            let x = xs.get_unchecked(i);
            let bx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
            let ax = _mm256_sign_epi8(bx, bx);
            let dx = f16_to_f32(x.d);
            for r in 0..R {
                let y = ys[r].get_unchecked(i);
                let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                let sum = hsum_i32_8(_mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(by, bx)), ones));
                acc[r] = (sum as f32).mul_add(dx * f16_to_f32(y.d), acc[r]);
            }
        }
        acc
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): `R` activation rows times eight Q8_0 weight columns,
/// each result bit-identical to `vec_dot_q8_0_q8_0` on that row and column.
///
/// The one-column kernel spends most of its instructions per block and row on the float steps
/// (two scale conversions, a product, a conversion and a multiply-add over eight lanes) rather
/// than on the 32 byte products; SmolLM2's 49,152-column output projection is Q8_0, and a
/// batched decoding step spent 15% of its time there (`perf`), a row at a time. Here each
/// column's block still gets its `maddubs` and `madd`, but the eight columns' lanes are added
/// into one register (a column per lane), so the conversion and the multiply-add serve eight
/// columns, and the columns' scales are converted once for all the rows. `maddubs` adds two
/// products of a magnitude (at most 128) and an activation (at most 127): inside i16.
///
/// `next` (the following eight columns, or fewer, or none) is brought into cache over the
/// blocks, a share per block: eight columns are eight short runs of blocks, which the hardware
/// prefetcher does not follow.
#[inline(always)]
pub(crate) fn q8_0_rows_by_eight_columns<const R: usize>(cols: [&[BlockQ8_0]; 8], next: &[BlockQ8_0], rows: [&[BlockQ8_0]; R]) -> [[f32; 8]; R] {
    let blocks = cols.iter().map(|c| c.len()).chain(rows.iter().map(|r| r.len())).min().unwrap_or(0);
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..blocks {
            // The next group's eight blocks of this position, 8 x 34 = 272 bytes.
            prefetch_share(next, i, 8 * std::mem::size_of::<BlockQ8_0>());
            let x: [&BlockQ8_0; 8] = std::array::from_fn(|c| cols[c].get_unchecked(i));
            let weights: [__m256i; 8] = std::array::from_fn(|c| _mm256_loadu_si256(x[c].qs.as_ptr() as *const __m256i));
            let magnitudes = weights.map(|w| _mm256_sign_epi8(w, w));
            let dx = q8_0_eight_scales(x);
            for r in 0..R {
                let y = rows[r].get_unchecked(i);
                let by = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                let sums = std::array::from_fn(|c| _mm256_madd_epi16(_mm256_maddubs_epi16(magnitudes[c], _mm256_sign_epi8(by, weights[c])), ones));
                let dy = _mm256_set1_ps(f16_to_f32(y.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum_eight_i32_8(sums)), _mm256_mul_ps(dx, dy), acc[r]);
            }
        }
        acc.map(|a| by_column(a))
    }
}

/// One f16 as f32 through a register of its own: `half`'s conversion let LLVM insert the half
/// into whatever register was free, the accumulator included, which chained every block's
/// scale to the previous block's sum (see `scale_product`).
#[inline(always)]
unsafe fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// The `d` of eight Q8_0 blocks as f32 lanes. Inserted half by half: eight scalar stores read
/// back as one vector would stall on store forwarding (as measured for Q4_1's).
#[inline(always)]
unsafe fn q8_0_eight_scales(x: [&BlockQ8_0; 8]) -> __m256 {
    let d = |c: usize| x[c].d.to_bits() as i32;
    let v = _mm_cvtsi32_si128(d(0));
    let v = _mm_insert_epi16::<1>(v, d(1));
    let v = _mm_insert_epi16::<2>(v, d(2));
    let v = _mm_insert_epi16::<3>(v, d(3));
    let v = _mm_insert_epi16::<4>(v, d(4));
    let v = _mm_insert_epi16::<5>(v, d(5));
    let v = _mm_insert_epi16::<6>(v, d(6));
    let v = _mm_insert_epi16::<7>(v, d(7));
    _mm256_cvtph_ps(v)
}

/// The eight horizontal sums of `x` (eight 32-bit lanes each), lane `c` holding `x[c]`'s.
/// Integer adds: any order gives the same exact sums.
#[inline(always)]
unsafe fn hsum_eight_i32_8(x: [__m256i; 8]) -> __m256i {
    // Two rounds of pairwise adds leave [x0..x3 over their low halves | x0..x3 over their high
    // halves], and the same for x4..x7; the halves are then put side by side and added.
    let first = _mm256_hadd_epi32(_mm256_hadd_epi32(x[0], x[1]), _mm256_hadd_epi32(x[2], x[3]));
    let second = _mm256_hadd_epi32(_mm256_hadd_epi32(x[4], x[5]), _mm256_hadd_epi32(x[6], x[7]));
    _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(first, second), _mm256_permute2x128_si256::<0x31>(first, second))
}

#[inline(always)]
unsafe fn get_scale_shuffle(i: usize) -> __m128i {
    const K_SHUFFLE: [u8; 128] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7,
        7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10,
        11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13,
        13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15,
    ];
    _mm_loadu_si128((K_SHUFFLE.as_ptr() as *const __m128i).add(i))
}

#[inline(always)]
unsafe fn get_scale_shuffle_k4(i: usize) -> __m256i {
    const K_SHUFFLE: [u8; 256] = [
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
        0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,
        4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
        6, 7, 6, 7, 6, 7, 6, 7, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9,
        8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10,
        11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13,
        12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12,
        13, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
        14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
    ];
    _mm256_loadu_si256((K_SHUFFLE.as_ptr() as *const __m256i).add(i))
}

#[inline(always)]
unsafe fn get_scale_shuffle_q3k(i: usize) -> __m256i {
    const K_SHUFFLE: [u8; 128] = [
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
        6, 7, 6, 7, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11,
        10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12,
        13, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15,
    ];
    _mm256_loadu_si256((K_SHUFFLE.as_ptr() as *const __m256i).add(i))
}

#[inline(always)]
pub(crate) fn vec_dot_q6k_q8k(n: usize, xs: &[BlockQ6K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q6k_8k: {n} is not divisible by {QK_K}"
    );

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let m32s = _mm256_set1_epi8(32);
        let mut acc = 0f32;
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let mut q4 = x.ql.as_ptr();
            let mut qh = x.qh.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let mut sumi = _mm256_setzero_si256();

            for j in 0..QK_K / 128 {
                let is = j * 4;
                let scale_0 = _mm_shuffle_epi8(scales, get_scale_shuffle(is));
                let scale_1 = _mm_shuffle_epi8(scales, get_scale_shuffle(is + 1));
                let scale_2 = _mm_shuffle_epi8(scales, get_scale_shuffle(is + 2));
                let scale_3 = _mm_shuffle_epi8(scales, get_scale_shuffle(is + 3));

                let q4bits1 = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let q4bits2 = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let q4bits_h = _mm256_loadu_si256(qh as *const __m256i);
                qh = qh.add(32);

                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m2), 4);
                let q4h_1 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m2), 4);
                let q4h_2 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m2), 4);
                let q4h_3 =
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m2), 4);

                let q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0);
                let q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1);
                let q4_2 =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2);
                let q4_3 =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let q8s_0 = _mm256_maddubs_epi16(m32s, q8_0);
                let q8s_1 = _mm256_maddubs_epi16(m32s, q8_1);
                let q8s_2 = _mm256_maddubs_epi16(m32s, q8_2);
                let q8s_3 = _mm256_maddubs_epi16(m32s, q8_3);

                let p16_0 = _mm256_maddubs_epi16(q4_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q4_1, q8_1);
                let p16_2 = _mm256_maddubs_epi16(q4_2, q8_2);
                let p16_3 = _mm256_maddubs_epi16(q4_3, q8_3);

                let p16_0 = _mm256_sub_epi16(p16_0, q8s_0);
                let p16_1 = _mm256_sub_epi16(p16_1, q8s_1);
                let p16_2 = _mm256_sub_epi16(p16_2, q8s_2);
                let p16_3 = _mm256_sub_epi16(p16_3, q8s_3);

                let p16_0 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_0), p16_0);
                let p16_1 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_1), p16_1);
                let p16_2 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_2), p16_2);
                let p16_3 = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_3), p16_3);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_2, p16_3));
            }
            // RAPPORT PATCH (see vendor/PATCHES.md): the block's exact integer sum times `d`,
            // one fused multiply-add per block, as `q6k_rows_by_eight_columns` does per column;
            // upstream kept eight float lanes.
            acc = d.mul_add(hsum_i32_8(sumi) as f32, acc);
        }
        acc
    }
}

#[inline(always)]
unsafe fn mm256_set_m128i(a: __m128i, b: __m128i) -> __m256i {
    _mm256_insertf128_si256(_mm256_castsi128_si256(b), a, 1)
}

#[inline(always)]
pub(crate) fn vec_dot_q2k_q8k(n: usize, xs: &[BlockQ2K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q2k_q8k: {n} is not divisible by {QK_K}"
    );

    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0xF);

        let mut acc = _mm256_setzero_ps();

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let dmin = -y.d * x.dmin.to_f32();

            let mut q2 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm_loadu_si128(x.scales.as_ptr() as *const __m128i);
            let scales8 = _mm_and_si128(mins_and_scales, m4);
            let mins8 = _mm_and_si128(_mm_srli_epi16(mins_and_scales, 4), m4);
            let mins = _mm256_cvtepi8_epi16(mins8);
            let prod =
                _mm256_madd_epi16(mins, _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i));

            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&dmin), _mm256_cvtepi32_ps(prod), acc);

            let all_scales = _mm256_cvtepi8_epi16(scales8);
            let l_scales = _mm256_extracti128_si256(all_scales, 0);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                mm256_set_m128i(l_scales, l_scales),
                mm256_set_m128i(h_scales, h_scales),
            ];

            let mut sumi = _mm256_setzero_si256();

            for scale in scales {
                let q2bits = _mm256_loadu_si256(q2 as *const __m256i);
                q2 = q2.add(32);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let q2_0 = _mm256_and_si256(q2bits, m3);
                let q2_1 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 2), m3);
                let q2_2 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 4), m3);
                let q2_3 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 6), m3);

                let p0 = _mm256_maddubs_epi16(q2_0, q8_0);
                let p1 = _mm256_maddubs_epi16(q2_1, q8_1);
                let p2 = _mm256_maddubs_epi16(q2_2, q8_2);
                let p3 = _mm256_maddubs_epi16(q2_3, q8_3);

                let p0 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(0)), p0);
                let p1 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(1)), p1);
                let p2 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(2)), p2);
                let p3 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(scale, get_scale_shuffle_q3k(3)), p3);

                let p0 = _mm256_add_epi32(p0, p1);
                let p2 = _mm256_add_epi32(p2, p3);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p2));
            }
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }

        hsum_float_8(acc)
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q3k_q8k(n: usize, xs: &[BlockQ3K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q3k_q8k: {n} is not divisible by {QK_K}"
    );

    const KMASK1: u32 = 0x03030303;
    const KMASK2: u32 = 0x0f0f0f0f;

    let mut aux = [0u32; 3];

    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let mone = _mm256_set1_epi8(1);
        let m32 = _mm_set1_epi8(32);

        let mut acc = _mm256_setzero_ps();
        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();

            let mut q3 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            LittleEndian::read_u32_into(&x.scales, &mut aux);
            let scales128 = _mm_set_epi32(
                (((aux[1] >> 4) & KMASK2) | (((aux[2] >> 6) & KMASK1) << 4)) as i32,
                (((aux[0] >> 4) & KMASK2) | (((aux[2] >> 4) & KMASK1) << 4)) as i32,
                ((aux[1] & KMASK2) | (((aux[2] >> 2) & KMASK1) << 4)) as i32,
                ((aux[0] & KMASK2) | (((aux[2]) & KMASK1) << 4)) as i32,
            );
            let scales128 = _mm_sub_epi8(scales128, m32);
            let all_scales = _mm256_cvtepi8_epi16(scales128);
            let l_scales = _mm256_extracti128_si256(all_scales, 0);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                mm256_set_m128i(l_scales, l_scales),
                mm256_set_m128i(h_scales, h_scales),
            ];

            // high bit
            let hbits = _mm256_loadu_si256(x.hmask.as_ptr() as *const __m256i);

            let mut sumi = _mm256_setzero_si256();

            for (j, scale) in scales.iter().enumerate() {
                // load low 2 bits
                let q3bits = _mm256_loadu_si256(q3 as *const __m256i);
                q3 = q3.add(32);

                // Prepare low and high bits
                // We hardcode the shifts here to avoid loading them into a separate register
                let q3l_0 = _mm256_and_si256(q3bits, m3);
                let q3h_0 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 0)), 0)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 4)), 4)
                };
                let q3h_0 = _mm256_slli_epi16(q3h_0, 2);

                let q3l_1 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 2), m3);
                let q3h_1 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 1)), 1)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 5)), 5)
                };
                let q3h_1 = _mm256_slli_epi16(q3h_1, 2);

                let q3l_2 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 4), m3);
                let q3h_2 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 2)), 2)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 6)), 6)
                };
                let q3h_2 = _mm256_slli_epi16(q3h_2, 2);

                let q3l_3 = _mm256_and_si256(_mm256_srli_epi16(q3bits, 6), m3);
                let q3h_3 = if j == 0 {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 3)), 3)
                } else {
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, 7)), 7)
                };
                let q3h_3 = _mm256_slli_epi16(q3h_3, 2);

                // load Q8 quants
                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_2 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_3 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                // Dot product: we multiply the 2 low bits and 1 high bit part separately, so we
                // can use _mm256_maddubs_epi16, and then subtract. The high bit part has the 2
                // already subtracted (and so, it is zero if the high bit was not set, and 2 if the
                // high bit was set)
                let q8s_0 = _mm256_maddubs_epi16(q3h_0, q8_0);
                let q8s_1 = _mm256_maddubs_epi16(q3h_1, q8_1);
                let q8s_2 = _mm256_maddubs_epi16(q3h_2, q8_2);
                let q8s_3 = _mm256_maddubs_epi16(q3h_3, q8_3);

                let p16_0 = _mm256_maddubs_epi16(q3l_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q3l_1, q8_1);
                let p16_2 = _mm256_maddubs_epi16(q3l_2, q8_2);
                let p16_3 = _mm256_maddubs_epi16(q3l_3, q8_3);

                let p16_0 = _mm256_sub_epi16(p16_0, q8s_0);
                let p16_1 = _mm256_sub_epi16(p16_1, q8s_1);
                let p16_2 = _mm256_sub_epi16(p16_2, q8s_2);
                let p16_3 = _mm256_sub_epi16(p16_3, q8s_3);

                // multiply with scales
                let p16_0 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(0)), p16_0);
                let p16_1 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(1)), p16_1);
                let p16_2 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(2)), p16_2);
                let p16_3 =
                    _mm256_madd_epi16(_mm256_shuffle_epi8(*scale, get_scale_shuffle_q3k(3)), p16_3);

                // accumulate
                let p16_0 = _mm256_add_epi32(p16_0, p16_1);
                let p16_2 = _mm256_add_epi32(p16_2, p16_3);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_2));
            }

            // multiply with block scale and accumulate
            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}

/// A Q4_K block's six-bit scales (`.0`, lanes 0..8) and mins (`.1`), as sixteen-bit integers.
#[inline(always)]
unsafe fn q4k_scales_and_mins(x: &BlockQ4K) -> (__m128i, __m128i) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mut utmp = [0u32; 4];
    LittleEndian::read_u32_into(&x.scales, &mut utmp[0..3]);
    utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
    let uaux = utmp[1] & KMASK1;
    utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
    utmp[2] = uaux;
    utmp[0] &= KMASK1;
    let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
        utmp[3] as i32,
        utmp[2] as i32,
        utmp[1] as i32,
        utmp[0] as i32,
    ));
    (
        _mm256_extracti128_si256(mins_and_scales, 0),
        _mm256_extracti128_si256(mins_and_scales, 1),
    )
}

#[inline(always)]
unsafe fn hsum_i32_8(x: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    hsum_i32_4(x)
}

#[inline(always)]
unsafe fn hsum_i32_4(x: __m128i) -> i32 {
    let x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b01));
    _mm_cvtsi128_si32(x)
}

/// Eight f16 values (one per column) as f32 lanes.
#[inline(always)]
unsafe fn eight_halves(values: [f16; 8]) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(values.as_ptr() as *const __m128i))
}

/// The eight lanes of `x`, one per column.
#[inline(always)]
unsafe fn by_column(x: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), x);
    out
}

/// RAPPORT PATCH (see vendor/PATCHES.md): upstream's integer steps, with the float steps
/// defined per block and per column so that `q4k_rows_by_eight_columns` (prefill) computes
/// every result bit for bit as this one-row kernel (decoding) does. A block adds
/// `(d_y * d) * S` to one sum and `(d_y * dmin) * M` to another, each a fused multiply-add,
/// where `S` (scales times weight-activation dots) and `M` (mins times activation sums) are
/// exact integers whatever order they were summed in; the result is the first sum minus the
/// second. Upstream kept eight float lanes per column, which an eight-column kernel cannot
/// reproduce.
#[inline(always)]
pub(crate) fn vec_dot_q4k_q8k(n: usize, xs: &[BlockQ4K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q4k_q8k: {n} is not divisible by {QK_K}"
    );
    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let (mut acc, mut acc_m) = (0f32, 0f32);
        for (x, y) in xs.iter().zip(ys.iter()) {
            let (sc128, mins) = q4k_scales_and_mins(x);
            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256(q8sums, 0),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let mins_sum = hsum_i32_4(_mm_madd_epi16(mins, q8s));
            let scales = mm256_set_m128i(sc128, sc128);

            let mut q4 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();
            let mut sumi = _mm256_setzero_si256();
            for j in 0..QK_K / 64 {
                let scale_l = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j));
                let scale_h = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j + 1));

                let q4bits = _mm256_loadu_si256(q4 as *const __m256i);
                q4 = q4.add(32);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);

                let q8l = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let p16l = _mm256_maddubs_epi16(q4l, q8l);
                let p16l = _mm256_madd_epi16(scale_l, p16l);
                sumi = _mm256_add_epi32(sumi, p16l);

                let q8h = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let p16h = _mm256_maddubs_epi16(q4h, q8h);
                let p16h = _mm256_madd_epi16(scale_h, p16h);
                sumi = _mm256_add_epi32(sumi, p16h);
            }
            let scaled_sum = hsum_i32_8(sumi);
            acc = (y.d * x.d.to_f32()).mul_add(scaled_sum as f32, acc);
            acc_m = (y.d * x.dmin.to_f32()).mul_add(mins_sum as f32, acc_m);
        }
        acc - acc_m
    }
}

/// The four horizontal sums of `x` (eight 32-bit lanes each), in one register. Integer adds:
/// any order gives the same exact sums.
#[inline(always)]
unsafe fn hsum_four_i32_8(x: [__m256i; 4]) -> __m128i {
    let pairs = _mm256_hadd_epi32(_mm256_hadd_epi32(x[0], x[1]), _mm256_hadd_epi32(x[2], x[3]));
    _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1))
}

/// The four horizontal sums of `x` (four 32-bit lanes each), in one register.
#[inline(always)]
unsafe fn hsum_four_i32_4(x: [__m128i; 4]) -> __m128i {
    _mm_hadd_epi32(_mm_hadd_epi32(x[0], x[1]), _mm_hadd_epi32(x[2], x[3]))
}

/// The four lanes of `x`, one per column.
#[inline(always)]
unsafe fn by_four_columns(x: __m128) -> [f32; 4] {
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), x);
    out
}

/// Brings share `i` of `next` (bytes `i * share..(i + 1) * share`) into cache, a line at a time:
/// a kernel that reads its columns a block of each at a time fetches the next columns over its
/// blocks this way, `share` being its bytes per step.
#[inline(always)]
unsafe fn prefetch_share<T>(next: &[T], i: usize, share: usize) {
    let (start, bytes) = (next.as_ptr() as *const i8, std::mem::size_of_val(next));
    let from = i * share;
    if from >= bytes {
        return;
    }
    // Never dereferenced, and a prefetch past the end of `next` cannot fault.
    let mut line = 0;
    while line < share {
        _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(from + line));
        line += 64;
    }
    _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(from + share - 1));
}

/// RAPPORT PATCH (see vendor/PATCHES.md): one activation row times four Q4_K weight columns
/// (decoding), each result bit for bit what `vec_dot_q4k_q8k` gives for its column: the same
/// exact integers per block, the same fused multiply-adds per column, in lanes. The row's
/// activation bytes and sums are loaded once for the four columns, and the per-block
/// horizontal sums and float steps of the four go together, where the one-column kernel spent
/// a quarter of its instructions on them (`perf annotate` of Qwen decoding).
///
/// Four columns read as four short runs of blocks (six blocks each in Qwen's 1536-wide
/// matrices), which the hardware prefetcher does not pick up, so `next` (the following four
/// columns) is fetched over the blocks: without it this kernel ran at half the speed of the
/// one-column kernel, which reads one long run.
#[inline(always)]
pub(crate) fn q4k_row_by_four_columns(n: usize, columns: [&[BlockQ4K]; 4], next: &[BlockQ4K], ys: &[BlockQ8K]) -> [f32; 4] {
    debug_assert!(n.is_multiple_of(QK_K), "q4k_row_by_four_columns: {n} is not divisible by {QK_K}");
    let blocks = n / QK_K;
    assert!(ys.len() >= blocks && columns.iter().all(|c| c.len() >= blocks));
    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let (mut acc, mut acc_m) = (_mm_setzero_ps(), _mm_setzero_ps());
        for i in 0..blocks {
            prefetch_share(next, i, 4 * std::mem::size_of::<BlockQ4K>());
            let y = ys.get_unchecked(i);
            let x = columns.map(|c| c.get_unchecked(i));
            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(q8sums), _mm256_extracti128_si256(q8sums, 1));
            let mut scales = [_mm256_setzero_si256(); 4];
            let mut mins = [_mm_setzero_si128(); 4];
            for c in 0..4 {
                let (sc128, m) = q4k_scales_and_mins(x[c]);
                mins[c] = _mm_madd_epi16(m, q8s);
                scales[c] = mm256_set_m128i(sc128, sc128);
            }
            let mut sumi = [_mm256_setzero_si256(); 4];
            for j in 0..QK_K / 64 {
                let q8l = _mm256_loadu_si256(y.qs.as_ptr().add(64 * j) as *const __m256i);
                let q8h = _mm256_loadu_si256(y.qs.as_ptr().add(64 * j + 32) as *const __m256i);
                let (shuffle_l, shuffle_h) = (get_scale_shuffle_k4(2 * j), get_scale_shuffle_k4(2 * j + 1));
                for c in 0..4 {
                    let q4bits = _mm256_loadu_si256(x[c].qs.as_ptr().add(32 * j) as *const __m256i);
                    let q4l = _mm256_and_si256(q4bits, m4);
                    let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                    let p16l = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[c], shuffle_l), _mm256_maddubs_epi16(q4l, q8l));
                    let p16h = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[c], shuffle_h), _mm256_maddubs_epi16(q4h, q8h));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(p16l, p16h));
                }
            }
            // Each block starts with its `d` and `dmin` (f16): the four columns' eight halves
            // in one register, converted at once (exactly), then split into `d` and `dmin`.
            let heads = x.map(|b| std::ptr::read_unaligned(b as *const BlockQ4K as *const i32));
            let halves = _mm256_cvtph_ps(_mm_set_epi32(heads[3], heads[2], heads[1], heads[0]));
            let split = _mm256_permutevar8x32_ps(halves, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
            let dy = _mm_set1_ps(y.d);
            let d = _mm_mul_ps(dy, _mm256_castps256_ps128(split));
            let dmin = _mm_mul_ps(dy, _mm256_extractf128_ps(split, 1));
            acc = _mm_fmadd_ps(d, _mm_cvtepi32_ps(hsum_four_i32_8(sumi)), acc);
            acc_m = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(hsum_four_i32_4(mins)), acc_m);
        }
        by_four_columns(_mm_sub_ps(acc, acc_m))
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): one activation row times four Q6_K weight columns
/// (decoding), each result bit for bit what `vec_dot_q6k_q8k` gives for its column. The row's
/// bytes are loaded once for the four columns, and the weights' offset of 32 is taken out once
/// per block through the row's 16-weight sums (`32 * sum(scale * bsum)`) instead of once per 32
/// weights and column (`maddubs(32, q8)` and a subtraction); both give the same exact integer.
/// `next` is fetched over the blocks as in [`q4k_row_by_four_columns`].
#[inline(always)]
pub(crate) fn q6k_row_by_four_columns(n: usize, columns: [&[BlockQ6K]; 4], next: &[BlockQ6K], ys: &[BlockQ8K]) -> [f32; 4] {
    debug_assert!(n.is_multiple_of(QK_K), "q6k_row_by_four_columns: {n} is not divisible by {QK_K}");
    let blocks = n / QK_K;
    assert!(ys.len() >= blocks && columns.iter().all(|c| c.len() >= blocks));
    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let mut acc = _mm_setzero_ps();
        for i in 0..blocks {
            prefetch_share(next, i, 4 * std::mem::size_of::<BlockQ6K>());
            let y = ys.get_unchecked(i);
            let x = columns.map(|c| c.get_unchecked(i));
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            // Each column's sum of scale x activation sum, times 32, to start from.
            let mut sumi = x.map(|b| {
                let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr() as *const __m128i));
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(scales, bsums), 5))
            });
            for j in 0..QK_K / 128 {
                let q8 = y.qs.as_ptr().add(128 * j);
                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                let q8_1 = _mm256_loadu_si256(q8.add(32) as *const __m256i);
                let q8_2 = _mm256_loadu_si256(q8.add(64) as *const __m256i);
                let q8_3 = _mm256_loadu_si256(q8.add(96) as *const __m256i);
                for c in 0..4 {
                    let b = x[c];
                    let scales = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
                    let q4bits1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * j) as *const __m256i);
                    let q4bits2 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * j + 32) as *const __m256i);
                    let q4bits_h = _mm256_loadu_si256(b.qh.as_ptr().add(32 * j) as *const __m256i);
                    let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m2), 4);
                    let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m2), 4);
                    let q4h_2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m2), 4);
                    let q4h_3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m2), 4);
                    let q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0);
                    let q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1);
                    let q4_2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2);
                    let q4_3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3);
                    // Weights 0..63 against activations up to +-128: two products per 16-bit
                    // lane stay within 16128, no saturation.
                    let scale = |s: usize| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(4 * j + s)));
                    let p0 = _mm256_madd_epi16(scale(0), _mm256_maddubs_epi16(q4_0, q8_0));
                    let p1 = _mm256_madd_epi16(scale(1), _mm256_maddubs_epi16(q4_1, q8_1));
                    let p2 = _mm256_madd_epi16(scale(2), _mm256_maddubs_epi16(q4_2, q8_2));
                    let p3 = _mm256_madd_epi16(scale(3), _mm256_maddubs_epi16(q4_3, q8_3));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
                }
            }
            let d = _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, x[3].d.to_bits() as i16, x[2].d.to_bits() as i16, x[1].d.to_bits() as i16, x[0].d.to_bits() as i16));
            acc = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(y.d), d), _mm_cvtepi32_ps(hsum_four_i32_8(sumi)), acc);
        }
        by_four_columns(acc)
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): a kernel for activation rows times eight weight
/// columns.
pub(crate) trait RowsByEightColumns {
    type Row;
    /// `R` rows times the eight columns, each result bit-identical to the type's `vec_dot`.
    fn rows<const R: usize>(&self, rows: [&[Self::Row]; R]) -> [[f32; 8]; R];
}

/// RAPPORT PATCH (see vendor/PATCHES.md): a type's weights re-laid eight columns at a time,
/// for its kernel over them.
pub(crate) trait EightColumns: Default + RowsByEightColumns {
    type Block;
    /// Below this many rows, re-laying the weights costs more than it saves (criterion bench
    /// `quantized_matmul`: re-laying eight Q6_K columns costs as much as ~3 rows through the
    /// one-row kernel, eight Q4_K columns ~1); the caller then takes a row at a time.
    const MIN_ROWS: usize;
    /// Re-lays `columns` (eight columns of `blocks` blocks each, one after the other).
    fn pack(&mut self, columns: &[Self::Block], blocks: usize);
}

/// RAPPORT PATCH (see vendor/PATCHES.md): eight Q4_K weight columns re-laid for
/// `q4k_rows_by_eight_columns`, built once per prefill task and read by every row.
///
/// The kernel multiplies one broadcast group of four activation bytes by the same four weight
/// positions of eight columns at once, so the weights are stored as unpacked nibbles with the
/// columns interleaved four bytes at a time: register `(block, sub-block, group)` holds
/// positions `32 * sub-block + 4 * group ..+4` of columns 0..8. A sub-block's eight products
/// then share one scale per column, which lets them be added as 16-bit integers before a single
/// multiply by the scales (`madd`), where the one-column kernel multiplies by the scale after
/// every product: this is most of the speed-up (llama.cpp's repacked Q4_K kernels do the same).
#[derive(Default)]
pub(crate) struct Q4KEightColumns {
    /// `[block][sub-block][group]`: 8 columns x 4 nibbles (0..16), column-major.
    weights: Vec<__m256i>,
    /// `[block][sub-block]`: each column's scale, twice (one per 16-bit pair `maddubs` leaves).
    scales: Vec<__m256i>,
    /// `[block][sub-block]`: each column's min, twice (for the two activation sums of 16).
    mins: Vec<__m256i>,
    /// `[block]`: each column's `d` and `dmin` as f32.
    d: Vec<__m256>,
    dmin: Vec<__m256>,
}

/// The transpose of an 8x8 matrix of 32-bit elements held in eight registers.
#[inline(always)]
unsafe fn transpose_8x8_epi32(rows: [__m256i; 8]) -> [__m256i; 8] {
    let r = rows.map(|r| _mm256_castsi256_ps(r));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
    .map(|r| _mm256_castps_si256(r))
}

/// Eight columns' eight 16-bit values (scales or mins, `[column][sub-block]`) as one register
/// per sub-block holding each column's value twice (`[sub-block][column][2]`), by an 8x8
/// transpose of 16-bit elements.
#[inline(always)]
unsafe fn per_sub_block_pairs(by_column: [__m128i; 8]) -> [__m256i; 8] {
    let r = by_column;
    let a: [__m128i; 8] = std::array::from_fn(|i| {
        let (x, y) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
        if i % 2 == 0 { _mm_unpacklo_epi16(x, y) } else { _mm_unpackhi_epi16(x, y) }
    });
    // a[0], a[1]: columns 0-1 of sub-blocks 0-3, 4-7; a[2], a[3]: columns 2-3; ...
    let b = [
        _mm_unpacklo_epi32(a[0], a[2]),
        _mm_unpackhi_epi32(a[0], a[2]),
        _mm_unpacklo_epi32(a[1], a[3]),
        _mm_unpackhi_epi32(a[1], a[3]),
        _mm_unpacklo_epi32(a[4], a[6]),
        _mm_unpackhi_epi32(a[4], a[6]),
        _mm_unpacklo_epi32(a[5], a[7]),
        _mm_unpackhi_epi32(a[5], a[7]),
    ];
    // b[0]: columns 0-3 of sub-blocks 0 and 1, b[4]: columns 4-7 of the same; ...
    std::array::from_fn(|s| {
        let (x, y) = (b[s / 2], b[s / 2 + 4]);
        let row = if s % 2 == 0 { _mm_unpacklo_epi64(x, y) } else { _mm_unpackhi_epi64(x, y) };
        let widened = _mm256_cvtepu16_epi32(row);
        _mm256_or_si256(widened, _mm256_slli_epi32(widened, 16))
    })
}

impl EightColumns for Q4KEightColumns {
    type Block = BlockQ4K;
    const MIN_ROWS: usize = 2;

    fn pack(&mut self, columns: &[BlockQ4K], blocks: usize) {
        debug_assert_eq!(columns.len(), 8 * blocks);
        unsafe {
            let zero = _mm256_setzero_si256();
            self.weights.resize(blocks * 64, zero);
            self.scales.resize(blocks * 8, zero);
            self.mins.resize(blocks * 8, zero);
            self.d.resize(blocks, _mm256_setzero_ps());
            self.dmin.resize(blocks, _mm256_setzero_ps());
            let column = |c: usize, i: usize| columns.get_unchecked(c * blocks + i);
            let m4 = _mm256_set1_epi8(0xF);
            for i in 0..blocks {
                let decoded: [(__m128i, __m128i); 8] = std::array::from_fn(|c| q4k_scales_and_mins(column(c, i)));
                let scales = per_sub_block_pairs(decoded.map(|(sc, _)| sc));
                let mins = per_sub_block_pairs(decoded.map(|(_, mn)| mn));
                self.scales[i * 8..(i + 1) * 8].copy_from_slice(&scales);
                self.mins[i * 8..(i + 1) * 8].copy_from_slice(&mins);
                self.d[i] = eight_halves(std::array::from_fn(|c| column(c, i).d));
                self.dmin[i] = eight_halves(std::array::from_fn(|c| column(c, i).dmin));
                // Sub-blocks 2j and 2j+1 are the low and high nibbles of bytes 32j..32j+32.
                for j in 0..QK_K / 64 {
                    let bits: [__m256i; 8] = std::array::from_fn(|c| {
                        _mm256_loadu_si256(column(c, i).qs.as_ptr().add(32 * j) as *const __m256i)
                    });
                    let low = transpose_8x8_epi32(bits.map(|b| _mm256_and_si256(b, m4)));
                    let high = transpose_8x8_epi32(bits.map(|b| _mm256_and_si256(_mm256_srli_epi16(b, 4), m4)));
                    let at = (i * 8 + 2 * j) * 8;
                    self.weights[at..at + 8].copy_from_slice(&low);
                    self.weights[at + 8..at + 16].copy_from_slice(&high);
                }
            }
        }
    }

}

impl RowsByEightColumns for Q4KEightColumns {
    type Row = BlockQ8K;

    #[inline(always)]
    fn rows<const R: usize>(&self, rows: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
        q4k_rows_by_eight_columns(self, rows)
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): `R` activation rows times the eight columns of
/// `cols`, each result bit-identical to `vec_dot_q4k_q8k` on that row and column (same exact
/// integers per block, same float steps in the same order).
///
/// Per sub-block and row, eight `maddubs` of the broadcast activation bytes by the eight
/// interleaved weight registers, summed as 16-bit integers (at most 8 x 2 x 15 x 128 = 30720 in
/// magnitude, inside i16: Q8_K activations lie in -128..=127), then one `madd` by the columns'
/// scales into 32-bit sums.
#[inline(always)]
pub(crate) fn q4k_rows_by_eight_columns<const R: usize>(cols: &Q4KEightColumns, rows: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
    let blocks = cols.d.len();
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm256_setzero_ps(); R];
        for i in 0..blocks {
            let ys: [&BlockQ8K; R] = std::array::from_fn(|r| rows[r].get_unchecked(i));
            let mut scaled = [_mm256_setzero_si256(); R];
            for s in 0..8 {
                let weights = cols.weights.as_ptr().add((i * 8 + s) * 8);
                let mut products = [_mm256_setzero_si256(); R];
                for g in 0..8 {
                    let w = *weights.add(g);
                    for r in 0..R {
                        let act = (ys[r].qs.as_ptr().add(32 * s + 4 * g) as *const i32).read_unaligned();
                        products[r] = _mm256_add_epi16(products[r], _mm256_maddubs_epi16(w, _mm256_set1_epi32(act)));
                    }
                }
                let sc = *cols.scales.get_unchecked(i * 8 + s);
                for r in 0..R {
                    scaled[r] = _mm256_add_epi32(scaled[r], _mm256_madd_epi16(products[r], sc));
                }
            }
            let mut mins = [_mm256_setzero_si256(); R];
            for s in 0..8 {
                let mn = *cols.mins.get_unchecked(i * 8 + s);
                for r in 0..R {
                    let sums = (ys[r].bsums.as_ptr().add(2 * s) as *const i32).read_unaligned();
                    mins[r] = _mm256_add_epi32(mins[r], _mm256_madd_epi16(mn, _mm256_set1_epi32(sums)));
                }
            }
            let (d, dmin) = (*cols.d.get_unchecked(i), *cols.dmin.get_unchecked(i));
            for r in 0..R {
                let yd = _mm256_set1_ps(ys[r].d);
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(yd, d), _mm256_cvtepi32_ps(scaled[r]), acc[r]);
                acc_m[r] = _mm256_fmadd_ps(_mm256_mul_ps(yd, dmin), _mm256_cvtepi32_ps(mins[r]), acc_m[r]);
            }
        }
        std::array::from_fn(|r| by_column(_mm256_sub_ps(acc[r], acc_m[r])))
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): eight Q6_K weight columns re-laid for
/// `q6k_rows_by_eight_columns`, the same interleaving as `Q4KEightColumns` with six-bit
/// weights (0..64, the -32 applied through the activation sums).
#[derive(Default)]
pub(crate) struct Q6KEightColumns {
    /// `[block][32-weight chunk][group]`: 8 columns x 4 weights (0..64), column-major.
    weights: Vec<__m256i>,
    /// `[block][16-weight sub-block]`: each column's scale, twice.
    scales: Vec<__m256i>,
    /// `[block][pair of sub-blocks]`: each column's two scales, for the activation sums.
    scale_pairs: Vec<__m256i>,
    /// `[block]`: each column's `d` as f32.
    d: Vec<__m256>,
}

impl EightColumns for Q6KEightColumns {
    type Block = BlockQ6K;
    const MIN_ROWS: usize = 4;

    fn pack(&mut self, columns: &[BlockQ6K], blocks: usize) {
        debug_assert_eq!(columns.len(), 8 * blocks);
        unsafe {
            let zero = _mm256_setzero_si256();
            self.weights.resize(blocks * 64, zero);
            self.scales.resize(blocks * 16, zero);
            self.scale_pairs.resize(blocks * 8, zero);
            self.d.resize(blocks, _mm256_setzero_ps());
            let column = |c: usize, i: usize| columns.get_unchecked(c * blocks + i);
            let (m4, m2) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
            for i in 0..blocks {
                let wide: [__m256i; 8] = std::array::from_fn(|c| {
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(column(c, i).scales.as_ptr() as *const __m128i))
                });
                let low = per_sub_block_pairs(wide.map(|w| _mm256_castsi256_si128(w)));
                let high = per_sub_block_pairs(wide.map(|w| _mm256_extracti128_si256(w, 1)));
                self.scales[i * 16..i * 16 + 8].copy_from_slice(&low);
                self.scales[i * 16 + 8..i * 16 + 16].copy_from_slice(&high);
                // A column's sixteen 16-bit scales are eight 32-bit pairs: transposed, each
                // register holds one pair of every column.
                self.scale_pairs[i * 8..(i + 1) * 8].copy_from_slice(&transpose_8x8_epi32(wide));
                self.d[i] = eight_halves(std::array::from_fn(|c| column(c, i).d));
                // Each half of 128 weights: 64 bytes of low nibbles and 32 of two-bit highs;
                // chunk t of the half (32 weights) takes nibbles from `ql[32 * (t % 2)..]`
                // (low for t < 2, high after) and bits 2t..2t+2 of `qh`, as in vec_dot_q6k_q8k.
                for half in 0..2 {
                    let chunks: [[__m256i; 8]; 4] = {
                        let per_column: [[__m256i; 4]; 8] = std::array::from_fn(|c| {
                            let x = column(c, i);
                            let ql = x.ql.as_ptr().add(64 * half);
                            let ql0 = _mm256_loadu_si256(ql as *const __m256i);
                            let ql1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                            let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * half) as *const __m256i);
                            [
                                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)),
                                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m2)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)),
                            ]
                        });
                        std::array::from_fn(|t| transpose_8x8_epi32(per_column.map(|chunks| chunks[t])))
                    };
                    for (t, chunk) in chunks.iter().enumerate() {
                        let at = (i * 8 + 4 * half + t) * 8;
                        self.weights[at..at + 8].copy_from_slice(chunk);
                    }
                }
            }
        }
    }

}

impl RowsByEightColumns for Q6KEightColumns {
    type Row = BlockQ8K;

    #[inline(always)]
    fn rows<const R: usize>(&self, rows: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
        q6k_rows_by_eight_columns(self, rows)
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): `R` activation rows times the eight columns of
/// `cols`, each result bit-identical to `vec_dot_q6k_q8k` on that row and column: per block the
/// same exact integer, `sum(scale * dot(weight, activation)) - 32 * sum(scale * activation
/// sum)`, then the same fused multiply-add. Two products of six-bit weights are added as 16-bit
/// integers (at most 2 x 2 x 63 x 128 = 32256, inside i16) before the multiply by the scales.
#[inline(always)]
pub(crate) fn q6k_rows_by_eight_columns<const R: usize>(cols: &Q6KEightColumns, rows: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
    let blocks = cols.d.len();
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..blocks {
            let ys: [&BlockQ8K; R] = std::array::from_fn(|r| rows[r].get_unchecked(i));
            let mut scaled = [_mm256_setzero_si256(); R];
            for chunk in 0..8 {
                let weights = cols.weights.as_ptr().add((i * 8 + chunk) * 8);
                for pair in 0..4 {
                    let (w0, w1) = (*weights.add(2 * pair), *weights.add(2 * pair + 1));
                    let sc = *cols.scales.get_unchecked(i * 16 + 2 * chunk + pair / 2);
                    for r in 0..R {
                        let act = ys[r].qs.as_ptr().add(32 * chunk + 8 * pair) as *const i32;
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(w0, _mm256_set1_epi32(act.read_unaligned())),
                            _mm256_maddubs_epi16(w1, _mm256_set1_epi32(act.add(1).read_unaligned())),
                        );
                        scaled[r] = _mm256_add_epi32(scaled[r], _mm256_madd_epi16(p, sc));
                    }
                }
            }
            let mut offsets = [_mm256_setzero_si256(); R];
            for t in 0..8 {
                let sc = *cols.scale_pairs.get_unchecked(i * 8 + t);
                for r in 0..R {
                    let sums = (ys[r].bsums.as_ptr().add(2 * t) as *const i32).read_unaligned();
                    offsets[r] = _mm256_add_epi32(offsets[r], _mm256_madd_epi16(sc, _mm256_set1_epi32(sums)));
                }
            }
            let d = *cols.d.get_unchecked(i);
            for r in 0..R {
                let total = _mm256_sub_epi32(scaled[r], _mm256_slli_epi32(offsets[r], 5));
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(ys[r].d), d), _mm256_cvtepi32_ps(total), acc[r]);
            }
        }
        std::array::from_fn(|r| by_column(acc[r]))
    }
}




/// RAPPORT PATCH (see vendor/PATCHES.md): the weight columns `rhs_cols` (`k_in_blocks` blocks
/// each) times all `m` rows of `lhs_b`, eight columns at a time (re-laid into `columns`, which
/// the caller keeps between calls) and four rows at a time, into `out`. Returns the columns
/// written: a remainder of fewer than eight, and all of them below `C::MIN_ROWS` rows, are left
/// to the caller.
pub(crate) fn matmul_eight_columns_at_a_time<C: EightColumns>(
    k_in_blocks: usize,
    rhs_cols: &[C::Block],
    lhs_b: &[C::Row],
    m: usize,
    out: &ColumnsOut,
    columns: &mut C,
) -> usize {
    if m < C::MIN_ROWS {
        return 0;
    }
    let groups = rhs_cols.len() / k_in_blocks / 8;
    for group in 0..groups {
        columns.pack(&rhs_cols[group * 8 * k_in_blocks..(group + 1) * 8 * k_in_blocks], k_in_blocks);
        every_row_four_at_a_time(&*columns, k_in_blocks, lhs_b, m, group * 8, out);
    }
    groups * 8
}

/// RAPPORT PATCH (see vendor/PATCHES.md): eight Q4_1 weight columns, read where they lie, and
/// the blocks to fetch while they are read.
struct Q4_1Columns<'a> {
    cols: [&'a [BlockQ4_1]; 8],
    next: &'a [BlockQ4_1],
}

impl RowsByEightColumns for Q4_1Columns<'_> {
    type Row = BlockQ8_1;

    #[inline(always)]
    fn rows<const R: usize>(&self, rows: [&[BlockQ8_1]; R]) -> [[f32; 8]; R] {
        q4_1_rows_by_eight_columns(self.cols, self.next, rows)
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): Q4_1 columns times `m` rows, eight columns at a
/// time, from one row on (decoding included): below `Q4_1EightColumns::MIN_ROWS` rows each
/// block is interleaved where it lies, from there on into a copy kept for all the rows (same
/// arithmetic either way). Returns the columns written; a remainder of fewer than eight is
/// left to the caller.
///
/// While a group is computed, the next eight columns (from `following` after the last group)
/// are fetched: a group reads eight short runs of blocks, one per column, too short for the
/// hardware prefetcher to pick up, and one decoding row leaves the kernel waiting on memory
/// (measured: 20% slower than the one-column kernel, which reads one long run, before this).
pub(crate) fn q4_1_matmul_eight_columns_at_a_time(k_in_blocks: usize, rhs_cols: &[BlockQ4_1], following: &[BlockQ4_1], lhs_b: &[BlockQ8_1], m: usize, out: &ColumnsOut) -> usize {
    if m >= Q4_1EightColumns::MIN_ROWS {
        // One interleaved copy per thread, kept between calls, as for Q4_K.
        thread_local! {
            static COLUMNS: std::cell::RefCell<Q4_1EightColumns> = Default::default();
        }
        return COLUMNS.with_borrow_mut(|columns| matmul_eight_columns_at_a_time(k_in_blocks, rhs_cols, lhs_b, m, out, columns));
    }
    eight_columns_in_place(k_in_blocks, rhs_cols, following, lhs_b, m, out, |cols, next| Q4_1Columns { cols, next })
}

/// RAPPORT PATCH (see vendor/PATCHES.md): eight Q8_0 weight columns, read where they lie, and
/// the blocks to fetch while they are read.
struct Q8_0Columns<'a> {
    cols: [&'a [BlockQ8_0]; 8],
    next: &'a [BlockQ8_0],
}

impl RowsByEightColumns for Q8_0Columns<'_> {
    type Row = BlockQ8_0;

    #[inline(always)]
    fn rows<const R: usize>(&self, rows: [&[BlockQ8_0]; R]) -> [[f32; 8]; R] {
        q8_0_rows_by_eight_columns(self.cols, self.next, rows)
    }
}

/// RAPPORT PATCH (see vendor/PATCHES.md): Q8_0 columns times `m` rows, eight columns at a
/// time, read where they lie, from one row on (decoding included; a Q8_0 block needs no
/// unpacking, so there is nothing a re-laid copy would save). Returns the columns written; a
/// remainder of fewer than eight is left to the caller.
pub(crate) fn q8_0_matmul_eight_columns_at_a_time(k_in_blocks: usize, rhs_cols: &[BlockQ8_0], following: &[BlockQ8_0], lhs_b: &[BlockQ8_0], m: usize, out: &ColumnsOut) -> usize {
    eight_columns_in_place(k_in_blocks, rhs_cols, following, lhs_b, m, out, |cols, next| Q8_0Columns { cols, next })
}

/// Whole groups of eight of `rhs_cols` times all `m` rows, each group through the kernel
/// `columns` makes of its eight columns and the blocks to fetch meanwhile (the next group's,
/// from `following` after the last group). Returns the columns written.
#[inline(always)]
fn eight_columns_in_place<'a, B, K: RowsByEightColumns>(
    k_in_blocks: usize,
    rhs_cols: &'a [B],
    following: &'a [B],
    lhs_b: &[K::Row],
    m: usize,
    out: &ColumnsOut,
    columns: impl Fn([&'a [B]; 8], &'a [B]) -> K,
) -> usize {
    let groups = rhs_cols.len() / k_in_blocks / 8;
    let group_len = 8 * k_in_blocks;
    for group in 0..groups {
        let column = |c: usize| &rhs_cols[(group * 8 + c) * k_in_blocks..(group * 8 + c + 1) * k_in_blocks];
        let next = match rhs_cols.get((group + 1) * group_len..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => following,
        };
        let kernel = columns(std::array::from_fn(column), &next[..next.len().min(group_len)]);
        every_row_four_at_a_time(&kernel, k_in_blocks, lhs_b, m, group * 8, out);
    }
    groups * 8
}

/// All `m` rows of `lhs_b` (`k_in_blocks` blocks each) times the eight columns of `kernel`,
/// four rows at a time, written into `out` from column `first_col`.
#[inline(always)]
fn every_row_four_at_a_time<K: RowsByEightColumns>(kernel: &K, k_in_blocks: usize, lhs_b: &[K::Row], m: usize, first_col: usize, out: &ColumnsOut) {
    let row = |r: usize| &lhs_b[r * k_in_blocks..(r + 1) * k_in_blocks];
    let write = |first_row: usize, results: &[[f32; 8]]| {
        for (r, by_col) in results.iter().enumerate() {
            out.write_eight(first_row + r, first_col, by_col);
        }
    };
    let mut r = 0;
    while r + 4 <= m {
        write(r, &kernel.rows::<4>([row(r), row(r + 1), row(r + 2), row(r + 3)]));
        r += 4;
    }
    match m - r {
        3 => write(r, &kernel.rows::<3>([row(r), row(r + 1), row(r + 2)])),
        2 => write(r, &kernel.rows::<2>([row(r), row(r + 1)])),
        1 => write(r, &kernel.rows::<1>([row(r)])),
        _ => {}
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q5k_q8k(n: usize, xs: &[BlockQ5K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q5k_q8k: {n} is not divisible by {QK_K}"
    );
    let mut utmp = [0u32; 4];
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;

    unsafe {
        let m4 = _mm256_set1_epi8(0xF);
        let mzero = _mm_setzero_si128();
        let mone = _mm256_set1_epi8(1);

        let mut acc = _mm256_setzero_ps();
        let mut summs = 0.0;

        for (x, y) in xs.iter().zip(ys.iter()) {
            let d = y.d * x.d.to_f32();
            let dmin = -y.d * x.dmin.to_f32();

            LittleEndian::read_u32_into(&x.scales, &mut utmp[0..3]);

            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;

            let mut q5 = x.qs.as_ptr();
            let mut q8 = y.qs.as_ptr();

            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
                utmp[3] as i32,
                utmp[2] as i32,
                utmp[1] as i32,
                utmp[0] as i32,
            ));

            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256(q8sums, 0),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
            let hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);
            summs += dmin * _mm_extract_epi32(hsum, 0) as f32;

            let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
            let scales = mm256_set_m128i(sc128, sc128);

            let hbits = _mm256_loadu_si256(x.qh.as_ptr() as *const __m256i);
            let mut hmask = mone;

            let mut sumi = _mm256_setzero_si256();

            for j in 0..QK_K / 64 {
                let scale_0 = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j));
                let scale_1 = _mm256_shuffle_epi8(scales, get_scale_shuffle_k4(2 * j + 1));

                let q5bits = _mm256_loadu_si256(q5 as *const __m256i);
                q5 = q5.add(32);

                //Similar to q3k we hardcode the shifts here to avoid loading them into a separate register
                let q5l_0 = _mm256_and_si256(q5bits, m4);
                let q5l_0_shift_input = _mm256_and_si256(hbits, hmask);
                let q5l_0_right_shift = match j {
                    0 => _mm256_srli_epi16(q5l_0_shift_input, 0),
                    1 => _mm256_srli_epi16(q5l_0_shift_input, 2),
                    2 => _mm256_srli_epi16(q5l_0_shift_input, 4),
                    3 => _mm256_srli_epi16(q5l_0_shift_input, 6),
                    _ => unreachable!(),
                };
                let q5h_0 = _mm256_slli_epi16(q5l_0_right_shift, 4);
                let q5_0 = _mm256_add_epi8(q5l_0, q5h_0);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q5l_1 = _mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4);
                let q5l_1_shift_input = _mm256_and_si256(hbits, hmask);
                let q5l_1_right_shift = match j {
                    0 => _mm256_srli_epi16(q5l_1_shift_input, 1),
                    1 => _mm256_srli_epi16(q5l_1_shift_input, 3),
                    2 => _mm256_srli_epi16(q5l_1_shift_input, 5),
                    3 => _mm256_srli_epi16(q5l_1_shift_input, 7),
                    _ => unreachable!(),
                };

                let q5h_1 = _mm256_slli_epi16(q5l_1_right_shift, 4);
                let q5_1 = _mm256_add_epi8(q5l_1, q5h_1);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);
                let q8_1 = _mm256_loadu_si256(q8 as *const __m256i);
                q8 = q8.add(32);

                let p16_0 = _mm256_maddubs_epi16(q5_0, q8_0);
                let p16_1 = _mm256_maddubs_epi16(q5_1, q8_1);

                let p16_0 = _mm256_madd_epi16(scale_0, p16_0);
                let p16_1 = _mm256_madd_epi16(scale_1, p16_1);

                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
            }
            let vd = _mm256_set1_ps(d);
            acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc) + summs
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q8k_q8k(n: usize, xs: &[BlockQ8K], ys: &[BlockQ8K]) -> f32 {
    debug_assert!(
        n.is_multiple_of(QK_K),
        "vec_dot_q8k_8k: {n} is not divisible by {QK_K}"
    );
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xs, ys) in xs.iter().zip(ys.iter()) {
            let mut sumi = _mm256_setzero_si256();
            let x_qs = xs.qs.as_ptr();
            let y_qs = ys.qs.as_ptr();
            for j in (0..QK_K).step_by(32) {
                let xs = _mm256_loadu_si256(x_qs.add(j) as *const __m256i);
                let ys = _mm256_loadu_si256(y_qs.add(j) as *const __m256i);

                let xs0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xs, 0));
                let ys0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(ys, 0));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(xs0, ys0));

                let xs1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xs, 1));
                let ys1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(ys, 1));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(xs1, ys1));
            }
            let d = _mm256_set1_ps(xs.d * ys.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }
}
