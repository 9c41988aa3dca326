//! Everything in a turn except the LLM call, on real NLU weights: steps 1–8 (`prepare`) and
//! the review of a finished reply (clean-up, the reply's sentence vector, the guards). The
//! goal is ≤ 5 ms p50 for both together on the project's 2-core machine. The bare encoder
//! forward pass of one message is measured beside them: it is the floor the turn cannot go
//! under, and the ratio to it shows what the pipeline itself adds.
//!
//! cargo bench --workspace --bench pipeline

use std::sync::Arc;

use chrono::DateTime;
use criterion::{criterion_group, criterion_main, Criterion};
use rapport_benches::{classifier, repo};
use rapport_core::ChatMessage;
use rapport_pipeline::cleanup::Cleaner;
use rapport_pipeline::guards::{Guards, LeakDetector, LockedSecret};
use rapport_pipeline::listening::question_sentences;
use rapport_pipeline::prompt::Prompts;
use rapport_pipeline::{PersonaLibrary, Pipeline, PipelineConfig};

const HISTORY: [(&str, &str); 5] = [
    (
        "Hi Margot! I'm a friend of Thomas from university.",
        "Welcome! Thomas says you're all trouble. How was the drive?",
    ),
    (
        "Long, but the vineyard is worth it. I work nights as a nurse so I slept in the car.",
        "Oh you poor thing, grab a coffee on the terrace. Nights must be tough.",
    ),
    (
        "They are, but I love the job. How are you holding up with the organising?",
        "Three coffees in and I've lost the dog twice, but it's coming together.",
    ),
    (
        "Ha, I saw Biscuit steal a napkin earlier.",
        "That's him! The ring bearer, if he doesn't eat the rings first.",
    ),
    (
        "I'm a bit nervous, I don't know many people here.",
        "Stick with me, I know everyone's embarrassing stories.",
    ),
];

fn turn(c: &mut Criterion) {
    let nlu = Arc::new(classifier());
    let library = PersonaLibrary::load_dir(&repo().join("datasets/personas")).expect("personas");
    let persona = library.get("wedding-host").expect("the wedding host").clone();
    let guards = Guards::new(&persona, Some(nlu.encoder())).expect("guards");
    let cleaner = Cleaner::new(&persona.name, persona.max_sentences);
    let pipeline = Pipeline::new(
        persona,
        Some(nlu.clone()),
        Arc::new(Prompts::embedded()),
        PipelineConfig::default(),
    )
    .expect("pipeline");
    let mut conversation = pipeline.start();
    for (user, reply) in HISTORY {
        conversation.history.push(ChatMessage::user(user));
        conversation.history.push(ChatMessage::assistant(reply));
        // What the engine keeps after each turn, so the repeat and listening checks compare
        // against a full thread, as in a real conversation.
        conversation.thread.push_message(Some(&nlu.encoder().encode(user).unwrap().0));
        let question = question_sentences(reply).pop().map(|q| nlu.encoder().encode(&q).unwrap().0);
        conversation
            .thread
            .push_reply(Some(&nlu.encoder().encode(reply).unwrap().0), question.as_deref());
    }
    conversation.turns = HISTORY.len() as u32;
    let now = DateTime::parse_from_rfc3339("2026-11-21T23:40:00+01:00").unwrap();
    let message =
        "Honestly you've made me feel really welcome tonight. What's the treasure hunt about?";
    let reply = "Margot: Oh, I'm so glad! Envelopes are hidden all over the estate, each with a clue. The last one needs a password, and that one you'll have to earn.";
    let prepared = pipeline.prepare(&conversation, message, now).expect("prepare");
    let leaks = LeakDetector::new(&prepared.messages[0].content, &[]);

    let mut g = c.benchmark_group("turn");
    g.bench_function("floor: encode one message", |b| {
        b.iter(|| nlu.encoder().encode(message).unwrap())
    });
    // What step 2 runs: the vector and the emotion (the encoder plus the emotion branch).
    g.bench_function("floor: understand one message", |b| {
        b.iter(|| nlu.understand(message).unwrap())
    });
    g.bench_function("prepare (steps 1-8)", |b| {
        b.iter(|| pipeline.prepare(&conversation, message, now).unwrap())
    });
    g.bench_function("prepare without models (lexical)", |b| {
        let lexical = Pipeline::new(
            library.get("wedding-host").unwrap().clone(),
            None,
            Arc::new(Prompts::embedded()),
            PipelineConfig::default(),
        )
        .unwrap();
        b.iter(|| lexical.prepare(&conversation, message, now).unwrap())
    });
    let locked = LockedSecret::new("blue heron", message).unwrap();
    // The review of the finished reply, with the vector of its question kept for the next turn.
    g.bench_function("review a reply", |b| {
        b.iter(|| {
            let cleaned = cleaner.clean(reply, true, false);
            let vector = nlu.encoder().encode(&cleaned.text).unwrap();
            let question =
                question_sentences(&cleaned.text).pop().map(|q| nlu.encoder().encode(&q).unwrap());
            (guards.check_reply(&cleaned.text, Some(&vector), Some(&locked), &leaks), question)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(6));
    targets = turn
}
criterion_main!(benches);
