//! all-MiniLM-L6-v2: BERT, mean pooling over real tokens, L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::NluError;

/// Width of the sentence vectors.
pub const EMBEDDING_DIM: usize = 384;

/// Tokens kept per text (the model's sentence-transformers configuration); longer input is
/// truncated, which keeps a 100 KB message from costing seconds.
pub const MAX_TOKENS: usize = 256;

/// A unit-length sentence vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(pub Vec<f32>);

/// Cosine similarity of two vectors (their dot product when both have unit length).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

/// The sentence encoder, loaded once and shared (it is `Send + Sync`).
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, NluError> {
        let load_err = |file: &str, e: &dyn std::fmt::Display| NluError::Load { path: dir.join(file), message: e.to_string() };
        let config: Config = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load_err("config.json", &e))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| load_err("config.json", &e)))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| load_err("tokenizer.json", &e))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| load_err("tokenizer.json", &e))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(load_err("model.safetensors", &"no such file"));
        }
        // SAFETY: the file is memory-mapped read-only; it is replaced only by an atomic rename
        // of its whole directory, never modified in place.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| load_err("model.safetensors", &e))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err("model.safetensors", &e))?;
        Ok(Self { model, tokenizer, device })
    }

    /// Encodes one text.
    pub fn encode(&self, text: &str) -> Result<Embedding, NluError> {
        Ok(self.encode_batch(&[text])?.pop().expect("one text in, one vector out"))
    }

    /// Encodes several texts in one forward pass (padded to the longest).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Embedding>, NluError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let pooled = self.pooled(texts)?;
        let rows = pooled.to_vec2::<f32>()?;
        Ok(rows.into_iter().map(Embedding).collect())
    }

    /// Mean-pooled, L2-normalised sentence vectors as a `[batch, 384]` tensor.
    pub fn pooled(&self, texts: &[&str]) -> Result<Tensor, NluError> {
        let (hidden, mask) = self.hidden(texts)?;
        mean_pool_normalised(&hidden, &mask)
    }

    /// Classifier features, `[batch, 768]`: the sentence vector, then the per-dimension maximum
    /// over real tokens. The maximum keeps a strong signal from one word ("furious") that the
    /// mean dilutes in a long message.
    pub fn features(&self, texts: &[&str]) -> Result<Tensor, NluError> {
        let (hidden, mask) = self.hidden(texts)?;
        let mean = mean_pool_normalised(&hidden, &mask)?;
        // Padding positions get a large negative value so they never win the maximum.
        let pad = mask.to_dtype(DType::F32)?.affine(1e4, -1e4)?.unsqueeze(2)?; // 0 for real, -1e4 for padding
        let max = hidden.broadcast_add(&pad)?.max(1)?;
        Ok(Tensor::cat(&[&mean, &max], 1)?)
    }

    /// Last hidden states `[batch, tokens, 384]` and the attention mask `[batch, tokens]`.
    fn hidden(&self, texts: &[&str]) -> Result<(Tensor, Tensor), NluError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| NluError::Tokenize(e.to_string()))?;
        let rows = encodings.len();
        let cols = encodings[0].get_ids().len();
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, cols), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, cols), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        Ok((hidden, mask))
    }
}

/// Mean over real tokens only (padding must not pull short texts towards each other), then L2.
fn mean_pool_normalised(hidden: &Tensor, mask: &Tensor) -> Result<Tensor, NluError> {
    let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [rows, cols, 1]
    let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?; // [rows, 384]
    let counts = mask_f.sum(1)?.clamp(1e-9, f64::MAX)?; // [rows, 1]
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
