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
//!
//! A change of the running set does not rebuild the batch when it need not. Every sequence
//! that joins, and every one that finishes, changes the set, and rebuilding copied every
//! sequence's whole cache each time: at sixty-four conversations a rebuild moved ~1 GB and took
//! ~0.1 s, a fifth of the engine's time. So a batch is allocated with spare rows and remembers
//! each row's padding ([`BatchSlot`]), and the engine keeps the sequences that stay in the rows
//! they had (`engine::batch_rows`): a finished sequence's row is taken by one from the end of
//! the batch, a new sequence is copied into a free row, right-aligned with the others, and
//! nobody else moves. A batch whose length runs ahead of its longest sequence by more than
//! [`MAX_EXTRA_PADDING`] (its longest sequences finished) is rebuilt, which trims it.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;

use super::{CacheManager, KvCache, NormalCache, NormalCacheManager, SingleCache};
use crate::{
    pipeline::{CacheManagerMixin, MetadataMixin},
    sequence::Sequence,
};

pub struct LeftPaddedCacheManager;

/// Positions a batch may run ahead of its longest sequence before it is rebuilt rather than
/// joined: the padding costs nothing to attention (masked keys are skipped), but it is
/// capacity, and a batch that outgrows its capacity is copied whole.
const MAX_EXTRA_PADDING: usize = 128;

/// RAPPORT PATCH: where a key or value cache stands in a left-padded decoding batch, so that
/// the next change of the batch knows which sequences are already in place.
#[derive(Debug, Clone)]
pub(crate) struct BatchSlot {
    /// Which batch: a fresh number each time one is allocated.
    id: u64,
    place: Place,
}

#[derive(Debug, Clone)]
enum Place {
    /// The batch itself: each row's padding, and the allocation whose first rows the batch is,
    /// with room for sequences that join (`None` once the batch has outgrown it).
    Whole { paddings: Vec<usize>, rows: Option<Tensor> },
    /// One sequence's row of the batch, after its padding.
    Row { row: usize, padding: usize },
}

impl BatchSlot {
    /// The batch has been copied into a longer allocation of exactly its rows.
    pub(crate) fn lose_spare_rows(&mut self) {
        if let Place::Whole { rows, .. } = &mut self.place {
            *rows = None;
        }
    }

    fn whole(paddings: Vec<usize>, rows: Tensor) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        Self { id, place: Place::Whole { paddings, rows: Some(rows) } }
    }
}

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
    // Every sequence's own cache has a batch of one (dim 0); the batch has one row per sequence,
    // and room for as many again to join it. Rows never written are never paged in.
    dims[0] = (2 * parts.len()).max(8);
    dims[dim] = capacity;
    // SAFETY: every position a reader can reach is written below: a row's padding gets zeros
    // (attention masks it, and a masked score must still be finite) and its own positions get
    // its keys or values. Positions from `longest` on are reached only after `append` has
    // written them (a cache is read through `current_seq_len`); growing the cache moves them as
    // bytes without reading them as numbers. Not zero-filling them saves writing (and the kernel
    // faulting in) the unused capacity of every row, most of the batch's memory.
    let rows = unsafe { Tensor::empty(dims, first.dtype(), first.device())? };
    let mut paddings = Vec::with_capacity(parts.len());
    for (row, part) in parts.iter().enumerate() {
        paddings.push(write_right_aligned(&rows.narrow(0, row, 1)?, part, longest)?);
    }
    Ok(SingleCache {
        all_data: Some(rows.narrow(0, 0, parts.len())?),
        dim,
        current_seq_len: longest,
        capacity_seq_len: capacity,
        max_seq_len: template.max_seq_len,
        batch: Some(BatchSlot::whole(paddings, rows)),
    })
}

/// Writes one sequence's cache into a batch row whose sequences end at position `len`: zeros
/// before it, its positions up to `len`. Returns the row's padding.
fn write_right_aligned(row_cache: &Tensor, part: &SingleCache, len: usize) -> candle_core::Result<usize> {
    let dim = part.dim;
    let own = held(part);
    let padding = len - own;
    if padding > 0 {
        let mut padding_dims = row_cache.dims().to_vec();
        padding_dims[dim] = padding;
        row_cache.slice_set(&Tensor::zeros(padding_dims, row_cache.dtype(), row_cache.device())?, dim, 0)?;
    }
    if let Some(all_data) = part.all_data.as_ref().filter(|_| own > 0) {
        copy_positions(row_cache, all_data, dim, own, padding)?;
    }
    Ok(padding)
}

/// Positions a sequence's cache holds.
fn held(cache: &SingleCache) -> usize {
    cache.all_data.as_ref().map_or(0, |_| cache.current_seq_len)
}

/// Where a sequence's positions are before the batch changes.
enum Source {
    /// Already in its row of the batch, at the right padding.
    InPlace,
    /// In another row of the batch, one beyond the rows the changed batch keeps.
    Moved { from: usize },
    /// In a cache of its own (it has just read its prompt).
    Joining,
}

/// How the running batch becomes the next one without a rebuild, or `None` when it cannot:
/// no spare rows, a joining sequence longer than the batch, a batch far longer than its
/// longest sequence, or a sequence whose place does not agree with the batch's.
fn rejoin_plan(batch: &SingleCache, parts: &[&SingleCache]) -> Option<Vec<Source>> {
    let slot = batch.batch.as_ref()?;
    let Place::Whole { paddings, rows: Some(rows) } = &slot.place else {
        return None;
    };
    batch.all_data.as_ref()?;
    let len = batch.current_seq_len;
    if rows.dim(0).ok()? < parts.len() {
        return None;
    }
    let longest = parts.iter().map(|p| held(p)).max()?;
    if longest > len || len - longest > MAX_EXTRA_PADDING {
        return None;
    }
    parts
        .iter()
        .enumerate()
        .map(|(target, part)| match &part.batch {
            Some(BatchSlot { id, place: Place::Row { row, padding } }) if *id == slot.id => {
                // A row's padding is fixed while the batch lives: the sequence and the batch
                // grow by a position at each step. Anything else is a cache that did not
                // decode with this batch; rebuild rather than trust it.
                if paddings.get(*row) != Some(padding) || len - held(part) != *padding {
                    None
                } else if *row == target {
                    Some(Source::InPlace)
                } else if *row >= parts.len() {
                    Some(Source::Moved { from: *row })
                } else {
                    // Its old row is another sequence's new one and may be written first.
                    None
                }
            }
            _ => Some(Source::Joining),
        })
        .collect()
}

/// Carries out a [`rejoin_plan`]: moved rows first (their old rows, beyond the kept ones, may
/// then be written by nobody), then joining sequences into their rows.
fn rejoin(batch: &SingleCache, parts: &[&SingleCache], plan: &[Source]) -> candle_core::Result<SingleCache> {
    let Some(BatchSlot { id, place: Place::Whole { paddings: old_paddings, rows: Some(rows) } }) = &batch.batch else {
        candle_core::bail!("rejoin needs a batch with spare rows");
    };
    let (dim, len) = (batch.dim, batch.current_seq_len);
    let mut paddings = vec![0; parts.len()];
    for (target, source) in plan.iter().enumerate() {
        match source {
            Source::InPlace => paddings[target] = old_paddings[target],
            Source::Moved { from } => {
                // candle copies only between two storages: through a temporary of one row.
                let from_row = rows.narrow(0, *from, 1)?;
                let mut dims = from_row.dims().to_vec();
                dims[dim] = len;
                // SAFETY: every position of the temporary is written before it is read.
                let moving = unsafe { Tensor::empty(dims, from_row.dtype(), from_row.device())? };
                copy_positions(&moving, &from_row, dim, len, 0)?;
                copy_positions(&rows.narrow(0, target, 1)?, &moving, dim, len, 0)?;
                paddings[target] = old_paddings[*from];
            }
            Source::Joining => {}
        }
    }
    for (target, (source, part)) in plan.iter().zip(parts).enumerate() {
        if let Source::Joining = source {
            paddings[target] = write_right_aligned(&rows.narrow(0, target, 1)?, part, len)?;
        }
    }
    Ok(SingleCache {
        all_data: Some(rows.narrow(0, 0, parts.len())?),
        dim,
        current_seq_len: len,
        capacity_seq_len: batch.capacity_seq_len,
        max_seq_len: batch.max_seq_len,
        batch: Some(BatchSlot { id: *id, place: Place::Whole { paddings, rows: Some(rows.clone()) } }),
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
        batch: batch.batch.as_ref().map(|slot| BatchSlot { id: slot.id, place: Place::Row { row, padding } }),
    })
}

impl<T: CacheManagerMixin + MetadataMixin + ?Sized> CacheManager<T> for LeftPaddedCacheManager {
    fn clone_in_cache(&self, pipeline: &T, seqs: &mut [&mut Sequence], modify_draft_cache: bool) {
        let started = std::time::Instant::now();
        let layers = pipeline.get_metadata().num_hidden_layers;
        // Rows of the running batch may be handed to other sequences only when every sequence
        // that left it is done. With every decoding sequence in one bucket of the scheduler
        // (`supports_left_padded_decode`) a decoding sequence leaves the batch only by
        // finishing, or with all the others while a prompt is read (the engine parks their
        // batch meanwhile). Not for a prompt step: the running cache may then be the batch of
        // the prompts read just before, whose sequences are decoding now.
        let may_rejoin = !modify_draft_cache
            && pipeline.supports_left_padded_decode()
            && seqs.iter().all(|seq| seq.is_completion());
        let mut running = pipeline.cache().normal();
        let mut caches = Vec::with_capacity(layers);
        let mut rebuilt = false;
        for layer in 0..layers {
            let per_seq = seqs
                .iter_mut()
                .map(|seq| source_cache(seq, modify_draft_cache)[layer].clone())
                .collect::<Vec<_>>();
            if per_seq.iter().all(Option::is_none) {
                // A layer without a cache of its own (as upstream: start it empty).
                let mut cache = running.0[layer].clone();
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
            let plans = match &running.0[layer] {
                KvCache::Normal { k, v } if may_rejoin => rejoin_plan(k, &ks).zip(rejoin_plan(v, &vs)).map(|plans| (k, v, plans)),
                _ => None,
            };
            let cache = match plans {
                Some((k, v, (k_plan, v_plan))) => KvCache::Normal {
                    k: rejoin(k, &ks, &k_plan).expect("joining the keys to the batch"),
                    v: rejoin(v, &vs, &v_plan).expect("joining the values to the batch"),
                },
                None => {
                    rebuilt = true;
                    KvCache::Normal {
                        k: right_aligned(&ks).expect("right-aligning the keys"),
                        v: right_aligned(&vs).expect("right-aligning the values"),
                    }
                }
            };
            caches.push(cache);
        }
        *running = NormalCache(caches);
        // The step log times whole steps; a change of the batch is part of the first step after
        // the set of decoding sequences changed, and `benches/engine_steps.py` needs it apart.
        if crate::engine::step_log_enabled() {
            tracing::info!(
                "Batch[{}] {} - {}ms",
                seqs.len(),
                if rebuilt { "rebuilt" } else { "joined" },
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
            let paddings = match &k.batch {
                // The batch says: it may be longer than any of its sequences (its longest
                // finished), so a row's padding is not what the row lacks of the longest.
                Some(BatchSlot { place: Place::Whole { paddings, .. }, .. }) if paddings.len() == seqs.len() => paddings.clone(),
                // A batch the cache managers of upstream built (a prompt step's), never padded
                // by more than the longest sequence's length: each row's padding is what its
                // sequence lacked of the longest one, read from the sequences' caches before
                // they are replaced (each still holds what the step started from). Not from
                // `Sequence::len`: during a prompt that reuses a cached prefix it counts only
                // the tokens still to be read. A prompt step's batch is never padded (the
                // scheduler groups prompts by length and cached offset): all zero there.
                _ => {
                    let held: Vec<usize> = seqs
                        .iter_mut()
                        .map(|seq| match &source_cache(seq, modify_draft_cache)[layer] {
                            Some(KvCache::Normal { k, .. }) => k.current_seq_len,
                            _ => 0,
                        })
                        .collect();
                    let longest = held.iter().copied().max().unwrap_or(0);
                    held.iter().map(|held| longest - held).collect()
                }
            };
            for ((row, seq), padding) in seqs.iter_mut().enumerate().zip(paddings) {
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
                batch: None,
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
