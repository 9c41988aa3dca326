//! Statistics of generated text that need no judge: lexical diversity and repetition.
//!
//! These measure the failure the sampling defaults exist to prevent, a small model looping on
//! one sentence, and the evaluation harness reuses them as exact metrics.

use std::collections::HashSet;

/// Lower-cased word tokens: runs of alphanumerics and apostrophes.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// Distinct-n of one text: unique n-grams over all n-grams (Li et al., 2016). `None` when the
/// text has fewer than `n` words, so that empty replies do not count as perfectly diverse.
pub fn distinct_n(text: &str, n: usize) -> Option<f64> {
    assert!(n > 0, "n-grams need n >= 1");
    let w = words(text);
    if w.len() < n {
        return None;
    }
    let grams: Vec<&[String]> = w.windows(n).collect();
    let unique: HashSet<&[String]> = grams.iter().copied().collect();
    Some(unique.len() as f64 / grams.len() as f64)
}

/// Sentences of a text, normalised for comparison: split on `.`, `!`, `?`, `…` and line breaks,
/// then reduced to their lower-cased words; sentences with no word are dropped.
pub fn sentences(text: &str) -> Vec<String> {
    text.split(['.', '!', '?', '…', '\n'])
        .map(|s| words(s).join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Repetition within one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SentenceRepetition {
    /// Sentences in the text.
    pub sentences: usize,
    /// Sentences that repeat an earlier sentence of the same text.
    pub repeated: usize,
}

/// Counts sentences that repeat an earlier one ("I'm sorry to hear that." six times gives 5 of 6).
pub fn sentence_repetition(text: &str) -> SentenceRepetition {
    let all = sentences(text);
    let mut seen = HashSet::new();
    let repeated = all.iter().filter(|s| !seen.insert(s.as_str())).count();
    SentenceRepetition { sentences: all.len(), repeated }
}

/// Aggregate statistics over a set of replies.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct DiversityReport {
    /// Replies measured.
    pub replies: usize,
    /// Mean distinct-1 over replies with at least one word.
    pub distinct_1: f64,
    /// Mean distinct-2 over replies with at least two words.
    pub distinct_2: f64,
    /// Repeated sentences over all sentences.
    pub repeated_sentence_rate: f64,
    /// Replies with at least one repeated sentence, over all replies.
    pub looping_reply_rate: f64,
    /// Mean words per reply.
    pub mean_words: f64,
}

/// Measures a set of replies.
pub fn diversity<S: AsRef<str>>(replies: &[S]) -> DiversityReport {
    fn mean(values: &[f64]) -> f64 {
        if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    }
    let d1: Vec<f64> = replies.iter().filter_map(|r| distinct_n(r.as_ref(), 1)).collect();
    let d2: Vec<f64> = replies.iter().filter_map(|r| distinct_n(r.as_ref(), 2)).collect();
    let reps: Vec<SentenceRepetition> =
        replies.iter().map(|r| sentence_repetition(r.as_ref())).collect();
    let sentences: usize = reps.iter().map(|r| r.sentences).sum();
    let repeated: usize = reps.iter().map(|r| r.repeated).sum();
    let looping = reps.iter().filter(|r| r.repeated > 0).count();
    let lengths: Vec<f64> = replies.iter().map(|r| words(r.as_ref()).len() as f64).collect();
    DiversityReport {
        replies: replies.len(),
        distinct_1: mean(&d1),
        distinct_2: mean(&d2),
        repeated_sentence_rate: if sentences == 0 {
            0.0
        } else {
            repeated as f64 / sentences as f64
        },
        looping_reply_rate: if replies.is_empty() {
            0.0
        } else {
            looping as f64 / replies.len() as f64
        },
        mean_words: mean(&lengths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_looping_probe_reply_is_caught() {
        let looping = "I'm sorry to hear that. ".repeat(6);
        let r = sentence_repetition(&looping);
        assert_eq!(r, SentenceRepetition { sentences: 6, repeated: 5 });
        assert!(distinct_n(&looping, 2).unwrap() < 0.3);
    }

    #[test]
    fn a_varied_reply_scores_high() {
        let text = "Oh no, that sounds rough. Want to talk about it? I'm all ears.";
        assert_eq!(sentence_repetition(text).repeated, 0);
        assert_eq!(distinct_n(text, 2), Some(1.0));
    }

    #[test]
    fn sentences_compare_without_case_or_punctuation() {
        assert_eq!(sentence_repetition("Hey there! hey, there?").repeated, 1);
    }

    #[test]
    fn short_texts_have_no_distinct_n() {
        assert_eq!(distinct_n("", 1), None);
        assert_eq!(distinct_n("hello", 2), None);
    }

    #[test]
    fn diversity_aggregates_over_replies() {
        let replies = ["a b c. a b c.", "d e f"];
        let r = diversity(&replies);
        assert_eq!(r.replies, 2);
        assert!((r.repeated_sentence_rate - 1.0 / 3.0).abs() < 1e-9);
        assert!((r.looping_reply_rate - 0.5).abs() < 1e-9);
        assert!((r.mean_words - 4.5).abs() < 1e-9);
    }
}
