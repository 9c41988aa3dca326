//! Text generation backends for Rapport, both implementing [`rapport_core::Generator`]:
//!
//! - [`MistralRsGenerator`]: mistral.rs 0.8.1 running a local GGUF on the CPU, in process;
//! - [`OpenAiCompatGenerator`]: any OpenAI-compatible server (mistral.rs server, vLLM,
//!   llama.cpp server, or `rapport serve-llm`) over HTTP with streaming SSE;
//!
//! and [`TemplateCheck`], what a model's chat template accepts of Rapport's conversations,
//! checked when a backend is set up.
//!
//! # Invariants
//! - This is the only crate that links mistral.rs; everything above it sees the trait.
//! - Backends never retry: whether a failure is worth retrying is the caller's decision
//!   ([`rapport_core::GenerationError::is_transient`]), made with knowledge of the user waiting.
//! - Timings are measured here, at the call, so both backends report TTFT the same way.
#![deny(missing_docs)]

mod embedded;
mod openai;
pub mod repack;
mod template;

pub use embedded::{Activations, EmbeddedOptions, KvCacheDtype, MistralRsGenerator};
pub use openai::{OpenAiCompatGenerator, OpenAiCompatOptions};
pub use template::TemplateCheck;
// The decoder lives in rapport-core so that clients without mistral.rs (rapport-load, tests) share it.
pub use rapport_core::{SseDecoder, SseEvent};

/// The row order of the patched engine's decoding batch (vendor/PATCHES.md, "A running batch
/// joined instead of rebuilt"). The vendored crate's own tests are not run by the workspace, so
/// its pure part is included here, its unit tests with it.
#[cfg(test)]
#[path = "../../../vendor/mistralrs-core/src/engine/row_order.rs"]
#[rustfmt::skip] // a vendored file: its formatting is upstream's (vendor/PATCHES.md)
mod batch_row_order;

/// What the batch cache's `rejoin` relies on, for any change of the batch: the order is a
/// permutation, survivors keep their rows where they can, and a row that moves comes from past
/// the rows kept, so moving it never overwrites a row still to be read.
#[cfg(test)]
mod batch_row_order_properties {
    use super::batch_row_order::row_order;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Previous rows (distinct ids) and the current sequences: some of the previous ones, in a
    /// shuffled order, plus newcomers.
    fn batches() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        (
            prop::collection::hash_set(0usize..200, 0..40),
            prop::collection::hash_set(200usize..300, 0..12),
        )
            .prop_flat_map(|(previous, joining)| {
                let previous: Vec<usize> = previous.into_iter().collect();
                let n = previous.len();
                (
                    Just(previous.clone()),
                    prop::sample::subsequence(previous, 0..=n),
                    Just(joining.into_iter().collect::<Vec<_>>()),
                )
            })
            .prop_flat_map(|(previous, staying, joining)| {
                let current: Vec<usize> = staying.into_iter().chain(joining).collect();
                (Just(previous), Just(current).prop_shuffle())
            })
    }

    proptest! {
        #[test]
        fn survivors_stay_put_and_moved_rows_come_from_past_the_kept_ones((previous, current) in batches()) {
            let order = row_order(&previous, &current);
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..current.len()).collect::<Vec<_>>(), "not a permutation");

            let was: HashSet<usize> = previous.iter().copied().collect();
            let rows: Vec<usize> = order.iter().map(|&index| current[index]).collect();
            let kept = rows.iter().filter(|id| was.contains(id)).count();
            for (row, id) in rows.iter().enumerate() {
                match previous.iter().position(|p| p == id) {
                    Some(_) if row >= kept => prop_assert!(false, "survivor {} placed after a newcomer", id),
                    Some(old) if old != row => prop_assert!(old >= kept, "{} moved from row {} into the kept rows", id, old),
                    Some(_) => {}
                    None => prop_assert!(row >= kept, "newcomer {} placed among the kept rows", id),
                }
            }
        }
    }
}

/// The patched candle (vendor/PATCHES.md) must compute what upstream computes.
#[cfg(test)]
mod candle_patch {
    use candle_core::quantized::k_quants::{
        matmul, BlockQ4K, BlockQ4_1, BlockQ6K, BlockQ8_0, BlockQ8_1, GgmlType,
    };

    fn check<T: GgmlType>(m: usize, k: usize, n: usize) {
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let rhs: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        check_values::<T>((m, k, n), &lhs, &rhs);
    }

    fn check_values<T: GgmlType>((m, k, n): (usize, usize, usize), lhs: &[f32], rhs: &[f32]) {
        let mut rhs_t = vec![T::zeros(); n * k / T::BLCK_SIZE];
        T::from_float(rhs, &mut rhs_t);
        let mut blocked = vec![0f32; m * n];
        matmul((m, k, n), lhs, &rhs_t, &mut blocked).unwrap();
        let k_in_blocks = k / T::BLCK_SIZE;
        for r in 0..m {
            // Each row alone, through the one-row path (a decoding step of one sequence).
            let lhs_row = &lhs[r * k..(r + 1) * k];
            let mut row = vec![0f32; n];
            matmul((1, k, n), lhs_row, &rhs_t, &mut row).unwrap();
            assert_eq!(&blocked[r * n..(r + 1) * n], &row[..], "row {r} of {m}x{k}x{n}");
            // And each result the type's one-column `vec_dot`, whichever kernel wrote it (eight
            // columns at a time, several rows at a time, or the remainder one at a time).
            let mut row_q = vec![T::VecDotType::zeros(); k_in_blocks];
            T::VecDotType::from_float(lhs_row, &mut row_q);
            for c in 0..n {
                let alone = T::vec_dot(k, &rhs_t[c * k_in_blocks..(c + 1) * k_in_blocks], &row_q);
                assert_eq!(
                    row[c].to_bits(),
                    alone.to_bits(),
                    "row {r}, column {c} of {m}x{k}x{n}: {} vs vec_dot {alone}",
                    row[c]
                );
            }
        }
    }

    #[test]
    fn blocked_prefill_matmul_equals_the_per_row_path() {
        // Sizes that are not multiples of the 16-column and 8-row blocks.
        check::<BlockQ4K>(37, 256, 53);
        check::<BlockQ8_0>(9, 64, 17);
        check::<BlockQ8_0>(2, 32, 1);
        // Q8_0 takes up to four rows per weight load (`vec_dot_rows`): exactly four (a batched
        // decode step of four sequences), two and three (the batch as its replies end), four
        // plus each remainder, and SmolLM2's width.
        for m in [2, 3, 4, 6, 7, 13] {
            check::<BlockQ8_0>(m, 96, 33);
        }
        check::<BlockQ8_0>(13, 576, 20);
        // And eight columns at a time from one row on (SmolLM2's output projection): one row
        // (decoding one sequence), four (a batched step), with whole tasks, a group of eight
        // and a remainder (29 = 16 + 8 + 5; 33 = 16 + 16 + 1).
        for m in [1, 4, 5] {
            check::<BlockQ8_0>(m, 576, 29);
            check::<BlockQ8_0>(m, 64, 33);
        }
        // Q4_1 (SmolLM2 as shipped) goes eight columns at a time from one row on (33 = 16 + 16
        // + 1: two whole tasks and a one-column remainder; 29 = 16 + 8 + 5), and up to four
        // rows per weight load in the remainder.
        for m in [1, 2, 3, 4, 6, 7, 13] {
            check::<BlockQ4_1>(m, 96, 33);
        }
        check::<BlockQ4_1>(1, 576, 29);
        check::<BlockQ4_1>(13, 576, 20);
        check::<BlockQ4_1>(5, 1536, 64);
        // Q4_K and Q6_K (Qwen2.5's Q4_K_M) have theirs too: more than one 256-wide block per
        // column, four rows plus a remainder.
        check::<BlockQ4K>(4, 512, 33);
        check::<BlockQ4K>(13, 1536, 20);
        // Q4_K goes eight columns at a time (`matmul_columns`): whole 16-column tasks, a task
        // with one group of eight and a remainder (29 = 16 + 8 + 5), and one to three rows.
        check::<BlockQ4K>(4, 1536, 32);
        check::<BlockQ4K>(9, 512, 29);
        check::<BlockQ4K>(3, 256, 16);
        check::<BlockQ4K>(2, 256, 24);
        check::<BlockQ6K>(4, 256, 17);
        check::<BlockQ6K>(13, 1536, 20);
        // Q6_K eight columns at a time from four rows on, a row at a time below.
        check::<BlockQ6K>(4, 1536, 32);
        check::<BlockQ6K>(9, 512, 29);
        check::<BlockQ6K>(3, 256, 16);
        check::<BlockQ6K>(2, 256, 24);
        // One row (decoding) takes Q4_K and Q6_K four columns at a time: whole fours, then
        // fours and a remainder of one to three, one block per column and Qwen's widths.
        for n in [4, 37, 130, 131] {
            check::<BlockQ4K>(1, 256, n);
            check::<BlockQ6K>(1, 256, n);
        }
        check::<BlockQ4K>(1, 1536, 138);
        check::<BlockQ6K>(1, 8960, 22);
    }

    /// The eight-column Q4_K kernel adds eight products of nibbles and activation bytes as
    /// 16-bit integers before it multiplies by the scales. With every nibble at 15 and every
    /// activation at -128 that sum is -30720, the closest the kernel comes to overflowing;
    /// the one-row kernel never sums in 16 bits, so a wrap would show as a difference.
    #[test]
    fn q4k_eight_column_kernel_holds_the_largest_products() {
        let (m, k, n) = (5, 512, 16);
        // Each 32-weight sub-block holds one 0 and 31 ones: the ones quantize to nibble 15, the
        // 0 to nibble 0 (the min), so nothing is clipped.
        let rhs: Vec<f32> = (0..n * k).map(|i| if i % 32 == 0 { 0.0 } else { 1.0 }).collect();
        let lhs = vec![-1.0f32; m * k];
        check_values::<BlockQ4K>((m, k, n), &lhs, &rhs);
        // And one row, four columns at a time.
        check_values::<BlockQ4K>((1, k, n), &lhs[..k], &rhs);
    }

    /// The same for Q4_1, whose eight-column kernel adds sixteen products of nibbles and
    /// activation bytes as 16-bit integers: with every nibble at 15 and every activation at
    /// -127, -30480.
    #[test]
    fn q4_1_eight_column_kernel_holds_the_largest_products() {
        let (m, k, n) = (5, 256, 16);
        // Per 32-weight block one 0 and 31 ones: the ones quantize to nibble 15, the 0 to 0.
        let rhs: Vec<f32> = (0..n * k).map(|i| if i % 32 == 0 { 0.0 } else { 1.0 }).collect();
        let lhs = vec![-1.0f32; m * k];
        check_values::<BlockQ4_1>((m, k, n), &lhs, &rhs);
    }

    /// The same for Q6_K, which adds two products of six-bit weights in 16 bits: every weight
    /// at 63 (the largest, +31 after the offset) and every activation at -128 give 2 x 2 x 63 x
    /// 128 = 32256 in magnitude.
    #[test]
    fn q6k_eight_column_kernel_holds_the_largest_products() {
        let (m, k, n) = (5, 512, 16);
        // Per 16-weight sub-block one -1 and fifteen ~1s: the scale is set by the -1 (q = 0),
        // so the largest positive weights quantize to q = 63.
        let rhs: Vec<f32> = (0..n * k).map(|i| if i % 16 == 0 { -1.0 } else { 0.97 }).collect();
        let lhs = vec![-1.0f32; m * k];
        check_values::<BlockQ6K>((m, k, n), &lhs, &rhs);
        // And one row, four columns at a time (whose offset of 32 comes from the row's sums).
        check_values::<BlockQ6K>((1, k, n), &lhs[..k], &rhs);
    }

    /// Q8_0's eight-column kernel adds each pair of byte products in 16 bits (`maddubs` of a
    /// weight's magnitude and the activation with the weight's sign): weights and activations
    /// at ±127 give 2 x 127 x 127 = 32258, and a weight of -128 (which a GGUF file may hold,
    /// though `from_float` never writes it) 2 x 128 x 127 = 32512.
    #[test]
    fn q8_0_eight_column_kernel_holds_the_largest_products() {
        let (m, k, n) = (5, 256, 16);
        let rhs: Vec<f32> = (0..n * k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let lhs: Vec<f32> = (0..m * k).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
        check_values::<BlockQ8_0>((m, k, n), &lhs, &rhs);
        check_values::<BlockQ8_0>((1, k, n), &lhs[..k], &rhs);
        // Every weight -128 (d = 1/128), against every activation at -127 and at 127.
        let mut weights = vec![BlockQ8_0::zeros(); n * k / 32];
        BlockQ8_0::from_float(&vec![-1.0f32; n * k], &mut weights);
        for block in weights.iter_mut() {
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    block as *mut BlockQ8_0 as *mut u8,
                    std::mem::size_of::<BlockQ8_0>(),
                )
            };
            bytes[..2].copy_from_slice(&half::f16::from_f32(1.0 / 128.0).to_bits().to_le_bytes());
            bytes[2..].fill(0x80);
        }
        for sign in [-1.0f32, 1.0] {
            let lhs = vec![sign; m * k];
            let mut out = vec![0f32; m * n];
            matmul((m, k, n), &lhs, &weights, &mut out).unwrap();
            let mut row = vec![0f32; n];
            matmul((1, k, n), &lhs[..k], &weights, &mut row).unwrap();
            assert_eq!(&row[..], &out[..n]);
            // Upstream's scalar kernel, exact here (`d_x` is a power of two and each block's
            // product has few significant bits): about -k x sign, a saturated sum would not be.
            let mut row_q = vec![BlockQ8_0::zeros(); k / 32];
            BlockQ8_0::from_float(&lhs[..k], &mut row_q);
            let expected = BlockQ8_0::vec_dot_unopt(k, &weights[..k / 32], &row_q);
            assert!((expected + sign * k as f32).abs() < 0.01 * k as f32, "{expected}");
            assert!(out.iter().all(|&v| v == expected), "{sign}: {:?} vs {expected}", &out[..4]);
        }
    }

    /// A type's AVX2 `vec_dot` against upstream's scalar `vec_dot_unopt`, on deterministic
    /// weights and activations `k` wide. Different summation orders, so equal to float rounding,
    /// not bit for bit.
    fn simd_kernel_equals_the_scalar_one<T: GgmlType>(k: usize, seed: usize) {
        let weights: Vec<f32> = (0..k)
            .map(|i| (((i + seed) * 2_654_435_761 % 1_000_003) as f32 / 250_000.0) - 1.7)
            .collect();
        let acts: Vec<f32> =
            (0..k).map(|i| (((i * 7 + seed) * 40_503 % 65_521) as f32 / 8_000.0) - 4.0).collect();
        let mut xs = vec![T::zeros(); k / T::BLCK_SIZE];
        let mut ys = vec![T::VecDotType::zeros(); k / T::VecDotType::BLCK_SIZE];
        T::from_float(&weights, &mut xs);
        T::VecDotType::from_float(&acts, &mut ys);
        let (simd, scalar) = (T::vec_dot(k, &xs, &ys), T::vec_dot_unopt(k, &xs, &ys));
        assert!(
            scalar.abs() > 1.0,
            "{:?} k={k}: a near-zero dot product proves little ({scalar})",
            T::DTYPE
        );
        assert!(
            (simd - scalar).abs() <= 1e-4 * scalar.abs().max(1.0),
            "{:?} k={k}: simd {simd} vs scalar {scalar}",
            T::DTYPE
        );
    }

    /// The AVX2 Q4_K and Q6_K kernels, their float steps re-ordered for the eight-column
    /// kernels, on one block, Qwen's width and its feed-forward width.
    #[test]
    fn k_quant_simd_kernels_equal_the_scalar_ones() {
        for (k, seed) in [(256, 1usize), (1536, 2), (8960, 3)] {
            simd_kernel_equals_the_scalar_one::<BlockQ4K>(k, seed);
            simd_kernel_equals_the_scalar_one::<BlockQ6K>(k, seed);
        }
    }

    /// Upstream's scalar `quantize_row_q8_0` / `quantize_row_q8_1` for one block, as the bytes
    /// of the block: `d` (f16), for Q8_1 then `s` (f16, the sum of the bytes times `d`), then
    /// the 32 bytes.
    fn upstream_q8_block(xs: &[f32], with_sum: bool) -> Vec<u8> {
        use half::f16;
        let amax = xs.iter().fold(0f32, |amax, x| amax.max(x.abs()));
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        let qs: Vec<i8> = xs.iter().map(|&x| f32::round(x * id) as i8).collect();
        let d16 = f16::from_f32(d);
        let mut bytes = d16.to_le_bytes().to_vec();
        if with_sum {
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            bytes.extend((f16::from_f32(sum as f32) * d16).to_le_bytes());
        }
        bytes.extend(qs.iter().map(|&q| q as u8));
        bytes
    }

    /// The blocks' bytes as they lie in memory (both types are `repr(C)` plain data).
    fn block_bytes<T: GgmlType>(blocks: &[T]) -> &[u8] {
        // SAFETY: plain-data blocks without padding (their sizes are asserted in candle).
        unsafe {
            std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
        }
    }

    /// Activations are quantized (Q8_0 for Q8_0 weights, Q8_1 for Q4_1) 32 values at a time in
    /// the patched candle; the bytes must be upstream's scalar ones, ties and edges included.
    #[test]
    fn vectorized_activation_quantization_gives_upstreams_bytes() {
        let mut blocks: Vec<Vec<f32>> =
            vec![
                vec![0.0; 32],
                // amax 127 makes d = 1 and id = 1, so x * id lands exactly on halves: round away
                // from zero (2.5 -> 3, -2.5 -> -3), and just below a half stays down.
                (0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }).collect(),
                (0..32).map(|i| if i == 31 { -127.0 } else { -(i as f32) - 0.5 }).collect(),
                (0..32)
                    .map(|i| {
                        if i == 0 {
                            127.0
                        } else {
                            0.49999997 * if i % 2 == 0 { 1.0 } else { -1.0 }
                        }
                    })
                    .collect(),
                // One huge value, the rest rounding to zero or one step; -0.0 and subnormals.
                (0..32)
                    .map(|i| match i {
                        0 => 3.0e38,
                        1 => -0.0,
                        2 => 1.0e-40,
                        _ => i as f32 * 1.0e36,
                    })
                    .collect(),
                // A NaN (upstream: `max` skips it, `as i8` makes it 0).
                (0..32).map(|i| if i == 5 { f32::NAN } else { i as f32 / 7.0 - 2.0 }).collect(),
            ];
        // And SmolLM2-like activations.
        for seed in 0..64usize {
            blocks.push(
                (0..32)
                    .map(|i| {
                        (((i + 32 * seed) * 2_654_435_761 % 1_000_003) as f32 / 83_000.0) - 6.0
                    })
                    .collect(),
            );
        }
        let xs: Vec<f32> = blocks.concat();
        let expected = |with_sum: bool| {
            blocks.iter().flat_map(|b| upstream_q8_block(b, with_sum)).collect::<Vec<u8>>()
        };
        let mut q8_0 = vec![BlockQ8_0::zeros(); blocks.len()];
        BlockQ8_0::from_float(&xs, &mut q8_0);
        assert_eq!(block_bytes(&q8_0), &expected(false)[..]);
        let mut q8_1 = vec![BlockQ8_1::zeros(); blocks.len()];
        BlockQ8_1::from_float(&xs, &mut q8_1);
        assert_eq!(block_bytes(&q8_1), &expected(true)[..]);
    }

    /// The AVX2 Q4_1 kernel, on SmolLM2's widths and on values that reach the ends of both
    /// ranges (nibbles 0 and 15, activations ±127).
    #[test]
    fn q4_1_simd_kernel_equals_the_scalar_one() {
        for (k, seed) in [(32, 1usize), (576, 2), (1536, 3)] {
            simd_kernel_equals_the_scalar_one::<BlockQ4_1>(k, seed);
            // And Q8_0 (SmolLM2's output projection), its float steps re-ordered for the
            // eight-column kernel.
            simd_kernel_equals_the_scalar_one::<BlockQ8_0>(k, seed);
        }
    }
}

/// The patched CPU attention of mistral.rs (vendor/PATCHES.md) must compute what upstream's
/// kernels compute, for the layouts the models hand it: (B, S, H, D) views of (B, H, S, D)
/// tensors, grouped key/value heads, causal and per-batch masks, decode and prefill, softcap.
#[cfg(test)]
mod attention_patch {
    use candle_core::{DType, Device, Tensor};
    use mistralrs_core::{
        rapport_flash_attn_cpu_f32 as patched, rapport_upstream_flash_attn_cpu_f32 as upstream,
    };

    /// Deterministic values in [-2, 2): the test needs variety, not randomness.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761 % 1_000_003) as f32 / 250_000.75) - 2.0)
            .collect()
    }

    /// A (B, H, S, D) tensor seen as (B, S, H, D), as the models pass it.
    fn heads(b: usize, h: usize, s: usize, d: usize, seed: usize) -> Tensor {
        Tensor::from_vec(values(b * h * s * d, seed), (b, h, s, d), &Device::Cpu)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    }

    /// Causal mask for `q_len` new positions after `past` cached ones: 0 or -inf.
    fn causal(q_len: usize, past: usize) -> Vec<f32> {
        let kv = past + q_len;
        (0..q_len * kv)
            .map(|i| if i % kv > past + i / kv { f32::NEG_INFINITY } else { 0.0 })
            .collect()
    }

    fn assert_close(case: &str, a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims(), "{case}: shapes");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{case}: largest difference {worst}");
        assert!(a.iter().any(|x| x.abs() > 1e-3), "{case}: an all-zero output proves nothing");
    }

    #[test]
    fn patched_cpu_attention_equals_upstream() {
        let scale = 1.0 / 8.0;
        // Prefill with a cached past, 6 query heads over 2 key/value heads, head size 64.
        let (b, h, kvh, d, q_len, past) = (1, 6, 2, 64, 37, 5);
        let (q, k, v) = (
            heads(b, h, q_len, d, 1),
            heads(b, kvh, past + q_len, d, 2),
            heads(b, kvh, past + q_len, d, 3),
        );
        let mask =
            Tensor::from_vec(causal(q_len, past), (q_len, past + q_len), &Device::Cpu).unwrap();
        for softcap in [None, Some(5.0)] {
            let case = format!("prefill, 2-D causal mask, softcap {softcap:?}");
            assert_close(
                &case,
                &patched(&q, &k, &v, Some(&mask), scale, softcap).unwrap(),
                &upstream(&q, &k, &v, Some(&mask), scale, softcap).unwrap(),
            );
        }
        // Two sequences with their own (B, 1, S, KV) masks: the second sees only its last 3 keys.
        let (b, q_len, kv) = (2, 9, 9);
        let (q, k, v) =
            (heads(b, h, q_len, d, 4), heads(b, kvh, kv, d, 5), heads(b, kvh, kv, d, 6));
        let mut rows = causal(q_len, 0);
        rows.extend((0..q_len * kv).map(|i| if i % kv < kv - 3 { f32::NEG_INFINITY } else { 0.0 }));
        let mask = Tensor::from_vec(rows, (b, 1, q_len, kv), &Device::Cpu).unwrap();
        assert_close(
            "batched prefill, 4-D mask",
            &patched(&q, &k, &v, Some(&mask), scale, None).unwrap(),
            &upstream(&q, &k, &v, Some(&mask), scale, None).unwrap(),
        );
        // Decode: one query over 53 cached keys (more than upstream's 16-key tiles), no mask.
        let (q, k, v) = (heads(1, h, 1, d, 7), heads(1, kvh, 53, d, 8), heads(1, kvh, 53, d, 9));
        assert_close(
            "decode",
            &patched(&q, &k, &v, None, scale, None).unwrap(),
            &upstream(&q, &k, &v, None, scale, None).unwrap(),
        );
        // A head size that is not a multiple of the 16 dot-product lanes.
        let (q, k, v) = (heads(1, 2, 4, 40, 10), heads(1, 2, 4, 40, 11), heads(1, 2, 4, 40, 12));
        let mask = Tensor::from_vec(causal(4, 0), (4, 4), &Device::Cpu).unwrap();
        assert_close(
            "head size 40",
            &patched(&q, &k, &v, Some(&mask), scale, None).unwrap(),
            &upstream(&q, &k, &v, Some(&mask), scale, None).unwrap(),
        );
    }

    /// Keys and values stored in `f16` (the CPU cache Rapport keeps) give bit for bit what the
    /// same values rounded to `f16` give stored as `f32`: the kernel only widens them as it
    /// loads them. Prefill with a causal mask and a head size off the 64-column and 8-lane
    /// blocks (scalar tails), and decoding, where the rounding stays within f16's precision of
    /// the `f32` answer.
    #[test]
    fn half_precision_keys_and_values_are_only_rounded() {
        let scale = 1.0 / 8.0;
        let f16 = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
        let rounded = |t: &Tensor| t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        for (d, q_len, past) in [(64, 37, 5), (40, 4, 0), (64, 1, 90)] {
            let (q, k, v) = (
                heads(1, 6, q_len, d, 50),
                heads(1, 2, past + q_len, d, 51),
                heads(1, 2, past + q_len, d, 52),
            );
            let mask =
                Tensor::from_vec(causal(q_len, past), (q_len, past + q_len), &Device::Cpu).unwrap();
            let half = patched(&q, &f16(&k), &f16(&v), Some(&mask), scale, None).unwrap();
            let widened =
                patched(&q, &rounded(&k), &rounded(&v), Some(&mask), scale, None).unwrap();
            let (half, widened) = (
                half.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                widened.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                half.iter().zip(&widened).all(|(a, b)| a.to_bits() == b.to_bits()),
                "head size {d}, {q_len} rows after {past}"
            );
            let full = patched(&q, &k, &v, Some(&mask), scale, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let worst = half.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                worst > 0.0 && worst < 1e-2,
                "head size {d}: f16 rounding moved an output by {worst}"
            );
        }
        // Keys in f16 with values in f32 is not a cache anyone builds: a clear error, not a guess.
        let (q, k, v) = (heads(1, 6, 1, 64, 53), heads(1, 2, 9, 64, 54), heads(1, 2, 9, 64, 55));
        let err = patched(&q, &f16(&k), &v, None, scale, None).unwrap_err().to_string();
        assert!(err.contains("different dtypes"), "{err}");
    }

    /// softmax(q k^T * scale + mask) v with plain tensor operations, (B, S, H, D) in,
    /// (B, H, S, D) out, key/value heads repeated for their query heads.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let (q, k, v) =
            (q.transpose(1, 2).unwrap(), k.transpose(1, 2).unwrap(), v.transpose(1, 2).unwrap());
        let group = q.dim(1).unwrap() / k.dim(1).unwrap();
        let repeat = |t: Tensor| {
            Tensor::cat(
                &(0..k.dim(1).unwrap())
                    .flat_map(|i| std::iter::repeat_n(t.narrow(1, i, 1).unwrap(), group))
                    .collect::<Vec<_>>(),
                1,
            )
            .unwrap()
            .contiguous()
            .unwrap()
        };
        let (k, v) = (repeat(k.clone()), repeat(v.clone()));
        let mut scores =
            (q.contiguous().unwrap().matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask).unwrap();
        }
        let max = scores.max_keepdim(3).unwrap();
        let weights = scores.broadcast_sub(&max).unwrap().exp().unwrap();
        let weights = weights.broadcast_div(&weights.sum_keepdim(3).unwrap()).unwrap();
        weights.matmul(&v).unwrap()
    }

    /// Several sequences decoded in one batch get what each would get alone. Upstream's decode
    /// kernel fails this (its per-tile scratch is indexed by head only, so the sequences of a
    /// batch overwrite and accumulate into each other's partial sums): batched replies came out
    /// different from the same prompt decoded alone.
    #[test]
    fn batched_decode_equals_each_sequence_alone() {
        let (b, h, kvh, d, kv) = (3, 6, 2, 64, 53);
        let (q, k, v) = (heads(b, h, 1, d, 13), heads(b, kvh, kv, d, 14), heads(b, kvh, kv, d, 15));
        let scale = 1.0 / 8.0;
        let batched = patched(&q, &k, &v, None, scale, None).unwrap();
        assert_close(
            "batched decode vs reference",
            &batched,
            &reference(&q, &k, &v, None, scale as f64),
        );
        for i in 0..b {
            let one = |t: &Tensor| t.narrow(0, i, 1).unwrap();
            let alone = patched(&one(&q), &one(&k), &one(&v), None, scale, None).unwrap();
            assert_close(&format!("sequence {i}"), &batched.narrow(0, i, 1).unwrap(), &alone);
        }
        let upstream_batched = upstream(&q, &k, &v, None, scale, None).unwrap();
        let diff = (upstream_batched - &batched)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff > 0.1,
            "upstream's batched decode now agrees ({diff}): drop the claim in vendor/PATCHES.md"
        );
    }

    /// A decoding step over sequences of different lengths, left-padded into one batch as
    /// `kv_cache::LeftPaddedCacheManager` builds it (zeros in front, `-inf` over them in the
    /// mask), gives every sequence exactly — bit for bit — what it gets alone over its own keys:
    /// padding is skipped, not weighted by zero, and the query heads sharing a key/value head
    /// are computed together with each head's sums in the order it has alone.
    #[test]
    fn left_padded_batched_decode_equals_each_sequence_alone_exactly() {
        let (h, kvh, d) = (6, 2, 64);
        let lengths = [53usize, 40, 17];
        let longest = lengths[0];
        let scale = 1.0 / 8.0;
        let (mut qs, mut ks, mut vs, mut mask) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut alone = Vec::new();
        for (i, &len) in lengths.iter().enumerate() {
            let (q, k, v) = (
                heads(1, h, 1, d, 20 + i),
                heads(1, kvh, len, d, 30 + i),
                heads(1, kvh, len, d, 40 + i),
            );
            alone.push(patched(&q, &k, &v, None, scale, None).unwrap());
            let pad =
                Tensor::zeros((1, longest - len, kvh, d), candle_core::DType::F32, &Device::Cpu)
                    .unwrap();
            ks.push(Tensor::cat(&[&pad, &k], 1).unwrap());
            vs.push(Tensor::cat(&[&pad, &v], 1).unwrap());
            qs.push(q);
            mask.extend(
                (0..longest).map(|j| if j < longest - len { f32::NEG_INFINITY } else { 0.0 }),
            );
        }
        let cat = |ts: &[Tensor]| Tensor::cat(ts, 0).unwrap();
        let mask = Tensor::from_vec(mask, (lengths.len(), 1, 1, longest), &Device::Cpu).unwrap();
        let batched = patched(&cat(&qs), &cat(&ks), &cat(&vs), Some(&mask), scale, None).unwrap();
        for (i, alone) in alone.iter().enumerate() {
            let row =
                batched.narrow(0, i, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                row,
                alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "sequence {i} (length {})",
                lengths[i]
            );
        }
        let unmasked = patched(&cat(&qs), &cat(&ks), &cat(&vs), None, scale, None).unwrap();
        let short =
            unmasked.narrow(0, 2, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(
            short,
            alone[2].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "without the mask the padding must count"
        );
    }

    /// A position gets, bit for bit, the same attention output whether it is read in a whole
    /// prompt, read in a later prompt over a cached past, or decoded alone: the prefix cache
    /// relies on it (a turn that reuses the cache must compute what a full read computes).
    /// The kernel computes rows in tasks and keys in blocks and vector lanes, so positions are
    /// chosen on every kind of edge: first and last keys of a 64- (head size 64) or 32-key
    /// (head size 128) block, of an 8-key lane group, and the prompt's two ends.
    #[test]
    fn a_position_gets_the_same_output_in_a_prompt_a_later_prompt_or_decoded_alone() {
        for (h, kvh, d) in [(9, 3, 64), (12, 2, 128)] {
            let len = 150;
            let scale = 1.0 / (d as f32).sqrt();
            let (q, k, v) =
                (heads(1, h, len, d, 50), heads(1, kvh, len, d, 51), heads(1, kvh, len, d, 52));
            let whole_mask = Tensor::from_vec(causal(len, 0), (len, len), &Device::Cpu).unwrap();
            let whole = patched(&q, &k, &v, Some(&whole_mask), scale, None).unwrap();
            assert_close(
                "whole prompt vs reference",
                &whole,
                &reference(&q, &k, &v, Some(&whole_mask), scale as f64),
            );
            let row = |t: &Tensor, p: usize| {
                t.narrow(2, p, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            for p in [0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 127, 128, 149] {
                let upto = |t: &Tensor| t.narrow(1, 0, p + 1).unwrap();
                let alone =
                    patched(&q.narrow(1, p, 1).unwrap(), &upto(&k), &upto(&v), None, scale, None)
                        .unwrap();
                assert_eq!(
                    row(&whole, p),
                    row(&alone, 0),
                    "head size {d}: position {p} decoded alone"
                );
            }
            let past = 97;
            let later_mask =
                Tensor::from_vec(causal(len - past, past), (len - past, len), &Device::Cpu)
                    .unwrap();
            let later = patched(
                &q.narrow(1, past, len - past).unwrap(),
                &k,
                &v,
                Some(&later_mask),
                scale,
                None,
            )
            .unwrap();
            for p in past..len {
                assert_eq!(
                    row(&whole, p),
                    row(&later, p - past),
                    "head size {d}: position {p} read after {past} cached"
                );
            }
        }
    }
}
