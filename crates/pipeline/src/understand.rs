//! Step 2 (model half): how the user feels, now and over the conversation.
//!
//! The classifier runs in the engine (it needs the weights); this step turns its reading into
//! what the later steps and the trace need: the top labels, the Ekman view, valence and arousal,
//! the smoothed mood and its direction, and whether the user seems to be in distress.

use rapport_nlu::emotion::{EmotionReading, EmotionTrajectory, LABELS};
use serde::{Deserialize, Serialize};

/// The emotional reading of one turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionView {
    /// GoEmotions labels over their thresholds, most probable first, with probabilities.
    pub labels: Vec<(String, f32)>,
    /// The dominant Ekman category (or neutral).
    pub ekman: String,
    /// Valence of this message, -1..1.
    pub valence: f32,
    /// Arousal of this message, -1..1.
    pub arousal: f32,
    /// Valence smoothed over the conversation.
    pub mood: f32,
    /// Direction of the smoothed valence over the last turns (per turn).
    pub trend: f32,
    /// Sadness, fear or grief strong enough that the persona should comfort, not flirt.
    pub distress: bool,
}

/// Labels whose probability, summed, signals distress.
const DISTRESS_LABELS: [&str; 5] = ["sadness", "grief", "fear", "nervousness", "remorse"];
/// Summed probability of the distress labels above which a negative message counts as distress.
const DISTRESS_MASS: f32 = 0.5;

/// Step 2: reads one message's emotion into the view and moves the trajectory on.
pub fn read_emotion(reading: &EmotionReading, trajectory: &mut EmotionTrajectory) -> EmotionView {
    let (valence, arousal) = reading.valence_arousal();
    trajectory.push(valence);
    let labels = reading
        .labels
        .iter()
        .map(|&l| (LABELS[l].to_string(), round3(reading.probabilities[l])))
        .collect();
    let distress_mass: f32 = LABELS
        .iter()
        .zip(&reading.probabilities)
        .filter(|(name, _)| DISTRESS_LABELS.contains(name))
        .map(|(_, p)| *p)
        .sum();
    EmotionView {
        labels,
        ekman: format!("{:?}", reading.dominant_ekman()).to_lowercase(),
        valence: round3(valence),
        arousal: round3(arousal),
        mood: round3(trajectory.current()),
        trend: round3(trajectory.trend(4)),
        distress: distress_mass >= DISTRESS_MASS && valence < 0.0,
    }
}

/// A neutral reading, for when the classifier is not loaded (tests of other steps, a persona
/// preview).
pub fn neutral() -> EmotionView {
    EmotionView {
        labels: vec![("neutral".into(), 1.0)],
        ekman: "neutral".into(),
        valence: 0.0,
        arousal: 0.0,
        mood: 0.0,
        trend: 0.0,
        distress: false,
    }
}

/// How the user seems, in words for the prompt, when one non-neutral label is clearly read.
pub fn feeling(emotion: &EmotionView) -> Option<String> {
    let (label, p) = emotion.labels.first()?;
    if label == "neutral" || *p < 0.35 {
        return None;
    }
    let word = match label.as_str() {
        "admiration" => "admiring",
        "amusement" => "amused",
        "anger" => "angry",
        "annoyance" => "annoyed",
        "approval" => "approving",
        "caring" => "caring",
        "confusion" => "confused",
        "curiosity" => "curious",
        "desire" => "full of longing",
        "disappointment" => "disappointed",
        "disapproval" => "disapproving",
        "disgust" => "disgusted",
        "embarrassment" => "embarrassed",
        "excitement" => "excited",
        "fear" => "scared",
        "gratitude" => "grateful",
        "grief" => "grieving",
        "joy" => "happy",
        "love" => "affectionate",
        "nervousness" => "nervous",
        "optimism" => "hopeful",
        "pride" => "proud",
        "realization" => "like something just dawned on them",
        "relief" => "relieved",
        "remorse" => "sorry about something",
        "sadness" => "sad",
        "surprise" => "surprised",
        other => other,
    };
    Some(word.to_string())
}

fn round3(x: f32) -> f32 {
    (x * 1000.0).round() / 1000.0
}
