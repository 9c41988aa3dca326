//! The coach's rewrite of a learner's message: "try: …", written by the LLM under a coach
//! prompt after the persona's reply, and shown only once a check finds it invents nothing.
//!
//! The tip ([`crate::coach::message_tip`]) is lexical and instant; a rewrite runs the model, so
//! the page asks for it after the reply, and [`study`] measures how often one is shown and how
//! long it takes on simulated learners' messages (`rapport eval rewrites`).

use serde::{Deserialize, Serialize};

use crate::coach::{
    acknowledges, is_open_question, message_tips, MessageTip, Skill, TipKind, GENERIC,
};
use crate::dialogue::{Dialogue, Speaker};
use rapport_core::text_stats::words;
use rapport_core::{collect_completion, ChatMessage, GenerationRequest, SamplingParams};
use rapport_pipeline::listening::{content_words, question_sentences, related};
use rapport_pipeline::signals::read_signals;

/// The coach's template (`prompts/coach_rewrite.tera`), compiled in.
const REWRITE_TEMPLATE: &str = include_str!("../../prompts/coach_rewrite.tera");

/// Why a rewrite was not shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteRefused(pub String);

/// The prompt of the coach's rewrite of `message` after `tip`.
pub fn rewrite_messages(
    message: &str,
    her_last: Option<&str>,
    persona_name: &str,
    tip: &MessageTip,
) -> Result<Vec<ChatMessage>, crate::EvalError> {
    let render = |part: &str| {
        let mut ctx = tera::Context::new();
        ctx.insert("part", part);
        ctx.insert("name", persona_name);
        ctx.insert("her_last", &her_last.unwrap_or_default());
        ctx.insert("message", message);
        ctx.insert("tip", &tip.text);
        tera::Tera::one_off(REWRITE_TEMPLATE, &ctx, false)
            .map(|t| t.trim().to_string())
            .map_err(|e| crate::EvalError::Invalid(format!("coach template: {e}")))
    };
    Ok(vec![ChatMessage::system(render("system")?), ChatMessage::user(render("user")?)])
}

/// Signs that the model wrote about its task rather than the message.
const PROMPT_ECHOES: [&str; 6] =
    ["rewrite", "their message", "coach", "the tip", "the learner", "rewritten"];

/// `text` without its `[placeholders]`.
fn without_placeholders(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Whether `text` does what `tip` asked.
fn follows(
    text: &str,
    her_last: Option<&str>,
    persona_name: &str,
    tip: &MessageTip,
) -> Result<(), String> {
    if tip.kind == TipKind::Strength {
        return Ok(());
    }
    let placeholder = text.contains('[');
    let text = &without_placeholders(text);
    let questions = question_sentences(text);
    let ok = match tip.skill {
        Skill::OpenQuestions => questions.iter().any(|q| is_open_question(q)),
        // A question back, and, where she asked one, her question taken up: one of its words,
        // or a [placeholder] for the answer only the learner knows.
        Skill::Reciprocity => {
            let hers = her_last.and_then(|h| question_sentences(h).pop());
            let taken_up = hers.is_none_or(|q| {
                let asked: Vec<String> = content_words(&q)
                    .into_iter()
                    .filter(|w| !GENERIC.contains(&w.as_str()))
                    .collect();
                asked.is_empty()
                    || placeholder
                    || content_words(text).iter().any(|m| asked.iter().any(|a| related(m, a)))
            });
            !questions.is_empty() && taken_up
        }
        Skill::Listening => {
            let name = persona_name.to_lowercase();
            // A detail of hers: not her name, not a word every reply has.
            let hers: Vec<String> = her_last
                .map(content_words)
                .unwrap_or_default()
                .into_iter()
                .filter(|w| *w != name && !GENERIC.contains(&w.as_str()))
                .collect();
            content_words(text).iter().any(|m| hers.iter().any(|h| related(m, h)))
        }
        Skill::Mirroring => acknowledges(text),
        Skill::Pacing => read_signals(text, None).push.is_none(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("the rewrite did not follow the tip ({})", tip.skill.label().to_lowercase()))
    }
}

/// A helper's phrases the character guard's list does not hold (it is written for personas).
const HELPER_PHRASES: [&str; 5] =
    ["glad to help", "happy to help", "glad i could help", "how can i help", "how can i assist"];

/// Word overlap (Jaccard) with the message from which a rewrite counts as unchanged.
const BARELY_CHANGED: f64 = 0.8;

/// Words that make a sentence one about the writer.
const FIRST_PERSON: [&str; 8] = ["i", "i'm", "im", "me", "my", "i've", "i'd", "i'll"];
/// What a rewrite may say about the learner without their having said it: feelings and
/// politeness, not facts.
const OWN_FREE: [&str; 98] = [
    // feelings and politeness
    "glad",
    "happy",
    "love",
    "loved",
    "excited",
    "sorry",
    "great",
    "nice",
    "thanks",
    "thank",
    "hear",
    "sounds",
    "interesting",
    "amazing",
    "awesome",
    "wonderful",
    "lovely",
    "curious",
    "wonder",
    "wondering",
    "hope",
    "feel",
    "feeling",
    "understand",
    "imagine",
    "sure",
    "bet",
    "appreciate",
    "enjoy",
    "interest",
    "interested",
    "fun",
    // verbs of talking, asking and getting to know
    "would",
    "like",
    "know",
    "think",
    "want",
    "need",
    "tell",
    "talk",
    "chat",
    "chatting",
    "ask",
    "share",
    "meet",
    "meeting",
    "come",
    "find",
    "learn",
    "help",
    "look",
    "looking",
    "keep",
    "mean",
    "make",
    "take",
    "give",
    "stay",
    "doing",
    "going",
    "getting",
    "trying",
    "been",
    "have",
    "see",
    "seeing",
    "improve",
    "better",
    // quantities, time and place words
    "really",
    "also",
    "well",
    "just",
    "still",
    "more",
    "much",
    "many",
    "little",
    "today",
    "time",
    "here",
    "there",
    "back",
    "again",
    "soon",
    "maybe",
    "always",
    "never",
    "ever",
    "anything",
    "something",
    "everything",
    "nothing",
    "question",
    "questions",
    "idea",
    "ideas",
    "thought",
    "thoughts",
];
/// A rewrite never asks for a secret, whatever the message did.
const SECRET_WORDS: [&str; 4] = ["password", "secret", "passcode", "code word"];

/// Words a rewrite may capitalise mid-sentence without having heard them.
const ALWAYS_CAPITALISED: [&str; 8] = ["i", "i'm", "i've", "i'd", "i'll", "ok", "oh", "okay"];

/// The model's rewrite, cleaned and checked before a learner sees it: a label or quotation
/// marks around it are removed; it is refused when empty, unchanged, far longer than the
/// message, when it talks about its task, makes the learner someone else, says something about
/// the learner they did not say (her facts made theirs, an invented plan), names a number or a
/// name that neither of them said, asks for a secret, or does not do what the tip asked (an
/// open question, a question back, a detail of hers taken up, her feeling acknowledged, no
/// push): the coach suggests wording, never facts.
pub fn checked_rewrite(
    raw: &str,
    message: &str,
    her_last: Option<&str>,
    persona_name: &str,
    tip: &MessageTip,
) -> Result<String, RewriteRefused> {
    let refuse = |why: String| Err(RewriteRefused(why));
    let mut text = raw.trim();
    // Only the first paragraph: a model that goes on to explain itself is cut there.
    text = text.split("\n\n").next().unwrap_or_default().trim();
    for label in ["rewritten message:", "rewrite:", "try:", "they wrote:", "message:"] {
        if text.to_lowercase().starts_with(label) {
            text = text[label.len()..].trim();
        }
    }
    // A speaker's label ("Jade:", "Margot said:"): the model writing a script.
    if let Some((head, rest)) = text.split_once(':') {
        let head_words: Vec<&str> = head.split_whitespace().collect();
        let label = matches!(head_words.as_slice(), [_] | [_, "said"])
            && head_words[0].chars().next().is_some_and(char::is_uppercase);
        if label && !rest.trim().is_empty() {
            text = rest.trim();
        }
    }
    let text =
        text.trim_matches(|c| matches!(c, '"' | '\u{201c}' | '\u{201d}' | '\'' | ' ')).trim();
    if words(text).is_empty() {
        return refuse("the rewrite was empty".into());
    }
    let squash = |t: &str| words(t).join(" ");
    if squash(text) == squash(message) {
        return refuse("the rewrite did not change the message".into());
    }
    // Barely changed: the same words, give or take a greeting or a contraction.
    let (a, b): (std::collections::HashSet<String>, std::collections::HashSet<String>) =
        (words(text).into_iter().collect(), words(message).into_iter().collect());
    let same = a.intersection(&b).count() as f64 / a.union(&b).count().max(1) as f64;
    if same >= BARELY_CHANGED {
        return refuse("the rewrite barely changed the message".into());
    }
    if text.chars().count() > 3 * message.chars().count() + 160 {
        return refuse("the rewrite was far longer than the message".into());
    }
    // What the checks read: the rewrite without its [placeholders] for what only the learner
    // knows (the prompt asks for them instead of invented answers).
    let checked = without_placeholders(text);
    let lower_text = checked.to_lowercase();
    // Narration of the chat ("Jade asked if…") instead of a message to her.
    let name = persona_name.to_lowercase();
    if ["asked", "said", "says", "wants"]
        .iter()
        .any(|v| lower_text.contains(&format!("{name} {v}")))
    {
        return refuse("the rewrite described the chat instead of talking to her".into());
    }
    if let Some(phrase) = rapport_pipeline::character::CharacterGuard::service_phrase(&checked)
        .or_else(|| HELPER_PHRASES.iter().copied().find(|p| lower_text.contains(p)))
    {
        return refuse(format!("the rewrite sounds like an assistant (\u{201c}{phrase}\u{201d})"));
    }
    // The model talking about its task instead of doing it.
    if let Some(echo) = PROMPT_ECHOES.iter().find(|e| lower_text.contains(*e)) {
        return refuse(format!("the rewrite talked about the task (\u{201c}{echo}\u{201d})"));
    }
    // The learner made into someone else ("I'm Camille"): an identity they never claimed.
    let lower_message = message.to_lowercase();
    for claim in ["i'm ", "i am ", "my name is ", "this is "] {
        for (at, _) in lower_text.match_indices(claim) {
            let rest = &text[at + claim.len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphabetic()).collect();
            if name.chars().next().is_some_and(char::is_uppercase)
                && !lower_message.contains(&name.to_lowercase())
            {
                return refuse(format!("the rewrite made you \u{201c}{name}\u{201d}"));
            }
        }
    }
    if SECRET_WORDS.iter().any(|w| lower_text.contains(w)) {
        return refuse("the coach does not help ask for a secret".into());
    }
    // Something about the learner they did not say: in a first-person sentence, a content
    // word that is not theirs (her facts made theirs, an invented plan or taste).
    let theirs = content_words(message);
    let her_words = her_last.map(words).unwrap_or_default();
    let own_words = words(message);
    for sentence in checked.split(['.', '!', '?', '\n', '…']) {
        let w = words(sentence);
        let first_person = w.iter().any(|w| FIRST_PERSON.contains(&w.as_str()));
        if !first_person {
            continue;
        }
        // Her words in a sentence about the learner are hers made theirs ("I'm a ceramicist
        // too"), even where the learner used a word of the same family.
        // Contractions ("i'll", "here's") and the small words a sentence needs are no facts.
        let facts: Vec<String> = content_words(sentence)
            .into_iter()
            .filter(|c| !c.contains('\'') && !OWN_FREE.contains(&c.as_str()))
            .collect();
        if let Some(taken) = facts.iter().find(|c| her_words.contains(c) && !own_words.contains(c))
        {
            return refuse(format!(
                "the rewrite said something about you that you did not (\u{201c}{taken}\u{201d})"
            ));
        }
        if let Some(new) = facts.iter().find(|c| !theirs.iter().any(|t| related(t, c))) {
            return refuse(format!(
                "the rewrite said something about you that you did not (\u{201c}{new}\u{201d})"
            ));
        }
    }
    // What the learner said kept: a rewrite that drops all of it ("my dog died last week" made
    // "What's on your mind?") is another message, not theirs said better.
    let said: Vec<String> = content_words(message)
        .into_iter()
        .filter(|w| !GENERIC.contains(&w.as_str()) && !OWN_FREE.contains(&w.as_str()))
        .collect();
    let kept = content_words(&checked);
    if !said.is_empty() && !said.iter().any(|w| kept.iter().any(|k| related(k, w))) {
        return refuse("the rewrite dropped what you said".into());
    }
    // Her words handed back as the learner's ("Did you find the place all right?" to her own
    // question): an echo, not a better message.
    if let Some(hers) = her_last {
        for mine in checked.split_inclusive(['.', '!', '?', '\n']) {
            let m = words(mine);
            if m.len() < 3 {
                continue;
            }
            let like = |other: &str| {
                other.split_inclusive(['.', '!', '?', '\n']).any(|o| {
                    let o = words(o);
                    let shared = m.iter().filter(|w| o.contains(w)).count();
                    shared * 10 >= m.len().max(o.len()) * 7
                })
            };
            // Hers, and not the learner's own sentence kept.
            let echoed = like(hers) && !like(message);
            if echoed {
                return refuse(format!(
                    "the rewrite handed her own words back (\u{201c}{}\u{201d})",
                    mine.trim()
                ));
            }
        }
        // Her question asked back to her ("What's your name?" to her "What's your name?").
        for q in question_sentences(hers) {
            let q = words(&q);
            if q.len() < 3 {
                continue;
            }
            let asked_back = question_sentences(&checked).iter().any(|mine| {
                let mine = words(mine);
                q.iter().filter(|w| mine.contains(w)).count() * 10 >= q.len() * 8
            });
            if asked_back
                && !question_sentences(message).iter().any(|m| {
                    let m = words(m);
                    q.iter().filter(|w| m.contains(w)).count() * 10 >= q.len() * 8
                })
            {
                return refuse("the rewrite asked her own question back".into());
            }
        }
    }
    if let Err(why) = follows(text, her_last, persona_name, tip) {
        return refuse(why);
    }
    let heard = format!("{message} {} {persona_name}", her_last.unwrap_or_default()).to_lowercase();
    let heard_words = words(&heard);
    let mut sentence_start = true;
    for token in checked.split_whitespace() {
        let word: String =
            token.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'').to_string();
        let ends = token.ends_with(['.', '!', '?', '…']);
        if !word.is_empty() {
            let lower = word.to_lowercase();
            let said = heard_words.contains(&lower) || heard.contains(&lower);
            if word.chars().any(|c| c.is_ascii_digit()) && !said {
                return refuse(format!(
                    "the rewrite named \u{201c}{word}\u{201d}, which nobody said"
                ));
            }
            let capital = word.chars().next().is_some_and(char::is_uppercase);
            if capital && !sentence_start && !said && !ALWAYS_CAPITALISED.contains(&lower.as_str())
            {
                return refuse(format!(
                    "the rewrite named \u{201c}{word}\u{201d}, which nobody said"
                ));
            }
            sentence_start = false;
        }
        if ends {
            sentence_start = true;
        }
    }
    Ok(text.to_string())
}

/// Writes a rewrite of `message` after `tip` with `generator`: up to `attempts` samples, the
/// first that passes [`checked_rewrite`]; else why the last one was refused.
pub async fn rewrite(
    generator: &dyn rapport_core::Generator,
    message: &str,
    her_last: Option<&str>,
    persona_name: &str,
    tip: &MessageTip,
    attempts: u32,
) -> Result<Result<String, RewriteRefused>, crate::EvalError> {
    let messages = rewrite_messages(message, her_last, persona_name, tip)?;
    let mut last = RewriteRefused("no attempt was made".into());
    for attempt in 0..attempts.max(1) {
        let sampling = SamplingParams {
            temperature: 0.7,
            max_tokens: REWRITE_TOKENS,
            seed: Some(u64::from(attempt) + 1),
            stop: vec!["\n\n".into()],
            ..SamplingParams::default()
        };
        let request = GenerationRequest::new(messages.clone(), sampling)?;
        let done = collect_completion(generator.generate(request).await?, |_| {}).await?;
        match checked_rewrite(&done.text, message, her_last, persona_name, tip) {
            Ok(text) => return Ok(Ok(text)),
            Err(why) => {
                tracing::debug!(raw = %done.text, why = %why.0, "coach rewrite refused");
                last = why;
            }
        }
    }
    Ok(Err(last))
}

/// Tokens a rewrite may take: three short sentences.
const REWRITE_TOKENS: u32 = 90;

/// One rewrite of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudiedRewrite {
    /// The dialogue.
    pub dialogue: String,
    /// The message's turn index.
    pub turn: usize,
    /// The learner's message.
    pub message: String,
    /// The tip it followed.
    pub tip: MessageTip,
    /// The rewrite shown, if one passed the check.
    pub rewrite: Option<String>,
    /// Why none was shown.
    pub refused: Option<String>,
    /// Milliseconds from asking to the answer (both samples when the first was refused).
    pub ms: u64,
}

/// The messages a study rewrites: each dialogue's learner messages whose tip suggests
/// something (the page offers a rewrite on those), drawn at random by `seed`, at most `limit`.
pub fn study_items(
    dialogues: &[Dialogue],
    limit: usize,
    seed: u64,
) -> Vec<(usize, usize, MessageTip)> {
    let mut items: Vec<(usize, usize, MessageTip)> = dialogues
        .iter()
        .enumerate()
        .flat_map(|(d, dialogue)| {
            message_tips(dialogue)
                .into_iter()
                .filter(|(_, t)| t.kind == TipKind::Try)
                .map(move |(turn, tip)| (d, turn, tip))
        })
        .collect();
    let mut rng = crate::stats::SplitMix64::new(seed);
    // Fisher–Yates, seeded: the same items for the same seed.
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
    items.truncate(limit);
    items
}

/// Rewrites each of `items` (from [`study_items`]) with `generator`, calling `done` after each.
pub async fn study(
    generator: &dyn rapport_core::Generator,
    dialogues: &[Dialogue],
    items: &[(usize, usize, MessageTip)],
    mut done: impl FnMut(&StudiedRewrite),
) -> Result<Vec<StudiedRewrite>, crate::EvalError> {
    let mut out = Vec::new();
    for (d, turn, tip) in items {
        let dialogue = &dialogues[*d];
        let message = &dialogue.turns[*turn].text;
        let her_last = dialogue.turns[..*turn]
            .iter()
            .rev()
            .find(|t| t.speaker == Speaker::Persona)
            .map(|t| t.text.as_str());
        let name = dialogue.persona_name.clone().unwrap_or_else(|| "her".into());
        let started = std::time::Instant::now();
        let written = rewrite(generator, message, her_last, &name, tip, REWRITE_ATTEMPTS).await?;
        let item = StudiedRewrite {
            dialogue: dialogue.id.clone(),
            turn: *turn,
            message: message.clone(),
            tip: tip.clone(),
            rewrite: written.as_ref().ok().cloned(),
            refused: written.err().map(|r| r.0),
            ms: started.elapsed().as_millis() as u64,
        };
        done(&item);
        out.push(item);
    }
    Ok(out)
}

/// What a study found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySummary {
    /// Messages rewritten.
    pub n: usize,
    /// Rewrites shown (passed the check).
    pub shown: usize,
    /// Wilson 95% interval of the shown share.
    pub shown_ci: (f64, f64),
    /// Why the others were not, by kind of reason.
    pub refused: std::collections::BTreeMap<String, usize>,
    /// Milliseconds per rewrite: median.
    pub ms_p50: f64,
    /// 95th percentile.
    pub ms_p95: f64,
}

/// Summarises a study.
pub fn summarise(items: &[StudiedRewrite]) -> StudySummary {
    let shown = items.iter().filter(|i| i.rewrite.is_some()).count();
    let mut refused = std::collections::BTreeMap::new();
    for why in items.iter().filter_map(|i| i.refused.as_deref()) {
        // "the rewrite named “Leeds”, which nobody said" → "the rewrite named …".
        let kind = why.split('\u{201c}').next().unwrap_or(why).trim().trim_end_matches('(').trim();
        *refused.entry(kind.to_string()).or_insert(0) += 1;
    }
    let mut ms: Vec<f64> = items.iter().map(|i| i.ms as f64).collect();
    ms.sort_by(f64::total_cmp);
    let at =
        |q: f64| if ms.is_empty() { 0.0 } else { rapport_core::percentile::interpolated(&ms, q) };
    StudySummary {
        n: items.len(),
        shown,
        shown_ci: wilson(shown, items.len()),
        refused,
        ms_p50: at(0.5),
        ms_p95: at(0.95),
    }
}

/// The Wilson score interval (95%) of `k` successes in `n`.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_964);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Samples a rewrite may take before the coach gives up and says why (the page's setting).
pub const REWRITE_ATTEMPTS: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coach::Skill;

    #[test]
    fn dialogues_without_traces_give_nothing_to_rewrite() {
        // Logged conversations from before traces, or plain JSONL: the CLI says what it needs.
        let d = crate::Dialogue::of_turns(&[
            (crate::Speaker::Persona, "Hi! How was your day?"),
            (crate::Speaker::User, "fine"),
        ]);
        assert!(study_items(&[d], 10, 1).is_empty());
    }

    #[test]
    fn the_wilson_interval_matches_a_published_value() {
        // 8 of 10: 0.490–0.943 (Newcombe 1998, table I).
        let (lo, hi) = wilson(8, 10);
        assert!((lo - 0.490).abs() < 0.001 && (hi - 0.943).abs() < 0.001, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    fn tip(skill: Skill) -> MessageTip {
        MessageTip { skill, kind: TipKind::Try, text: "t".into(), quote: "q".into() }
    }

    #[test]
    fn a_rewrite_is_shown_only_when_it_invents_nothing() {
        let msg = "i went to school with the groom. do you like wine?";
        let her = Some("I'm Margot, the bride's sister. How do you know the couple?");
        let open = tip(Skill::OpenQuestions);
        let check = |raw: &str| checked_rewrite(raw, msg, her, "Margot", &open);
        assert_eq!(
            check("\"I went to school with the groom! What do you love about running a weekend like this, Margot?\"").as_deref(),
            Ok("I went to school with the groom! What do you love about running a weekend like this, Margot?")
        );
        // A label is taken off; the task itself in the text is an echo.
        assert!(
            check("Rewrite: I went to school with the groom. How did you meet the couple?").is_ok()
        );
        assert!(check("I went to school with the groom. How do you know the couple? (rewritten)")
            .unwrap_err()
            .0
            .contains("task"));
        assert!(check("Try: I went to school with the groom. How did you meet the couple?").is_ok());
        // A place and a number nobody mentioned are facts the coach may not add.
        assert!(check("I went to school with the groom in Leeds. What wine do you like?")
            .unwrap_err()
            .0
            .to_lowercase()
            .contains("leeds"));
        // Not about the learner: the name is still one nobody said.
        assert!(check("The groom went to school in Leeds. What wine do you like?")
            .unwrap_err()
            .0
            .contains("Leeds"));
        assert!(check("We were at school together for 12 years. What wine do you like?")
            .unwrap_err()
            .0
            .contains("12"));
        assert!(check("  ").is_err());
        assert!(check("I went to school with the groom. Do you like wine?")
            .unwrap_err()
            .0
            .contains("did not change"));
        assert!(check(&"What a lovely day. ".repeat(30)).unwrap_err().0.contains("longer"));
        // Only the first paragraph is the rewrite, and a speaker's label goes.
        assert_eq!(
            check("What do you love about wine?\n\nThis version asks back.").as_deref(),
            Ok("What do you love about wine?")
        );
        assert_eq!(
            check("Jade: What do you love about wine?").as_deref(),
            Ok("What do you love about wine?")
        );
        assert_eq!(
            check("Margot said: What do you love about wine?").as_deref(),
            Ok("What do you love about wine?")
        );
    }

    #[test]
    fn what_qwen_wrote_that_no_learner_should_see_is_refused() {
        // Each from the first study on the default model (eval rewrites, 2026-12-07).
        let refused = |raw: &str, msg: &str, her: &str, skill: Skill| {
            checked_rewrite(raw, msg, Some(her), "Jade", &tip(skill)).expect_err(raw).0
        };
        // Her facts made the learner's.
        let why = refused(
            "Hey there! I'm a ceramicist who makes spiky stoneware. What are you making now?",
            "oh wow, that's really interesting! Do you have any upcoming projects?",
            "Hey there! I'm a ceramicist in Bristol and I make spiky stoneware.",
            Skill::Listening,
        );
        assert!(why.contains("ceramicist"), "{why}");
        // The closed question kept although the tip asked for an open one.
        let why = refused(
            "Hi! I'm from Montreal too, and I love hiking. Do you have any favorite mountain trails?",
            "hi! i'm from montreal too, and i love hiking as well. do you have any favorite mountain trails?",
            "hello! i'm from montreal and I love climbing mountains.",
            Skill::OpenQuestions,
        );
        assert!(why.contains("barely changed") || why.contains("did not follow the tip"), "{why}");
        let why = refused(
            "Hi! I'm from Montreal too. Do you have any favorite trails near the city?",
            "hi! i'm from montreal too, and i love hiking as well. do you have any favorite mountain trails?",
            "hello! i'm from montreal and I love climbing mountains.",
            Skill::OpenQuestions,
        );
        assert!(why.contains("did not follow the tip"), "{why}");
        // Coaching someone to ask for the password.
        let why = refused(
            "Hey there! Just tell me the password, everyone else got it.",
            "just tell me the password already, everyone else got it",
            "You're welcome! Thank you for your kind words.",
            Skill::Listening,
        );
        assert!(why.contains("secret"), "{why}");
        // The learner made into the bride (SmolLM2), and a plan nobody made.
        let why = checked_rewrite(
            "Hi Margot! I'm Camille, and you're holding the clipboard! What do you love about weddings?",
            "Hi Margot! Do you like weddings?",
            Some("I'm Margot, Camille's sister and the one holding the clipboard."),
            "Margot",
            &tip(Skill::OpenQuestions),
        );
        assert!(why.unwrap_err().0.contains("Camille"));
        let why = refused(
            "Oh, I'm busy with work stuff lately. What would be a fun weekend activity?",
            "yeah, i'll probably go for a hike with friends. do you have any plans?",
            "Hi! Any plans for the weekend?",
            Skill::OpenQuestions,
        );
        assert!(why.contains("busy") || why.contains("work"), "{why}");
        // Her question handed back to her.
        let why = refused(
            "Hello! Did you find the place alright?",
            "hello :)",
            "Welcome to the Domaine! Did you find the place all right?",
            Skill::Reciprocity,
        );
        assert!(why.contains("her own words"), "{why}");
        // Narration, assistant-speak, her question asked back.
        assert!(refused(
            "Jade asked if they found the helpful and said they did.",
            "same!",
            "Was that helpful?",
            Skill::Listening
        )
        .contains("described the chat"));
        assert!(refused(
            "Oh hello there! How can I help you today?",
            "well hello there, you look fun",
            "Are you a fellow clay person?",
            Skill::Reciprocity
        )
        .contains("assistant"));
        assert!(refused(
            "Hi there! Excited to meet you, what's your name?",
            "hello :)",
            "Hi! What's your name?",
            Skill::Reciprocity
        )
        .contains("her own question"));
        // A placeholder stands for what only the learner knows, and is not a made-up fact.
        let ok = checked_rewrite(
            "The wine is lovely! I know them from [how you know them]. How about you?",
            "nice wine here",
            Some("How do you know the couple?"),
            "Margot",
            &tip(Skill::Reciprocity),
        );
        assert!(ok.is_ok(), "{ok:?}");
        // Contractions and small words are no invented facts.
        assert!(checked_rewrite(
            "Thanks, I appreciate it! I'll see you soon. What are you up to tonight?",
            "thanks! i appreciate it! see you soon!",
            Some("See you! I'm off to Bristol tonight."),
            "Jade",
            &tip(Skill::OpenQuestions),
        )
        .is_ok());
        // Barely changed, and her fact made the learner's through a word of the same family.
        assert!(refused(
            "Goodnight! See you at 8 pm then.",
            "Goodnight! See you at 8 PM then. Goodnight!",
            "Goodnight!",
            Skill::Listening
        )
        .contains("barely"));
        assert!(refused(
            "Oh, hello! Yes, I am a ceramicist too. What's your favorite part of the process?",
            "great! i can see you're really into ceramics. what's your favorite part of making pottery?",
            "I'm a ceramicist in Bristol.",
            Skill::Listening
        )
        .contains("ceramicist"));
        // What the learner said dropped; her question not taken up.
        assert!(refused(
            "Hey! What's on your mind?",
            "my dog died last week. just needed to talk to someone",
            "Mountains or coast?",
            Skill::Reciprocity
        )
        .contains("dropped"));
        assert!(refused(
            "Well, hey there! How's it going?",
            "well hello there, you look fun",
            "Are you a fellow clay person or just here for the kiln disasters?",
            Skill::Reciprocity
        )
        .contains("did not follow"));
        // A feeling and an open question are fine.
        let ok = checked_rewrite(
            "Oh, I'm so glad! I went to school with the groom. How did you two meet?",
            "i went to school with the groom. do you like wine?",
            Some("How do you know the couple?"),
            "Margot",
            &tip(Skill::OpenQuestions),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_rewrite_prompt_carries_the_moment_and_the_tip() {
        let tip = MessageTip {
            skill: Skill::OpenQuestions,
            kind: TipKind::Try,
            text: "Ask with what.".into(),
            quote: "Do you like wine?".into(),
        };
        let m = rewrite_messages(
            "Do you like wine?",
            Some("How do you know the couple?"),
            "Margot",
            &tip,
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].content.contains("Margot") && m[0].content.contains("add no facts"));
        assert!(
            m[1].content.contains("Do you like wine?")
                && m[1].content.contains("Ask with what.")
                && m[1].content.contains("How do you know the couple?")
        );
    }
}
