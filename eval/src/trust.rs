//! How far the coach's readings agree with a person's: each detector behind a tip or a skill
//! score, run on messages a person labelled (`datasets/coach/agreement.jsonl`), with the share
//! of agreement and Cohen's κ (chance-corrected), each with a bootstrap interval.
//!
//! The labels were written without looking at what the detectors say, and no detector was
//! tuned on them: every item is held out. The page shows the result beside each skill, so a
//! learner knows how much a score can be leaned on.

use std::collections::BTreeMap;
use std::path::Path;

use rapport_nlu::SentenceEncoder;
use rapport_pipeline::listening::{
    question_sentences, read_thread, Thread, ThreadInput, ThreadReading,
};
use rapport_pipeline::signals::read_signals;
use serde::{Deserialize, Serialize};

use crate::coach::{acknowledges, feeling_in, is_open_question, picks_up, Skill};
use crate::stats::SplitMix64;
use crate::EvalError;

/// One labelled message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledMessage {
    /// Where it comes from (`chitchat/<conversation>/<line>` or `simulated/<dialogue>/<turn>`).
    pub id: String,
    /// The other person's last two lines, oldest first ("" when there was one).
    pub partner: Vec<String>,
    /// The message.
    pub message: String,
    /// What the person reading it decided.
    pub labels: Labels,
}

/// A person's reading of a message (`None`: the question does not apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// Its question invites more than yes or no (None: it asks nothing).
    pub asks_open: Option<bool>,
    /// It takes up something specific the other person said.
    pub listened: bool,
    /// The other person's last line said how they feel.
    pub partner_feeling: bool,
    /// It acknowledges that feeling (None: there was none).
    pub acknowledged: Option<bool>,
    /// It answers the question the other person's last line asked (None: none was asked).
    pub answered: Option<bool>,
    /// It pushes for closeness.
    pub pushed: bool,
}

/// One detector against the labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// The detector, in words.
    pub detector: String,
    /// The skill it serves.
    pub skill: Option<Skill>,
    /// Items the label applies to.
    pub n: usize,
    /// Items the label calls positive.
    pub positives: usize,
    /// Share of items where detector and label agree.
    pub agreement: f64,
    /// 95% bootstrap interval of the agreement.
    pub agreement_ci: (f64, f64),
    /// Cohen's κ (None when one side never varies).
    pub kappa: Option<f64>,
    /// 95% bootstrap interval of κ (over resamples where it is defined).
    pub kappa_ci: Option<(f64, f64)>,
    /// (label, detector) counts: true/true, true/false, false/true, false/false.
    pub confusion: [usize; 4],
}

/// Reads the labelled messages.
pub fn load(path: &Path) -> Result<Vec<LabelledMessage>, EvalError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| EvalError::Invalid(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// The sentence vectors the live pipeline reads a message with.
struct Vectors {
    message: Vec<f32>,
    replies: Vec<Vec<f32>>,
    question: Option<Vec<f32>>,
}

fn vectors(m: &LabelledMessage, encoder: &SentenceEncoder) -> Result<Vectors, EvalError> {
    let encode =
        |t: &str| encoder.encode(t).map(|e| e.0).map_err(|e| EvalError::Model(e.to_string()));
    let replies: Vec<&String> = m.partner.iter().filter(|p| !p.trim().is_empty()).collect();
    Ok(Vectors {
        message: encode(&m.message)?,
        replies: replies.iter().map(|r| encode(r)).collect::<Result<_, _>>()?,
        question: match m.partner.last().and_then(|l| question_sentences(l).pop()) {
            Some(q) => Some(encode(&q)?),
            None => None,
        },
    })
}

/// Every detector against `items`; resampling seeded by `seed`. With `encoder`, the pipeline's
/// readings are also measured as the live pipeline makes them (words, then sentence vectors),
/// and the skill "give and take" is credited to that reading.
pub fn measure(
    items: &[LabelledMessage],
    seed: u64,
    encoder: Option<&SentenceEncoder>,
) -> Result<Vec<Agreement>, EvalError> {
    let vectors: Vec<Option<Vectors>> = match encoder {
        Some(e) => items.iter().map(|m| vectors(m, e).map(Some)).collect::<Result<_, _>>()?,
        None => items.iter().map(|_| None).collect(),
    };
    let live = |i: usize, m: &LabelledMessage| -> ThreadReading {
        let v = vectors[i].as_ref().expect("vectors when an encoder is given");
        let replies: Vec<String> =
            m.partner.iter().filter(|p| !p.trim().is_empty()).cloned().collect();
        let replies: Vec<&str> = replies.iter().map(String::as_str).collect();
        let mut thread = Thread::default();
        for (n, r) in v.replies.iter().enumerate() {
            let last = n + 1 == v.replies.len();
            thread.push_reply(Some(r), if last { v.question.as_deref() } else { None });
        }
        read_thread(&ThreadInput {
            message: &m.message,
            vector: Some(&v.message),
            earlier_messages: &[],
            recent_replies: &replies,
            thread: &thread,
            persona_name: "",
        })
    };
    let recent = |m: &LabelledMessage| -> Vec<String> {
        m.partner.iter().filter(|p| !p.trim().is_empty()).cloned().collect()
    };
    let last = |m: &LabelledMessage| m.partner.last().cloned().unwrap_or_default();
    let thread = |m: &LabelledMessage| {
        let replies = recent(m);
        let replies: Vec<&str> = replies.iter().map(String::as_str).collect();
        read_thread(&ThreadInput {
            message: &m.message,
            vector: None,
            earlier_messages: &[],
            recent_replies: &replies,
            thread: &Thread::default(),
            persona_name: "",
        })
    };
    // Each detector sees the item and its place (the live readings need the item's vectors).
    let pairs = |label: &dyn Fn(&LabelledMessage) -> Option<bool>,
                 detect: &dyn Fn(usize, &LabelledMessage) -> bool| {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, m)| label(m).map(|l| (l, detect(i, m))))
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let mut add = |detector: &str, skill, pairs: Vec<(bool, bool)>| {
        out.push(agreement(detector, skill, &pairs, seed));
    };
    add(
        "open question (of the messages that ask one)",
        Some(Skill::OpenQuestions),
        pairs(&|m| m.labels.asks_open, &|_, m| {
            question_sentences(&m.message).iter().any(|q| is_open_question(q))
        }),
    );
    add(
        "takes up what they said (the coach's rule)",
        Some(Skill::Listening),
        pairs(&|m| Some(m.labels.listened), &|_, m| {
            let r = recent(m);
            let r: Vec<&str> = r.iter().map(String::as_str).collect();
            picks_up(&m.message, &r, None)
        }),
    );
    add(
        "takes up what they said (the pipeline's live reading, words only)",
        None,
        pairs(&|m| Some(m.labels.listened), &|_, m| thread(m).listened.is_some()),
    );
    add(
        "answers their question (the pipeline's reading, words only)",
        encoder.is_none().then_some(Skill::Reciprocity),
        pairs(&|m| m.labels.answered, &|_, m| thread(m).answered.is_some()),
    );
    if encoder.is_some() {
        add(
            "takes up what they said (the pipeline's live reading, with sentence vectors)",
            None,
            pairs(&|m| Some(m.labels.listened), &|i, m| live(i, m).listened.is_some()),
        );
        add(
            "answers their question (the pipeline's live reading, with sentence vectors)",
            Some(Skill::Reciprocity),
            pairs(&|m| m.labels.answered, &|i, m| live(i, m).answered.is_some()),
        );
    }
    add(
        "they said how they feel",
        None,
        pairs(&|m| Some(m.labels.partner_feeling), &|_, m| feeling_in(&last(m)).is_some()),
    );
    add(
        "acknowledges their feeling (of the messages after one)",
        Some(Skill::Mirroring),
        pairs(&|m| m.labels.acknowledged, &|_, m| acknowledges(&m.message)),
    );
    add(
        "pushes for closeness",
        Some(Skill::Pacing),
        pairs(&|m| Some(m.labels.pushed), &|_, m| read_signals(&m.message, None).push.is_some()),
    );
    Ok(out)
}

/// How far each skill's score can be trusted: the agreement of the detector behind it.
pub fn by_skill(agreements: &[Agreement]) -> BTreeMap<Skill, Agreement> {
    agreements.iter().filter_map(|a| a.skill.map(|s| (s, a.clone()))).collect()
}

fn agreement(detector: &str, skill: Option<Skill>, pairs: &[(bool, bool)], seed: u64) -> Agreement {
    let share = |p: &[(bool, bool)]| {
        p.iter().filter(|(l, d)| l == d).count() as f64 / p.len().max(1) as f64
    };
    let mut confusion = [0; 4];
    for (l, d) in pairs {
        confusion[match (l, d) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        }] += 1;
    }
    let mut rng = SplitMix64::new(seed ^ crate::stats::fnv1a(detector));
    let (mut shares, mut kappas) = (Vec::new(), Vec::new());
    if !pairs.is_empty() {
        for _ in 0..RESAMPLES {
            let sample: Vec<(bool, bool)> =
                (0..pairs.len()).map(|_| pairs[rng.below(pairs.len())]).collect();
            shares.push(share(&sample));
            if let Some(k) = kappa(&sample) {
                kappas.push(k);
            }
        }
    }
    let interval = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        (
            rapport_core::percentile::interpolated(&xs, 0.025),
            rapport_core::percentile::interpolated(&xs, 0.975),
        )
    };
    let k = kappa(pairs);
    Agreement {
        detector: detector.into(),
        skill,
        n: pairs.len(),
        positives: pairs.iter().filter(|(l, _)| *l).count(),
        agreement: share(pairs),
        agreement_ci: if shares.is_empty() { (0.0, 1.0) } else { interval(shares) },
        kappa: k,
        // An interval only where κ was defined in most resamples.
        kappa_ci: (k.is_some() && kappas.len() * 2 > RESAMPLES).then(|| interval(kappas)),
        confusion,
    }
}

/// Bootstrap resamples per interval.
const RESAMPLES: usize = 2000;

/// Cohen's κ of two binary readings; `None` when chance agreement is 1 (neither varies).
pub fn kappa(pairs: &[(bool, bool)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let observed = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let a = pairs.iter().filter(|(a, _)| *a).count() as f64 / n;
    let b = pairs.iter().filter(|(_, b)| *b).count() as f64 / n;
    let chance = a * b + (1.0 - a) * (1.0 - b);
    (chance < 1.0 - 1e-12).then(|| (observed - chance) / (1.0 - chance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_matches_a_worked_example() {
        // 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → po 0.70, pe 0.50, κ 0.40.
        let mut pairs = vec![(true, true); 20];
        pairs.extend(vec![(true, false); 5]);
        pairs.extend(vec![(false, true); 10]);
        pairs.extend(vec![(false, false); 15]);
        assert!((kappa(&pairs).unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(kappa(&[(true, true), (true, true)]), None);
    }

    #[test]
    fn a_bad_label_line_is_refused_with_its_file_and_line() {
        let dir = std::env::temp_dir().join(format!("rapport-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.jsonl");
        let good = r#"{"id":"x","partner":["","Hi!"],"message":"Hello","labels":{"asks_open":null,"listened":false,"partner_feeling":false,"acknowledged":null,"answered":null,"pushed":false}}"#;
        std::fs::write(&path, format!("{good}\n{{\"id\": 3}}\n")).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("labels.jsonl line 2"), "{err}");
        assert!(load(&dir.join("missing.jsonl"))
            .unwrap_err()
            .to_string()
            .contains("missing.jsonl"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_shipped_labels_load_and_every_detector_is_measured() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/coach/agreement.jsonl");
        let items = load(&path).unwrap();
        assert!(items.len() >= 80);
        let measured = measure(&items, 1, None).unwrap();
        assert_eq!(measured.len(), 7);
        for a in &measured {
            assert!(a.n > 0, "{}", a.detector);
            assert_eq!(a.confusion.iter().sum::<usize>(), a.n);
            assert!(a.agreement_ci.0 <= a.agreement && a.agreement <= a.agreement_ci.1);
        }
        assert_eq!(by_skill(&measured).len(), 5, "one detector behind each skill");
        // Deterministic for a seed.
        assert_eq!(measure(&items, 1, None).unwrap(), measured);
    }
}
