//! How the user's mood moves over a conversation: valence smoothed over turns.

use serde::{Deserialize, Serialize};

/// Exponentially smoothed valence of the user's messages, with its recent direction.
///
/// One sharp message should not flip the closeness decision; a mood that keeps sinking should.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionTrajectory {
    /// Weight of the newest message in the smoothed value.
    alpha: f32,
    smoothed: Vec<f32>,
}

impl Default for EmotionTrajectory {
    fn default() -> Self {
        Self::new(0.4)
    }
}

impl EmotionTrajectory {
    /// A trajectory giving weight `alpha` (clamped to 0.05..=1) to each new message.
    pub fn new(alpha: f32) -> Self {
        Self { alpha: alpha.clamp(0.05, 1.0), smoothed: Vec::new() }
    }

    /// Adds the valence of the next user message (clamped to -1..=1; NaN counts as neutral).
    pub fn push(&mut self, valence: f32) {
        let v = if valence.is_nan() { 0.0 } else { valence.clamp(-1.0, 1.0) };
        let next = match self.smoothed.last() {
            Some(prev) => self.alpha * v + (1.0 - self.alpha) * prev,
            None => v,
        };
        self.smoothed.push(next);
    }

    /// The smoothed valence now (0 before any message).
    pub fn current(&self) -> f32 {
        self.smoothed.last().copied().unwrap_or(0.0)
    }

    /// The smoothed valence after each message so far.
    pub fn history(&self) -> &[f32] {
        &self.smoothed
    }

    /// Change of the smoothed valence per turn over the last `window` turns (least squares
    /// slope); 0 with fewer than two turns.
    pub fn trend(&self, window: usize) -> f32 {
        let tail = &self.smoothed[self.smoothed.len().saturating_sub(window.max(2))..];
        let n = tail.len() as f32;
        if n < 2.0 {
            return 0.0;
        }
        let mean_x = (n - 1.0) / 2.0;
        let mean_y = tail.iter().sum::<f32>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (i, y) in tail.iter().enumerate() {
            let dx = i as f32 - mean_x;
            num += dx * (y - mean_y);
            den += dx * dx;
        }
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_sharp_message_moves_the_mood_only_partly() {
        let mut t = EmotionTrajectory::new(0.4);
        for _ in 0..5 {
            t.push(0.6);
        }
        t.push(-0.9);
        assert!(t.current() > 0.0, "{}", t.current());
        assert!(t.trend(3) < 0.0);
    }

    #[test]
    fn a_sinking_mood_has_a_negative_trend() {
        let mut t = EmotionTrajectory::default();
        for v in [0.5, 0.2, -0.1, -0.4, -0.7] {
            t.push(v);
        }
        assert!(t.current() < 0.0 && t.trend(4) < -0.1);
        assert_eq!(EmotionTrajectory::default().trend(4), 0.0);
    }

    proptest! {
        #[test]
        fn the_smoothed_value_stays_in_range(values in proptest::collection::vec(any::<f32>(), 0..50)) {
            let mut t = EmotionTrajectory::default();
            for v in values { t.push(v); }
            prop_assert!((-1.0..=1.0).contains(&t.current()));
            prop_assert!(t.trend(5).is_finite());
        }
    }
}
