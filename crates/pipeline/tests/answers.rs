//! Does a message answer the question the persona just asked? The closeness decision's
//! "substance" signal, tuned on the training split of `datasets/guards/answers.jsonl` and
//! measured on its held-out split (real answers from chitchat-dataset against answers to other
//! questions and farming lines; `datasets/guards/make_answer_probes.py` says how it is built).
//!
//! The rule: a message answers when it shares a word family with the question, says yes or no
//! to a yes/no question, or its MiniLM vector is at `ANSWER_SIMILARITY` or more to the
//! question's. The threshold is the one the training split picks; the held-out split reports
//! how well the rule does, beside the rule it replaced ("answered" = at least three words after
//! any message with a `?`).

use rapport_core::text_stats::words;
use rapport_nlu::cosine;
use rapport_pipeline::listening::{answers, question_sentences, KeptVector, ANSWER_SIMILARITY};

use crate::support::{classifier, datasets};

struct Probe {
    lexical: bool,
    similarity: f32,
    answers: bool,
    held_out: bool,
    farming: bool,
    old_rule: bool,
    shipped_rule: bool,
}

fn probes() -> Vec<Probe> {
    let text = std::fs::read_to_string(datasets().join("guards/answers.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The question sentence, as the engine takes it from a reply ("…?" alone leaves the turn).
    let questions: Vec<String> = rows
        .iter()
        .map(|r| {
            let turn = r["question"].as_str().unwrap();
            question_sentences(turn).pop().unwrap_or_else(|| turn.to_string())
        })
        .collect();
    let messages: Vec<&str> = rows.iter().map(|r| r["message"].as_str().unwrap()).collect();
    let encoder = classifier();
    let encoder = encoder.encoder();
    let q_vectors =
        encoder.encode_batch(&questions.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let m_vectors = encoder.encode_batch(&messages).unwrap();
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let kept = KeptVector::new(&q_vectors[i].0);
            Probe {
                lexical: answers(messages[i], &questions[i], None, None).is_some(),
                similarity: cosine(&m_vectors[i].0, kept.values()),
                answers: r["answers"].as_bool().unwrap(),
                held_out: r["split"] == "held_out",
                farming: r["source"] == "farming",
                old_rule: words(messages[i]).len() >= 3,
                shipped_rule: answers(
                    messages[i],
                    &questions[i],
                    Some(&m_vectors[i].0),
                    Some(&kept),
                )
                .is_some(),
            }
        })
        .collect()
}

/// Mean of the true-positive and true-negative rates.
fn balanced_accuracy(probes: &[&Probe], decide: impl Fn(&Probe) -> bool) -> f64 {
    let rate = |label: bool| {
        let of: Vec<&&Probe> = probes.iter().filter(|p| p.answers == label).collect();
        of.iter().filter(|p| decide(p) == label).count() as f64 / of.len().max(1) as f64
    };
    (rate(true) + rate(false)) / 2.0
}

/// A 95% percentile bootstrap interval (1,000 resamples, fixed seed).
fn interval(probes: &[&Probe], decide: impl Fn(&Probe) -> bool + Copy) -> (f64, f64) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut stats: Vec<f64> = (0..1000)
        .map(|_| {
            let sample: Vec<&Probe> = (0..probes.len())
                .map(|_| probes[(next() % probes.len() as u64) as usize])
                .collect();
            balanced_accuracy(&sample, decide)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    (stats[25], stats[974])
}

#[test]
fn the_answer_threshold_is_the_training_splits_choice_and_holds_on_held_out_questions() {
    let all = probes();
    let train: Vec<&Probe> = all.iter().filter(|p| !p.held_out).collect();
    let held_out: Vec<&Probe> = all.iter().filter(|p| p.held_out).collect();
    assert!(train.len() >= 300 && held_out.len() >= 300, "{} / {}", train.len(), held_out.len());

    // Tune on training questions only.
    let grid: Vec<f32> = (0..=24).map(|i| 0.10 + 0.025 * i as f32).collect();
    let (best, best_score) = grid
        .iter()
        .map(|&t| (t, balanced_accuracy(&train, |p| p.lexical || p.similarity >= t)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.total_cmp(&a.0)))
        .unwrap();
    eprintln!("answers: training split (n = {}) picks {best:.3} (balanced accuracy {best_score:.3}); shipped {ANSWER_SIMILARITY}", train.len());
    assert!(
        (best - ANSWER_SIMILARITY).abs() <= 0.026,
        "the training split picks {best:.3}; ANSWER_SIMILARITY is {ANSWER_SIMILARITY}"
    );
    // The shipped rule is the tuned rule.
    for p in &all {
        assert_eq!(p.shipped_rule, p.lexical || p.similarity >= ANSWER_SIMILARITY);
    }

    // Report on held-out questions.
    let shipped = |p: &Probe| p.shipped_rule;
    let old = |p: &Probe| p.old_rule;
    let score = balanced_accuracy(&held_out, shipped);
    let (low, high) = interval(&held_out, shipped);
    let old_score = balanced_accuracy(&held_out, old);
    let (old_low, old_high) = interval(&held_out, old);
    let farming: Vec<&&Probe> = held_out.iter().filter(|p| p.farming).collect();
    let farming_passed = farming.iter().filter(|p| p.shipped_rule).count();
    eprintln!(
        "answers: held-out split (n = {}): balanced accuracy {score:.3} [95% {low:.3}, {high:.3}]; the old rule {old_score:.3} [{old_low:.3}, {old_high:.3}]; farming lines taken for answers {farming_passed} of {}",
        held_out.len(),
        farming.len()
    );
    assert!(
        low > old_high,
        "the new rule must beat the old one on held-out questions: {low:.3} vs {old_high:.3}"
    );
    assert!(low > 0.6, "{low:.3}");
    assert!(
        farming_passed * 5 <= farming.len(),
        "{farming_passed} of {} farming lines read as answers",
        farming.len()
    );
}
