//! The CPU attention kernel mistral.rs runs for Rapport (vendor/PATCHES.md) against upstream's,
//! in the same run, on the shapes a turn hands it: a persona prompt read cold, the next turn's
//! prompt over a cached past, and one decoding step. Head layouts are SmolLM2-135M's (9 query
//! heads over 3 key/value heads, head size 64) and Qwen2.5-1.5B's (12 over 2, head size 128);
//! one layer of one sequence, so multiply by the layer count (30 and 28) for a forward pass.
//!
//! cargo bench --workspace --bench attention

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mistralrs_core::{
    rapport_flash_attn_cpu_f32 as patched, rapport_upstream_flash_attn_cpu_f32 as upstream,
};

/// Deterministic values in [-2, 2): the timing needs realistic magnitudes, not randomness.
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| (((i + seed) * 2_654_435_761 % 1_000_003) as f32 / 250_000.75) - 2.0).collect()
}

/// A (1, H, S, D) tensor seen as (1, S, H, D), the view the models pass.
fn heads(h: usize, s: usize, d: usize, seed: usize) -> Tensor {
    Tensor::from_vec(values(h * s * d, seed), (1, h, s, d), &Device::Cpu)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
}

/// Causal mask for `q_len` new positions after `past` cached ones, as the models build it.
fn causal(q_len: usize, past: usize) -> Tensor {
    let kv = past + q_len;
    let rows = (0..q_len * kv)
        .map(|i| if i % kv > past + i / kv { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    Tensor::from_vec(rows, (q_len, kv), &Device::Cpu).unwrap()
}

fn attention(c: &mut Criterion) {
    let models = [("smollm2", 9, 3, 64), ("qwen2.5", 12, 2, 128)];
    // (what, new positions, cached positions): a 754-token persona prompt read cold, a
    // next-turn prompt of 150 tokens over 600 cached ones, one decoding step over 750.
    let shapes = [
        ("cold-prompt-754", 754, 0),
        ("next-turn-150-over-600", 150, 600),
        ("decode-over-750", 1, 750),
    ];
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    for (model, h, kv_heads, d) in models {
        for (shape, q_len, past) in shapes {
            let (q, k, v) = (
                heads(h, q_len, d, 1),
                heads(kv_heads, past + q_len, d, 2),
                heads(kv_heads, past + q_len, d, 3),
            );
            let mask = (q_len > 1).then(|| causal(q_len, past));
            let scale = 1.0 / (d as f32).sqrt();
            let id = format!("{model}/{shape}");
            group.bench_function(BenchmarkId::new("rapport", &id), |b| {
                b.iter(|| patched(&q, &k, &v, mask.as_ref(), scale, None).unwrap())
            });
            group.bench_function(BenchmarkId::new("upstream", &id), |b| {
                b.iter(|| upstream(&q, &k, &v, mask.as_ref(), scale, None).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
