//! The BERT encoder of all-MiniLM-L6-v2, run over unpadded token sequences.
//!
//! The weights come from the model's safetensors through candle (the file format and loading
//! stay candle's); the pass itself runs on plain slices ([`kernels`]). Three things make it fast
//! where candle's `BertModel` is slow on a CPU (28 ms for one 17-token message on the 2-core
//! machine of docs/dev/understanding.md, 24 messages/s in batches of 64):
//! - every linear layer's weight is quantized and packed once, at load, in the order the matrix
//!   kernel reads it;
//! - the products multiply 16-bit integers, twice the multiply-adds per instruction of f32 (the
//!   sums cannot overflow, and the rounding moved the emotion model's dev macro-F1 from 0.5108 to 0.5104);
//! - sequences are never padded: the token rows of all texts of a batch are stacked into one
//!   matrix for the linear layers (which treat rows independently), and attention runs per
//!   text over its own rows only. A batch costs the sum of its texts, not its count times the
//!   longest one; there is no attention mask because there is nothing to mask.

pub(crate) mod kernels;

use std::ops::Range;
use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::Device;
use serde::Deserialize;

use kernels::{
    add_layer_norm, gelu_erf, layer_norm_row, softmax_row, DisjointWrites, PackedLinear,
    QuantizedRows,
};

/// The fields of a BERT `config.json` this pass depends on.
#[derive(Debug, Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f64,
    hidden_act: String,
    vocab_size: usize,
    type_vocab_size: usize,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one product: `[3 · hidden, hidden]`.
    qkv: PackedLinear,
    attention_out: PackedLinear,
    attention_norm: Norm,
    up: PackedLinear,
    down: PackedLinear,
    output_norm: Norm,
}

/// The encoder's weights, packed for [`Bert::forward`].
pub(crate) struct Bert {
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Rapport sends one segment, so only token type 0's embedding is kept.
    token_type0: Vec<f32>,
    embedding_norm: Norm,
    intermediate: usize,
    layers: Vec<Layer>,
}

/// Tuned layers that replace the encoder's own from layer `from` on (see
/// [`Bert::load_branch`]): the frozen layers below are shared with the sentence vectors.
pub(crate) struct BertBranch {
    from: usize,
    layers: Vec<Layer>,
}

#[derive(Clone, Copy)]
struct LayerDims {
    hidden: usize,
    intermediate: usize,
}

fn open_weights(weights: &Path) -> Result<MmapedSafetensors, String> {
    // SAFETY: the file is memory-mapped read-only and only while loading; model files are
    // replaced by an atomic rename of their directory (or, in the repository, by a commit),
    // never modified in place.
    unsafe { MmapedSafetensors::new(weights) }.map_err(|e| format!("{}: {e}", weights.display()))
}

/// One tensor as f32 (any stored float type), checked for its element count.
fn read_tensor(
    file: &MmapedSafetensors,
    file_name: &str,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, String> {
    let t = file.load(name, &Device::Cpu).map_err(|e| format!("{file_name}: {name}: {e}"))?;
    let v = t
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>());
    let v = v.map_err(|e| format!("{file_name}: {name}: {e}"))?;
    if v.len() != len {
        return Err(format!("{file_name}: {name} has {} values, expected {len}", v.len()));
    }
    Ok(v)
}

/// The LayerNorm `prefix` (`.weight` and `.bias`, `width` each).
fn read_norm(
    file: &MmapedSafetensors,
    file_name: &str,
    prefix: &str,
    width: usize,
) -> Result<Norm, String> {
    Ok(Norm {
        gamma: read_tensor(file, file_name, &format!("{prefix}.weight"), width)?,
        beta: read_tensor(file, file_name, &format!("{prefix}.bias"), width)?,
    })
}

fn load_layers(
    file: &MmapedSafetensors,
    file_name: &str,
    indices: Range<usize>,
    dims: LayerDims,
) -> Result<Vec<Layer>, String> {
    let LayerDims { hidden, intermediate } = dims;
    let tensor = |name: &str, len: usize| read_tensor(file, file_name, name, len);
    let norm = |prefix: &str| read_norm(file, file_name, prefix, hidden);
    let linear = |prefix: &str, outputs: usize, inputs: usize| -> Result<PackedLinear, String> {
        let w = tensor(&format!("{prefix}.weight"), outputs * inputs)?;
        let b = tensor(&format!("{prefix}.bias"), outputs)?;
        Ok(PackedLinear::new(&w, &b, outputs, inputs))
    };
    let mut layers = Vec::with_capacity(indices.len());
    for l in indices {
        let p = format!("encoder.layer.{l}");
        let mut qkv_w = Vec::with_capacity(3 * hidden * hidden);
        let mut qkv_b = Vec::with_capacity(3 * hidden);
        for part in ["query", "key", "value"] {
            qkv_w.extend(tensor(&format!("{p}.attention.self.{part}.weight"), hidden * hidden)?);
            qkv_b.extend(tensor(&format!("{p}.attention.self.{part}.bias"), hidden)?);
        }
        layers.push(Layer {
            qkv: PackedLinear::new(&qkv_w, &qkv_b, 3 * hidden, hidden),
            attention_out: linear(&format!("{p}.attention.output.dense"), hidden, hidden)?,
            attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
            up: linear(&format!("{p}.intermediate.dense"), intermediate, hidden)?,
            down: linear(&format!("{p}.output.dense"), hidden, intermediate)?,
            output_norm: norm(&format!("{p}.output.LayerNorm"))?,
        });
    }
    Ok(layers)
}

/// The buffers of one pass, kept by each thread from one pass to the next. A 64-message
/// batch's are ~20 MB: allocated fresh, the kernel faulted their pages in and zeroed them on
/// every call, 12% of the batch's time.
#[derive(Default)]
struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    up: Vec<f32>,
    /// Rows quantized and regrouped for the matrix kernel.
    quantized: QuantizedRows,
}

impl Scratch {
    /// Past 64 MB (a batch of ~4,000 tokens) the buffers are freed rather than kept: an
    /// evaluation's one big batch should not pin its memory for the life of the process.
    fn release_if_large(&mut self) {
        let values = self.qkv.capacity()
            + self.context.capacity()
            + self.attended.capacity()
            + self.up.capacity()
            + self.quantized.capacity();
        if values * 4 > 64 << 20 {
            *self = Scratch::default();
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Last hidden states of a batch: the rows of text `i` are `rows[i]` of `data` (`hidden` wide).
pub(crate) struct HiddenStates {
    pub data: Vec<f32>,
    pub rows: Vec<Range<usize>>,
    pub width: usize,
}

impl HiddenStates {
    /// The rows of text `i`.
    pub fn text(&self, i: usize) -> &[f32] {
        let r = &self.rows[i];
        &self.data[r.start * self.width..r.end * self.width]
    }
}

impl Bert {
    /// Reads `config.json` and `model.safetensors` from `dir`. Errors are strings naming the
    /// file; the caller wraps them.
    pub(crate) fn load(config_json: &str, weights: &Path) -> Result<Self, String> {
        let config: BertConfig =
            serde_json::from_str(config_json).map_err(|e| format!("config.json: {e}"))?;
        if config.hidden_act != "gelu" {
            return Err(format!(
                "config.json: hidden_act {:?} is not supported (only gelu)",
                config.hidden_act
            ));
        }
        let (hidden, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || hidden % heads != 0 || (hidden / heads) % 8 != 0 {
            return Err(format!(
                "config.json: hidden_size {hidden} over num_attention_heads {heads} must give heads a multiple of 8 wide"
            ));
        }
        let file = open_weights(weights)?;
        let dims = LayerDims { hidden, intermediate: config.intermediate_size };
        let layers = load_layers(&file, "model.safetensors", 0..config.num_hidden_layers, dims)?;
        let tensor = |name: &str, len: usize| read_tensor(&file, "model.safetensors", name, len);
        let token_types =
            tensor("embeddings.token_type_embeddings.weight", config.type_vocab_size * hidden)?;
        if token_types.is_empty() {
            return Err("config.json: type_vocab_size is 0".into());
        }
        Ok(Self {
            hidden,
            heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            word: tensor("embeddings.word_embeddings.weight", config.vocab_size * hidden)?,
            position: tensor(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings * hidden,
            )?,
            token_type0: token_types[..hidden].to_vec(),
            embedding_norm: read_norm(&file, "model.safetensors", "embeddings.LayerNorm", hidden)?,
            intermediate: config.intermediate_size,
            layers,
        })
    }

    /// Reads tuned copies of layers `layers` (named as in the model's own file) from another
    /// safetensors file: a branch that takes over from this encoder after layer
    /// `layers.start`. `file_name` names the file in errors.
    pub(crate) fn load_branch(
        &self,
        weights: &Path,
        file_name: &str,
        layers: Range<usize>,
    ) -> Result<BertBranch, String> {
        if layers.start > self.layers.len() || layers.is_empty() {
            return Err(format!(
                "{file_name}: a branch of layers {layers:?} does not fit an encoder of {} layers",
                self.layers.len()
            ));
        }
        let file = open_weights(weights)?;
        let dims = LayerDims { hidden: self.hidden, intermediate: self.intermediate };
        Ok(BertBranch { from: layers.start, layers: load_layers(&file, file_name, layers, dims)? })
    }

    /// Width of the hidden states.
    pub(crate) fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Last hidden states for each token sequence. Sequences longer than the position table are
    /// an error (the tokenizer truncates well before), as are ids outside the vocabulary.
    pub(crate) fn forward(&self, sequences: &[&[u32]]) -> Result<HiddenStates, String> {
        // The whole pass runs on one of rayon's threads: the 24 matrix products below then
        // split their panels with a cheap in-pool fork, instead of each waking the pool from
        // outside and blocking the caller until it answers.
        rayon::scope(|_| {
            let (mut x, rows) = self.embed(sequences)?;
            self.run_layers(&self.layers, &mut x, &rows);
            Ok(HiddenStates { data: x, rows, width: self.hidden })
        })
    }

    /// Last hidden states of `branch`: this encoder's layers below the branch, then the
    /// branch's own.
    pub(crate) fn forward_branch(
        &self,
        sequences: &[&[u32]],
        branch: &BertBranch,
    ) -> Result<HiddenStates, String> {
        rayon::scope(|_| {
            let (mut x, rows) = self.embed(sequences)?;
            self.run_layers(&self.layers[..branch.from], &mut x, &rows);
            self.run_layers(&branch.layers, &mut x, &rows);
            Ok(HiddenStates { data: x, rows, width: self.hidden })
        })
    }

    /// Both [`forward`](Self::forward) and [`forward_branch`](Self::forward_branch), paying
    /// once for the layers they share.
    pub(crate) fn forward_both(
        &self,
        sequences: &[&[u32]],
        branch: &BertBranch,
    ) -> Result<(HiddenStates, HiddenStates), String> {
        rayon::scope(|_| {
            let (mut x, rows) = self.embed(sequences)?;
            self.run_layers(&self.layers[..branch.from], &mut x, &rows);
            let mut y = x.clone();
            self.run_layers(&self.layers[branch.from..], &mut x, &rows);
            self.run_layers(&branch.layers, &mut y, &rows);
            let trunk = HiddenStates { data: x, rows: rows.clone(), width: self.hidden };
            Ok((trunk, HiddenStates { data: y, rows, width: self.hidden }))
        })
    }

    /// The embedding layer's output for every token of every sequence, stacked, and the rows
    /// of each sequence.
    fn embed(&self, sequences: &[&[u32]]) -> Result<(Vec<f32>, Vec<Range<usize>>), String> {
        let h = self.hidden;
        let mut rows = Vec::with_capacity(sequences.len());
        let mut total = 0;
        for (i, ids) in sequences.iter().enumerate() {
            if ids.len() > self.max_positions {
                return Err(format!(
                    "text {i} has {} tokens, more than the model's {}",
                    ids.len(),
                    self.max_positions
                ));
            }
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(format!(
                    "text {i}: token id {bad} is outside the vocabulary of {}",
                    self.vocab
                ));
            }
            rows.push(total..total + ids.len());
            total += ids.len();
        }

        let mut x = vec![0.0f32; total * h];
        for (ids, range) in sequences.iter().zip(&rows) {
            for (pos, (&id, row)) in
                ids.iter().zip(x[range.start * h..range.end * h].chunks_exact_mut(h)).enumerate()
            {
                let word = &self.word[id as usize * h..(id as usize + 1) * h];
                let position = &self.position[pos * h..(pos + 1) * h];
                for (((v, w), p), t) in
                    row.iter_mut().zip(word).zip(position).zip(&self.token_type0)
                {
                    *v = w + p + t;
                }
                layer_norm_row(
                    row,
                    &self.embedding_norm.gamma,
                    &self.embedding_norm.beta,
                    self.eps,
                );
            }
        }
        Ok((x, rows))
    }

    /// Runs `layers` over the stacked token rows `x` in place.
    fn run_layers(&self, layers: &[Layer], x: &mut [f32], rows: &[Range<usize>]) {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.run_layers_in(layers, x, rows, &mut scratch),
            // This thread is inside another pass already: while a pass waits for its matrix
            // products, rayon may run a second caller's pass on the waiting thread. The first
            // keeps the buffers; this one gets its own.
            Err(_) => self.run_layers_in(layers, x, rows, &mut Scratch::default()),
        })
    }

    fn run_layers_in(
        &self,
        layers: &[Layer],
        x: &mut [f32],
        rows: &[Range<usize>],
        scratch: &mut Scratch,
    ) {
        let h = self.hidden;
        let total = x.len() / h;
        {
            let Scratch { qkv, context, attended, up, quantized } = &mut *scratch;
            // Every element of these is written before it is read; resizing keeps lengths.
            qkv.resize(total * 3 * h, 0.0);
            context.resize(total * h, 0.0);
            attended.resize(total * h, 0.0);
            up.resize(total * self.intermediate, 0.0);
            for layer in layers {
                layer.qkv.forward(x, total, qkv, quantized);
                self.attention(qkv, rows, context);
                layer.attention_out.forward(context, total, attended, quantized);
                add_layer_norm(
                    attended,
                    x,
                    &layer.attention_norm.gamma,
                    &layer.attention_norm.beta,
                    self.eps,
                );
                layer.up.forward(attended, total, up, quantized);
                gelu_erf(up);
                layer.down.forward(up, total, x, quantized);
                add_layer_norm(
                    x,
                    attended,
                    &layer.output_norm.gamma,
                    &layer.output_norm.beta,
                    self.eps,
                );
            }
        }
        scratch.release_if_large();
    }

    /// Scaled dot-product attention of every head, each text over its own tokens only.
    /// `qkv` rows are `[query | key | value]`; `context` rows get the heads side by side.
    fn attention(&self, qkv: &[f32], rows: &[Range<usize>], context: &mut [f32]) {
        let h = self.hidden;
        let head = h / self.heads;
        let scale = 1.0 / (head as f32).sqrt();
        let jobs: Vec<(usize, usize)> =
            (0..rows.len()).flat_map(|t| (0..self.heads).map(move |hd| (t, hd))).collect();
        let out = DisjointWrites(context.as_mut_ptr());
        let run = |&(t, hd): &(usize, usize)| {
            let range = rows[t].clone();
            let n = range.len();
            // This head's keys, transposed and padded with zeros to whole vectors of eight: a
            // query's scores are then multiply-adds along the keys into eight-wide accumulators,
            // which vectorise, instead of one short dot product (and its horizontal sum) per key.
            let width = n.div_ceil(8) * 8;
            let mut keys_t = vec![0.0f32; head * width];
            for (j, row) in range.clone().enumerate() {
                let k = &qkv[row * 3 * h + h + hd * head..][..head];
                for (d, &v) in k.iter().enumerate() {
                    keys_t[d * width + j] = v;
                }
            }
            let mut padded_scores = vec![0.0f32; width];
            let mut acc = vec![0.0f32; head];
            for i in range.clone() {
                let q = &qkv[i * 3 * h + hd * head..][..head];
                // Eight-wide local accumulators, not the output slice: the compiler cannot prove
                // the slices apart, and kept the slice version scalar.
                for (c, out) in padded_scores.chunks_exact_mut(8).enumerate() {
                    let mut lanes = [0.0f32; 8];
                    for (d, &qd) in q.iter().enumerate() {
                        let k = &keys_t[d * width + c * 8..][..8];
                        for l in 0..8 {
                            lanes[l] += qd * k[l];
                        }
                    }
                    for l in 0..8 {
                        out[l] = lanes[l] * scale;
                    }
                }
                // The padding's scores are not keys: only the first n take part.
                let scores = &mut padded_scores[..n];
                softmax_row(scores);
                for (c, out) in acc.chunks_exact_mut(8).enumerate() {
                    let mut lanes = [0.0f32; 8];
                    for (j, &p) in range.clone().zip(scores.iter()) {
                        let v = &qkv[j * 3 * h + 2 * h + hd * head + c * 8..][..8];
                        for l in 0..8 {
                            lanes[l] += p * v[l];
                        }
                    }
                    out.copy_from_slice(&lanes);
                }
                // SAFETY: job (t, hd) writes only row i ∈ rows[t], columns of head hd: no two
                // jobs write the same element, and `context` outlives the parallel loop.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        acc.as_ptr(),
                        out.get().add(i * h + hd * head),
                        head,
                    )
                };
            }
        };
        // Below ~64k multiply-adds in all, handing jobs to other threads costs more than it saves.
        let work: usize = rows.iter().map(|r| r.len() * r.len()).sum::<usize>() * h;
        if work < 1 << 16 {
            jobs.iter().for_each(run);
        } else {
            use rayon::prelude::*;
            jobs.par_iter().for_each(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bert;

    /// Attention runs eight lanes at a time over a head's width, so a configuration whose heads
    /// are not a multiple of eight wide is refused by name before any weight is read.
    #[test]
    fn heads_that_are_not_a_multiple_of_eight_wide_are_refused() {
        let config = r#"{"hidden_size": 384, "num_attention_heads": 32, "num_hidden_layers": 6,
            "intermediate_size": 1536, "max_position_embeddings": 512, "layer_norm_eps": 1e-12,
            "hidden_act": "gelu", "vocab_size": 30522, "type_vocab_size": 2}"#;
        let err = Bert::load(config, std::path::Path::new("/nonexistent/model.safetensors"))
            .err()
            .expect("refused");
        assert!(err.contains("config.json") && err.contains("num_attention_heads 32"), "{err}");
        let twelve = config.replace("\"num_attention_heads\": 32", "\"num_attention_heads\": 12");
        let err = Bert::load(&twelve, std::path::Path::new("/nonexistent/model.safetensors"))
            .err()
            .expect("no weights");
        assert!(err.contains("/nonexistent/model.safetensors"), "{err}");
    }
}
