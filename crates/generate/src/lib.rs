//! Text generation backends for Rapport, both implementing [`rapport_core::Generator`]:
//!
//! - [`MistralRsGenerator`]: mistral.rs 0.8.1 running a local GGUF on the CPU, in process;
//! - [`OpenAiCompatGenerator`]: any OpenAI-compatible server (mistral.rs server, vLLM,
//!   llama.cpp server, or `rapport serve-llm`) over HTTP with streaming SSE.
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
mod sse;

pub use embedded::{Activations, EmbeddedOptions, MistralRsGenerator};
pub use openai::{OpenAiCompatGenerator, OpenAiCompatOptions};
pub use sse::{SseDecoder, SseEvent};

/// The patched candle (vendor/PATCHES.md) must compute what upstream computes.
#[cfg(test)]
mod candle_patch {
    use candle_core::quantized::k_quants::{matmul, BlockQ4K, BlockQ8_0, GgmlType};

    fn check<T: GgmlType>(m: usize, k: usize, n: usize) {
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let rhs: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0).collect();
        let mut rhs_t = vec![T::zeros(); n * k / T::BLCK_SIZE];
        T::from_float(&rhs, &mut rhs_t);
        let mut blocked = vec![0f32; m * n];
        matmul((m, k, n), &lhs, &rhs_t, &mut blocked).unwrap();
        // Upstream's arithmetic: each row alone, through the unchanged one-row path.
        for r in 0..m {
            let mut row = vec![0f32; n];
            matmul((1, k, n), &lhs[r * k..(r + 1) * k], &rhs_t, &mut row).unwrap();
            assert_eq!(&blocked[r * n..(r + 1) * n], &row[..], "row {r} of {m}x{k}x{n}");
        }
    }

    #[test]
    fn blocked_prefill_matmul_equals_the_per_row_path() {
        // Sizes that are not multiples of the 16-column and 8-row blocks.
        check::<BlockQ4K>(37, 256, 53);
        check::<BlockQ8_0>(9, 64, 17);
        check::<BlockQ8_0>(2, 32, 1);
    }
}
