//! Expected-score judging: the judge's probabilities over a scale, not its one greedy integer.
//!
//! A small judge asked for a JSON object with a score and a reason spends most of its time
//! writing the reason, answers coarse integers (on a 1–10 scale it used three or four values),
//! and now and then writes something the parser cannot read. Asked instead for a single digit,
//! one generated token carries everything: the model's probability of each score at that
//! position. Their probability-weighted mean (G-Eval's "expected score") is a fine-grained score
//! that breaks the integer ties, and it can always be read when the model put any weight on the
//! scale's digits.
//!
//! Scales whose scores are not all single digits (1–10) are asked on 1–9 and mapped back
//! linearly: digits are one token each in the tokenizers Rapport ships (Qwen2.5 and SmolLM2 split
//! numbers digit by digit), so "10" would begin with the token that also means "1".

use rapport_core::TokenLogprob;
use serde::{Deserialize, Serialize};

use crate::rubric::Scale;

/// Alternatives asked for at each position: every digit fits, with room for the tokens a model
/// puts beside them (a space, a quote, "Score").
pub const TOP_LOGPROBS: u8 = 20;

/// Positions looked at for the score: the model may open with a space or a quote first.
pub const MAX_TOKENS: u32 = 3;

/// Below this share of probability on the scale's digits the position is not taken as the
/// model's score (it was writing something else there).
pub const MIN_SCALE_MASS: f64 = 0.5;

/// How a rubric scale is asked as digits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigitScale {
    scale: Scale,
    /// The digits the judge is asked to answer with, lowest first.
    pub low: u8,
    /// Highest digit.
    pub high: u8,
}

impl DigitScale {
    /// The digits for `scale`: itself when its ends are integers within 0–9, else 1–9.
    pub fn for_scale(scale: Scale) -> Self {
        let integral = scale.min.fract() == 0.0 && scale.max.fract() == 0.0;
        if integral && scale.min >= 0.0 && scale.max <= 9.0 && scale.max > scale.min {
            Self { scale, low: scale.min as u8, high: scale.max as u8 }
        } else {
            Self { scale, low: 1, high: 9 }
        }
    }

    /// Whether the digits are the rubric's own scores.
    pub fn is_native(&self) -> bool {
        f64::from(self.low) == self.scale.min && f64::from(self.high) == self.scale.max
    }

    /// A rubric score as the digit asked for (anchors shown to the judge), rounded.
    pub fn to_digit(&self, score: f64) -> u8 {
        let t = (score - self.scale.min) / (self.scale.max - self.scale.min);
        let d = f64::from(self.low) + t * f64::from(self.high - self.low);
        d.round().clamp(f64::from(self.low), f64::from(self.high)) as u8
    }

    /// A digit (or an expectation over digits) back on the rubric's scale.
    pub fn to_score(&self, digit: f64) -> f64 {
        let t = (digit - f64::from(self.low)) / f64::from(self.high - self.low);
        self.scale.min + t * (self.scale.max - self.scale.min)
    }
}

/// What the judge's probabilities said about one criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreDistribution {
    /// Probability of each score on the rubric's scale, normalised over the scale's digits.
    pub probabilities: Vec<(f64, f64)>,
    /// The probability-weighted mean score: the method's score.
    pub expected: f64,
    /// The most likely score: what a greedy integer judge would have answered at this position.
    pub argmax: f64,
    /// The share of the model's probability that fell on the scale's digits (1 = all of it).
    pub scale_mass: f64,
}

/// Reads the score distribution from a generation's log-probabilities: the first position
/// where at least [`MIN_SCALE_MASS`] of the listed probability is on the scale's digits.
/// `None` when no position qualifies (the judge wrote words instead of a score).
pub fn read_distribution(
    logprobs: &[TokenLogprob],
    digits: DigitScale,
) -> Option<ScoreDistribution> {
    for position in logprobs {
        let mut by_digit = vec![0.0f64; usize::from(digits.high - digits.low) + 1];
        for (token, p) in position.probabilities() {
            // " 7" and "7" are the same answer; a token that is a digit and more ("7/") is
            // not a score token of this tokenizer and is left out rather than guessed.
            let t = token.trim();
            if t.len() != 1 {
                continue;
            }
            let Some(d) = t.chars().next().and_then(|c| c.to_digit(10)) else { continue };
            let d = d as u8;
            if (digits.low..=digits.high).contains(&d) {
                by_digit[usize::from(d - digits.low)] += p;
            }
        }
        let mass: f64 = by_digit.iter().sum();
        if mass < MIN_SCALE_MASS || !mass.is_finite() {
            continue;
        }
        let probabilities: Vec<(f64, f64)> = by_digit
            .iter()
            .enumerate()
            .map(|(i, p)| (digits.to_score(f64::from(digits.low) + i as f64), p / mass))
            .collect();
        let expected = probabilities.iter().map(|(s, p)| s * p).sum();
        let argmax = probabilities
            .iter()
            .copied()
            .fold((f64::NAN, -1.0), |best, (s, p)| if p > best.1 { (s, p) } else { best })
            .0;
        return Some(ScoreDistribution { probabilities, expected, argmax, scale_mass: mass });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_core::TopToken;

    fn position(alternatives: &[(&str, f64)]) -> TokenLogprob {
        TokenLogprob {
            token: alternatives[0].0.into(),
            logprob: alternatives[0].1.ln() as f32,
            top: alternatives
                .iter()
                .map(|(t, p)| TopToken { token: (*t).into(), logprob: p.ln() as f32 })
                .collect(),
        }
    }

    #[test]
    fn a_scale_within_the_digits_is_asked_as_it_is_and_one_to_ten_as_one_to_nine() {
        let five = DigitScale::for_scale(Scale { min: 1.0, max: 5.0 });
        assert_eq!((five.low, five.high, five.is_native()), (1, 5, true));
        let ten = DigitScale::for_scale(Scale { min: 1.0, max: 10.0 });
        assert_eq!((ten.low, ten.high, ten.is_native()), (1, 9, false));
        assert_eq!((ten.to_digit(1.0), ten.to_digit(5.0), ten.to_digit(10.0)), (1, 5, 9));
        assert!((ten.to_score(9.0) - 10.0).abs() < 1e-9 && (ten.to_score(1.0) - 1.0).abs() < 1e-9);
        let frac = DigitScale::for_scale(Scale { min: 0.0, max: 1.0 });
        assert_eq!((frac.low, frac.high), (0, 1));
    }

    #[test]
    fn the_expected_score_weighs_every_digit() {
        let d = DigitScale::for_scale(Scale { min: 1.0, max: 5.0 });
        let got = read_distribution(&[position(&[("4", 0.6), ("3", 0.3), (" ", 0.1)])], d).unwrap();
        assert!((got.scale_mass - 0.9).abs() < 1e-6);
        assert!((got.expected - (4.0 * 0.6 + 3.0 * 0.3) / 0.9).abs() < 1e-6, "{got:?}");
        assert_eq!(got.argmax, 4.0);
        assert_eq!(got.probabilities.len(), 5);
    }

    #[test]
    fn a_position_of_words_is_skipped_and_off_scale_digits_do_not_count() {
        let d = DigitScale::for_scale(Scale { min: 1.0, max: 5.0 });
        let words = position(&[("The", 0.9), ("4", 0.05)]);
        let digits = position(&[(" 2", 0.5), ("7", 0.3), ("2", 0.2)]);
        let got = read_distribution(&[words.clone(), digits], d).unwrap();
        assert_eq!(got.argmax, 2.0);
        assert!((got.scale_mass - 0.7).abs() < 1e-6, "7 is off a 1–5 scale: {got:?}");
        assert!(read_distribution(&[words], d).is_none());
        assert!(read_distribution(&[], d).is_none());
    }

    #[test]
    fn one_to_ten_answers_map_back_onto_the_rubric_scale() {
        let d = DigitScale::for_scale(Scale { min: 1.0, max: 10.0 });
        let got = read_distribution(&[position(&[("9", 0.5), ("1", 0.5)])], d).unwrap();
        assert!((got.expected - 5.5).abs() < 1e-6, "{got:?}");
    }
}
