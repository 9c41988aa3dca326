//! The trained head and the classifier that puts it behind the encoder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{EmotionReading, LABELS, NUM_LABELS};
use crate::{Embedding, EncoderBranch, NluError, SentenceEncoder};

/// Width of the features the head reads ([`SentenceEncoder::features`]).
pub const FEATURE_DIM: usize = 768;

/// What the JSON beside the weights holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeadMeta {
    /// 1: a head on the frozen encoder's features; 2: with tuned encoder layers (`encoder`).
    pub format: u32,
    pub features: String,
    pub hidden: usize,
    /// The tuned encoder layers stored beside the head, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<BranchSpec>,
    pub labels: Vec<String>,
    /// Platt scaling per label: p = sigmoid(a * logit + b), fitted on held-out data.
    pub platt: Vec<[f32; 2]>,
    /// Decision threshold per label on the calibrated probability.
    pub thresholds: Vec<f32>,
    pub training: serde_json::Value,
    pub attribution: String,
}

/// Which encoder layers a head's file replaces: layers `tuned_from..layers` are stored as
/// `encoder.layer.N.…`; the encoder's own layers below `tuned_from` are shared, and the head
/// reads the last stored layer (so a branch of fewer layers than the encoder is a smaller model).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct BranchSpec {
    pub layers: usize,
    pub tuned_from: usize,
}

/// A two-layer MLP over sentence features, with per-label calibration and thresholds; and, for
/// a fine-tuned model, the encoder layers it was tuned with.
pub struct EmotionHead {
    fc1: Linear,
    fc2: Linear,
    pub(crate) meta: HeadMeta,
    /// The safetensors file it was read from, which also holds the tuned layers.
    weights: Option<PathBuf>,
}

impl EmotionHead {
    pub(crate) fn from_parts(fc1: Linear, fc2: Linear, meta: HeadMeta) -> Self {
        Self { fc1, fc2, meta, weights: None }
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
            .map(|row| {
                row.iter().zip(&self.meta.platt).map(|(&z, [a, b])| sigmoid(a * z + b)).collect()
            })
            .collect())
    }

    /// The decision threshold of each label.
    pub fn thresholds(&self) -> &[f32] {
        &self.meta.thresholds
    }

    /// Whether the head comes with tuned encoder layers (it then reads the branch's features,
    /// not the frozen encoder's).
    pub fn is_tuned(&self) -> bool {
        self.meta.encoder.is_some()
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

    /// Writes `PATH.safetensors` and `PATH.json` (PATH without extension). Only a head trained
    /// here (on frozen features) can be saved: tuned encoder layers come from
    /// `crates/nlu/train/finetune_emotion.py`, which writes its own files.
    pub fn save(&self, stem: &Path) -> Result<(), NluError> {
        if self.meta.encoder.is_some() {
            return Err(NluError::Data(
                "a head with tuned encoder layers is written by its trainer, not saved here".into(),
            ));
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert("fc1.weight".into(), self.fc1.weight().clone());
        tensors.insert("fc1.bias".into(), self.fc1.bias().expect("fc1 has a bias").clone());
        tensors.insert("fc2.weight".into(), self.fc2.weight().clone());
        tensors.insert("fc2.bias".into(), self.fc2.bias().expect("fc2 has a bias").clone());
        let weights = stem.with_extension("safetensors");
        candle_core::safetensors::save(&tensors, &weights)?;
        let json = serde_json::to_string_pretty(&self.meta).expect("metadata serialises");
        std::fs::write(stem.with_extension("json"), json)
            .map_err(|e| NluError::Data(format!("{}: {e}", stem.display())))
    }

    /// Reads what [`save`](Self::save) wrote.
    pub fn load(stem: &Path) -> Result<Self, NluError> {
        let meta_path = stem.with_extension("json");
        let meta: HeadMeta = std::fs::read_to_string(&meta_path)
            .map_err(|e| {
                NluError::Data(format!("{}: {e}; run `rapport emotion train`", meta_path.display()))
            })
            .and_then(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| NluError::Data(format!("{}: {e}", meta_path.display())))
            })?;
        if !matches!(meta.format, 1 | 2) || (meta.format == 2) != meta.encoder.is_some() {
            return Err(NluError::Data(format!(
                "{}: unknown head format {}",
                meta_path.display(),
                meta.format
            )));
        }
        if let Some(spec) = meta.encoder.filter(|s| s.tuned_from >= s.layers) {
            return Err(NluError::Data(format!(
                "{}: no tuned layers in {spec:?}",
                meta_path.display()
            )));
        }
        if meta.labels.len() != NUM_LABELS
            || meta.platt.len() != NUM_LABELS
            || meta.thresholds.len() != NUM_LABELS
            || meta.labels.iter().zip(LABELS).any(|(a, b)| a != b)
        {
            return Err(NluError::Data(format!(
                "{}: not a GoEmotions head of this version",
                meta_path.display()
            )));
        }
        let weights = stem.with_extension("safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| NluError::Data(format!("{}: {e}", weights.display())))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let fc1 = candle_nn::linear(FEATURE_DIM, meta.hidden, vb.pp("fc1"))?;
        let fc2 = candle_nn::linear(meta.hidden, NUM_LABELS, vb.pp("fc2"))?;
        Ok(Self { fc1, fc2, meta, weights: Some(weights) })
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Emotion recognition of messages: the encoder's features (or its tuned branch's) through the
/// trained head.
pub struct EmotionClassifier {
    encoder: SentenceEncoder,
    branch: Option<EncoderBranch>,
    head: EmotionHead,
}

impl EmotionClassifier {
    /// Puts a head behind an encoder, reading the head's tuned encoder layers if it has any.
    pub fn new(encoder: SentenceEncoder, head: EmotionHead) -> Result<Self, NluError> {
        let branch = match (head.meta.encoder, &head.weights) {
            (Some(spec), Some(weights)) => {
                Some(encoder.load_branch(weights, spec.tuned_from..spec.layers)?)
            }
            (Some(_), None) => {
                return Err(NluError::Data(
                    "a head with tuned encoder layers must be loaded from its file".into(),
                ))
            }
            (None, _) => None,
        };
        Ok(Self { encoder, branch, head })
    }

    /// The head's input `[n, 768]` for each text: from the tuned branch if the head has one,
    /// else from the encoder's last layer.
    pub fn features(&self, texts: &[&str]) -> Result<Tensor, NluError> {
        match &self.branch {
            Some(branch) => self.encoder.branch_features(texts, branch),
            None => self.encoder.features(texts),
        }
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
        let features = self.features(texts)?;
        let probs = self.head.probabilities(&features)?;
        Ok(probs.into_iter().map(|p| EmotionReading::new(p, self.head.thresholds())).collect())
    }

    /// One message's sentence vector and emotion from a single forward pass. On frozen
    /// features the vector is the first half of the classifier's features; with a tuned
    /// branch, the layers below the branch run once for both.
    pub fn understand(&self, text: &str) -> Result<(Embedding, EmotionReading), NluError> {
        let (vector, features) = match &self.branch {
            Some(branch) => {
                let (mut vectors, features) = self.encoder.encode_with_branch(&[text], branch)?;
                (vectors.pop().expect("one text in, one vector out"), features)
            }
            None => {
                let features = self.encoder.features(&[text])?;
                (
                    Embedding(
                        features
                            .narrow(1, 0, crate::EMBEDDING_DIM)?
                            .squeeze(0)?
                            .to_vec1::<f32>()?,
                    ),
                    features,
                )
            }
        };
        let probs = self.head.probabilities(&features)?.pop().expect("one row in, one row out");
        Ok((vector, EmotionReading::new(probs, self.head.thresholds())))
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
