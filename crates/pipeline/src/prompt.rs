//! Step 8: the prompt, from tera templates in `prompts/`, within a token budget.
//!
//! Two templates. `system.tera` is the persona (who they are, how they talk, what they
//! remember) and opens the prompt; it changes only when the memory does. `turn.tera` is this
//! turn's notes (stage, decision, feelings, time, the secret, guard notes and, in the older
//! layouts, few-shot examples). [`PromptLayout`] says where the notes and the examples go, and
//! so how much of each prompt an engine's prefix cache can serve:
//!
//! - `Cached`: the persona's examples for the stage at the end of the system message (the same
//!   every turn of a stage, so cached), the history, the user's message, then the notes in a
//!   system message *after* it. Turn n's prompt is turn n−1's without its last note, plus the
//!   reply, the message and a new note, so only those are read again.
//! - `CachedExchanges` (the default, by a judged batch: docs/eval/prompt-layout.md): the same,
//!   with the examples as real earlier exchanges between the system message and the history,
//!   followed by a line saying they were other people.
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

use rapport_core::ChatMessage;
use serde::{Deserialize, Serialize};
use tera::Tera;

use crate::fewshot::ChosenExample;
use crate::memory::Memory;
use crate::persona::Persona;
use crate::secret::SecretForPrompt;
use crate::PipelineError;

const SYSTEM: &str = "system.tera";
const TURN: &str = "turn.tera";

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
        Self { tera }
    }

    /// Templates from a directory (for editing prompts without rebuilding); every template
    /// the pipeline uses must be there.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, PipelineError> {
        let mut tera = Tera::default();
        for name in [SYSTEM, TURN] {
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
}

/// Where the turn's notes and the persona's examples go (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptLayout {
    /// Examples for the stage in the system message; the notes after the user's message.
    Cached,
    /// Examples for the stage as earlier exchanges after the system message; the notes after
    /// the user's message. The default: in a judged batch on the default model it cut breaks
    /// of character from 19 to 2 per 100 replies and the prompt tokens read again per turn by
    /// 118, with no significant change in any judged dimension, where `Cached` lost a little
    /// (docs/eval/prompt-layout.md).
    #[default]
    CachedExchanges,
    /// Examples chosen for the message and the notes in a system message just before it.
    NotesBeforeMessage,
    /// Examples and notes at the end of the first system message.
    NotesInSystem,
}

impl PromptLayout {
    /// Every layout, for help texts and errors.
    pub const ALL: [PromptLayout; 4] = [
        PromptLayout::Cached,
        PromptLayout::CachedExchanges,
        PromptLayout::NotesBeforeMessage,
        PromptLayout::NotesInSystem,
    ];

    /// The name the command line and the run files use.
    pub fn as_str(self) -> &'static str {
        match self {
            PromptLayout::Cached => "cached",
            PromptLayout::CachedExchanges => "cached-exchanges",
            PromptLayout::NotesBeforeMessage => "notes-before-message",
            PromptLayout::NotesInSystem => "notes-in-system",
        }
    }

    /// Whether the persona's examples are fixed per stage (in the cached prefix) rather than
    /// chosen for each message.
    pub fn examples_per_stage(self) -> bool {
        matches!(self, PromptLayout::Cached | PromptLayout::CachedExchanges)
    }
}

impl std::fmt::Display for PromptLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PromptLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PromptLayout::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = PromptLayout::ALL.iter().map(|l| l.as_str()).collect();
            format!("unknown prompt layout {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// Said after the example exchanges of the `CachedExchanges` layout, so that the model does not take
/// them for this conversation (it would answer questions nobody asked it here).
pub const EXAMPLES_END: &str = "Those were other people, to show how you talk. Someone new is talking to you now; nothing above was said to them.";

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

/// Renders the system message and fits the history into the budget. `history` is the whole
/// conversation before this message (user and assistant turns); `memory.folded` of its first
/// messages are already folded. In the cached layouts `input.examples` leave the notes for the
/// system message or for earlier exchanges.
pub fn assemble(
    prompts: &Prompts,
    mut input: PromptInput<'_>,
    history: &[ChatMessage],
    message: &str,
    memory: &Memory,
    budget: TokenBudget,
    layout: PromptLayout,
) -> Result<Assembled, PipelineError> {
    let mut memory = memory.clone();
    let available = budget.context_tokens.saturating_sub(budget.reply_tokens);
    let message_tokens = estimate_tokens(message) + PER_MESSAGE;
    let mut exchanges = Vec::new();
    match layout {
        PromptLayout::Cached => input.stage_examples = std::mem::take(&mut input.examples),
        PromptLayout::CachedExchanges => exchanges = std::mem::take(&mut input.examples),
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
        let system_tokens = estimate_tokens(&system) + PER_MESSAGE;
        let note_tokens = estimate_tokens(&note) + PER_MESSAGE;
        let example_tokens: usize = if exchanges.is_empty() {
            0
        } else {
            estimate_tokens(EXAMPLES_END)
                + PER_MESSAGE
                + exchanges
                    .iter()
                    .map(|e| estimate_tokens(&e.user) + estimate_tokens(&e.reply) + 2 * PER_MESSAGE)
                    .sum::<usize>()
        };
        let kept = &history[start..];
        let history_tokens: usize =
            kept.iter().map(|m| estimate_tokens(&m.content) + PER_MESSAGE).sum();
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
                PromptLayout::Cached | PromptLayout::CachedExchanges => {
                    messages.push(ChatMessage::system(system));
                    if !exchanges.is_empty() {
                        for e in &exchanges {
                            messages.push(ChatMessage::user(e.user.as_str()));
                            messages.push(ChatMessage::assistant(e.reply.as_str()));
                        }
                        messages.push(ChatMessage::system(EXAMPLES_END));
                    }
                    messages.extend(kept.iter().cloned());
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
        }
    }

    #[test]
    fn a_template_that_prints_its_whole_context_finds_no_locked_secret() {
        let dir = tempfile::tempdir().unwrap();
        for name in [SYSTEM, TURN] {
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
            &[],
            "hi",
            &Memory::default(),
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
            &[],
            "hi",
            &Memory::default(),
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
        for layout in [PromptLayout::Cached, PromptLayout::CachedExchanges] {
            history.truncate(1);
            let mut previous: Option<Vec<ChatMessage>> = None;
            for (turn, message) in lines.iter().enumerate() {
                let mut notes = input(&persona, vec![format!("note of turn {turn}")]);
                notes.examples = examples(&persona);
                let a =
                    assemble(&prompts, notes, &history, message, &Memory::default(), roomy, layout)
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
                    (layout == PromptLayout::Cached, layout == PromptLayout::CachedExchanges),
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
                history,
                message,
                &Memory::default(),
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
            layout in 0usize..4,
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
            match assemble(&Prompts::embedded(), input, &history, &message, &Memory::default(), budget, layout) {
                Ok(a) => {
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
                    let from = messages.iter().position(|m| m.content == EXAMPLES_END).map_or(0, |i| i + 1);
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
