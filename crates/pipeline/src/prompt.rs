//! Step 8: the prompt, from tera templates in `prompts/`, within a token budget.
//!
//! Three templates. `system.tera` is the persona (who they are, how they talk, what they
//! remember) and opens the prompt; it changes only when the memory does. `turn.tera` is this
//! turn's notes (stage, decision, feelings, time, the secret, guard notes and, in the older
//! layouts, few-shot examples). `standing.tera` is what holds for a whole stage (its manner,
//! the locked secret's rule), which the `Compact` layout says once in the cached prefix instead
//! of in every turn's notes. [`PromptLayout`] says where the notes and the examples go, and so
//! how much of each prompt an engine's prefix cache can serve:
//!
//! - `Cached`: the persona's examples for the stage at the end of the system message (the same
//!   every turn of a stage, so cached), the history, the user's message, then the notes in a
//!   system message *after* it. Turn n's prompt is turn n−1's without its last note, plus the
//!   reply, the message and a new note, so only those are read again.
//! - `CachedExchanges`: the same, with the examples as real earlier exchanges between the
//!   system message and the history, followed by a line saying they were other people.
//! - `Compact` (the default, by a judged batch: docs/eval/prompt-layout.md):
//!   `CachedExchanges` with the standing notes in the system message after the
//!   examples (read once per stage) and a short note after the message (about a third of the
//!   tokens: the stage's manner and the locked secret's rule are not repeated each turn).
//! - `CompactHistory`: `Compact` with each earlier turn's note kept after its message, as it
//!   was sent. Then turn n's prompt is turn n−1's *and its reply*, plus the message and a new
//!   note: an engine that caches finished replies (mistral.rs does) reads only those two.
//! - `NotesBeforeMessage`: examples chosen for the message and the notes in a system message
//!   just before it. The previous message, the previous reply and the notes are read again
//!   each turn (about 330 tokens on the default model, docs/latency.md).
//! - `NotesInSystem`: the notes appended to the first system message, for chat templates that
//!   refuse a system message after the first; the whole prompt is read again each turn.
//!
//! The history sits between the persona and the message, newest turns kept; when they no longer
//! fit, the oldest are folded into the running [`Memory`] and leave the prompt. Budget first,
//! then examples: if even one turn does not fit, the few-shot examples go before the history
//! does.

use std::collections::BTreeMap;

use rapport_core::ChatMessage;
use serde::{Deserialize, Serialize};
use tera::Tera;

use crate::fewshot::ChosenExample;
pub use crate::layout::{NotePhrasing, PromptLayout};
use crate::memory::Memory;
use crate::persona::Persona;
use crate::secret::SecretForPrompt;
use crate::PipelineError;

const SYSTEM: &str = "system.tera";
const TURN: &str = "turn.tera";
const STANDING: &str = "standing.tera";

/// The loaded templates.
pub struct Prompts {
    tera: Tera,
}

impl Prompts {
    /// The templates compiled into the binary (from `prompts/`).
    pub fn embedded() -> Self {
        let mut tera = Tera::default();
        tera.add_raw_template(SYSTEM, include_str!("../../../prompts/system.tera"))
            .expect("the embedded template parses");
        tera.add_raw_template(TURN, include_str!("../../../prompts/turn.tera"))
            .expect("the embedded template parses");
        tera.add_raw_template(STANDING, include_str!("../../../prompts/standing.tera"))
            .expect("the embedded template parses");
        Self { tera }
    }

    /// Templates from a directory (for editing prompts without rebuilding); every template
    /// the pipeline uses must be there.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, PipelineError> {
        let mut tera = Tera::default();
        for name in [SYSTEM, TURN, STANDING] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PipelineError::Template(format!("{}: {e}", path.display())))?;
            tera.add_raw_template(name, &text).map_err(|e| {
                PipelineError::Template(format!("{}: {}", path.display(), error_chain(&e)))
            })?;
        }
        Ok(Self { tera })
    }
}

/// What templates may know of the persona: everything a prompt may say about it, and nothing
/// of its secret, which reaches a prompt only through [`PromptInput::secret`] (its value only
/// once unlocked). So a template loaded with `--prompts DIR` can print its whole context
/// (`{{ __tera_context }}`) and still find no locked secret in it.
#[derive(Debug, Clone, Serialize)]
pub struct PersonaView<'a> {
    /// The persona's id.
    pub id: &'a str,
    /// The name it goes by.
    pub name: &'a str,
    /// Who it is.
    pub bio: &'a str,
    /// What it knows about itself.
    pub facts: &'a [String],
    /// How it talks.
    pub voice: &'a [String],
    /// Its greetings.
    pub greetings: &'a [String],
    /// Longest reply, in sentences.
    pub max_sentences: usize,
}

impl<'a> From<&'a Persona> for PersonaView<'a> {
    fn from(p: &'a Persona) -> Self {
        Self {
            id: &p.id,
            name: &p.name,
            bio: &p.bio,
            facts: &p.facts,
            voice: &p.voice,
            greetings: &p.greetings,
            max_sentences: p.max_sentences,
        }
    }
}

/// Everything the system template sees.
#[derive(Debug, Clone, Serialize)]
pub struct PromptInput<'a> {
    /// The persona, without its secret.
    pub persona: PersonaView<'a>,
    /// The stage, as its name.
    pub stage: &'static str,
    /// The decision, as its name.
    pub decision: &'static str,
    /// Reason codes of the decision.
    pub reasons: Vec<String>,
    /// How the user seems to feel, when the reading is confident.
    pub feeling: Option<String>,
    /// Notes about time.
    pub context_notes: Vec<String>,
    /// The secret, as far as the prompt may know it.
    pub secret: Option<SecretForPrompt<'a>>,
    /// The user asked for the secret.
    pub asks_for_secret: bool,
    /// The user keeps sending the same message.
    pub repeating: bool,
    /// What the guards want the persona to know this turn.
    pub guard_notes: Vec<String>,
    /// Few-shot examples: the notes' (chosen for the message), or the stage's in the cached
    /// layouts, which [`assemble`] moves to [`PromptInput::stage_examples`] or to exchanges.
    pub examples: Vec<ChosenExample>,
    /// The stage's examples, for the system message (the `Cached` layout), filled in by
    /// [`assemble`].
    #[serde(default)]
    pub stage_examples: Vec<ChosenExample>,
    /// Rendered memory, filled in by [`assemble`].
    pub memory: Option<String>,
    /// What the person told in earlier conversations ([`crate::recall::Recalled::render`]).
    /// [`assemble`] moves it after the example exchanges in the layouts that have them, so
    /// the persona's opening stays the same for everyone (and in the prefix cache); the other
    /// layouts render it in the system message.
    #[serde(default)]
    pub recalled: Option<String>,
    /// What the person asks about themselves this turn and what the persona knows of it
    /// ([`crate::recall::asked_about_them`]), for the turn's note.
    #[serde(default)]
    pub about_them: Option<String>,
    /// The stage's manner and the locked secret's rule are in the cached prefix
    /// (`standing.tera`, the `Compact` layout), so the notes leave them out; set by
    /// [`assemble`].
    #[serde(default)]
    pub standing_in_prefix: bool,
    /// How the notes ask her to carry the conversation ([`NotePhrasing::as_str`]).
    pub phrasing: &'static str,
}

/// Said after the example exchanges of the `CachedExchanges` layout, so that the model does not take
/// them for this conversation (it would answer questions nobody asked it here).
pub const EXAMPLES_END: &str = "Those were other people, to show how you talk. Someone new is talking to you now; nothing above was said to them.";

/// [`EXAMPLES_END`] when the persona has talked with this person before (what it recalls of
/// them follows).
pub const EXAMPLES_END_MET_BEFORE: &str = "Those were other people, to show how you talk; nothing above was said to the person talking to you now.";

/// How many tokens the prompt may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBudget {
    /// The model's context window as Rapport uses it.
    pub context_tokens: usize,
    /// Kept free for the reply.
    pub reply_tokens: usize,
}

impl Default for TokenBudget {
    fn default() -> Self {
        // SmolLM2 was trained with 2,048 positions (8k after extension) and CPU prefill costs
        // grow with every token; 2,048 keeps a reply's prefill under a second or two on the
        // 1.5B model, and a longer history is what the running memory is for.
        Self { context_tokens: 2048, reply_tokens: 160 }
    }
}

/// Counts tokens without the model's tokenizer: an over-estimate for English text with BPE
/// vocabularies (about 1.3 tokens per word in practice; this counts a token per 4 letters of a
/// word, at least one per word, plus one per punctuation mark). Over, not under: a prompt
/// that does not fit fails the request, one that is a little shorter than allowed does not.
pub fn estimate_tokens(text: &str) -> usize {
    text.split_whitespace()
        .map(|w| {
            let letters = w.chars().filter(|c| c.is_alphanumeric()).count();
            let other = w.chars().count() - letters;
            letters.div_ceil(4).max(1) + other
        })
        .sum()
}

/// Tokens a chat template adds around each message (role markers, separators).
const PER_MESSAGE: usize = 6;

/// The assembled prompt and what it cost.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// System message, kept history, the turn's notes (a system message), the user's message.
    pub messages: Vec<ChatMessage>,
    /// The memory after folding what left the prompt.
    pub memory: Memory,
    /// What the trace shows.
    pub stats: PromptStats,
}

/// The shape of one prompt, for the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptStats {
    /// Estimated tokens of the whole prompt.
    pub estimated_tokens: usize,
    /// Estimated tokens of the system message.
    pub system_tokens: usize,
    /// Estimated tokens of the turn's notes.
    pub note_tokens: usize,
    /// History messages in the prompt.
    pub history_messages: usize,
    /// Messages folded into memory this turn.
    pub newly_folded: usize,
    /// Few-shot examples that fitted.
    pub examples: usize,
    /// The memory was in the prompt.
    pub memory_used: bool,
}

/// The conversation before this message, as the prompt may use it.
#[derive(Debug, Clone, Copy)]
pub struct Past<'a> {
    /// User and assistant messages, the greeting first.
    pub history: &'a [ChatMessage],
    /// The running memory; `memory.folded` of the first messages are folded into it.
    pub memory: &'a Memory,
    /// The note each user message was answered with, by its index in `history` (the
    /// `CompactHistory` layout; other layouts ignore it).
    pub notes: &'a BTreeMap<usize, String>,
}

static NO_NOTES: BTreeMap<usize, String> = BTreeMap::new();

impl<'a> Past<'a> {
    /// A past without kept notes.
    pub fn new(history: &'a [ChatMessage], memory: &'a Memory) -> Self {
        Self { history, memory, notes: &NO_NOTES }
    }
}

/// Renders the system message and fits the history into the budget. In the cached layouts
/// `input.examples` leave the notes for the system message or for earlier exchanges.
pub fn assemble(
    prompts: &Prompts,
    mut input: PromptInput<'_>,
    past: Past<'_>,
    message: &str,
    budget: TokenBudget,
    layout: PromptLayout,
) -> Result<Assembled, PipelineError> {
    let Past { history, memory, notes: kept_notes } = past;
    let kept_notes = if layout.keeps_notes() { kept_notes } else { &NO_NOTES };
    let mut memory = memory.clone();
    let available = budget.context_tokens.saturating_sub(budget.reply_tokens);
    let message_tokens = estimate_tokens(message) + PER_MESSAGE;
    let mut exchanges = Vec::new();
    // In the layouts with a cached opening, what the person told before goes after it.
    let mut recalled = None;
    match layout {
        PromptLayout::Cached => {
            input.stage_examples = std::mem::take(&mut input.examples);
            recalled = input.recalled.take();
        }
        PromptLayout::CachedExchanges => {
            exchanges = std::mem::take(&mut input.examples);
            recalled = input.recalled.take();
        }
        PromptLayout::Compact | PromptLayout::CompactHistory => {
            exchanges = std::mem::take(&mut input.examples);
            input.standing_in_prefix = true;
            recalled = input.recalled.take();
        }
        PromptLayout::NotesBeforeMessage | PromptLayout::NotesInSystem => {}
    }
    let mut start = memory.folded.min(history.len());
    let mut newly_folded = 0;
    loop {
        input.memory = memory.render();
        let render = |name: &str| -> Result<String, PipelineError> {
            let context = tera::Context::from_serialize(&input)
                .map_err(|e| PipelineError::Template(error_chain(&e)))?;
            Ok(tidy(
                &prompts
                    .tera
                    .render(name, &context)
                    .map_err(|e| PipelineError::Template(error_chain(&e)))?,
            ))
        };
        let system = render(SYSTEM)?;
        let note = render(TURN)?;
        // The message that closes the examples (and, in `Compact`, says what holds for the
        // stage): part of the cached prefix.
        let standing = input.standing_in_prefix.then(|| render(STANDING)).transpose()?;
        let examples_end = match (exchanges.is_empty(), recalled.is_some()) {
            (true, _) => None,
            (false, false) => Some(EXAMPLES_END.to_string()),
            (false, true) => Some(EXAMPLES_END_MET_BEFORE.to_string()),
        };
        let prefix_parts: Vec<String> =
            [examples_end, recalled.clone(), standing].into_iter().flatten().collect();
        let prefix_note = (!prefix_parts.is_empty()).then(|| prefix_parts.join("\n\n"));
        let system_tokens = estimate_tokens(&system) + PER_MESSAGE;
        let note_tokens = estimate_tokens(&note) + PER_MESSAGE;
        let example_tokens: usize =
            prefix_note.as_deref().map_or(0, |n| estimate_tokens(n) + PER_MESSAGE)
                + exchanges
                    .iter()
                    .map(|e| estimate_tokens(&e.user) + estimate_tokens(&e.reply) + 2 * PER_MESSAGE)
                    .sum::<usize>();
        let kept = &history[start..];
        let kept_notes = kept_notes.range(start..);
        let history_tokens: usize = kept
            .iter()
            .map(|m| m.content.as_str())
            .chain(kept_notes.clone().map(|(_, n)| n.as_str()))
            .map(|text| estimate_tokens(text) + PER_MESSAGE)
            .sum();
        let total = system_tokens + example_tokens + note_tokens + history_tokens + message_tokens;
        if total <= available {
            let mut messages = Vec::with_capacity(kept.len() + 2 * exchanges.len() + 4);
            match layout {
                PromptLayout::NotesInSystem => {
                    messages.push(ChatMessage::system(format!("{system}\n\n{note}")));
                    messages.extend(kept.iter().cloned());
                    messages.push(ChatMessage::user(message));
                }
                PromptLayout::NotesBeforeMessage => {
                    messages.push(ChatMessage::system(system));
                    messages.extend(kept.iter().cloned());
                    messages.push(ChatMessage::system(note));
                    messages.push(ChatMessage::user(message));
                }
                PromptLayout::Cached
                | PromptLayout::CachedExchanges
                | PromptLayout::Compact
                | PromptLayout::CompactHistory => {
                    messages.push(ChatMessage::system(system));
                    for e in &exchanges {
                        messages.push(ChatMessage::user(e.user.as_str()));
                        messages.push(ChatMessage::assistant(e.reply.as_str()));
                    }
                    if let Some(prefix_note) = prefix_note {
                        messages.push(ChatMessage::system(prefix_note));
                    }
                    let mut kept_notes = kept_notes.peekable();
                    for (index, m) in kept.iter().enumerate() {
                        messages.push(m.clone());
                        while let Some((_, note)) =
                            kept_notes.next_if(|(at, _)| **at <= start + index)
                        {
                            messages.push(ChatMessage::system(note.as_str()));
                        }
                    }
                    messages.push(ChatMessage::user(message));
                    messages.push(ChatMessage::system(note));
                }
            }
            let stats = PromptStats {
                estimated_tokens: total,
                system_tokens,
                note_tokens,
                history_messages: kept.len(),
                newly_folded,
                examples: input.examples.len() + input.stage_examples.len() + exchanges.len(),
                memory_used: input.memory.is_some(),
            };
            return Ok(Assembled { messages, memory, stats });
        }
        if start < history.len() {
            // Fold the oldest exchange; two messages keep the history starting with the same
            // role as before.
            let take = 2.min(history.len() - start);
            memory.fold(&history[start..start + take]);
            start += take;
            newly_folded += take;
        } else if !input.examples.is_empty() {
            input.examples.pop();
        } else if !input.stage_examples.is_empty() {
            input.stage_examples.pop();
        } else if !exchanges.is_empty() {
            exchanges.pop();
        } else {
            return Err(PipelineError::PromptTooLong { tokens: total, budget: available });
        }
    }
}

/// Collapses the blank lines that template conditionals leave behind.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim().to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The shipped wedding host, for tests.
    pub(crate) fn host() -> Persona {
        Persona::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../datasets/personas/wedding-host.toml"),
        )
        .unwrap()
    }

    fn input(persona: &Persona, notes: Vec<String>) -> PromptInput<'_> {
        PromptInput {
            persona: persona.into(),
            stage: "casual",
            decision: "hold",
            reasons: vec!["steady".into()],
            feeling: Some("curious".into()),
            context_notes: notes.clone(),
            secret: None,
            asks_for_secret: false,
            repeating: false,
            guard_notes: notes,
            examples: Vec::new(),
            stage_examples: Vec::new(),
            memory: None,
            recalled: None,
            about_them: None,
            standing_in_prefix: false,
            phrasing: NotePhrasing::default().as_str(),
        }
    }

    #[test]
    fn a_template_that_prints_its_whole_context_finds_no_locked_secret() {
        let dir = tempfile::tempdir().unwrap();
        for name in [SYSTEM, TURN, STANDING] {
            std::fs::write(dir.path().join(name), "{{ __tera_context }} {{ persona | json_encode() }} {% if persona.secret %}{{ persona.secret.value }}{% endif %}").unwrap();
        }
        let prompts = Prompts::from_dir(dir.path()).unwrap();
        let roomy = TokenBudget { context_tokens: 16_000, reply_tokens: 100 };
        let persona = host();
        let value = persona.secret.as_ref().unwrap().value.clone();
        let matcher = crate::secret::SecretMatcher::new(&value).unwrap();
        let mut locked = input(&persona, Vec::new());
        locked.secret = crate::secret::SecretStatus::Locked { missing: vec![] }
            .for_prompt(persona.secret.as_ref());
        let a = assemble(
            &prompts,
            locked,
            Past::new(&[], &Memory::default()),
            "hi",
            roomy,
            PromptLayout::NotesBeforeMessage,
        )
        .unwrap();
        let text: String = a.messages.iter().map(|m| m.content.as_str()).collect();
        assert!(
            text.contains("Margot") && text.contains("the last envelope"),
            "the template did print its context: {text}"
        );
        assert!(!matcher.found_in(&text), "{text}");
        let mut unlocked = input(&persona, Vec::new());
        unlocked.secret = crate::secret::SecretStatus::Unlocked.for_prompt(persona.secret.as_ref());
        let a = assemble(
            &prompts,
            unlocked,
            Past::new(&[], &Memory::default()),
            "hi",
            roomy,
            PromptLayout::NotesBeforeMessage,
        )
        .unwrap();
        assert!(matcher.found_in(&a.messages[0].content), "unlocked, the value is there");
    }

    fn examples(persona: &Persona) -> Vec<ChosenExample> {
        persona
            .examples
            .iter()
            .enumerate()
            .map(|(index, e)| ChosenExample {
                index,
                score: 0.0,
                user: e.user.clone(),
                reply: e.reply.clone(),
            })
            .collect()
    }

    /// The cached layout's promise: each turn's prompt begins with the whole previous prompt
    /// but its last message (the previous notes), so an engine's prefix cache reads only the
    /// previous reply, the new message and the new notes again.
    #[test]
    fn the_cached_layouts_extend_the_previous_prompt() {
        let persona = host();
        let roomy = TokenBudget { context_tokens: 16_000, reply_tokens: 100 };
        let prompts = Prompts::embedded();
        let lines = ["Hi, I'm Sam.", "I teach in Leeds.", "What about you?"];
        let example_reply = persona.examples[0].reply.as_str();
        let mut history: Vec<ChatMessage> = vec![ChatMessage::assistant("Welcome!")];
        for layout in [PromptLayout::Cached, PromptLayout::CachedExchanges, PromptLayout::Compact] {
            history.truncate(1);
            let mut previous: Option<Vec<ChatMessage>> = None;
            for (turn, message) in lines.iter().enumerate() {
                let mut notes = input(&persona, vec![format!("note of turn {turn}")]);
                notes.examples = examples(&persona);
                let a = assemble(
                    &prompts,
                    notes,
                    Past::new(&history, &Memory::default()),
                    message,
                    roomy,
                    layout,
                )
                .unwrap();
                let last = a.messages.last().unwrap();
                assert_eq!(last.role, rapport_core::Role::System, "{layout}: the notes come last");
                assert!(last.content.contains(&format!("note of turn {turn}")));
                assert!(
                    !last.content.contains(example_reply),
                    "{layout}: no examples in the notes"
                );
                assert_eq!(a.messages[a.messages.len() - 2], ChatMessage::user(*message));
                let as_exchange = a.messages.contains(&ChatMessage::assistant(example_reply));
                let in_system = a.messages[0].content.contains(example_reply);
                assert_eq!(
                    (in_system, as_exchange),
                    (layout == PromptLayout::Cached, layout != PromptLayout::Cached),
                    "{layout}: where the examples went"
                );
                assert_eq!(a.stats.examples, persona.examples.len());
                if let Some(previous) = &previous {
                    let shared = previous.len() - 1;
                    assert_eq!(
                        &a.messages[..shared],
                        &previous[..shared],
                        "{layout}: turn {turn} re-reads only the end"
                    );
                    // What is new: the previous reply, this message, these notes.
                    assert_eq!(a.messages.len() - shared, 3);
                }
                history.push(ChatMessage::user(*message));
                history.push(ChatMessage::assistant(format!("reply {turn}")));
                previous = Some(a.messages);
            }
        }
        // The older layout re-reads its notes and examples every turn: its prompts do not
        // extend each other.
        let before = |history: &[ChatMessage], message: &str| {
            let mut notes = input(&persona, Vec::new());
            notes.examples = examples(&persona);
            assemble(
                &prompts,
                notes,
                Past::new(history, &Memory::default()),
                message,
                roomy,
                PromptLayout::NotesBeforeMessage,
            )
            .unwrap()
            .messages
        };
        let one = before(&history[..3], "I teach in Leeds.");
        let two = before(&history[..5], "What about you?");
        assert_ne!(
            two[one.len() - 2],
            one[one.len() - 2],
            "the notes moved past the previous message"
        );
    }

    /// The compact layout says the stage's manner and the locked secret's rule once, in the
    /// cached prefix after the examples, and leaves them out of the turn's notes; the notes
    /// still carry what changes (the decision, the feeling, a push for the secret) and, once
    /// the secret is unlocked, its value, which never reaches the prefix.
    #[test]
    fn the_compact_layout_keeps_standing_notes_in_the_prefix() {
        let persona = host();
        let roomy = TokenBudget { context_tokens: 16_000, reply_tokens: 100 };
        let prompts = Prompts::embedded();
        let secret = persona.secret.as_ref().unwrap();
        let run = |layout, status: crate::secret::SecretStatus, asks: bool| {
            let mut notes = input(&persona, Vec::new());
            notes.examples = examples(&persona);
            notes.secret = status.for_prompt(persona.secret.as_ref());
            notes.asks_for_secret = asks;
            assemble(
                &prompts,
                notes,
                Past::new(&[], &Memory::default()),
                "How are you?",
                roomy,
                layout,
            )
            .unwrap()
        };
        let locked = || crate::secret::SecretStatus::Locked { missing: vec![] };
        let full = run(PromptLayout::CachedExchanges, locked(), false);
        let compact = run(PromptLayout::Compact, locked(), false);
        let note = |a: &Assembled| a.messages.last().unwrap().content.clone();
        let standing = |a: &Assembled| {
            a.messages
                .iter()
                .find(|m| {
                    m.role == rapport_core::Role::System && m.content.starts_with(EXAMPLES_END)
                })
                .map(|m| m.content.clone())
                .unwrap()
        };
        assert!(standing(&compact).contains("getting on well"), "{}", standing(&compact));
        assert!(standing(&compact).contains("keep to yourself"), "{}", standing(&compact));
        assert!(
            !note(&compact).contains("getting on well")
                && !note(&compact).contains("keep to yourself")
        );
        assert!(
            note(&compact).contains("curious"),
            "the feeling stays in the note: {}",
            note(&compact)
        );
        assert_eq!(standing(&full), EXAMPLES_END, "the other layout keeps its notes per turn");
        assert!(note(&full).contains("keep to yourself"));
        assert!(
            estimate_tokens(&note(&compact)) * 2 < estimate_tokens(&note(&full)),
            "compact {} tokens, full {}",
            estimate_tokens(&note(&compact)),
            estimate_tokens(&note(&full))
        );
        // A push for the secret: the tease is in the turn's note.
        let asked = run(PromptLayout::Compact, locked(), true);
        assert!(note(&asked).contains(secret.tease.as_str()), "{}", note(&asked));
        // Unlocked: the value is in the note only, and the prefix no longer says to keep it.
        let matcher = crate::secret::SecretMatcher::new(&secret.value).unwrap();
        let open = run(PromptLayout::Compact, crate::secret::SecretStatus::Unlocked, false);
        assert!(matcher.found_in(&note(&open)));
        assert!(
            !matcher.found_in(&standing(&open)) && !standing(&open).contains("keep to yourself")
        );
        // Without examples the standing notes still open the conversation.
        let mut bare = input(&persona, Vec::new());
        bare.secret = locked().for_prompt(persona.secret.as_ref());
        let a = assemble(
            &prompts,
            bare,
            Past::new(&[], &Memory::default()),
            "Hi",
            roomy,
            PromptLayout::Compact,
        )
        .unwrap();
        assert_eq!(a.messages.len(), 4, "system, standing notes, message, note");
        assert!(a.messages[1].content.contains("keep to yourself"));
    }

    /// Each note phrasing puts its own words in the standing note and the turn's "hold" note,
    /// in both kinds of layout; the default puts the words every persona had before there was
    /// a choice.
    #[test]
    fn each_note_phrasing_has_its_own_words() {
        let persona = host();
        let roomy = TokenBudget { context_tokens: 16_000, reply_tokens: 100 };
        let prompts = Prompts::embedded();
        let text = |layout, phrasing: NotePhrasing| {
            let mut notes = input(&persona, Vec::new());
            notes.examples = examples(&persona);
            notes.phrasing = phrasing.as_str();
            let a = assemble(
                &prompts,
                notes,
                Past::new(&[], &Memory::default()),
                "How are you?",
                roomy,
                layout,
            )
            .unwrap();
            a.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
        };
        for layout in [PromptLayout::Compact, PromptLayout::CachedExchanges] {
            let curious = text(layout, NotePhrasing::Curious);
            assert!(curious.contains("genuine curiosity"), "{layout}: {curious}");
            let first = text(layout, NotePhrasing::AnswerFirst);
            assert!(first.contains("answer") && !first.contains("curiosity"), "{layout}: {first}");
            let friend = text(layout, NotePhrasing::Friend);
            assert!(friend.contains("not a helper") || friend.contains("never as a helper"));
            assert!(!friend.contains("curiosity"), "{layout}: {friend}");
        }
        let compact = text(PromptLayout::Compact, NotePhrasing::Curious);
        assert!(compact.contains("Same warmth as before; stay curious about them."));
    }

    /// What the person told in earlier conversations follows the persona's opening and its
    /// examples, so the opening every conversation with the persona shares (the warm prefix)
    /// is the same with and without it; layouts without a cached opening carry it in the
    /// system message. Each layout carries it exactly once.
    #[test]
    fn what_the_person_told_before_follows_the_shared_opening() {
        let persona = host();
        let roomy = TokenBudget { context_tokens: 16_000, reply_tokens: 100 };
        let prompts = Prompts::embedded();
        let recalled = "You have talked with this person before. What they told you then, in their words:\n- \"My cat is called Pistachio.\"";
        for layout in PromptLayout::ALL {
            let run = |recall: Option<&str>| {
                let mut notes = input(&persona, Vec::new());
                notes.examples = examples(&persona);
                notes.recalled = recall.map(str::to_string);
                assemble(&prompts, notes, Past::new(&[], &Memory::default()), "Hi", roomy, layout)
                    .unwrap()
                    .messages
            };
            let (without, with) = (run(None), run(Some(recalled)));
            let carrying: Vec<usize> =
                (0..with.len()).filter(|i| with[*i].content.contains("Pistachio")).collect();
            assert_eq!(carrying.len(), 1, "{layout}: once");
            assert!(!without.iter().any(|m| m.content.contains("Pistachio")));
            match layout {
                PromptLayout::NotesBeforeMessage | PromptLayout::NotesInSystem => {
                    assert_eq!(carrying, vec![0], "{layout}: in the system message")
                }
                _ => {
                    let at = carrying[0];
                    assert!(at > 0 && with[at].role == rapport_core::Role::System, "{layout}");
                    assert_eq!(
                        with[..at],
                        without[..at],
                        "{layout}: the shared opening is unchanged"
                    );
                    assert!(
                        !with[at].content.contains(EXAMPLES_END),
                        "{layout}: not 'someone new'"
                    );
                }
            }
        }
    }

    /// Keeping each turn's note after its message makes the whole previous prompt, and the
    /// reply written after it, the opening of the next: only the new message and note are new.
    /// Notes of folded messages leave with them.
    #[test]
    fn kept_notes_make_the_previous_prompt_and_its_reply_the_next_opening() {
        let persona = host();
        let roomy = TokenBudget { context_tokens: 16_000, reply_tokens: 100 };
        let prompts = Prompts::embedded();
        let mut history = vec![ChatMessage::assistant("Welcome!")];
        let mut kept = BTreeMap::new();
        let mut previous: Option<Vec<ChatMessage>> = None;
        for (turn, message) in
            ["Hi, I'm Sam.", "I teach in Leeds.", "What about you?"].iter().enumerate()
        {
            let mut notes = input(&persona, vec![format!("note of turn {turn}")]);
            notes.examples = examples(&persona);
            let past = Past { history: &history, memory: &Memory::default(), notes: &kept };
            let a = assemble(&prompts, notes, past, message, roomy, PromptLayout::CompactHistory)
                .unwrap();
            let actual: usize =
                a.messages.iter().map(|m| estimate_tokens(&m.content) + PER_MESSAGE).sum();
            assert!(actual <= a.stats.estimated_tokens, "the kept notes are counted");
            if let Some(previous) = &previous {
                assert_eq!(&a.messages[..previous.len()], &previous[..], "turn {turn}");
                assert_eq!(
                    a.messages[previous.len()],
                    ChatMessage::assistant(format!("reply {}", turn - 1))
                );
                assert_eq!(a.messages.len() - previous.len(), 3, "reply, message, note");
            }
            let note = a.messages.last().unwrap().clone();
            assert!(note.content.contains(&format!("note of turn {turn}")));
            kept.insert(history.len(), note.content.clone());
            history.push(ChatMessage::user(*message));
            history.push(ChatMessage::assistant(format!("reply {turn}")));
            let mut sent = a.messages;
            sent.push(ChatMessage::assistant(format!("reply {turn}")));
            previous = Some(sent[..sent.len() - 1].to_vec());
        }
        // Other layouts ignore kept notes.
        let past = Past { history: &history, memory: &Memory::default(), notes: &kept };
        let a =
            assemble(&prompts, input(&persona, vec![]), past, "Bye", roomy, PromptLayout::Compact)
                .unwrap();
        assert!(!a.messages.iter().any(|m| m.content.contains("note of turn 0")));
        // A tight budget folds the oldest turns, and their notes go with them.
        let tight = TokenBudget { context_tokens: 700, reply_tokens: 100 };
        let past = Past { history: &history, memory: &Memory::default(), notes: &kept };
        let a = assemble(
            &prompts,
            input(&persona, vec![]),
            past,
            "Bye",
            tight,
            PromptLayout::CompactHistory,
        )
        .unwrap();
        assert!(a.memory.folded > 0, "the budget folded something");
        assert!(!a.messages.iter().any(|m| m.content.contains("note of turn 0")));
    }

    #[test]
    fn layouts_parse_from_their_names_and_refuse_others() {
        for layout in PromptLayout::ALL {
            assert_eq!(layout.as_str().parse::<PromptLayout>().unwrap(), layout);
        }
        let err = "cache".parse::<PromptLayout>().unwrap_err();
        assert!(err.contains("cached") && err.contains("notes-in-system"), "{err}");
    }

    proptest! {
        // The assembler's fuzz target: any history, message, notes, examples, layout and budget.
        // It never panics; what it returns fits the budget, opens with the persona, ends with
        // the message (and, in the cached layout, the notes after it), and keeps the newest
        // turns (the rest folded into memory, none dropped silently).
        #[test]
        fn any_history_fits_the_budget_or_is_refused_clearly(
            history in proptest::collection::vec(".{0,300}", 0..40),
            message in ".{1,600}",
            notes in proptest::collection::vec(".{0,120}", 0..3),
            context_tokens in 300usize..4000,
            reply_tokens in 16usize..400,
            layout in 0..PromptLayout::ALL.len(),
            with_examples in any::<bool>(),
        ) {
            let persona = host();
            let history: Vec<ChatMessage> = history.into_iter().enumerate().map(|(i, t)| if i % 2 == 0 { ChatMessage::user(t) } else { ChatMessage::assistant(t) }).collect();
            let budget = TokenBudget { context_tokens, reply_tokens };
            let layout = PromptLayout::ALL[layout];
            let mut input = input(&persona, notes);
            if with_examples {
                input.examples = examples(&persona);
            }
            let kept: BTreeMap<usize, String> = history.iter().enumerate().filter(|(_, m)| m.role == rapport_core::Role::User).map(|(i, m)| (i, format!("note for {}", m.content.len()))).collect();
            let past = Past { history: &history, memory: &Memory::default(), notes: &kept };
            match assemble(&Prompts::embedded(), input, past, &message, budget, layout) {
                Ok(a) => {
                    let sent: usize = a.messages.iter().map(|m| estimate_tokens(&m.content) + PER_MESSAGE).sum();
                    prop_assert!(sent <= a.stats.estimated_tokens, "sent {} > estimated {}", sent, a.stats.estimated_tokens);
                    prop_assert!(a.stats.estimated_tokens <= context_tokens.saturating_sub(reply_tokens));
                    prop_assert_eq!(a.messages[0].role, rapport_core::Role::System);
                    prop_assert!(a.messages[0].content.contains(persona.name.as_str()));
                    let mut messages = a.messages.clone();
                    if layout.examples_per_stage() {
                        prop_assert_eq!(messages.pop().unwrap().role, rapport_core::Role::System);
                    }
                    let last = messages.last().unwrap();
                    prop_assert_eq!(last.role, rapport_core::Role::User);
                    prop_assert_eq!(&last.content, &message);
                    prop_assert_eq!(a.memory.folded + a.stats.history_messages, history.len());
                    // The history follows the examples' closing line (when there are examples).
                    let from = messages.iter().position(|m| m.role == rapport_core::Role::System && m.content.starts_with(EXAMPLES_END)).map_or(0, |i| i + 1);
                    let kept: Vec<&ChatMessage> = messages[from..].iter().filter(|m| m.role != rapport_core::Role::System).collect();
                    let kept = &kept[..kept.len() - 1];
                    prop_assert_eq!(kept.len(), a.stats.history_messages);
                    prop_assert!(kept.iter().zip(&history[a.memory.folded..]).all(|(k, h)| *k == h), "the newest turns, in order");
                }
                Err(e) => prop_assert!(matches!(e, PipelineError::PromptTooLong { .. }), "{e}"),
            }
        }
    }
}
