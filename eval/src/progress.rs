//! A learner's progress over conversations: each skill's score per conversation, the
//! scenarios played and won, and the three skills to work on next.
//!
//! Everything here is derived from the conversations the server keeps (and deletes with them):
//! the coach's measurements ([`crate::coach::user_side`]) and each scenario's outcome
//! ([`crate::scenario::Scenario::progress`]), so the page, the export and a deletion can never
//! disagree about what is stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::coach::{user_side, Skill};
use crate::dialogue::Dialogue;
use crate::scenario::{ScenarioLibrary, Status};

/// One conversation's line in the progress record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationScore {
    /// The conversation's id.
    pub id: String,
    /// When it began (Unix ms).
    pub started_at: i64,
    /// The persona's id (a scenario's derived persona for scenario conversations).
    pub persona: String,
    /// The scenario and level, for scenario conversations.
    pub scenario: Option<(String, String)>,
    /// Its outcome so far, for scenario conversations.
    pub status: Option<Status>,
    /// The learner's messages.
    pub messages: usize,
    /// Each skill's score, where it could be measured.
    pub skills: BTreeMap<Skill, f64>,
}

/// A skill over the conversations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkillTrend {
    /// The skill.
    pub skill: Skill,
    /// Its name.
    pub label: String,
    /// (conversation index in [`Progress::conversations`], score), oldest first.
    pub series: Vec<(usize, f64)>,
    /// Mean over the last [`RECENT`] conversations that measured it.
    pub recent_mean: Option<f64>,
    /// Mean over the ones before those, if any: the change is `recent_mean − earlier_mean`.
    pub earlier_mean: Option<f64>,
}

/// A skill to work on next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Focus {
    /// The skill.
    pub skill: Skill,
    /// Its name.
    pub label: String,
    /// Its recent mean.
    pub score: f64,
    /// What to try.
    pub advice: String,
}

/// A learner's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Conversations with at least one message from the learner, oldest first.
    pub conversations: Vec<ConversationScore>,
    /// Each skill over them.
    pub skills: Vec<SkillTrend>,
    /// Up to three skills with the lowest recent score, lowest first.
    pub focus: Vec<Focus>,
    /// Scenario conversations played / succeeded / failed.
    pub scenarios_played: usize,
    /// Of those, succeeded.
    pub scenarios_succeeded: usize,
    /// Of those, failed.
    pub scenarios_failed: usize,
}

/// Conversations the recent mean looks at.
pub const RECENT: usize = 5;

/// The progress over `conversations` (dialogue, start time in Unix ms), in any order.
pub fn progress(conversations: &[(Dialogue, i64)], scenarios: &ScenarioLibrary) -> Progress {
    let mut sorted: Vec<&(Dialogue, i64)> = conversations.iter().collect();
    sorted.sort_by_key(|(d, at)| (*at, d.id.clone()));
    let mut rows = Vec::new();
    for (dialogue, at) in sorted {
        let side = user_side(dialogue);
        if side.messages == 0 {
            continue;
        }
        let played = scenarios.of_persona_id(&dialogue.persona);
        rows.push(ConversationScore {
            id: dialogue.id.clone(),
            started_at: *at,
            persona: dialogue.persona.clone(),
            scenario: played.map(|(s, l)| (s.id.clone(), l.to_string())),
            status: played.map(|(s, l)| s.progress(l, dialogue).status),
            messages: side.messages,
            skills: Skill::ALL.iter().filter_map(|&k| k.score(&side).map(|v| (k, v))).collect(),
        });
    }
    let skills: Vec<SkillTrend> = Skill::ALL
        .iter()
        .map(|&skill| {
            let series: Vec<(usize, f64)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.skills.get(&skill).map(|v| (i, *v)))
                .collect();
            let split = series.len().saturating_sub(RECENT);
            let mean = |xs: &[(usize, f64)]| {
                (!xs.is_empty()).then(|| xs.iter().map(|(_, v)| v).sum::<f64>() / xs.len() as f64)
            };
            SkillTrend {
                skill,
                label: skill.label().into(),
                recent_mean: mean(&series[split..]),
                earlier_mean: mean(&series[..split]),
                series,
            }
        })
        .collect();
    let mut focus: Vec<Focus> = skills
        .iter()
        .filter_map(|t| {
            t.recent_mean.map(|score| Focus {
                skill: t.skill,
                label: t.label.clone(),
                score,
                advice: t.skill.advice().into(),
            })
        })
        // A skill already at its best is nothing to work on.
        .filter(|f| f.score < 1.0)
        .collect();
    focus.sort_by(|a, b| a.score.total_cmp(&b.score));
    focus.truncate(3);
    let statuses: Vec<Status> = rows.iter().filter_map(|r| r.status).collect();
    Progress {
        scenarios_played: statuses.len(),
        scenarios_succeeded: statuses.iter().filter(|s| **s == Status::Succeeded).count(),
        scenarios_failed: statuses.iter().filter(|s| **s == Status::Failed).count(),
        conversations: rows,
        skills,
        focus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::Speaker::*;

    fn chat(id: &str, turns: &[(crate::Speaker, &str)]) -> Dialogue {
        let mut d = Dialogue::of_turns(turns);
        d.id = id.into();
        d
    }

    #[test]
    fn skills_are_tracked_per_conversation_and_the_weakest_come_first() {
        let closed = chat(
            "a",
            &[
                (Persona, "Hi! I just got back from a pottery class."),
                (User, "Do you like it?"),
                (Persona, "I do! Do you do anything creative?"),
                (User, "No. Do you have a boyfriend?"),
            ],
        );
        let open = chat(
            "b",
            &[
                (Persona, "Hi! I just got back from a pottery class."),
                (User, "Pottery! What did you make?"),
                (Persona, "A wobbly bowl. Do you do anything creative?"),
                (User, "I paint landscapes. What got you into pottery?"),
            ],
        );
        let empty = chat("c", &[(Persona, "Hi!")]);
        let p = progress(
            &[(open, 2_000), (closed, 1_000), (empty, 3_000)],
            &ScenarioLibrary::default(),
        );
        assert_eq!(p.conversations.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let open_q = p.skills.iter().find(|t| t.skill == Skill::OpenQuestions).unwrap();
        assert_eq!(open_q.series, vec![(0, 0.0), (1, 1.0)]);
        assert_eq!(open_q.recent_mean, Some(0.5));
        assert_eq!(open_q.earlier_mean, None);
        assert!(p.focus.len() <= 3);
        assert!(p.focus.windows(2).all(|w| w[0].score <= w[1].score));
        assert!(p.focus.iter().all(|f| f.score < 1.0));
        assert_eq!(p.scenarios_played, 0);
    }
}
