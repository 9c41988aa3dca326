//! all-MiniLM-L6-v2: BERT ([`crate::bert`]), mean pooling over each text's tokens, L2
//! normalisation; and branches of it, tuned for one task, that share its lower layers.

use std::ops::Range;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{Bert, BertBranch, HiddenStates};
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
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Tuned copies of the encoder's top layers (see [`SentenceEncoder::load_branch`]).
pub struct EncoderBranch(BertBranch);

/// The sentence encoder, loaded once and shared (it is `Send + Sync`).
pub struct SentenceEncoder {
    model: Bert,
    tokenizer: Tokenizer,
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, NluError> {
        let load_err = |file: &str, e: &dyn std::fmt::Display| NluError::Load {
            path: dir.join(file),
            message: e.to_string(),
        };
        let config = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load_err("config.json", &e))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err("tokenizer.json", &e))?;
        // No padding: the encoder runs each text over its own tokens (see `bert`).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| load_err("tokenizer.json", &e))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(load_err("model.safetensors", &"no such file"));
        }
        let model = Bert::load(&config, &weights)
            .map_err(|e| NluError::Load { path: dir.to_path_buf(), message: e })?;
        if model.hidden_size() != EMBEDDING_DIM {
            return Err(load_err(
                "config.json",
                &format!("hidden_size is {}, expected {EMBEDDING_DIM}", model.hidden_size()),
            ));
        }
        Ok(Self { model, tokenizer })
    }

    /// Encodes one text.
    pub fn encode(&self, text: &str) -> Result<Embedding, NluError> {
        Ok(self.encode_batch(&[text])?.pop().expect("one text in, one vector out"))
    }

    /// Encodes several texts in one pass (each over its own tokens: no padding).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Embedding>, NluError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let hidden = self.hidden(texts)?;
        Ok((0..texts.len())
            .map(|i| Embedding(mean_normalised(hidden.text(i), EMBEDDING_DIM)))
            .collect())
    }

    /// Mean-pooled, L2-normalised sentence vectors as a `[batch, 384]` tensor.
    pub fn pooled(&self, texts: &[&str]) -> Result<Tensor, NluError> {
        let rows: Vec<f32> = self.encode_batch(texts)?.into_iter().flat_map(|e| e.0).collect();
        Ok(Tensor::from_vec(rows, (texts.len(), EMBEDDING_DIM), &Device::Cpu)?)
    }

    /// Classifier features, `[batch, 768]`: the sentence vector, then the per-dimension maximum
    /// over the tokens. The maximum keeps a strong signal from one word ("furious") that the
    /// mean dilutes in a long message.
    pub fn features(&self, texts: &[&str]) -> Result<Tensor, NluError> {
        if texts.is_empty() {
            return no_features();
        }
        features_of(&self.hidden(texts)?)
    }

    /// Reads a branch: tuned copies of layers `layers` (named `encoder.layer.N.…` as in the
    /// model's own file) from `weights`. The branch replaces this encoder's layers from
    /// `layers.start` on; the layers below are shared. A branch may end before the encoder does
    /// (a smaller, faster model for its task).
    pub fn load_branch(
        &self,
        weights: &Path,
        layers: Range<usize>,
    ) -> Result<EncoderBranch, NluError> {
        let name = weights.file_name().unwrap_or_default().to_string_lossy().into_owned();
        self.model
            .load_branch(weights, &name, layers)
            .map(EncoderBranch)
            .map_err(|message| NluError::Load { path: weights.to_path_buf(), message })
    }

    /// [`features`](Self::features) of the branch's last hidden states.
    pub fn branch_features(
        &self,
        texts: &[&str],
        branch: &EncoderBranch,
    ) -> Result<Tensor, NluError> {
        if texts.is_empty() {
            return no_features();
        }
        features_of(&self.run(texts, |ids| self.model.forward_branch(ids, &branch.0))?)
    }

    /// Sentence vectors and the branch's features from one pass: the layers below the branch
    /// run once for both.
    pub fn encode_with_branch(
        &self,
        texts: &[&str],
        branch: &EncoderBranch,
    ) -> Result<(Vec<Embedding>, Tensor), NluError> {
        if texts.is_empty() {
            return Ok((Vec::new(), no_features()?));
        }
        let (trunk, tuned) = self.run(texts, |ids| self.model.forward_both(ids, &branch.0))?;
        let vectors = (0..texts.len())
            .map(|i| Embedding(mean_normalised(trunk.text(i), EMBEDDING_DIM)))
            .collect();
        Ok((vectors, features_of(&tuned)?))
    }

    /// Last hidden states of each text's tokens.
    fn hidden(&self, texts: &[&str]) -> Result<HiddenStates, NluError> {
        self.run(texts, |ids| self.model.forward(ids))
    }

    /// Tokenizes `texts` and hands their token ids to one of the model's passes.
    fn run<T>(
        &self,
        texts: &[&str],
        pass: impl FnOnce(&[&[u32]]) -> Result<T, String>,
    ) -> Result<T, NluError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| NluError::Tokenize(e.to_string()))?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        pass(&ids).map_err(NluError::Data)
    }
}

/// `[texts, 768]`: each text's L2-normalised mean row, then its per-dimension maximum.
fn features_of(hidden: &HiddenStates) -> Result<Tensor, NluError> {
    let count = hidden.rows.len();
    let mut rows = Vec::with_capacity(count * 2 * EMBEDDING_DIM);
    for i in 0..count {
        let tokens = hidden.text(i);
        rows.extend(mean_normalised(tokens, EMBEDDING_DIM));
        let mut max = vec![f32::NEG_INFINITY; EMBEDDING_DIM];
        for token in tokens.chunks_exact(EMBEDDING_DIM) {
            for (m, v) in max.iter_mut().zip(token) {
                *m = m.max(*v);
            }
        }
        rows.extend(max);
    }
    Ok(Tensor::from_vec(rows, (count, 2 * EMBEDDING_DIM), &Device::Cpu)?)
}

/// The features of no texts, `[0, 768]`: no text, no pass.
fn no_features() -> Result<Tensor, NluError> {
    Ok(Tensor::zeros((0, 2 * EMBEDDING_DIM), candle_core::DType::F32, &Device::Cpu)?)
}

/// The mean of a text's token rows, L2-normalised. Every row is a real token (nothing is
/// padded), and the tokenizer always adds [CLS] and [SEP], so there is at least one row.
fn mean_normalised(tokens: &[f32], width: usize) -> Vec<f32> {
    let count = (tokens.len() / width).max(1) as f32;
    let mut mean = vec![0.0f32; width];
    for token in tokens.chunks_exact(width) {
        for (m, v) in mean.iter_mut().zip(token) {
            *m += v / count;
        }
    }
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    mean.iter().map(|v| v / norm).collect()
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
