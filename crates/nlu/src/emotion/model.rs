//! The trained head and the classifier that puts it behind the encoder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{EmotionReading, LABELS, NUM_LABELS};
use crate::{Embedding, NluError, SentenceEncoder};

/// Width of the features the head reads ([`SentenceEncoder::features`]).
pub const FEATURE_DIM: usize = 768;

/// What the JSON beside the weights holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeadMeta {
    pub format: u32,
    pub features: String,
    pub hidden: usize,
    pub labels: Vec<String>,
    /// Platt scaling per label: p = sigmoid(a * logit + b), fitted on held-out data.
    pub platt: Vec<[f32; 2]>,
    /// Decision threshold per label on the calibrated probability.
    pub thresholds: Vec<f32>,
    pub training: serde_json::Value,
    pub attribution: String,
}

/// A two-layer MLP over sentence features, with per-label calibration and thresholds.
pub struct EmotionHead {
    fc1: Linear,
    fc2: Linear,
    pub(crate) meta: HeadMeta,
}

impl EmotionHead {
    pub(crate) fn from_parts(fc1: Linear, fc2: Linear, meta: HeadMeta) -> Self {
        Self { fc1, fc2, meta }
    }

    /// Raw scores `[n, 28]` for features `[n, 768]`.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor, NluError> {
        Ok(self.fc2.forward(&self.fc1.forward(features)?.gelu_erf()?)?)
    }

    /// Calibrated probabilities, one row per message.
    pub fn probabilities(&self, features: &Tensor) -> Result<Vec<Vec<f32>>, NluError> {
        let logits = self.logits(features)?.to_vec2::<f32>()?;
        Ok(logits
            .into_iter()
            .map(|row| row.iter().zip(&self.meta.platt).map(|(&z, [a, b])| sigmoid(a * z + b)).collect())
            .collect())
    }

    /// The decision threshold of each label.
    pub fn thresholds(&self) -> &[f32] {
        &self.meta.thresholds
    }

    /// Training facts stored with the head (data, metrics, options).
    pub fn training_info(&self) -> &serde_json::Value {
        &self.meta.training
    }

    /// Adds an evaluation result (`name` → metrics) to the stored training facts.
    pub fn record_evaluation(&mut self, name: &str, metrics: serde_json::Value) {
        if let Some(obj) = self.meta.training.as_object_mut() {
            obj.insert(name.to_string(), metrics);
        }
    }

    /// Writes `PATH.safetensors` and `PATH.json` (PATH without extension).
    pub fn save(&self, stem: &Path) -> Result<(), NluError> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert("fc1.weight".into(), self.fc1.weight().clone());
        tensors.insert("fc1.bias".into(), self.fc1.bias().expect("fc1 has a bias").clone());
        tensors.insert("fc2.weight".into(), self.fc2.weight().clone());
        tensors.insert("fc2.bias".into(), self.fc2.bias().expect("fc2 has a bias").clone());
        let weights = stem.with_extension("safetensors");
        candle_core::safetensors::save(&tensors, &weights)?;
        let json = serde_json::to_string_pretty(&self.meta).expect("metadata serialises");
        std::fs::write(stem.with_extension("json"), json).map_err(|e| NluError::Data(format!("{}: {e}", stem.display())))
    }

    /// Reads what [`save`](Self::save) wrote.
    pub fn load(stem: &Path) -> Result<Self, NluError> {
        let meta_path = stem.with_extension("json");
        let meta: HeadMeta = std::fs::read_to_string(&meta_path)
            .map_err(|e| NluError::Data(format!("{}: {e}; run `rapport emotion train`", meta_path.display())))
            .and_then(|s| serde_json::from_str(&s).map_err(|e| NluError::Data(format!("{}: {e}", meta_path.display()))))?;
        if meta.labels.len() != NUM_LABELS || meta.platt.len() != NUM_LABELS || meta.thresholds.len() != NUM_LABELS
            || meta.labels.iter().zip(LABELS).any(|(a, b)| a != b)
        {
            return Err(NluError::Data(format!("{}: not a GoEmotions head of this version", meta_path.display())));
        }
        let weights = stem.with_extension("safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| NluError::Data(format!("{}: {e}", weights.display())))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let fc1 = candle_nn::linear(FEATURE_DIM, meta.hidden, vb.pp("fc1"))?;
        let fc2 = candle_nn::linear(meta.hidden, NUM_LABELS, vb.pp("fc2"))?;
        Ok(Self { fc1, fc2, meta })
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Emotion recognition of messages: the encoder's features through the trained head.
pub struct EmotionClassifier {
    encoder: SentenceEncoder,
    head: EmotionHead,
}

impl EmotionClassifier {
    /// Puts a head behind an encoder.
    pub fn new(encoder: SentenceEncoder, head: EmotionHead) -> Self {
        Self { encoder, head }
    }

    /// How one message feels.
    pub fn classify(&self, text: &str) -> Result<EmotionReading, NluError> {
        Ok(self.classify_batch(&[text])?.pop().expect("one text in, one reading out"))
    }

    /// How each of several messages feels, in one forward pass.
    pub fn classify_batch(&self, texts: &[&str]) -> Result<Vec<EmotionReading>, NluError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let features = self.encoder.features(texts)?;
        let probs = self.head.probabilities(&features)?;
        Ok(probs.into_iter().map(|p| EmotionReading::new(p, self.head.thresholds())).collect())
    }

    /// One message's sentence vector and emotion from a single forward pass: the vector is the
    /// first half of the classifier's features, so a turn that needs both pays for one.
    pub fn understand(&self, text: &str) -> Result<(Embedding, EmotionReading), NluError> {
        let features = self.encoder.features(&[text])?;
        let vector = features.narrow(1, 0, crate::EMBEDDING_DIM)?.squeeze(0)?.to_vec1::<f32>()?;
        let probs = self.head.probabilities(&features)?.pop().expect("one row in, one row out");
        Ok((Embedding(vector), EmotionReading::new(probs, self.head.thresholds())))
    }

    /// The encoder, for callers that also need sentence vectors.
    pub fn encoder(&self) -> &SentenceEncoder {
        &self.encoder
    }

    /// The head.
    pub fn head(&self) -> &EmotionHead {
        &self.head
    }
}
