//! RAPPORT PATCH: decoding sequences of different lengths as one batch, without paged attention.
//!
//! Upstream's default scheduler runs only sequences of one length together, because
//! `NormalCacheManager` stacks the sequences' caches as they are and the model then appends
//! every sequence's new key at the same position. Conversations' prompts always differ in
//! length, so on a CPU a second person made the first one wait instead of sharing a step.
//!
//! Here each sequence's cache is copied in *right-aligned*: a shorter one gets zeros in front
//! (left padding), so every sequence's next key lands at the same position and the batch
//! appends as one. Nothing else about a sequence moves: its keys were rotated with its own
//! positions before they were cached, the model rotates the new token with its own position
//! (`seqlen_offsets`, per sequence), and `CausalMasker::left_padding_mask_for_decode` masks
//! the padding out of attention. A sequence's padding is not stored anywhere: it is the batch's
//! cache length minus the sequence's own (its `seqlen_offsets` entry in the forward pass, the
//! length of the cache it held going in when copying out), so a batch whose sequences have one
//! length is exactly upstream's.
//!
//! Copying out, a sequence gets a view of its own row of the batch that starts after its
//! padding, not a copy, as upstream's per-row views: the padding is paid for once per change of
//! the running set (when `clone_in_cache` runs), not once per token.

use candle_core::Tensor;

use super::{CacheManager, KvCache, NormalCache, NormalCacheManager, SingleCache};
use crate::{
    pipeline::{CacheManagerMixin, MetadataMixin},
    sequence::Sequence,
};

pub struct LeftPaddedCacheManager;

fn source_cache(seq: &mut Sequence, modify_draft_cache: bool) -> &mut Vec<Option<KvCache>> {
    if modify_draft_cache {
        seq.normal_draft_cache()
    } else {
        seq.normal_cache()
    }
}

/// One layer's keys or values of every sequence, right-aligned into one batch tensor whose
/// length is the longest sequence's and whose capacity is the largest capacity among them.
///
/// This runs whenever the set of decoding sequences changes, over every sequence's whole cache,
/// so it is written to touch as few bytes as it can: at sixteen sequences with a persona in
/// context the batch is hundreds of megabytes, and zero-filling it first and copying each
/// sequence through a contiguous temporary took ~260 ms per change (a third of a reply's
/// decoding time at that size).
fn right_aligned(parts: &[&SingleCache]) -> candle_core::Result<SingleCache> {
    let template = parts[0];
    let dim = template.dim;
    let longest = parts.iter().map(|c| c.current_seq_len).max().unwrap_or(0);
    let Some(first) = parts.iter().find_map(|c| c.all_data.as_ref()) else {
        // No sequence has written anything yet: nothing to align.
        return Ok(SingleCache::new(dim, template.max_seq_len, template.capacity_seq_len));
    };
    let capacity = parts
        .iter()
        .map(|c| c.capacity_seq_len)
        .max()
        .unwrap_or(0)
        .max(longest);
    let mut dims = first.dims().to_vec();
    // Every sequence's own cache has a batch of one (dim 0); the batch has one row per sequence.
    dims[0] = parts.len();
    dims[dim] = capacity;
    // SAFETY: every position a reader can reach is written below: a row's padding gets zeros
    // (attention masks it, and a masked score must still be finite) and its own positions get
    // its keys or values. Positions from `longest` on are reached only after `append` has
    // written them (a cache is read through `current_seq_len`); growing the cache moves them as
    // bytes without reading them as numbers. Not zero-filling them saves writing (and the kernel
    // faulting in) the unused capacity of every row, most of the batch's memory.
    let batch = unsafe { Tensor::empty(dims, first.dtype(), first.device())? };
    for (row, part) in parts.iter().enumerate() {
        let held = part.all_data.as_ref().map_or(0, |_| part.current_seq_len);
        let padding = longest - held;
        let row_cache = batch.narrow(0, row, 1)?;
        if padding > 0 {
            let mut padding_dims = row_cache.dims().to_vec();
            padding_dims[dim] = padding;
            row_cache.slice_set(&Tensor::zeros(padding_dims, first.dtype(), first.device())?, dim, 0)?;
        }
        if let Some(all_data) = part.all_data.as_ref().filter(|_| held > 0) {
            copy_positions(&row_cache, all_data, dim, held, padding)?;
        }
    }
    Ok(SingleCache {
        all_data: Some(batch),
        dim,
        current_seq_len: longest,
        capacity_seq_len: capacity,
        max_seq_len: template.max_seq_len,
    })
}

/// Copies positions `0..len` of one sequence's cache `from` (`[1, heads, positions, head_dim]`)
/// into the batch row `to` from position `at`.
///
/// A sequence's cache is usually a view of its row of the previous batch, which skips that
/// row's padding and so is not contiguous as a whole; but each head's positions are. Copying
/// head by head moves every byte once, where making the view contiguous first moved it twice.
fn copy_positions(to: &Tensor, from: &Tensor, dim: usize, len: usize, at: usize) -> candle_core::Result<()> {
    if dim != 2 || from.rank() != 4 {
        return to.slice_set(&from.narrow(dim, 0, len)?.contiguous()?, dim, at);
    }
    for head in 0..from.dim(1)? {
        // One head's positions are contiguous, so `contiguous` copies nothing here.
        let positions = from.narrow(1, head, 1)?.narrow(dim, 0, len)?.contiguous()?;
        to.narrow(1, head, 1)?.slice_set(&positions, dim, at)?;
    }
    Ok(())
}

/// Row `row` of a batch cache, starting after `padding` leading positions.
fn row_view(batch: &SingleCache, row: usize, padding: usize) -> candle_core::Result<SingleCache> {
    let all = batch.all_data.as_ref().expect("the batch has a cache");
    let capacity = all.dim(batch.dim)?;
    let view = all
        .narrow(0, row, 1)?
        .narrow(batch.dim, padding, capacity - padding)?;
    Ok(SingleCache {
        all_data: Some(view),
        dim: batch.dim,
        current_seq_len: batch.current_seq_len - padding,
        capacity_seq_len: capacity - padding,
        max_seq_len: batch.max_seq_len,
    })
}

impl<T: CacheManagerMixin + MetadataMixin + ?Sized> CacheManager<T> for LeftPaddedCacheManager {
    fn clone_in_cache(&self, pipeline: &T, seqs: &mut [&mut Sequence], modify_draft_cache: bool) {
        let started = std::time::Instant::now();
        let layers = pipeline.get_metadata().num_hidden_layers;
        let mut caches = Vec::with_capacity(layers);
        for layer in 0..layers {
            let per_seq = seqs
                .iter_mut()
                .map(|seq| source_cache(seq, modify_draft_cache)[layer].clone())
                .collect::<Vec<_>>();
            if per_seq.iter().all(Option::is_none) {
                // A layer without a cache of its own (as upstream: start it empty).
                let mut cache = pipeline.cache().normal().0[layer].clone();
                cache.reset();
                caches.push(cache);
                continue;
            }
            let (ks, vs): (Vec<&SingleCache>, Vec<&SingleCache>) = per_seq
                .iter()
                .map(|cache| match cache {
                    Some(KvCache::Normal { k, v }) => (k, v),
                    // `supports_left_padded_decode` promises normal caches only.
                    _ => panic!("left-padded decoding needs a normal KV cache in every layer"),
                })
                .unzip();
            let k = right_aligned(&ks).expect("right-aligning the keys");
            let v = right_aligned(&vs).expect("right-aligning the values");
            caches.push(KvCache::Normal { k, v });
        }
        *pipeline.cache().normal() = NormalCache(caches);
        // The step log times whole steps; a rebuild is part of the first step after the set of
        // decoding sequences changed, and `benches/engine_steps.py` needs it apart.
        if crate::engine::step_log_enabled() {
            tracing::info!(
                "Batch[{}] rebuilt - {}ms",
                seqs.len(),
                started.elapsed().as_secs_f64() * 1000.
            );
        }
    }

    fn clone_out_cache(&self, pipeline: &T, seqs: &mut [&mut Sequence], modify_draft_cache: bool) {
        let all_cache = pipeline.cache().normal();
        for (layer, cache) in all_cache.0.iter().enumerate() {
            let KvCache::Normal { k, v } = cache else {
                panic!("left-padded decoding needs normal KV caches");
            };
            if k.all_data.is_none() {
                continue;
            }
            // A row's padding is what its sequence lacked of the longest one when the batch was
            // built, so it is read from the sequences' caches before they are replaced: each
            // still holds what `clone_in_cache` (or the previous `clone_out_cache`) gave it.
            // Not from `Sequence::len`: during a prompt that reuses a cached prefix it counts
            // only the tokens still to be read. A prompt step's batch is never padded (the
            // scheduler groups prompts by length and cached offset): all zero there.
            let held: Vec<usize> = seqs
                .iter_mut()
                .map(|seq| match &source_cache(seq, modify_draft_cache)[layer] {
                    Some(KvCache::Normal { k, .. }) => k.current_seq_len,
                    _ => 0,
                })
                .collect();
            let longest = held.iter().copied().max().unwrap_or(0);
            for ((row, seq), held) in seqs.iter_mut().enumerate().zip(held) {
                let padding = longest - held;
                let out = KvCache::Normal {
                    k: row_view(k, row, padding).expect("a row of the key cache"),
                    v: row_view(v, row, padding).expect("a row of the value cache"),
                };
                source_cache(seq, modify_draft_cache)[layer] = Some(out);
            }
        }
    }

    fn set_none_cache(
        &self,
        pipeline: &T,
        seqs: &mut [&mut Sequence],
        modify_draft_cache: bool,
        load_preallocated_cache: bool,
    ) {
        NormalCacheManager.set_none_cache(pipeline, seqs, modify_draft_cache, load_preallocated_cache)
    }
}

impl KvCache {
    /// RAPPORT PATCH: this cache in storage of its own. A sequence's cache is a view of a row of
    /// the batch it last decoded in (upstream's and the left-padded manager's alike), so keeping
    /// it after the sequence is done — the prefix cache does — kept that whole batch alive:
    /// sixteen rows of KV for each finished reply (a load sweep at 16 people reached 5 GiB).
    /// Copies the positions in use into a buffer of the same capacity (upstream's cache manager
    /// stacks only caches of one capacity); other kinds are cloned.
    pub(crate) fn detached(&self) -> KvCache {
        let detach = |cache: &SingleCache| -> candle_core::Result<SingleCache> {
            let Some(all_data) = cache.all_data.as_ref() else {
                return Ok(cache.clone());
            };
            let capacity = cache.capacity_seq_len.max(cache.current_seq_len);
            let mut dims = all_data.dims().to_vec();
            dims[cache.dim] = capacity;
            // SAFETY: as in `right_aligned`, the positions in use are written here and nothing
            // reads past `current_seq_len` before `append` has written there.
            let own = unsafe { Tensor::empty(dims, all_data.dtype(), all_data.device())? };
            if cache.current_seq_len > 0 {
                copy_positions(&own, all_data, cache.dim, cache.current_seq_len, 0)?;
            }
            Ok(SingleCache {
                all_data: Some(own),
                dim: cache.dim,
                current_seq_len: cache.current_seq_len,
                capacity_seq_len: capacity,
                max_seq_len: cache.max_seq_len,
            })
        };
        match self {
            KvCache::Normal { k, v } => match (detach(k), detach(v)) {
                (Ok(k), Ok(v)) => KvCache::Normal { k, v },
                // Keeping the view costs memory, not correctness.
                _ => self.clone(),
            },
            _ => self.clone(),
        }
    }
}
