//! RAPPORT PATCH (new file): the CPU attention every decode step and every prompt runs, in
//! blocks of query rows against blocks of key rows.
//!
//! A task is one sequence's key/value head and a few query positions: the query heads that
//! share that key/value head (grouped-query attention) at each position, about a dozen rows.
//! Keys and values are walked in blocks small enough to stay in the L1 cache, and every row of
//! the task goes over a block before the next one is read, so a key row comes from memory (or
//! L2) once per task instead of once per row. Row by row, the earlier kernel streamed a head's
//! whole cache through L1 for every query: a 754-token SmolLM2 prompt spent ~110 cycles per
//! (query, key) pair, most of it waiting on L2.
//!
//! Scores are computed with the keys in vector lanes: a block of key rows is transposed once
//! per task into a scratch buffer (one row per element of the head, the keys side by side), and
//! a query row then multiplies eight keys per instruction, `d` fused multiply-adds in a row per
//! key, with nothing to fold at the end. (A dot product per key, across its elements, spent as
//! long folding its lanes into one number as multiplying.)
//!
//! Each row's arithmetic depends only on that row, never on which rows or keys share its task
//! or block: a score is the same chain of fused multiply-adds over the head's elements whichever
//! lane or block its key lands in, the softmax sum runs over the row's own unmasked span
//! counted from its first key, and the weighted values add up key by key in order. So a
//! position gets bit for bit the same output whether it is decoded alone, read as part of a
//! prompt, or decoded in a left-padded batch; the prefix cache relies on this (a next turn that
//! reuses the cache must read what a full read of the conversation would), and Rapport's tests
//! in `crates/generate` check it.
//!
//! Keys and values may be stored as `f32` or as `f16` ([`KvElement`]): a decoding step reads
//! every key and value row of its sequence, ~32 MB per SmolLM2 token at 700 tokens of context
//! in `f32`, and that read is what the step waits on; Rapport keeps the CPU cache in `f16`, as
//! llama.cpp does. Rows are widened to `f32` as they are loaded (exactly: every `f16` is an
//! `f32`), so the arithmetic above is the same for both, and an `f16` row gives bit for bit what
//! the same row rounded to `f16` and stored as `f32` gives.

use candle_core::{Device, Result, Tensor};

use super::cpu::UpcastF32;
use rayon::prelude::*;

/// Lanes of the softmax sum: sixteen independent sums (two AVX registers) keep the adds out of
/// one serial chain.
const SUM_LANES: usize = 16;

/// Keys side by side in one vector register (AVX: eight `f32`).
const KEY_LANES: usize = 8;

/// Bytes of key (or value) rows one block may hold: half of a 32 KiB L1 data cache, leaving
/// room for the query rows and scores the block is used with.
const BLOCK_BYTES: usize = 16 * 1024;

/// Query rows a task aims at: enough to reuse each block of keys many times, few enough that
/// a short prompt still splits into tasks for every thread.
const ROWS_PER_TASK: usize = 12;

/// How a key or value element is stored: `f32`, or `f16` for a cache half the size. One at a
/// time it widens through `UpcastF32` (the conversion upstream's kernels use); this adds the
/// vector load.
pub(super) trait KvElement: UpcastF32 + Copy + Send + Sync {
    /// Eight consecutive elements from `p`, widened to `f32`.
    ///
    /// # Safety
    /// `p..p + 8` must be readable.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256;
}

impl KvElement for f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256 {
        core::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl KvElement for half::f16 {
    // F16C comes with every AVX2 CPU (and is part of x86-64-v3).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256 {
        use core::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Rows of one role (queries, keys or values) as the models pass them: (B, S, H, D) with
/// contiguous rows and any strides between them. Queries are always `f32`.
#[derive(Clone, Copy)]
pub(super) struct HeadRows<'a, E = f32> {
    pub data: &'a [E],
    /// Strides of batch, position and head, in elements.
    pub strides: [usize; 3],
    pub head_size: usize,
}

impl<'a, E> HeadRows<'a, E> {
    #[inline(always)]
    fn row(&self, batch: usize, position: usize, head: usize) -> &'a [E] {
        let start = batch * self.strides[0] + position * self.strides[1] + head * self.strides[2];
        &self.data[start..start + self.head_size]
    }

    /// The rows of consecutive `positions` (non-empty) of one head: the memory from the first
    /// row's start to the last row's end, with the stride between rows. Bounds are checked
    /// once here, so that a kernel can walk the rows by pointer.
    #[inline(always)]
    fn rows(&self, batch: usize, positions: std::ops::Range<usize>, head: usize) -> StridedRows<'a, E> {
        let start = batch * self.strides[0] + positions.start * self.strides[1] + head * self.strides[2];
        let len = (positions.len() - 1) * self.strides[1] + self.head_size;
        StridedRows { data: &self.data[start..start + len], stride: self.strides[1], count: positions.len() }
    }
}

/// `count` rows of `head_size` elements, `stride` apart, inside `data`.
struct StridedRows<'a, E> {
    data: &'a [E],
    stride: usize,
    count: usize,
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
pub(super) struct AttentionShape {
    pub batch: usize,
    pub q_len: usize,
    pub heads: usize,
    pub kv_len: usize,
    pub k_heads: usize,
    pub v_heads: usize,
    pub head_size: usize,
}

/// Per-thread buffers, reused from task to task.
#[derive(Default)]
struct Scratch {
    /// One row of `kv_len` per query row: mask values, then scores, then softmax weights.
    scores: Vec<f32>,
    /// Each row's unmasked span of keys, `start..end` (empty when every key is masked).
    spans: Vec<(usize, usize)>,
    /// Each row's sum of weights (0 for a row that attends to nothing).
    sums: Vec<f32>,
    /// Each row's weighted sum of value rows, `head_size` per row.
    acc: Vec<f32>,
    /// One block of key rows transposed: `head_size` rows of `keys_per_block` keys.
    keys_t: Vec<f32>,
}

/// softmax(q·kᵀ · scale (soft-capped) + mask) · v for every row; output (B, H, S, D).
/// `mask_row(batch, head, position, row)` writes the mask values of one query row over all
/// `kv_len` keys (0 everywhere when there is no mask); `-inf` marks a key the row must not see.
pub(super) fn attend_blocked<M, E>(q: HeadRows<'_>, k: HeadRows<'_, E>, v: HeadRows<'_, E>, shape: AttentionShape, mask_row: M, scale: f32, softcap: f32) -> Result<Tensor>
where
    M: Fn(usize, usize, usize, &mut [f32]) + Sync,
    E: KvElement,
{
    let AttentionShape { batch, q_len, heads, kv_len, k_heads, v_heads, head_size: d } = shape;
    let group = heads / k_heads;
    let v_group = heads / v_heads;
    let positions_per_task = (ROWS_PER_TASK / group).max(1);
    // A multiple of the key lanes, so that only a block's last group of keys is ever partial.
    let keys_per_block = (BLOCK_BYTES / (d * 4).max(1)).max(KEY_LANES) / KEY_LANES * KEY_LANES;
    // (B, KV heads, S, group, D): one task's rows are one contiguous chunk.
    let mut out = vec![0f32; batch * heads * q_len * d];
    if out.is_empty() || kv_len == 0 {
        // No rows, or no keys to attend to: zeros, as for a row whose keys are all masked.
        return Tensor::from_vec(out, (batch, heads, q_len, d), &Device::Cpu);
    }
    // On the caller's pool (the global one, where the model's forward pass runs, see
    // `GGUFPipeline::forward_inputs`), not upstream's second pool: a second set of threads
    // spinning beside the first took cores from the work on a 2-core machine.
    out.par_chunks_mut(q_len * group * d).enumerate().for_each(|(task_head, head_out)| {
        let (b_i, k_head) = (task_head / k_heads, task_head % k_heads);
        head_out.par_chunks_mut(positions_per_task * group * d).enumerate().for_each_init(Scratch::default, |scratch, (block, block_out)| {
            let first_position = block * positions_per_task;
            let rows = block_out.len() / d;
            // Row r of the task: position `first_position + r / group`, query head
            // `k_head * group + r % group`.
            let place = |r: usize| (first_position + r / group, k_head * group + r % group);
            let Scratch { scores, spans, sums, acc, keys_t } = scratch;
            scores.resize(rows * kv_len, 0.0);
            spans.clear();
            for (r, row) in scores.chunks_exact_mut(kv_len).take(rows).enumerate() {
                let (position, head) = place(r);
                mask_row(b_i, head, position, row);
                spans.push(unmasked_span(row));
            }
            let lo = spans.iter().map(|s| s.0).min().unwrap_or(0);
            let hi = spans.iter().map(|s| s.1).max().unwrap_or(0);
            let blocks = || (lo..hi).step_by(keys_per_block).map(move |s| s..(s + keys_per_block).min(hi));
            // The part of a row's span inside one block of keys.
            let within = |span: (usize, usize), block: &std::ops::Range<usize>| span.0.max(block.start)..span.1.min(block.end);

            // Pass 1: scores, each block of keys transposed once and used by every row while it
            // is in cache. Rows go in pairs over the keys either of them sees; a key outside a
            // row's span is masked for it (that is how spans are found), so its score stays
            // -inf whatever is added to it.
            keys_t.resize(d * keys_per_block, 0.0);
            for block in blocks() {
                transpose_keys(|kv| k.row(b_i, kv, k_head), block.clone(), keys_t, keys_per_block);
                let mut r = 0;
                while r < rows {
                    let pair = (r + 1 < rows) as usize + 1;
                    let keys = (r..r + pair).map(|r| within(spans[r], &block)).filter(|keys| !keys.is_empty()).reduce(|a, b| a.start.min(b.start)..a.end.max(b.end));
                    if let Some(keys) = keys {
                        let query = |j: usize| {
                            let (position, head) = place(r + j);
                            q.row(b_i, position, head)
                        };
                        let (first, rest) = scores[r * kv_len..].split_at_mut(kv_len);
                        let mut out_rows = [first, rest];
                        score_block(&[query(0), query(pair - 1)][..pair], keys_t, keys_per_block, block.start, keys, &mut out_rows[..pair], scale, softcap);
                    }
                    r += pair;
                }
            }

            // Pass 2: softmax weights over each row's own span (a masked key inside it gets 0).
            sums.clear();
            for r in 0..rows {
                let (start, end) = spans[r];
                let row = &mut scores[r * kv_len + start..r * kv_len + end];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                if max == f32::NEG_INFINITY {
                    sums.push(0.0);
                    continue;
                }
                row.iter_mut().for_each(|x| *x = exp_nonpositive(*x - max));
                sums.push(sum_lanes(row));
            }

            // Pass 3: weighted sums of value rows, block by block like the keys.
            acc.clear();
            acc.resize(rows * d, 0.0);
            for block in blocks() {
                for r in 0..rows {
                    let keys = within(spans[r], &block);
                    if keys.is_empty() || sums[r] == 0.0 {
                        continue;
                    }
                    let (_, head) = place(r);
                    let v_head = head / v_group;
                    let weights = &scores[r * kv_len + keys.start..r * kv_len + keys.end];
                    add_weighted_rows(&mut acc[r * d..][..d], weights, v.rows(b_i, keys.clone(), v_head));
                }
            }
            for (r, out_row) in block_out.chunks_exact_mut(d).enumerate() {
                if sums[r] == 0.0 {
                    // Every key masked: zeros are the defined answer for "attends to nothing"
                    // (upstream divided 0 by 0).
                    out_row.fill(0.0);
                    continue;
                }
                let inv = 1.0 / sums[r];
                for (o, a) in out_row.iter_mut().zip(&acc[r * d..][..d]) {
                    *o = a * inv;
                }
            }
        });
    });
    Tensor::from_vec(out, (batch, k_heads, q_len, group, d), &Device::Cpu)?.transpose(2, 3)?.reshape((batch, heads, q_len, d))
}

/// The keys from the row's first unmasked one to its last (`start..end`, empty when every key
/// is masked). A causal prompt's rows are half `-inf`, so the ends are skipped sixteen keys at
/// a time with a branch-free test the compiler vectorises.
#[inline]
fn unmasked_span(row: &[f32]) -> (usize, usize) {
    let masked = |keys: &[f32]| keys.iter().fold(true, |all, &m| all & (m == f32::NEG_INFINITY));
    let mut start = 0;
    while start + SUM_LANES <= row.len() && masked(&row[start..start + SUM_LANES]) {
        start += SUM_LANES;
    }
    while start < row.len() && row[start] == f32::NEG_INFINITY {
        start += 1;
    }
    let mut end = row.len();
    while end >= start + SUM_LANES && masked(&row[end - SUM_LANES..end]) {
        end -= SUM_LANES;
    }
    while end > start && row[end - 1] == f32::NEG_INFINITY {
        end -= 1;
    }
    (start, end)
}

/// Copies the key rows of `block` into `keys_t` transposed: element `i` of the block's `j`th
/// key goes to `keys_t[i * width + j]`.
#[inline]
fn transpose_keys<'k, E: KvElement + 'k>(key: impl Fn(usize) -> &'k [E], block: std::ops::Range<usize>, keys_t: &mut [f32], width: usize) {
    let d = keys_t.len() / width;
    let mut j = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    while j + KEY_LANES <= block.len() {
        let rows: [&[E]; KEY_LANES] = std::array::from_fn(|l| key(block.start + j + l));
        let mut i = 0;
        while i + KEY_LANES <= d {
            // SAFETY: AVX is a compile-time feature; each key row has `d` elements and
            // `keys_t` holds `d` rows of `width >= j + 8` keys.
            unsafe { avx::transpose8(rows.map(|row| row[i..].as_ptr()), keys_t[i * width + j..].as_mut_ptr(), width) };
            i += KEY_LANES;
        }
        for i in i..d {
            for (l, row) in rows.iter().enumerate() {
                keys_t[i * width + j + l] = row[i].to_f32();
            }
        }
        j += KEY_LANES;
    }
    for j in j..block.len() {
        for (i, &x) in key(block.start + j).iter().enumerate() {
            keys_t[i * width + j] = x.to_f32();
        }
    }
}

/// Adds `scale · q·k` (soft-capped) to the mask values of `keys` (inside the transposed block
/// that starts at key `block_start`) for one or two query rows.
#[allow(clippy::too_many_arguments)]
#[inline]
fn score_block(queries: &[&[f32]], keys_t: &[f32], width: usize, block_start: usize, keys: std::ops::Range<usize>, rows: &mut [&mut [f32]], scale: f32, softcap: f32) {
    let finish = |dot: f32| {
        let s = dot * scale;
        if softcap != 0.0 {
            softcap * (s / softcap).tanh()
        } else {
            s
        }
    };
    let d = keys_t.len() / width;
    let end_lane = keys.end - block_start;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // Whole groups of eight lanes, from the group holding the first key.
        let mut lane = (keys.start - block_start) / KEY_LANES * KEY_LANES;
        while lane < end_lane {
            let groups = (end_lane - lane).div_ceil(KEY_LANES).min(avx::MAX_GROUPS / queries.len());
            let mut dots = [[0f32; avx::MAX_GROUPS * KEY_LANES]; 2];
            // SAFETY: AVX is a compile-time feature; the lanes read lie inside `keys_t`'s rows
            // (`width` is a multiple of 8) and each query row has `d` elements.
            unsafe { avx::dot_lanes(queries, keys_t[lane..].as_ptr(), width, d, groups, &mut dots) };
            let to = (lane + groups * KEY_LANES).min(end_lane);
            for (row, dots) in rows.iter_mut().zip(&dots) {
                for l in lane.max(keys.start - block_start)..to {
                    row[block_start + l] += finish(dots[l - lane]);
                }
            }
            lane += groups * KEY_LANES;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    for (row, q) in rows.iter_mut().zip(queries) {
        for l in keys.start - block_start..end_lane {
            let mut dot = 0f32;
            for (i, x) in q.iter().enumerate().take(d) {
                let k = keys_t[i * width + l];
                dot = if cfg!(target_feature = "fma") { x.mul_add(k, dot) } else { dot + x * k };
            }
            row[block_start + l] += finish(dot);
        }
    }
}

/// Sum in sixteen lanes counted from the slice's start, folded pairwise, then the tail: one
/// fixed order for a given slice, vectorised (a serial sum waited ~3 cycles per key).
#[inline]
fn sum_lanes(xs: &[f32]) -> f32 {
    let n = xs.len() / SUM_LANES * SUM_LANES;
    let mut acc = [0f32; SUM_LANES];
    for chunk in xs[..n].chunks_exact(SUM_LANES) {
        for i in 0..SUM_LANES {
            acc[i] += chunk[i];
        }
    }
    let mut width = SUM_LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    xs[n..].iter().fold(acc[0], |s, x| s + x)
}

/// `acc += Σ_i weights[i] · values[i]`, value rows in order, one fused multiply-add per column
/// and key. With AVX2, 64 columns at a time stay in registers across all the keys.
#[inline]
fn add_weighted_rows<E: KvElement>(acc: &mut [f32], weights: &[f32], values: StridedRows<'_, E>) {
    let d = acc.len();
    assert!(weights.len() == values.count && (values.count - 1) * values.stride + d <= values.data.len());
    let mut done = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    while done + avx::WEIGHTED_COLUMNS <= d {
        // SAFETY: AVX2/FMA are compile-time features; `acc[done..done + 64]` is in bounds, and
        // so is every value row read (`count` rows of `d` elements, checked above).
        unsafe { avx::add_weighted_64(acc[done..].as_mut_ptr(), weights, values.data[done..].as_ptr(), values.stride) };
        done += avx::WEIGHTED_COLUMNS;
    }
    if done < d {
        for (i, &p) in weights.iter().enumerate() {
            let row = &values.data[i * values.stride..][..d];
            for (a, x) in acc[done..].iter_mut().zip(&row[done..]) {
                let x = x.to_f32();
                *a = if cfg!(target_feature = "fma") { p.mul_add(x, *a) } else { *a + p * x };
            }
        }
    }
}

/// `exp(x)` for `x <= 0` (a score minus the row's maximum) without a libm call, so the softmax
/// pass vectorises: Cody-Waite reduction `x = n ln 2 + r`, a degree-6 Taylor polynomial on
/// |r| <= ln 2 / 2 (relative error < 2e-7), `2^n` from the exponent bits. Below -87 the true
/// value is under f32's normal range; it returns 0 there, so masked keys (-inf) weigh exactly 0.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    const C1: f32 = 0.693_359_4; // ln 2, high part (exact in f32)
    const C2: f32 = -2.121_944_4e-4; // ln 2 - C1
    let xc = x.max(-87.0);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * C1 - n * C2;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the exponent bits. `n + 127` is an integer in [1, 127] here; adding 2^23 puts
    // it in the low mantissa bits, and the shift moves it into the exponent field (the bits of
    // 2^23 shift out). Unlike `n as i32`, whose saturating conversion kept this loop scalar,
    // this vectorises.
    let scaled = p * f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    if x < -87.0 {
        0.0
    } else {
        scaled
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx {
    use super::KvElement;
    use core::arch::x86_64::*;

    /// Columns `add_weighted_64` keeps in registers: eight AVX registers of accumulators.
    pub(super) const WEIGHTED_COLUMNS: usize = 64;

    /// Accumulator registers the score kernel may use (of sixteen), rows times key groups.
    pub(super) const MAX_GROUPS: usize = 8;

    /// Dot products of one or two query rows with `groups` groups of eight keys side by side
    /// (`keys_t` points at the first group's lane in the transposed block's first row): for
    /// each key, `d` fused multiply-adds in element order. Results into `out[row][lane]`.
    #[inline(always)]
    pub(super) unsafe fn dot_lanes(queries: &[&[f32]], keys_t: *const f32, width: usize, d: usize, groups: usize, out: &mut [[f32; MAX_GROUPS * 8]; 2]) {
        match (queries.len(), groups) {
            (2, 4) => dots::<2, 4>(queries, keys_t, width, d, out),
            (2, 3) => dots::<2, 3>(queries, keys_t, width, d, out),
            (2, 2) => dots::<2, 2>(queries, keys_t, width, d, out),
            (2, 1) => dots::<2, 1>(queries, keys_t, width, d, out),
            (_, 8) => dots::<1, 8>(queries, keys_t, width, d, out),
            (_, 7) => dots::<1, 7>(queries, keys_t, width, d, out),
            (_, 6) => dots::<1, 6>(queries, keys_t, width, d, out),
            (_, 5) => dots::<1, 5>(queries, keys_t, width, d, out),
            (_, 4) => dots::<1, 4>(queries, keys_t, width, d, out),
            (_, 3) => dots::<1, 3>(queries, keys_t, width, d, out),
            (_, 2) => dots::<1, 2>(queries, keys_t, width, d, out),
            _ => dots::<1, 1>(queries, keys_t, width, d, out),
        }
    }

    #[inline(always)]
    unsafe fn dots<const R: usize, const G: usize>(queries: &[&[f32]], keys_t: *const f32, width: usize, d: usize, out: &mut [[f32; MAX_GROUPS * 8]; 2]) {
        let q: [*const f32; R] = std::array::from_fn(|r| queries[r].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); G]; R];
        for i in 0..d {
            let row = keys_t.add(i * width);
            let b: [__m256; R] = std::array::from_fn(|r| _mm256_broadcast_ss(&*q[r].add(i)));
            for g in 0..G {
                let k = _mm256_loadu_ps(row.add(8 * g));
                for r in 0..R {
                    acc[r][g] = _mm256_fmadd_ps(b[r], k, acc[r][g]);
                }
            }
        }
        for r in 0..R {
            for g in 0..G {
                _mm256_storeu_ps(out[r][8 * g..].as_mut_ptr(), acc[r][g]);
            }
        }
    }

    /// Eight rows of eight elements (from `rows[l]`) written transposed: element `i` of row
    /// `l` to `dst[i * stride + l]`.
    #[inline(always)]
    pub(super) unsafe fn transpose8<E: KvElement>(rows: [*const E; 8], dst: *mut f32, stride: usize) {
        let r = rows.map(|p| E::load8(p));
        // Per 128-bit half: [a0 b0 a1 b1] and [a2 b2 a3 b3] (elements 4..8 in the upper half).
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        // Element e of rows 0..4 (lower half) and e + 4 (upper half), for e = 0, 1, 2, 3.
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        // The same for rows 4..8.
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in out.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * stride), *v);
        }
    }

    /// `acc[0..64] += Σ_i weights[i] · row_i[0..64]`, row `i` at `values + i * stride`, the
    /// accumulators held in registers.
    #[inline(always)]
    pub(super) unsafe fn add_weighted_64<E: KvElement>(acc: *mut f32, weights: &[f32], values: *const E, stride: usize) {
        let mut a: [__m256; 8] = std::array::from_fn(|c| _mm256_loadu_ps(acc.add(8 * c)));
        let mut row = values;
        for &p in weights {
            let p = _mm256_set1_ps(p);
            for c in 0..8 {
                a[c] = _mm256_fmadd_ps(p, E::load8(row.add(8 * c)), a[c]);
            }
            row = row.add(stride);
        }
        for (c, a) in a.iter().enumerate() {
            _mm256_storeu_ps(acc.add(8 * c), *a);
        }
    }
}
