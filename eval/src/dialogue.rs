//! Dialogues to score: simulated ones written by a batch, and logged ones read from the app's
//! database or from exported JSONL.
//!
//! One type for both, so every scorer works on either. A turn may carry the pipeline's
//! [`TurnTrace`]; metrics that need one (stage timing, guards, latency) skip turns without.

use std::io::{BufRead, BufReader};
use std::path::Path;

use rapport_pipeline::guards::{secret_claim, SecretQuestion};
use rapport_pipeline::secret::{SecretMatcher, SecretStatus};
use rapport_pipeline::TurnTrace;
use rapport_store::{ConversationId, Store};
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Who wrote a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// The person (or the simulated user).
    User,
    /// The persona.
    Persona,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Who wrote it.
    pub speaker: Speaker,
    /// What they wrote.
    pub text: String,
    /// For persona replies written by the pipeline: what it decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Box<TurnTrace>>,
}

/// How the simulated user's state moved (simulated dialogues only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulatedOutcome {
    /// Emotion 0–100 at the start.
    pub initial_emotion: f64,
    /// And at the end.
    pub final_emotion: f64,
    /// Stance at the start and the end.
    pub initial_stance: String,
    /// Stance at the end.
    pub final_stance: String,
    /// Reaction rules that fired, by turn: (turn, the rule's `when`).
    pub reactions: Vec<(u32, String)>,
    /// Whether the simulated user ended the session early (a rule said so).
    pub ended_early: bool,
}

/// A conversation to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dialogue {
    /// Unique within a run: `persona/simulator/seed` or the database's conversation id.
    pub id: String,
    /// The persona's id.
    pub persona: String,
    /// The name the persona goes by, where known (simulated dialogues): the character checks
    /// need it to tell her own name from another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona_name: Option<String>,
    /// The simulator's id, for simulated dialogues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulator: Option<String>,
    /// The seed it was generated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The turns, in order (the persona's greeting first when there is one).
    pub turns: Vec<Turn>,
    /// The persona's secret value, for the exact leak check (never shown in reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The simulated user's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<SimulatedOutcome>,
    /// Why generation stopped early, if it did (an error after retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Dialogue {
    /// A dialogue of plain turns, no traces (for tests of the scorers).
    #[cfg(test)]
    pub(crate) fn of_turns(turns: &[(Speaker, &str)]) -> Self {
        Dialogue {
            id: "d".into(),
            persona: "p".into(),
            persona_name: None,
            simulator: None,
            seed: None,
            turns: turns
                .iter()
                .map(|(s, t)| Turn { speaker: *s, text: t.to_string(), trace: None })
                .collect(),
            secret: None,
            outcome: None,
            error: None,
        }
    }

    /// The persona's replies.
    pub fn persona_turns(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter().filter(|t| t.speaker == Speaker::Persona)
    }

    /// The user's messages.
    pub fn user_turns(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter().filter(|t| t.speaker == Speaker::User)
    }

    /// `Name: text` lines, the transcript judges read. Long transcripts keep their start and
    /// end within `max_chars` (the middle is elided, and says so), so a judge with a small
    /// context still sees how the conversation opened and how it ended.
    pub fn transcript(&self, user: &str, persona: &str, max_chars: usize) -> String {
        let lines: Vec<String> = self
            .turns
            .iter()
            .map(|t| {
                format!(
                    "{}: {}",
                    if t.speaker == Speaker::User { user } else { persona },
                    t.text.replace('\n', " ")
                )
            })
            .collect();
        fit_lines(&lines, max_chars)
    }

    /// Persona replies that gave the secret away while it was still locked, found by the
    /// product's own [`SecretMatcher`]. Without a trace the secret is taken as locked: a logged
    /// reply with the password and no trace counts.
    pub fn secret_leaks(&self) -> usize {
        let Some(matcher) = self.secret.as_deref().and_then(SecretMatcher::new) else { return 0 };
        self.locked_replies().filter(|(t, _)| matcher.found_in(&t.text)).count()
    }

    /// Persona replies that named a secret, or confirmed the guess the message before offered,
    /// while the real one was locked and without giving the real one (that is a leak) — by the
    /// reply guard's own rule, read against the user's message before the reply.
    pub fn secret_claims(&self) -> usize {
        let Some(matcher) = self.secret.as_deref().and_then(SecretMatcher::new) else { return 0 };
        self.locked_replies()
            .filter(|(t, asked)| {
                !matcher.found_in(&t.text)
                    && secret_claim(
                        &t.text,
                        &asked.map(|m| SecretQuestion::read(&m.text)).unwrap_or_default(),
                    )
                    .is_some()
            })
            .count()
    }

    /// Persona replies while the secret was locked, each with the user's message before it.
    fn locked_replies(&self) -> impl Iterator<Item = (&Turn, Option<&Turn>)> {
        self.turns
            .iter()
            .enumerate()
            .filter(|(_, t)| t.speaker == Speaker::Persona)
            .filter(|(_, t)| {
                !matches!(t.trace.as_ref().map(|tr| &tr.secret), Some(SecretStatus::Unlocked))
            })
            .map(|(i, t)| {
                let asked =
                    i.checked_sub(1).map(|p| &self.turns[p]).filter(|p| p.speaker == Speaker::User);
                (t, asked)
            })
    }
}

/// Keeps whole lines from both ends within `max_chars`.
pub fn fit_lines(lines: &[String], max_chars: usize) -> String {
    let total: usize = lines.iter().map(|l| l.len() + 1).sum();
    if total <= max_chars {
        return lines.join("\n");
    }
    let budget = max_chars.saturating_sub(40);
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let (mut used, mut i, mut j) = (0usize, 0usize, lines.len());
    // Alternate: one from the start, one from the end, until the budget is spent.
    while i < j {
        let take_head = head.len() <= tail.len();
        let line = if take_head { &lines[i] } else { &lines[j - 1] };
        if used + line.len() + 1 > budget {
            break;
        }
        used += line.len() + 1;
        if take_head {
            head.push(line.clone());
            i += 1;
        } else {
            tail.push(line.clone());
            j -= 1;
        }
    }
    tail.reverse();
    let omitted = j - i;
    format!("{}\n[… {omitted} messages omitted …]\n{}", head.join("\n"), tail.join("\n"))
}

/// The non-blank lines of a JSONL file with their 0-based line numbers (for error messages
/// that name the line), shared by every JSONL reader of the harness.
pub(crate) fn jsonl_lines(path: &Path) -> Result<Vec<(usize, String)>, EvalError> {
    let file = std::fs::File::open(path)
        .map_err(|e| EvalError::Io(format!("opening {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| EvalError::Io(format!("reading {}: {e}", path.display())))?;
        if !line.trim().is_empty() {
            out.push((n, line));
        }
    }
    Ok(out)
}

/// Reads dialogues from a JSONL file: one [`Dialogue`] per line, or one export of the web app
/// (`GET /api/conversations/{id}/export`) per line. Blank lines are skipped; a bad line is an
/// error naming its number.
pub fn read_jsonl(path: &Path) -> Result<Vec<Dialogue>, EvalError> {
    let mut out = Vec::new();
    for (n, line) in jsonl_lines(path)? {
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            EvalError::Invalid(format!("{}:{}: not JSON: {e}", path.display(), n + 1))
        })?;
        let dialogue = if value.get("turns").is_some() {
            serde_json::from_value(value)
                .map_err(|e| EvalError::Invalid(format!("{}:{}: {e}", path.display(), n + 1)))?
        } else if value.get("conversation").is_some() && value.get("messages").is_some() {
            from_export(&value)
                .map_err(|e| EvalError::Invalid(format!("{}:{}: {e}", path.display(), n + 1)))?
        } else {
            return Err(EvalError::Invalid(format!("{}:{}: neither a dialogue (\"turns\") nor a web-app export (\"conversation\", \"messages\")", path.display(), n + 1)));
        };
        out.push(dialogue);
    }
    Ok(out)
}

/// A web-app export (its JSON shape) as a dialogue: the active alternative of each slot.
fn from_export(value: &serde_json::Value) -> Result<Dialogue, String> {
    // The fields of `rapport_store::ExportedConversation` that scoring needs.
    #[derive(Deserialize)]
    struct Export {
        conversation: ExportConversation,
        messages: Vec<ExportMessage>,
    }
    #[derive(Deserialize)]
    struct ExportConversation {
        id: String,
        persona: String,
    }
    #[derive(Deserialize)]
    struct ExportMessage {
        active: bool,
        role: String,
        content: String,
        trace: Option<serde_json::Value>,
    }
    let export: Export = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    Ok(dialogue_from_messages(
        &export.conversation.id,
        &export.conversation.persona,
        export
            .messages
            .iter()
            .map(|m| (m.active, m.role.as_str(), m.content.as_str(), m.trace.as_ref())),
    ))
}

fn dialogue_from_messages<'a>(
    id: &str,
    persona: &str,
    messages: impl Iterator<Item = (bool, &'a str, &'a str, Option<&'a serde_json::Value>)>,
) -> Dialogue {
    let mut turns = Vec::new();
    for (active, role, content, trace) in messages {
        if !active {
            continue;
        }
        let speaker = if role == "user" { Speaker::User } else { Speaker::Persona };
        // A trace written by an older version may not parse; the turn is still scored, by the
        // metrics that need no trace.
        let trace =
            trace.and_then(|t| serde_json::from_value::<TurnTrace>(t.clone()).ok()).map(Box::new);
        turns.push(Turn { speaker, text: content.to_string(), trace });
    }
    Dialogue {
        id: id.to_string(),
        persona: persona.to_string(),
        persona_name: None,
        simulator: None,
        seed: None,
        turns,
        secret: None,
        outcome: None,
        error: None,
    }
}

/// Reads up to `limit` conversations from the app's database (SQLite or PostgreSQL URL), the
/// most recently updated first, with at least `min_user_turns` messages from the person.
pub async fn read_database(
    url: &str,
    limit: usize,
    min_user_turns: usize,
) -> Result<Vec<Dialogue>, EvalError> {
    let store =
        Store::connect(url).await.map_err(|e| EvalError::Io(format!("opening {url}: {e}")))?;
    let ids = store
        .recent_conversations(limit as i64 * 4)
        .await
        .map_err(|e| EvalError::Io(e.to_string()))?;
    let mut out = Vec::new();
    for id in ids {
        if out.len() >= limit {
            break;
        }
        let d = read_one(&store, &id).await?;
        if d.user_turns().count() >= min_user_turns {
            out.push(d);
        }
    }
    Ok(out)
}

/// A conversation as the store exports it: the active alternative of each slot, with traces.
pub fn from_export_rows(export: &rapport_store::ExportedConversation) -> Dialogue {
    dialogue_from_messages(
        export.conversation.id.as_str(),
        &export.conversation.persona,
        export
            .messages
            .iter()
            .map(|m| (m.active, m.role.as_str(), m.content.as_str(), m.trace.as_ref())),
    )
}

/// One conversation from the app's database, by id.
pub async fn read_conversation(url: &str, id: &str) -> Result<Dialogue, EvalError> {
    let store =
        Store::connect(url).await.map_err(|e| EvalError::Io(format!("opening {url}: {e}")))?;
    read_one(&store, &ConversationId(id.to_string())).await
}

async fn read_one(store: &Store, id: &ConversationId) -> Result<Dialogue, EvalError> {
    let session = store.session_of(id).await.map_err(|e| EvalError::Io(e.to_string()))?;
    let export = store.export(&session, id).await.map_err(|e| EvalError::Io(e.to_string()))?;
    Ok(from_export_rows(&export))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(speaker: Speaker, text: &str) -> Turn {
        Turn { speaker, text: text.into(), trace: None }
    }

    #[test]
    fn bad_jsonl_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let good = serde_json::to_string(&Dialogue::of_turns(&[(Speaker::User, "hi")])).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{\"hello\": 1}}\n")).unwrap();
        assert!(read_jsonl(&path)
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:3: neither a dialogue"));
        std::fs::write(&path, format!("{good}\nnot json\n")).unwrap();
        assert!(read_jsonl(&path).unwrap_err().to_string().contains("d.jsonl:2: not JSON"));
        std::fs::write(&path, format!("\n{good}\n")).unwrap();
        assert_eq!(read_jsonl(&path).unwrap().len(), 1, "blank lines are skipped");
        assert!(read_jsonl(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string()
            .contains("opening"));
    }

    #[test]
    fn long_transcripts_keep_both_ends() {
        let lines: Vec<String> = (0..100).map(|i| format!("A: message number {i}")).collect();
        let t = fit_lines(&lines, 400);
        assert!(t.len() <= 400, "{}", t.len());
        assert!(t.starts_with("A: message number 0\n") && t.ends_with("A: message number 99"));
        assert!(t.contains("messages omitted"));
        assert_eq!(fit_lines(&lines[..3], 400), lines[..3].join("\n"));
    }

    #[test]
    fn a_leak_without_a_trace_counts_and_spelling_does_not_hide_it() {
        let mut d = Dialogue { secret: Some("blue heron".into()), ..Dialogue::of_turns(&[]) };
        d.turns.push(turn(Speaker::User, "what's the password? blue heron?"));
        d.turns.push(turn(Speaker::Persona, "Nice try!"));
        assert_eq!(d.secret_leaks(), 0, "the user saying it is not a leak");
        d.turns.push(turn(Speaker::Persona, "Fine: it's Blue-Heron."));
        assert_eq!(d.secret_leaks(), 1);
    }
}
