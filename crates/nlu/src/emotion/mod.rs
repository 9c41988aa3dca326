//! Emotion recognition: the 28 GoEmotions labels (multi-label, calibrated), and the views of
//! them the pipeline reads (Ekman's six plus neutral, valence and arousal).
//!
//! The shipped model ([`EmotionClassifier`]) is all-MiniLM-L6-v2's embeddings, then a copy of
//! its first layer fine-tuned on GoEmotions (Demszky et al., ACL 2020; CC BY 4.0) by
//! `crates/nlu/train/finetune_emotion.py`, then a small MLP head. [`train::train_head`] trains
//! the earlier kind of model, a head on the frozen encoder's features, on the CPU.

pub mod metrics;
mod model;
pub mod train;
mod trajectory;

use serde::Serialize;

pub use model::{EmotionClassifier, EmotionHead};
pub use trajectory::EmotionTrajectory;

/// The labels the model reads: GoEmotions' (the data set owns its label set).
pub use crate::goemotions::{LABELS, NUM_LABELS};

/// Ekman's basic emotions, plus neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ekman {
    /// anger, annoyance, disapproval
    Anger,
    /// disgust
    Disgust,
    /// fear, nervousness
    Fear,
    /// the positive labels
    Joy,
    /// sadness, disappointment, embarrassment, grief, remorse
    Sadness,
    /// surprise, realization, confusion, curiosity
    Surprise,
    /// neutral
    Neutral,
}

impl Ekman {
    /// All seven, in a fixed order.
    pub const ALL: [Ekman; 7] = [
        Ekman::Anger,
        Ekman::Disgust,
        Ekman::Fear,
        Ekman::Joy,
        Ekman::Sadness,
        Ekman::Surprise,
        Ekman::Neutral,
    ];

    /// The Ekman category of a GoEmotions label (the grouping published with the data set).
    pub fn of_label(label: usize) -> Ekman {
        match LABELS[label] {
            "anger" | "annoyance" | "disapproval" => Ekman::Anger,
            "disgust" => Ekman::Disgust,
            "fear" | "nervousness" => Ekman::Fear,
            "sadness" | "disappointment" | "embarrassment" | "grief" | "remorse" => Ekman::Sadness,
            "surprise" | "realization" | "confusion" | "curiosity" => Ekman::Surprise,
            "neutral" => Ekman::Neutral,
            _ => Ekman::Joy,
        }
    }
}

/// (valence, arousal) of each label in [-1, 1], placed on Russell's circumplex by hand: a
/// coarse, documented mapping, good enough to tell a tense message from a sad or a warm one.
const VALENCE_AROUSAL: [(f32, f32); NUM_LABELS] = [
    (0.6, 0.3),
    (0.7, 0.5),
    (-0.7, 0.8),
    (-0.5, 0.5),
    (0.5, 0.1),
    (0.6, 0.1),
    (-0.2, 0.3),
    (0.3, 0.5),
    (0.4, 0.6),
    (-0.6, -0.2),
    (-0.5, 0.2),
    (-0.7, 0.5),
    (-0.5, 0.4),
    (0.8, 0.8),
    (-0.7, 0.7),
    (0.7, 0.2),
    (-0.9, -0.3),
    (0.9, 0.6),
    (0.9, 0.4),
    (-0.4, 0.6),
    (0.6, 0.3),
    (0.7, 0.5),
    (0.1, 0.2),
    (0.5, -0.4),
    (-0.6, -0.1),
    (-0.8, -0.4),
    (0.2, 0.8),
    (0.0, 0.0),
];

/// How one message reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmotionReading {
    /// Calibrated probability of each label, in [`LABELS`] order.
    pub probabilities: Vec<f32>,
    /// Labels over their tuned threshold, most probable first; never empty (the most probable
    /// label stands in when none passes).
    pub labels: Vec<usize>,
}

impl EmotionReading {
    /// A reading from calibrated probabilities (in [`LABELS`] order) and per-label thresholds.
    pub fn new(probabilities: Vec<f32>, thresholds: &[f32]) -> Self {
        let mut labels: Vec<usize> =
            (0..NUM_LABELS).filter(|&i| probabilities[i] >= thresholds[i]).collect();
        labels.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        if labels.is_empty() {
            let best = (0..NUM_LABELS)
                .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
                .unwrap_or(NUM_LABELS - 1);
            labels.push(best);
        }
        Self { probabilities, labels }
    }

    /// The label names, most probable first.
    pub fn label_names(&self) -> Vec<&'static str> {
        self.labels.iter().map(|&l| LABELS[l]).collect()
    }

    /// Each Ekman category's probability: the largest of its labels' probabilities.
    pub fn ekman(&self) -> Vec<(Ekman, f32)> {
        Ekman::ALL
            .iter()
            .map(|&e| {
                let p = (0..NUM_LABELS)
                    .filter(|&l| Ekman::of_label(l) == e)
                    .map(|l| self.probabilities[l])
                    .fold(0.0, f32::max);
                (e, p)
            })
            .collect()
    }

    /// The most probable Ekman category.
    pub fn dominant_ekman(&self) -> Ekman {
        self.ekman()
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(e, _)| e)
            .unwrap_or(Ekman::Neutral)
    }

    /// Valence and arousal in [-1, 1]: the labels' coordinates weighted by their probabilities.
    pub fn valence_arousal(&self) -> (f32, f32) {
        let total: f32 = self.probabilities.iter().sum();
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let (mut v, mut a) = (0.0, 0.0);
        for (p, (lv, la)) in self.probabilities.iter().zip(VALENCE_AROUSAL) {
            v += p * lv;
            a += p * la;
        }
        (v / total, a / total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_hot(label: usize, p: f32) -> Vec<f32> {
        let mut v = vec![0.01; NUM_LABELS];
        v[label] = p;
        v
    }

    fn index(name: &str) -> usize {
        LABELS.iter().position(|l| *l == name).unwrap()
    }

    #[test]
    fn ekman_grouping_covers_every_label() {
        let joy: Vec<&str> = (0..NUM_LABELS)
            .filter(|&l| Ekman::of_label(l) == Ekman::Joy)
            .map(|l| LABELS[l])
            .collect();
        assert_eq!(joy.len(), 12, "{joy:?}");
        assert_eq!(Ekman::of_label(index("grief")), Ekman::Sadness);
        assert_eq!(Ekman::of_label(index("neutral")), Ekman::Neutral);
    }

    #[test]
    fn readings_keep_labels_over_threshold_and_never_none() {
        let t = vec![0.5; NUM_LABELS];
        let mut p = one_hot(index("joy"), 0.9);
        p[index("love")] = 0.6;
        let r = EmotionReading::new(p, &t);
        assert_eq!(r.label_names(), ["joy", "love"]);
        let weak = EmotionReading::new(one_hot(index("fear"), 0.3), &t);
        assert_eq!(weak.label_names(), ["fear"]);
        assert_eq!(weak.dominant_ekman(), Ekman::Fear);
    }

    #[test]
    fn valence_follows_the_labels() {
        let t = vec![0.5; NUM_LABELS];
        let (v_sad, _) = EmotionReading::new(one_hot(index("grief"), 0.95), &t).valence_arousal();
        let (v_joy, a_joy) =
            EmotionReading::new(one_hot(index("excitement"), 0.95), &t).valence_arousal();
        assert!(v_sad < -0.5 && v_joy > 0.5 && a_joy > 0.5, "{v_sad} {v_joy} {a_joy}");
    }
}
