//! Step 1: where the conversation sits in time, and the notes worth telling the persona.
//!
//! The engine reads the clock once per turn and passes the user's local time in; nothing here
//! asks the system for the time, so a trace replays to the same notes.

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use serde::{Deserialize, Serialize};

/// Part of the user's day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartOfDay {
    /// 00:00–04:59.
    LateNight,
    /// 05:00–11:59.
    Morning,
    /// 12:00–17:59.
    Afternoon,
    /// 18:00–23:59.
    Evening,
}

impl PartOfDay {
    fn of_hour(hour: u32) -> Self {
        match hour {
            0..=4 => PartOfDay::LateNight,
            5..=11 => PartOfDay::Morning,
            12..=17 => PartOfDay::Afternoon,
            _ => PartOfDay::Evening,
        }
    }
}

/// What step 1 needs to know.
#[derive(Debug, Clone)]
pub struct ContextInput {
    /// Now, in the user's time zone.
    pub now: DateTime<FixedOffset>,
    /// When the conversation began (its first message), if it has.
    pub started_at: Option<DateTime<FixedOffset>>,
    /// When the user last wrote before this message.
    pub last_message_at: Option<DateTime<FixedOffset>>,
    /// This message's number among the user's messages, from 1.
    pub turn: u32,
}

/// The turn's place in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnContext {
    /// Local time, "HH:MM".
    pub local_time: String,
    /// Weekday, "Saturday".
    pub weekday: String,
    /// Part of the user's day.
    pub part_of_day: PartOfDay,
    /// Minutes since the conversation began.
    pub minutes_in_conversation: i64,
    /// Seconds since the user's previous message.
    pub gap_seconds: Option<i64>,
    /// The user's message number, from 1.
    pub turn: u32,
    /// What the persona should take into account, as sentences for the prompt; empty when
    /// nothing about time is worth saying.
    pub notes: Vec<String>,
}

/// A gap after which the persona notices the user was away.
const AWAY_SECONDS: i64 = 6 * 3600;
/// A conversation this long is worth remarking on.
const LONG_MINUTES: i64 = 45;

/// Step 1.
pub fn read_context(input: &ContextInput) -> TurnContext {
    let now = input.now;
    let part_of_day = PartOfDay::of_hour(now.hour());
    let weekday = weekday_name(now.weekday()).to_string();
    let local_time = format!("{:02}:{:02}", now.hour(), now.minute());
    // A clock that moved backwards (a device's time corrected) gives a negative span; treat it
    // as no time at all rather than reporting a conversation of minus ten minutes.
    let minutes_in_conversation =
        input.started_at.map(|s| (now - s).num_minutes().max(0)).unwrap_or(0);
    let gap_seconds = input.last_message_at.map(|l| (now - l).num_seconds().max(0));

    let mut notes = Vec::new();
    if input.turn <= 1 {
        notes.push("This is the start of your conversation.".to_string());
    }
    match part_of_day {
        PartOfDay::LateNight => {
            notes.push(format!("It is {local_time} at night for them; they are up late."))
        }
        PartOfDay::Morning if input.turn <= 1 => {
            notes.push(format!("It is {local_time} in the morning for them."))
        }
        _ => {}
    }
    if let Some(gap) = gap_seconds.filter(|g| *g >= AWAY_SECONDS) {
        notes.push(format!("They are back after {} away.", human_span(gap)));
    }
    if minutes_in_conversation >= LONG_MINUTES && gap_seconds.is_none_or(|g| g < AWAY_SECONDS) {
        notes.push(format!(
            "You have been talking for {}.",
            human_span(minutes_in_conversation * 60)
        ));
    }
    if input.turn <= 1 && matches!(now.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun) {
        notes.push(format!("It is the weekend ({weekday})."));
    }
    TurnContext {
        local_time,
        weekday,
        part_of_day,
        minutes_in_conversation,
        gap_seconds,
        turn: input.turn,
        notes,
    }
}

fn weekday_name(d: chrono::Weekday) -> &'static str {
    use chrono::Weekday::*;
    match d {
        Mon => "Monday",
        Tue => "Tuesday",
        Wed => "Wednesday",
        Thu => "Thursday",
        Fri => "Friday",
        Sat => "Saturday",
        Sun => "Sunday",
    }
}

/// "3 days", "5 hours", "50 minutes".
fn human_span(seconds: i64) -> String {
    let plural =
        |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    match seconds {
        s if s >= 2 * 86_400 => plural(s / 86_400, "day"),
        s if s >= 2 * 3600 => plural(s / 3600, "hour"),
        s => plural((s / 60).max(1), "minute"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn late_at_night_is_noticed() {
        let c = read_context(&ContextInput {
            now: at("2026-11-21T01:10:00+01:00"),
            started_at: None,
            last_message_at: None,
            turn: 1,
        });
        assert_eq!(c.part_of_day, PartOfDay::LateNight);
        assert!(
            c.notes.iter().any(|n| n.contains("up late") && n.contains("01:10")),
            "{:?}",
            c.notes
        );
        assert!(c.notes.iter().any(|n| n.contains("Saturday")));
    }

    #[test]
    fn a_return_after_days_is_noticed_and_the_duration_is_not() {
        let c = read_context(&ContextInput {
            now: at("2026-11-24T19:00:00+00:00"),
            started_at: Some(at("2026-11-21T18:00:00+00:00")),
            last_message_at: Some(at("2026-11-21T18:30:00+00:00")),
            turn: 9,
        });
        assert_eq!(c.gap_seconds, Some(3 * 86_400 + 30 * 60));
        assert_eq!(c.notes, vec!["They are back after 3 days away.".to_string()]);
    }

    #[test]
    fn an_afternoon_in_the_middle_of_a_chat_needs_no_note() {
        let c = read_context(&ContextInput {
            now: at("2026-11-23T15:10:00+00:00"),
            started_at: Some(at("2026-11-23T15:00:00+00:00")),
            last_message_at: Some(at("2026-11-23T15:09:00+00:00")),
            turn: 4,
        });
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(c.minutes_in_conversation, 10);
    }

    proptest! {
        #[test]
        fn any_clock_gives_non_negative_spans(now in 0i64..4_000_000_000, start in 0i64..4_000_000_000, last in 0i64..4_000_000_000, turn in 0u32..1000) {
            let tz = FixedOffset::east_opt(3600).unwrap();
            let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap().with_timezone(&tz);
            let c = read_context(&ContextInput { now: t(now), started_at: Some(t(start)), last_message_at: Some(t(last)), turn });
            prop_assert!(c.minutes_in_conversation >= 0);
            prop_assert!(c.gap_seconds.unwrap() >= 0);
        }
    }
}
