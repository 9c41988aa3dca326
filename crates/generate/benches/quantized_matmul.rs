//! The quantized matrix products of Qwen2.5-1.5B's Q4_K_M layers as the patched candle runs a
//! prompt (vendor/PATCHES.md: eight weight columns at a time, re-laid once per call and read by
//! every row) against the same rows taken one at a time through the one-row kernel (decoding's
//! path, and how upstream candle runs every prompt: one pass over the weights per row), in the
//! same run. Shapes: the feed-forward up/gate projection (1536 → 8960, Q4_K) and the
//! down projection (8960 → 1536, Q6_K in half the layers); rows: four sequences decoding
//! together, a short prompt, a long one.
//!
//! Then one decoding row: SmolLM2's Q4_1 products, which since the eight-column Q4_1 kernel also
//! go eight columns at a time, against one column at a time through the same type's
//! `vec_dot` spread over the pool as upstream's one-row path spreads it. One pass over 64
//! matrices of 576 → 1536 (~36 MB, a token's worth of SmolLM2's layers, more than the L3), so
//! that the weights come from memory as they do when decoding. Qwen's one-row products go four
//! columns per kernel call (the row loaded once for the four); the same comparison over 8 of its
//! feed-forward matrices of each type (62 MB of Q4_K, 90 MB of Q6_K).
//!
//! SmolLM2's output projection (576 → 49,152, Q8_0, ~30 MB) for one row and for four (a batched
//! decoding step): the patched eight-column Q8_0 kernel against upstream's one-column kernel
//! (eight float lanes per column, copied below, since the patched `vec_dot` is no longer
//! upstream's) spread over the pool as upstream's `matmul` spreads it, every row after the other.
//!
//! Last, quantizing the activations (what every Q4_1 product does first) against upstream's
//! scalar loop.
//!
//! cargo bench --workspace --bench quantized_matmul

use candle_core::quantized::k_quants::{
    matmul, BlockQ4K, BlockQ4_1, BlockQ6K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rayon::prelude::*;

/// Deterministic values in [-1, 1): the timing needs realistic magnitudes, not randomness.
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| (((i + seed) * 2_654_435_761 % 1_000_003) as f32 / 500_001.5) - 1.0).collect()
}

fn products<T: GgmlType>(c: &mut Criterion, name: &str, k: usize, n: usize) {
    let mut weights = vec![T::zeros(); n * k / T::BLCK_SIZE];
    T::from_float(&values(n * k, 1), &mut weights);
    let mut group = c.benchmark_group(format!("quantized-matmul/{name}"));
    group.sample_size(10);
    for m in [4, 32, 256] {
        let rows = values(m * k, 2);
        let mut out = vec![0f32; m * n];
        group.bench_with_input(BenchmarkId::new("eight-columns", m), &m, |b, &m| {
            b.iter(|| matmul((m, k, n), &rows, &weights, &mut out).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("one-row-at-a-time", m), &m, |b, &m| {
            b.iter(|| {
                for r in 0..m {
                    matmul(
                        (1, k, n),
                        &rows[r * k..(r + 1) * k],
                        &weights,
                        &mut out[r * n..(r + 1) * n],
                    )
                    .unwrap();
                }
            })
        });
    }
    group.finish();
}

fn one_row_from_memory<T: GgmlType>(
    c: &mut Criterion,
    name: &str,
    k: usize,
    n: usize,
    matrices: usize,
    kernel: &str,
) {
    let k_in_blocks = k / T::BLCK_SIZE;
    let weights: Vec<Vec<T>> = (0..matrices)
        .map(|i| {
            let mut w = vec![T::zeros(); n * k_in_blocks];
            T::from_float(&values(n * k, i + 1), &mut w);
            w
        })
        .collect();
    let row = values(k, 0);
    let mut out = vec![0f32; n];
    let mut group = c.benchmark_group(format!("quantized-matmul/{name}"));
    group.sample_size(20);
    group.bench_function(kernel, |b| {
        b.iter(|| {
            for w in &weights {
                matmul((1, k, n), &row, w, &mut out).unwrap();
            }
        })
    });
    let mut row_q = vec![T::VecDotType::zeros(); k_in_blocks];
    group.bench_function("one-column-at-a-time", |b| {
        b.iter(|| {
            for w in &weights {
                // As upstream's `matmul` does: quantize the row, then every column on the pool.
                T::VecDotType::from_float(&row, &mut row_q);
                out.par_iter_mut().enumerate().with_min_len(128).with_max_len(512).for_each(
                    |(col, dst)| {
                        *dst = T::vec_dot(k, &w[col * k_in_blocks..(col + 1) * k_in_blocks], &row_q)
                    },
                );
            }
        })
    });
    group.finish();
}

/// Upstream candle's AVX2 `vec_dot_q8_0_q8_0` (the peer): per block, the 32 byte products
/// summed into eight i32 lanes, converted, scaled by `d_x * d_y` and added into eight float lanes,
/// which are summed at the end. `BlockQ8_0` keeps its fields to the crate; it is `repr(C)`,
/// 34 bytes: the scale's f16 bits, then the 32 quants.
#[cfg(target_feature = "avx2")]
fn upstream_vec_dot_q8_0(xs: &[BlockQ8_0], ys: &[BlockQ8_0]) -> f32 {
    use std::arch::x86_64::*;
    const BLOCK: usize = std::mem::size_of::<BlockQ8_0>();
    let scale = |b: *const u8| unsafe {
        half::f16::from_bits(u16::from_le_bytes([*b, *b.add(1)])).to_f32()
    };
    unsafe {
        let (x, y) = (xs.as_ptr() as *const u8, ys.as_ptr() as *const u8);
        let mut acc = _mm256_setzero_ps();
        for i in 0..xs.len().min(ys.len()) {
            let (bx, by) = (x.add(i * BLOCK), y.add(i * BLOCK));
            let d = _mm256_set1_ps(scale(bx) * scale(by));
            let qx = _mm256_loadu_si256(bx.add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(by.add(2) as *const __m256i);
            let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot));
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        let res = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        _mm_cvtss_f32(_mm_add_ss(res, _mm_movehdup_ps(res)))
    }
}

/// SmolLM2's Q8_0 output projection (576 → 49,152) for one row and for four, from memory: two
/// matrices (~60 MB) taken in turn, more than the L3 holds.
#[cfg(target_feature = "avx2")]
fn q8_0_output_projection(c: &mut Criterion) {
    let (k, n) = (576, 49_152);
    let k_in_blocks = k / 32;
    let weights: Vec<Vec<BlockQ8_0>> = (0..2)
        .map(|i| {
            let mut w = vec![BlockQ8_0::zeros(); n * k_in_blocks];
            BlockQ8_0::from_float(&values(n * k, i + 1), &mut w);
            w
        })
        .collect();
    let mut group = c.benchmark_group("quantized-matmul/q8_0-output-projection-2x576x49152");
    group.sample_size(20);
    for m in [1, 4] {
        let rows = values(m * k, 5);
        let mut out = vec![0f32; m * n];
        group.bench_with_input(BenchmarkId::new("eight-columns", m), &m, |b, &m| {
            b.iter(|| {
                for w in &weights {
                    matmul((m, k, n), &rows, w, &mut out).unwrap();
                }
            })
        });
        let mut rows_q = vec![BlockQ8_0::zeros(); m * k_in_blocks];
        group.bench_with_input(BenchmarkId::new("upstream-one-column", m), &m, |b, &m| {
            b.iter(|| {
                for w in &weights {
                    BlockQ8_0::from_float(&rows, &mut rows_q);
                    for r in 0..m {
                        let row = &rows_q[r * k_in_blocks..(r + 1) * k_in_blocks];
                        out[r * n..(r + 1) * n]
                            .par_iter_mut()
                            .enumerate()
                            .with_min_len(128)
                            .with_max_len(512)
                            .for_each(|(col, dst)| {
                                *dst = upstream_vec_dot_q8_0(
                                    &w[col * k_in_blocks..(col + 1) * k_in_blocks],
                                    row,
                                )
                            });
                    }
                }
            })
        });
    }
    group.finish();
}

/// Upstream's scalar `quantize_row_q8_1` (the peer): the same bytes as the patched one, which
/// the `candle_patch` unit test checks.
fn upstream_quantize_q8_1(xs: &[f32], out: &mut [(f32, [i8; 32], i32)]) {
    for (block, xs) in out.iter_mut().zip(xs.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |amax, x| amax.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0f32 { 1. / d } else { 0. };
        let mut sum = 0;
        for (q, &x) in block.1.iter_mut().zip(xs) {
            *q = f32::round(x * id) as i8;
            sum += *q as i32;
        }
        *block = (d, block.1, sum);
    }
}

/// The activation rows of a 64-row SmolLM2 prompt chunk (64 x 576) quantized to Q8_1, as every
/// Q4_1 product does first: the patched candle's 32-at-a-time quantizer against upstream's
/// scalar loop (which also left the f16 conversions to the caller here, so the peer does less).
fn activation_quantization(c: &mut Criterion) {
    let (m, k) = (64, 576);
    let rows = values(m * k, 3);
    let mut group = c.benchmark_group("quantize-activations/q8_1-64x576");
    let mut patched = vec![BlockQ8_1::zeros(); m * k / 32];
    group.bench_function("32-at-a-time", |b| b.iter(|| BlockQ8_1::from_float(&rows, &mut patched)));
    let mut upstream = vec![(0f32, [0i8; 32], 0i32); m * k / 32];
    group.bench_function("upstream-scalar", |b| {
        b.iter(|| upstream_quantize_q8_1(&rows, &mut upstream))
    });
    group.finish();
}

fn quantized_matmul(c: &mut Criterion) {
    products::<BlockQ4K>(c, "q4k-1536x8960", 1536, 8960);
    products::<BlockQ6K>(c, "q6k-8960x1536", 8960, 1536);
    one_row_from_memory::<BlockQ4_1>(c, "q4_1-one-row-64x576x1536", 576, 1536, 64, "eight-columns");
    one_row_from_memory::<BlockQ4K>(c, "q4k-one-row-8x1536x8960", 1536, 8960, 8, "four-columns");
    one_row_from_memory::<BlockQ6K>(c, "q6k-one-row-8x8960x1536", 8960, 1536, 8, "four-columns");
    #[cfg(target_feature = "avx2")]
    q8_0_output_projection(c);
}

criterion_group!(benches, quantized_matmul, activation_quantization);
criterion_main!(benches);
