//! The memory-recall suite (issue 34): does a persona remember, in a later conversation, what a
//! person told it in an earlier one, and does it say so when it does not know?
//!
//! Each person of `datasets/memory/people.jsonl` tells a persona a few facts about themselves
//! in a first conversation, through the real pipeline and model. The facts the pipeline reads
//! from those messages ([`rapport_pipeline::recall::told_in`], kept as the server keeps them:
//! a newer fact replaces an older one of the same subject) are then recalled into fresh
//! conversations, each asking one question about one fact. A question counts as recalled when
//! the reply contains one of its answers. The same questions are asked again with nothing
//! recalled, which is what every conversation got before this memory existed: the baseline.
//!
//! Each person also asks about something they never told. There the measure is whether the
//! reply admits not knowing, or makes something up (the issue's "gives the guest's cat the name
//! of her own dog").
//!
//! Facts that hold: every reply the suite gets is read by the fact checker
//! ([`rapport_pipeline::facts`]) against the persona's facts and what the person told, and each
//! persona is also asked about herself ([`ABOUT_HER`]) in fresh conversations, where a small
//! model renames her dog or moves where she grew up. The count is of replies *as sent*, so a
//! run with the check off (`--no-fact-guard`) is the baseline for the check.

use std::path::Path;

use chrono::{DateTime, FixedOffset};
use indicatif::ProgressBar;
use rapport_core::Generator;
use rapport_pipeline::facts::{FactChecker, Known};
use rapport_pipeline::guards::GuardHit;
use rapport_pipeline::recall::{Recalled, RecalledFact, Told};
use rapport_pipeline::trace::AttemptOutcome;
use rapport_pipeline::{Conversation, Pipeline};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::dialogue::jsonl_lines;
use crate::rewrite::wilson;
use crate::EvalError;

/// Questions that ask a persona about herself, each in a fresh conversation.
pub const ABOUT_HER: [&str; 6] = [
    "Do you have any pets? What are they called?",
    "Where did you grow up?",
    "How old are you, if you don't mind me asking?",
    "Do you have any brothers or sisters? What are their names?",
    "What's your dog called?",
    "Tell me something about your family.",
];

/// A question about something a person told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// What they ask.
    pub ask: String,
    /// Any of these (lower case, as a part of a word) in the reply is the right answer.
    pub answers: Vec<String>,
}

/// A simulated person: what they tell in a first conversation, and what they ask later.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Unique name.
    pub id: String,
    /// Messages of the first conversation, in order.
    pub told: Vec<String>,
    /// Questions about what they told, each asked in a fresh later conversation.
    pub questions: Vec<Question>,
    /// Questions about things they never told.
    pub unknown: Vec<String>,
}

/// Reads the people; a bad line is an error naming it.
pub fn load(path: &Path) -> Result<Vec<Person>, EvalError> {
    let mut people = Vec::new();
    for (n, line) in jsonl_lines(path)? {
        let person: Person = serde_json::from_str(&line)
            .map_err(|e| EvalError::Invalid(format!("{}:{}: {e}", path.display(), n + 1)))?;
        if person.told.is_empty() || person.questions.iter().any(|q| q.answers.is_empty()) {
            return Err(EvalError::Invalid(format!(
                "{}:{}: person '{}' needs messages to tell and an answer to every question",
                path.display(),
                n + 1,
                person.id
            )));
        }
        people.push(person);
    }
    Ok(people)
}

/// What the pipeline took from a first conversation, as the server stores it: a newer fact of a
/// subject replaces the older.
pub fn remembered(told: impl IntoIterator<Item = Told>) -> Recalled {
    let mut kept: Vec<Told> = Vec::new();
    for t in told {
        if let Some(subject) = &t.subject {
            kept.retain(|k| k.subject.as_ref() != Some(subject));
        }
        kept.push(t);
    }
    Recalled {
        facts: kept.into_iter().map(|t| RecalledFact { kind: t.kind, text: t.text }).collect(),
    }
}

/// Whether a reply says it does not know or remember.
pub fn admits_not_knowing(reply: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)\b(?:(?:do not|don't|dont|can't|cannot|can not) (?:think (?:i|you) (?:know|told|mentioned|said)|(?:quite )?(?:remember|recall|know)|say)|not sure|no idea|(?:you )?(?:never|haven't|have not|didn't|did not) (?:told|tell|mentioned|mention|said|say)|forgot|forgotten|remind me|slipped my mind|tell me (?:again|more)|what (?:is|was|'s) (?:his|her|their|its) name)\b")
            .expect("not-knowing pattern compiles")
    })
    .is_match(reply)
}

/// One question asked, with and without the memory.
#[derive(Debug, Clone, Serialize)]
pub struct Asked {
    /// The person.
    pub person: String,
    /// The persona.
    pub persona: String,
    /// The question.
    pub ask: String,
    /// The reply with the memory recalled.
    pub with_memory: String,
    /// Why its drafts were sent back, by guard code (a fallback line follows two).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
    /// It contained an answer.
    pub recalled: bool,
    /// It contained an answer but said it as the persona's own ("My parrot is called Pablo",
    /// "I play the trumpet"): see [`said_as_hers`].
    #[serde(default)]
    pub as_hers: bool,
    /// The reply with nothing recalled.
    pub without_memory: String,
    /// It contained an answer.
    pub recalled_without: bool,
}

/// One question about something never told.
#[derive(Debug, Clone, Serialize)]
pub struct AskedUnknown {
    /// The person.
    pub person: String,
    /// The persona.
    pub persona: String,
    /// The question.
    pub ask: String,
    /// The reply with the memory recalled.
    pub with_memory: String,
    /// It admitted not knowing.
    pub admits: bool,
    /// The reply with nothing recalled.
    pub without_memory: String,
    /// It admitted not knowing.
    pub admits_without: bool,
}

/// A reply the fact checker found contradicting a fact.
#[derive(Debug, Clone, Serialize)]
pub struct Contradicted {
    /// The persona.
    pub persona: String,
    /// What was asked.
    pub ask: String,
    /// The reply as sent.
    pub reply: String,
    /// The fact it broke.
    pub fact: String,
}

/// A share with its Wilson interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Share {
    /// Successes.
    pub k: usize,
    /// Trials.
    pub n: usize,
    /// k / n.
    pub rate: f64,
    /// 95% Wilson interval.
    pub ci: (f64, f64),
}

impl Share {
    fn of(k: usize, n: usize) -> Self {
        Self { k, n, rate: if n == 0 { 0.0 } else { k as f64 / n as f64 }, ci: wilson(k, n) }
    }
}

/// The suite's result.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// The model.
    pub model: String,
    /// The prompt layout.
    pub layout: String,
    /// The personas.
    pub personas: Vec<String>,
    /// Messages of first conversations from which at least one fact was read.
    pub told_read: Share,
    /// Questions answered from memory.
    pub recall: Share,
    /// Of all questions, those answered from memory as the person's (not said as hers).
    #[serde(default)]
    pub recall_as_theirs: Option<Share>,
    /// The same questions with nothing recalled.
    pub recall_without: Share,
    /// Questions about what was never told answered "I don't know", with the memory.
    pub admits_unknown: Share,
    /// The same without.
    pub admits_unknown_without: Share,
    /// Whether drafts were checked for contradictions (and written again).
    pub fact_guard: bool,
    /// Whether help-desk sentences were cut from drafts (the default since stop 50); reports
    /// written before it was recorded read as `None`.
    #[serde(default)]
    pub cut_service: Option<bool>,
    /// Replies as sent (every reply of the suite) that contradict a fact.
    pub contradictions: Share,
    /// Replies to [`ABOUT_HER`] that contradict her facts.
    pub contradictions_about_her: Share,
    /// Drafts the fact check sent back (0 with the check off).
    pub drafts_contradicting: usize,
    /// Every contradicting reply.
    pub contradicted: Vec<Contradicted>,
    /// Mean estimated prompt tokens of a question's turn, with and without the memory.
    pub prompt_tokens: (f64, f64),
    /// Mean milliseconds from the request to the first token of a question's reply, with and
    /// without the memory.
    pub ttft_ms: (f64, f64),
    /// Every question.
    pub asked: Vec<Asked>,
    /// Every question about something never told.
    pub unknown: Vec<AskedUnknown>,
}

impl MemoryReport {
    /// A Markdown summary.
    pub fn markdown(&self) -> String {
        let pct = |s: &Share| {
            format!(
                "{}/{} = {:.0}% [{:.0}, {:.0}]",
                s.k,
                s.n,
                100.0 * s.rate,
                100.0 * s.ci.0,
                100.0 * s.ci.1
            )
        };
        let mut out = format!(
            "Memory recall on {} ({} layout), personas {}; 95% Wilson intervals.\n\n\
             | | with the memory | without |\n|---|---|---|\n\
             | questions answered from an earlier conversation | {} | {} |\n\
             | of them, answered as theirs (not said as hers) | {} | |\n\
             | \"I don't know\" about what was never told | {} | {} |\n\
             | prompt tokens of a question's turn (mean, estimated) | {:.0} | {:.0} |\n\
             | time to first token of a question's reply (mean ms) | {:.0} | {:.0} |\n\n\
             Messages of the first conversations from which a fact was read: {}.\n\n\
             Replies that contradict a fact (fact check {}): {} of all replies; {} of the replies to questions about herself; drafts the check sent back: {}.\n",
            self.model,
            self.layout,
            self.personas.join(", "),
            pct(&self.recall),
            pct(&self.recall_without),
            self.recall_as_theirs.as_ref().map_or("not measured".to_string(), pct),
            pct(&self.admits_unknown),
            pct(&self.admits_unknown_without),
            self.prompt_tokens.0,
            self.prompt_tokens.1,
            self.ttft_ms.0,
            self.ttft_ms.1,
            pct(&self.told_read),
            if self.fact_guard { "on" } else { "off" },
            pct(&self.contradictions),
            pct(&self.contradictions_about_her),
            self.drafts_contradicting,
        );
        for c in &self.contradicted {
            out.push_str(&format!(
                "- contradiction, {}: {:?} → {:?} (fact: {})\n",
                c.persona, c.ask, c.reply, c.fact
            ));
        }
        let missed: Vec<&Asked> = self.asked.iter().filter(|a| !a.recalled).collect();
        if !missed.is_empty() {
            out.push_str("\nNot recalled:\n");
            for a in missed {
                let why = if a.rejected.is_empty() {
                    String::new()
                } else {
                    format!(" (drafts sent back: {})", a.rejected.join(", "))
                };
                out.push_str(&format!(
                    "- {} / {}: {:?} → {:?}{why}\n",
                    a.persona, a.person, a.ask, a.with_memory
                ));
            }
        }
        out
    }
}

/// What one reply cost and said.
struct Reply {
    text: String,
    prompt_tokens: usize,
    ttft_ms: Option<u64>,
    /// Drafts sent back for a contradiction.
    contradicting: usize,
    /// The guard codes of the drafts sent back.
    rejected: Vec<String>,
}

async fn ask(
    pipeline: &Pipeline,
    generator: &dyn Generator,
    recalled: &Recalled,
    message: &str,
    now: DateTime<FixedOffset>,
) -> Result<Reply, EvalError> {
    let mut conversation: Conversation = pipeline.start();
    conversation.recalled = recalled.clone();
    let outcome = pipeline
        .respond(&mut conversation, message, now, generator, &mut |_| {})
        .await
        .map_err(|e| EvalError::Generation(e.to_string()))?;
    Ok(Reply {
        contradicting: contradicting(&outcome.trace.attempts),
        rejected: rejected(&outcome.trace.attempts),
        text: outcome.reply,
        prompt_tokens: outcome.trace.prompt.estimated_tokens,
        ttft_ms: outcome.trace.attempts.first().and_then(|a| a.ttft_ms),
    })
}

fn rejected(attempts: &[rapport_pipeline::trace::Attempt]) -> Vec<String> {
    attempts
        .iter()
        .flat_map(|a| match &a.outcome {
            AttemptOutcome::Rejected { hits } => {
                hits.iter().map(|h| h.code().to_string()).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

fn contradicting(attempts: &[rapport_pipeline::trace::Attempt]) -> usize {
    attempts
        .iter()
        .filter(|a| matches!(&a.outcome, AttemptOutcome::Rejected { hits } if hits.iter().any(|h| matches!(h, GuardHit::Contradiction { .. }))))
        .count()
}

/// Whether a reply that contains an answer says it as the persona's own: a sentence with the
/// answer speaks in the first person ("my", "I") and never to them ("you", "your"). A small
/// model's slip of the pronoun: "What's my parrot called?" → "My parrot is called Pablo." A
/// reading by words, so "I remember your parrot Pablo" is theirs and "I love Pablo" is hers;
/// it errs on the side of hers only where no sentence with the answer addresses them.
pub fn said_as_hers(reply: &str, answers: &[String]) -> bool {
    let lowered: Vec<String> = answers.iter().map(|a| a.to_lowercase()).collect();
    let with_answer: Vec<Vec<String>> = reply
        .split_inclusive(['.', '!', '?', '\n'])
        .filter(|s| {
            let s = s.to_lowercase();
            lowered.iter().any(|a| s.contains(a.as_str()))
        })
        .map(rapport_core::text_stats::words)
        .collect();
    let has = |words: &[String], set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    !with_answer.is_empty()
        && with_answer
            .iter()
            .all(|words| !has(words, &["you", "your", "you're", "yours", "you've", "yourself"]))
        && with_answer
            .iter()
            .any(|words| has(words, &["i", "i'm", "my", "me", "mine", "i've", "myself"]))
}

fn answered(reply: &str, answers: &[String]) -> bool {
    let reply = reply.to_lowercase();
    answers.iter().any(|a| reply.contains(&a.to_lowercase()))
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// What the suite counts about contradictions as it goes.
#[derive(Default)]
struct FactTally {
    replies: usize,
    contradicting: usize,
    about_her: usize,
    about_her_contradicting: usize,
    drafts: usize,
    found: Vec<Contradicted>,
}

impl FactTally {
    /// Reads one reply as sent: does it contradict what the persona or the person made true?
    fn read(
        &mut self,
        checker: &FactChecker,
        known: &Known,
        persona: &str,
        ask: &str,
        reply: &Reply,
        about_her: bool,
    ) {
        self.replies += 1;
        self.about_her += usize::from(about_her);
        self.drafts += reply.contradicting;
        if let Some(c) = checker.check(&reply.text, known) {
            self.contradicting += 1;
            self.about_her_contradicting += usize::from(about_her);
            self.found.push(Contradicted {
                persona: persona.to_string(),
                ask: ask.to_string(),
                reply: reply.text.clone(),
                fact: c.fact,
            });
        }
    }
}

/// Runs every person against every persona: a first conversation, then each question with
/// and without what it left in memory; then the questions about herself.
pub async fn run_suite(
    pipelines: &[Pipeline],
    generator: &dyn Generator,
    model: &str,
    layout: &str,
    people: &[Person],
    now: DateTime<FixedOffset>,
    progress: Option<&ProgressBar>,
) -> Result<MemoryReport, EvalError> {
    let nothing = Recalled::default();
    let (mut asked, mut unknown) = (Vec::new(), Vec::new());
    let (mut told_read, mut told_total) = (0, 0);
    let (mut tokens_with, mut tokens_without, mut ttft_with, mut ttft_without) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut facts = FactTally::default();
    let tick = |n: u64| {
        if let Some(p) = progress {
            p.inc(n);
        }
    };
    for pipeline in pipelines {
        let persona = pipeline.persona().id.clone();
        let checker = FactChecker::new(pipeline.persona());
        for person in people {
            let mut first = pipeline.start();
            let mut told = Vec::new();
            for message in &person.told {
                let outcome = pipeline
                    .respond(&mut first, message, now, generator, &mut |_| {})
                    .await
                    .map_err(|e| EvalError::Generation(e.to_string()))?;
                told_total += 1;
                told_read += usize::from(!outcome.trace.told.is_empty());
                told.extend(outcome.trace.told.clone());
                let sent = Reply {
                    contradicting: contradicting(&outcome.trace.attempts),
                    rejected: Vec::new(),
                    text: outcome.reply,
                    prompt_tokens: 0,
                    ttft_ms: None,
                };
                let known = Known::read(person.told.iter().map(String::as_str), []);
                facts.read(&checker, &known, &persona, message, &sent, false);
                tick(1);
            }
            let memory = remembered(told);
            let known_with = |ask: &str| {
                Known::read(memory.facts.iter().map(|f| f.text.as_str()).chain([ask]), [])
                    .asking(ask)
            };
            let known_without = |ask: &str| Known::read([ask], []).asking(ask);
            let mut record = |with: &Reply, without: &Reply| {
                tokens_with.push(with.prompt_tokens as f64);
                tokens_without.push(without.prompt_tokens as f64);
                ttft_with.extend(with.ttft_ms.map(|t| t as f64));
                ttft_without.extend(without.ttft_ms.map(|t| t as f64));
            };
            for q in &person.questions {
                let with = ask(pipeline, generator, &memory, &q.ask, now).await?;
                let without = ask(pipeline, generator, &nothing, &q.ask, now).await?;
                record(&with, &without);
                facts.read(&checker, &known_with(&q.ask), &persona, &q.ask, &with, false);
                facts.read(&checker, &known_without(&q.ask), &persona, &q.ask, &without, false);
                asked.push(Asked {
                    person: person.id.clone(),
                    persona: persona.clone(),
                    ask: q.ask.clone(),
                    recalled: answered(&with.text, &q.answers),
                    as_hers: answered(&with.text, &q.answers)
                        && said_as_hers(&with.text, &q.answers),
                    rejected: with.rejected.clone(),
                    recalled_without: answered(&without.text, &q.answers),
                    with_memory: with.text,
                    without_memory: without.text,
                });
                tick(2);
            }
            for q in &person.unknown {
                let with = ask(pipeline, generator, &memory, q, now).await?;
                let without = ask(pipeline, generator, &nothing, q, now).await?;
                record(&with, &without);
                facts.read(&checker, &known_with(q), &persona, q, &with, false);
                facts.read(&checker, &known_without(q), &persona, q, &without, false);
                unknown.push(AskedUnknown {
                    person: person.id.clone(),
                    persona: persona.clone(),
                    ask: q.clone(),
                    admits: admits_not_knowing(&with.text),
                    admits_without: admits_not_knowing(&without.text),
                    with_memory: with.text,
                    without_memory: without.text,
                });
                tick(2);
            }
        }
        for q in ABOUT_HER {
            let reply = ask(pipeline, generator, &nothing, q, now).await?;
            facts.read(&checker, &Known::read([q], []).asking(q), &persona, q, &reply, true);
            tick(1);
        }
    }
    let count = |f: &dyn Fn(&Asked) -> bool| asked.iter().filter(|a| f(a)).count();
    let count_unknown = |f: &dyn Fn(&AskedUnknown) -> bool| unknown.iter().filter(|a| f(a)).count();
    Ok(MemoryReport {
        model: model.to_string(),
        layout: layout.to_string(),
        personas: pipelines.iter().map(|p| p.persona().id.clone()).collect(),
        told_read: Share::of(told_read, told_total),
        recall: Share::of(count(&|a| a.recalled), asked.len()),
        recall_as_theirs: Some(Share::of(count(&|a| a.recalled && !a.as_hers), asked.len())),
        recall_without: Share::of(count(&|a| a.recalled_without), asked.len()),
        admits_unknown: Share::of(count_unknown(&|a| a.admits), unknown.len()),
        admits_unknown_without: Share::of(count_unknown(&|a| a.admits_without), unknown.len()),
        fact_guard: pipelines.first().is_some_and(|p| p.config().fact_guard),
        cut_service: pipelines.first().map(|p| p.config().cut_service),
        contradictions: Share::of(facts.contradicting, facts.replies),
        contradictions_about_her: Share::of(facts.about_her_contradicting, facts.about_her),
        drafts_contradicting: facts.drafts,
        contradicted: facts.found,
        prompt_tokens: (mean(&tokens_with), mean(&tokens_without)),
        ttft_ms: (mean(&ttft_with), mean(&ttft_without)),
        asked,
        unknown,
    })
}

/// Turns the suite asks in all: first conversations, and each question twice.
pub fn turns(people: &[Person], personas: usize) -> u64 {
    let per: usize =
        people.iter().map(|p| p.told.len() + 2 * (p.questions.len() + p.unknown.len())).sum();
    ((per + ABOUT_HER.len()) * personas) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_pipeline::recall::told_in;

    fn people() -> Vec<Person> {
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/memory/people.jsonl"))
            .unwrap()
    }

    #[test]
    fn an_answer_said_as_hers_is_told_from_one_said_to_them() {
        let pablo = vec!["Pablo".to_string()];
        for hers in [
            "My parrot is called Pablo.",
            "Oh, Pablo! I love him. My Pablo is clever.",
            "I'm starting Pablo's class!",
        ] {
            assert!(said_as_hers(hers, &pablo), "{hers}");
        }
        for theirs in [
            "Your parrot is Pablo!",
            "Pablo, of course. How is he?",
            "I remember your parrot Pablo.",
            "Pablo! You told me about him. My dog would love him.",
        ] {
            assert!(!said_as_hers(theirs, &pablo), "{theirs}");
        }
    }

    /// The suite measures the persona's recall, not the reading: every message of a first
    /// conversation yields a fact, and every question's answer is in what was read.
    #[test]
    fn every_told_fact_is_read_and_every_answer_is_in_memory() {
        for person in people() {
            let mut all = Vec::new();
            for message in &person.told {
                let told = told_in(message);
                assert!(!told.is_empty(), "{}: nothing read from {message:?}", person.id);
                all.extend(told);
            }
            let memory = remembered(all);
            let text =
                memory.facts.iter().map(|f| f.text.to_lowercase()).collect::<Vec<_>>().join(" ");
            for q in &person.questions {
                assert!(answered(&text, &q.answers), "{}: {:?} not in {text}", person.id, q.ask);
            }
        }
    }

    #[test]
    fn a_newer_fact_of_a_subject_replaces_the_older() {
        let told = [
            told_in("My cat is called Biscuit."),
            told_in("My cat is called Mochi now."),
            told_in("I love jazz."),
        ]
        .concat();
        let memory = remembered(told);
        let texts: Vec<&str> = memory.facts.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["My cat is called Mochi now.", "I love jazz."]);
    }

    #[test]
    fn not_knowing_is_told_apart_from_an_answer() {
        for said in [
            "Hmm, I don't think you told me!",
            "You never mentioned a brother.",
            "Remind me?",
            "I can't remember, sorry.",
            "No idea, what's his name?",
        ] {
            assert!(admits_not_knowing(said), "{said}");
        }
        for said in
            ["It's Biscuit, of course!", "Your brother is Kofi.", "I remember you love bouldering."]
        {
            assert!(!admits_not_knowing(said), "{said}");
        }
    }

    #[test]
    fn a_person_without_answers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, r#"{"id": "x", "told": ["My name is X."], "questions": [{"ask": "?", "answers": []}], "unknown": []}"#).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("answer to every question"));
    }
}
