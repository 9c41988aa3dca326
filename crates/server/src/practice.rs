//! The practice panel's view of a turn: what the engine read and decided, without the prompt.

use rapport_pipeline::TurnTrace;
use serde_json::{json, Value};

/// Stage, closeness and its decision with reasons, what the message did with the conversation
/// (took up her words, repeated itself, answered her question), the emotion read, the secret's
/// state and the guards that fired on the message.
pub fn practice_view(trace: &TurnTrace) -> Value {
    let mut labels = trace.emotion.labels.clone();
    labels.sort_by(|a, b| b.1.total_cmp(&a.1));
    labels.truncate(3);
    json!({
        "turn": trace.turn,
        "stage": {"from": trace.stage.from.as_str(), "to": trace.stage.to.as_str(), "why": trace.stage.why},
        "closeness": {
            "before": trace.closeness.before.get(),
            "after": trace.closeness.after.get(),
            "decision": trace.closeness.decision.as_str(),
            "reasons": trace.closeness.reasons,
        },
        "listening": trace.signals.thread,
        "emotion": {
            "ekman": trace.emotion.ekman,
            "labels": labels,
            "valence": trace.emotion.valence,
            "arousal": trace.emotion.arousal,
            "mood": trace.emotion.mood,
            "distress": trace.emotion.distress,
        },
        "secret": trace.secret,
        "guards": trace.input_guards.iter().map(|h| h.code()).collect::<Vec<_>>(),
    })
}
