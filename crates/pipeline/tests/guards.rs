//! Guard quality on the labelled probes in `datasets/guards/probes.jsonl`, with the real
//! sentence encoder: how many forbidden-topic and injection messages are caught, and how many
//! harmless ones are flagged. Lexical rules alone are measured beside them.

use std::collections::BTreeMap;

use rapport_pipeline::guards::{GuardHit, Guards};

use crate::support::{classifier, datasets, persona};

#[derive(serde::Deserialize)]
struct Probe {
    persona: String,
    text: String,
    expect: Option<String>,
}

fn label(hits: &[GuardHit]) -> Option<String> {
    hits.iter().find_map(|h| match h {
        GuardHit::Injection { .. } => Some("injection".to_string()),
        GuardHit::ForbiddenTopic { topic, .. } => Some(topic.clone()),
        _ => None,
    })
}

/// The rows of a JSONL file under `datasets/`.
fn jsonl<T: serde::de::DeserializeOwned>(path: &str) -> Vec<T> {
    std::fs::read_to_string(datasets().join(path))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn guards_catch_the_probes_and_spare_the_harmless() {
    let probes: Vec<Probe> = jsonl("guards/probes.jsonl");
    let nlu = classifier();
    let mut semantic = BTreeMap::new();
    let mut lexical = BTreeMap::new();
    for id in ["creator", "flirt-partner", "wedding-host"] {
        semantic.insert(id, Guards::new(&persona(id), Some(nlu.encoder())).unwrap());
        lexical.insert(id, Guards::new(&persona(id), None).unwrap());
    }
    let score = |guards: &BTreeMap<&str, Guards>, with_vectors: bool| {
        let (mut caught, mut positives, mut false_alarms, mut negatives) = (0, 0, 0, 0);
        let mut misses = Vec::new();
        for p in &probes {
            let vector = with_vectors.then(|| nlu.encoder().encode(&p.text).unwrap());
            if let Some(v) = &vector {
                let sims: Vec<String> = guards[p.persona.as_str()]
                    .similarities(v)
                    .iter()
                    .map(|(n, s)| format!("{n} {s:.2}"))
                    .collect();
                eprintln!(
                    "{:<24} {} | {}",
                    p.expect.as_deref().unwrap_or("-"),
                    sims.join(", "),
                    p.text
                );
            }
            let got = label(&guards[p.persona.as_str()].check_message(&p.text, vector.as_ref()));
            match &p.expect {
                Some(want) => {
                    positives += 1;
                    if got.as_ref() == Some(want) {
                        caught += 1
                    } else {
                        misses.push(format!("missed {want}: {}", p.text))
                    }
                }
                None => {
                    negatives += 1;
                    if let Some(g) = got {
                        false_alarms += 1;
                        misses.push(format!("false {g}: {}", p.text))
                    }
                }
            }
        }
        (caught as f64 / positives as f64, false_alarms as f64 / negatives as f64, misses)
    };
    let (sem_recall, sem_fp, sem_misses) = score(&semantic, true);
    let (lex_recall, lex_fp, _) = score(&lexical, false);
    eprintln!("guards on {} probes: lexical+semantic recall {sem_recall:.2}, false alarms {sem_fp:.2}; lexical only recall {lex_recall:.2}, false alarms {lex_fp:.2}", probes.len());
    for m in &sem_misses {
        eprintln!("  {m}");
    }
    assert!(sem_recall >= 0.85, "recall {sem_recall:.2}: {sem_misses:#?}");
    assert!(sem_fp <= 0.10, "false alarms {sem_fp:.2}: {sem_misses:#?}");
    assert!(
        sem_recall > lex_recall,
        "the semantic half must add something: {sem_recall} vs {lex_recall}"
    );
}

/// Assistant-speak on the labelled replies of `datasets/guards/character.jsonl`: the semantic
/// threshold is the one the training split picks, and the held-out split says how well the
/// whole check (phrases, then similarity) does.
#[test]
fn assistant_speak_threshold_is_chosen_on_train_and_holds_on_held_out() {
    use rapport_pipeline::character::{CharacterGuard, SERVICE_SIMILARITY};
    #[derive(serde::Deserialize)]
    struct Row {
        text: String,
        label: String,
        split: String,
    }
    let rows: Vec<Row> = jsonl("guards/character.jsonl");
    let nlu = classifier();
    let guard = CharacterGuard::new("Margot", Some(nlu.encoder())).unwrap();
    let scored: Vec<(bool, bool, f32, bool)> = rows
        .iter()
        .map(|r| {
            let phrase = CharacterGuard::service_phrase(&r.text).is_some();
            let sim = guard.service_likeness(&r.text, nlu.encoder()).map_or(0.0, |s| s.0);
            (r.split == "train", r.label == "assistant", sim, phrase)
        })
        .collect();
    // Errors on a split at a threshold: misses plus false alarms.
    let errors = |train: bool, t: f32| {
        scored
            .iter()
            .filter(|s| s.0 == train)
            .filter(|(_, positive, sim, phrase)| (*phrase || *sim >= t) != *positive)
            .count()
    };
    let grid: Vec<f32> = (40..=80).map(|i| i as f32 / 100.0).collect();
    let best = grid.iter().copied().map(|t| errors(true, t)).min().unwrap();
    let chosen: Vec<f32> = grid.iter().copied().filter(|&t| errors(true, t) == best).collect();
    eprintln!(
        "train errors {best} at thresholds {:.2}..{:.2}",
        chosen[0],
        chosen[chosen.len() - 1]
    );
    assert!(
        chosen.iter().any(|t| (t - SERVICE_SIMILARITY).abs() < 0.005),
        "the shipped threshold {SERVICE_SIMILARITY} is not among the training split's best: {chosen:?}"
    );
    let held: Vec<_> = scored.iter().filter(|s| !s.0).collect();
    let caught = held.iter().filter(|s| s.1 && (s.3 || s.2 >= SERVICE_SIMILARITY)).count();
    let alarms = held.iter().filter(|s| !s.1 && (s.3 || s.2 >= SERVICE_SIMILARITY)).count();
    let positives = held.iter().filter(|s| s.1).count();
    let lexical = held.iter().filter(|s| s.1 && s.3).count();
    eprintln!(
        "held-out: caught {caught}/{positives} (phrases alone {lexical}), false alarms {alarms}/{}",
        held.len() - positives
    );
    assert!(caught * 10 >= positives * 8, "recall under 80% on held-out");
    assert!(alarms <= 1, "{alarms} in-character replies flagged on held-out");
}
