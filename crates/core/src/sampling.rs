//! Sampling parameters, with the ranges every backend accepts.

use serde::{Deserialize, Serialize};

use crate::GenerationError;

/// DRY ("don't repeat yourself") penalty: tokens that would extend a sequence already seen in the
/// context are penalised by `multiplier * base^(match_length - allowed_length)`.
///
/// Small models fall into loops ("I'm sorry to hear that." six times over); a plain repetition
/// penalty also punishes the words a reply legitimately needs again ("I", "you", "the"), while DRY
/// only punishes repeated *sequences*.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryParams {
    /// Strength; 0 disables the penalty.
    pub multiplier: f32,
    /// Growth of the penalty with the length of the repeated sequence.
    pub base: f32,
    /// Repeats up to this many tokens long are free.
    pub allowed_length: usize,
}

impl Default for DryParams {
    fn default() -> Self {
        Self { multiplier: 0.8, base: 1.75, allowed_length: 2 }
    }
}

/// How a reply is sampled.
///
/// `temperature == 0.0` means greedy decoding (used by benchmarks so that runs compare).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 for greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sums to this.
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Drop tokens less likely than `min_p` times the most likely one.
    pub min_p: Option<f32>,
    /// Multiplicative penalty on tokens already present (1.0 = none).
    pub repetition_penalty: Option<f32>,
    /// Additive penalty growing with how often a token occurred.
    pub frequency_penalty: Option<f32>,
    /// Additive penalty on any token that occurred.
    pub presence_penalty: Option<f32>,
    /// Sequence-repetition penalty.
    pub dry: Option<DryParams>,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// Generation stops before any of these strings; they are not part of the reply.
    pub stop: Vec<String>,
    /// Seed for reproducible sampling, where the backend supports one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: Some(0.9),
            top_k: None,
            min_p: Some(0.05),
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
            dry: Some(DryParams::default()),
            max_tokens: 160,
            stop: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties: the same prompt gives the same tokens, which is what a
    /// speed comparison between engines needs.
    pub fn greedy(max_tokens: u32) -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
            dry: None,
            max_tokens,
            stop: Vec::new(),
            seed: None,
        }
    }

    /// Whether sampling is deterministic.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every value against the range all backends accept.
    pub fn validate(&self) -> Result<(), GenerationError> {
        fn bad(msg: String) -> Result<(), GenerationError> {
            Err(GenerationError::InvalidRequest(msg))
        }
        if !(self.temperature.is_finite() && (0.0..=5.0).contains(&self.temperature)) {
            return bad(format!("temperature must be within 0..=5, got {}", self.temperature));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be within (0, 1], got {p}"));
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("min_p must be within [0, 1), got {p}"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(r) = self.repetition_penalty {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!("repetition_penalty must be positive, got {r}"));
            }
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                    return bad(format!("{name} must be within -2..=2, got {v}"));
                }
            }
        }
        if let Some(d) = &self.dry {
            if !(d.multiplier.is_finite()
                && d.multiplier >= 0.0
                && d.base.is_finite()
                && d.base >= 1.0)
            {
                return bad("dry.multiplier must be >= 0 and dry.base >= 1".into());
            }
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_greedy_are_valid() {
        SamplingParams::default().validate().unwrap();
        SamplingParams::greedy(16).validate().unwrap();
        assert!(SamplingParams::greedy(16).is_greedy());
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_field_named() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: Some(0.0), ..Default::default() }, "top_p"),
            (SamplingParams { min_p: Some(1.0), ..Default::default() }, "min_p"),
            (SamplingParams { top_k: Some(0), ..Default::default() }, "top_k"),
            (SamplingParams { max_tokens: 0, ..Default::default() }, "max_tokens"),
            (SamplingParams { stop: vec![String::new()], ..Default::default() }, "stop"),
            (
                SamplingParams { frequency_penalty: Some(3.0), ..Default::default() },
                "frequency_penalty",
            ),
        ];
        for (params, field) in cases {
            let err = params.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
