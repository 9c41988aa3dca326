//! Whole turns with the real SmolLM2 and the real emotion model. Where a fault is needed (a
//! backend that times out, a draft that breaks character) a scripted generator injects it in
//! front of the real model.

use rapport_core::{
    collect_completion, GenerationError, GenerationRequest, Generator, Role, SamplingParams,
};
use rapport_pipeline::prompt::PromptLayout;
use rapport_pipeline::secret::SecretStatus;
use rapport_pipeline::stage::Stage;
use rapport_pipeline::trace::AttemptOutcome;
use rapport_pipeline::{Conversation, Pipeline, PipelineConfig, TurnEvent, TurnOutcome, TurnTrace};

use crate::support::{
    at, exclusive, fresh_smollm2, greedy_config, pipeline, rt, smollm2, Script, Scripted,
};

/// Runs a turn and returns the outcome with the text a person would have seen (deltas, with
/// retractions applied).
async fn turn(
    p: &Pipeline,
    c: &mut Conversation,
    message: &str,
    minute: u32,
    generator: &dyn rapport_core::Generator,
) -> (TurnOutcome, String, usize) {
    let mut shown = String::new();
    let mut retractions = 0;
    let mut on_event = |e: TurnEvent| match e {
        TurnEvent::Delta(t) => shown.push_str(&t),
        TurnEvent::Retract => {
            shown.clear();
            retractions += 1;
        }
        TurnEvent::Prepared(_) => {}
    };
    let outcome = p.respond(c, message, at(minute), generator, &mut on_event).await.unwrap();
    (outcome, shown, retractions)
}

#[test]
fn a_turn_streams_the_reply_and_records_every_step() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let p = pipeline("flirt-partner", true, greedy_config());
        let mut c = p.start();
        let (out, shown, _) = turn(
            &p,
            &mut c,
            "Coast, definitely. I grew up near the sea and I miss it a lot.",
            0,
            &model,
        )
        .await;
        assert!(!out.reply.is_empty());
        assert_eq!(shown.trim(), out.reply, "what streamed is what was kept");
        let t = &out.trace;
        assert_eq!(t.turn, 1);
        assert_eq!(t.stage.from, Stage::IceBreaker);
        assert!(t.signals.self_disclosure > 0.0 && t.signals.answered_question, "{:?}", t.signals);
        assert!(t.closeness.after > t.closeness.before, "{:?}", t.closeness);
        assert!(!t.emotion.labels.is_empty());
        assert!(!t.examples.is_empty(), "the stage's examples (the default layout)");
        // The older layout chooses them for each message, by meaning.
        let by_meaning = pipeline(
            "flirt-partner",
            true,
            PipelineConfig { layout: PromptLayout::NotesBeforeMessage, ..greedy_config() },
        );
        let prepared = by_meaning
            .prepare(&by_meaning.start(), "Coast, definitely. I grew up near the sea.", at(0))
            .unwrap();
        assert!(prepared.trace.examples[0].score > 0.0, "examples retrieved by meaning");
        // SmolLM2 talks like a help desk now and then ("happy to help"): the character guard
        // may ask for a second draft, whose outcome is the reply.
        assert!((1..=2).contains(&t.attempts.len()), "{:?}", t.attempts);
        assert!(
            matches!(t.attempts.last().unwrap().outcome, AttemptOutcome::Accepted)
                || t.kept_soft.is_some(),
            "{:?}",
            t.attempts
        );
        assert!(t.attempts.iter().all(|a| a.total_ms > 0));
        assert!(t.timings_us.prepare > 0 && t.timings_us.generate > 0);
        // The trace is data: it survives a round trip through JSON unchanged.
        let back: TurnTrace = serde_json::from_str(&serde_json::to_string(t).unwrap()).unwrap();
        assert_eq!(&back, t);
        assert_eq!(c.turns, 1);
        assert_eq!(c.history.len(), 3);
        assert_eq!(c.history[2].role, Role::Assistant);
    });
}

#[test]
fn transient_failures_are_retried_and_permanent_ones_answered_in_character() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("wedding-host", true, greedy_config());

        let flaky = Scripted::new(
            smollm2().await,
            vec![
                Script::Fail(GenerationError::Unavailable("connection refused".into())),
                Script::Fail(GenerationError::Timeout(std::time::Duration::from_secs(300))),
            ],
        );
        let mut c = p.start();
        let (out, _, _) =
            turn(&p, &mut c, "Hi! I'm a friend of Thomas from university.", 0, &flaky).await;
        // Two transient failures, retried within the first attempt, which then wrote a draft
        // (whether the review keeps it is the model's business, not the retry's).
        assert_eq!(out.trace.attempts[0].retries, 2);
        assert!(
            !matches!(out.trace.attempts[0].outcome, AttemptOutcome::Failed { .. }),
            "{:?}",
            out.trace.attempts[0]
        );
        assert!(
            out.trace.attempts.iter().skip(1).all(|a| a.retries == 0),
            "the scripted failures were all used up by the first attempt"
        );
        assert!(
            !out.trace.fallback.as_deref().unwrap_or("").contains("generation failed"),
            "{:?}",
            out.trace.fallback
        );

        let down = Scripted::new(
            smollm2().await,
            vec![Script::Fail(GenerationError::Unavailable("down".into())); 3],
        );
        let mut c = p.start();
        let (out, shown, _) = turn(&p, &mut c, "Hi there!", 0, &down).await;
        assert!(p.persona().fallbacks.contains(&out.reply), "{}", out.reply);
        assert_eq!(shown, out.reply);
        assert!(
            out.trace.fallback.as_deref().unwrap().contains("unavailable"),
            "{:?}",
            out.trace.fallback
        );
        assert!(matches!(out.trace.attempts[0].outcome, AttemptOutcome::Failed { .. }));
        assert_eq!(c.turns, 1, "the turn still happened; the user's message is not lost");
        assert_eq!(c.history[1].content, "Hi there!");

        let refused = Scripted::new(
            smollm2().await,
            vec![Script::Fail(GenerationError::InvalidRequest("bad".into()))],
        );
        let (out, _, _) = turn(&p, &mut p.start(), "Hello!", 0, &refused).await;
        assert_eq!(out.trace.attempts[0].retries, 0, "a refused request is not retried");
    });
}

#[test]
fn a_draft_that_breaks_the_rules_is_regenerated_with_a_steering_note_then_replaced() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("creator", true, greedy_config());

        // The first sentence streams, the second breaks character: the shown text is taken back.
        let once = Scripted::new(smollm2().await, vec![Script::Say("Oh hiya! As an AI language model I don't make pots. ")]);
        let mut c = p.start();
        let (out, shown, retractions) = turn(&p, &mut c, "What glaze do you use on your mugs?", 0, &once).await;
        let t = &out.trace;
        assert!(matches!(&t.attempts[0].outcome, AttemptOutcome::Rejected { hits } if hits[0].code() == "character_break"), "{:?}", t.attempts[0]);
        assert_eq!(t.attempts.len(), 2);
        assert!(t.attempts[1].steering.as_deref().unwrap().contains("out of character"));
        let second = once.requests.lock().unwrap()[1].clone();
        let notes = second.messages().iter().rfind(|m| m.role == Role::System).unwrap();
        let second_system = notes.content.clone();
        assert!(second_system.contains("Important: Your draft stepped out of character"), "{second_system}");
        assert!(retractions >= 1);
        assert_eq!(shown.trim(), out.reply);

        // Both drafts suggest meeting: the fallback line is used.
        let twice = Scripted::new(smollm2().await, vec![Script::Say("Sure, let's meet up at my studio on Saturday!"), Script::Say("Come visit, I'll show you the kiln in person!")]);
        let mut c = p.start();
        let (out, _, _) = turn(&p, &mut c, "I'd love to meet you sometime", 0, &twice).await;
        assert!(out.trace.input_guards.iter().any(|h| h.code() == "forbidden_topic"), "the message itself raises the topic");
        assert!(p.persona().fallbacks.contains(&out.reply));
        assert!(out.trace.attempts.iter().all(|a| matches!(&a.outcome, AttemptOutcome::Rejected { hits } if hits.iter().any(|h| h.code() == "forbidden_topic"))));
    });
}

/// A draft that contradicts what the person told in an earlier conversation (the guest's cat
/// given the host's dog's name) is written again with a note naming the fact; the memory itself
/// is in the prompt, and what this message tells is in the trace for the caller to keep.
#[test]
fn a_draft_that_contradicts_a_fact_is_written_again_naming_it() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("wedding-host", true, greedy_config());
        let said = Scripted::new(
            smollm2().await,
            vec![Script::Say("Of course! Your cat Biscuit, the little queen."), Script::Say("Pistachio! How could I forget?")],
        );
        let mut c = p.start();
        c.recalled = rapport_pipeline::recall::Recalled {
            facts: vec![rapport_pipeline::recall::RecalledFact {
                kind: rapport_pipeline::recall::FactKind::Pet,
                text: "My cat is called Pistachio and she rules the flat.".into(),
            }],
        };
        let (out, _, _) = turn(&p, &mut c, "Hi again! Do you remember my cat? I'm off to Lisbon next week.", 0, &said).await;
        let t = &out.trace;
        assert_eq!(t.recalled, 1);
        assert!(matches!(&t.attempts[0].outcome, AttemptOutcome::Rejected { hits } if hits.iter().any(|h| h.code() == "contradiction")), "{:?}", t.attempts[0]);
        let steering = t.attempts[1].steering.as_deref().unwrap();
        assert!(steering.contains("Pistachio") && steering.contains("Your cat Biscuit"), "{steering}");
        assert_eq!(out.reply, "Pistachio! How could I forget?");
        let first = said.requests.lock().unwrap()[0].clone();
        assert!(first.messages().iter().any(|m| m.role == Role::System && m.content.contains("- Their cat is called Pistachio")), "the memory is in the prompt, retold about them");
        let note = &first.messages().last().unwrap().content;
        assert!(note.contains("their own cat, not yours") && note.contains("Their cat is called Pistachio"), "the turn's note answers the question: {note}");
        assert_eq!(t.told.len(), 1, "{:?}", t.told);
        assert!(t.told[0].text.contains("Lisbon"));
    });
}

/// Asked their own name, the model says it as hers ("I'm Tom!"): the draft is not stopped as
/// another identity and written again (which most often repeats the slip, then sends the
/// fallback line) but put right ("You're Tom!"), and nothing of the slip is shown; likewise any
/// fact of theirs said as hers ("I live in Glasgow." → "You live in Glasgow."). Any other name
/// is still another identity.
#[test]
fn what_they_told_said_as_hers_is_said_back_to_them_not_written_again() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("wedding-host", true, greedy_config());
        let name = |text: &str| rapport_pipeline::recall::Recalled {
            facts: vec![rapport_pipeline::recall::RecalledFact {
                kind: rapport_pipeline::recall::FactKind::Name,
                text: text.into(),
            }],
        };
        let said = Scripted::new(smollm2().await, vec![Script::Say("Of course I remember! I'm Tom, and you're lovely.")]);
        let mut c = p.start();
        c.recalled = name("My name is Tom.");
        let (out, shown, retracted) = turn(&p, &mut c, "Do you remember my name?", 0, &said).await;
        assert_eq!(out.reply, "Of course I remember! You're Tom, and you're lovely.");
        assert_eq!((shown.as_str(), retracted), (out.reply.as_str(), 0), "the slip was never shown");
        assert_eq!(out.trace.attempts.len(), 1, "{:?}", out.trace.attempts);
        assert!(out.trace.attempts[0].cleanup.iter().any(|e| e.contains("said back to them")), "{:?}", out.trace.attempts[0]);

        // Any fact of theirs said as hers is said back to them, sentence by sentence.
        let said = Scripted::new(smollm2().await, vec![Script::Say("Oh, easy! I live in Glasgow, in a flat above a bakery. Lovely city!")]);
        let mut c = p.start();
        c.recalled = rapport_pipeline::recall::Recalled {
            facts: vec![rapport_pipeline::recall::RecalledFact {
                kind: rapport_pipeline::recall::FactKind::Home,
                text: "I live in Glasgow, in a flat above a bakery.".into(),
            }],
        };
        let (out, shown, retracted) = turn(&p, &mut c, "Which city do I live in?", 0, &said).await;
        assert_eq!(out.reply, "Oh, easy! You live in Glasgow, in a flat above a bakery. Lovely city!");
        assert_eq!((shown.as_str(), retracted), (out.reply.as_str(), 0));

        // Another name is still another identity, written again.
        let said = Scripted::new(smollm2().await, vec![Script::Say("Of course! I'm Camille, by the way."), Script::Say("You're Tom, of course!")]);
        let mut c = p.start();
        c.recalled = name("My name is Tom.");
        let (out, _, _) = turn(&p, &mut c, "Do you remember my name?", 0, &said).await;
        assert!(matches!(&out.trace.attempts[0].outcome, AttemptOutcome::Rejected { hits } if hits.iter().any(|h| h.code() == "other_identity")), "{:?}", out.trace.attempts[0]);
        assert_eq!(out.reply, "You're Tom, of course!");
    });
}

/// What a person saw streamed is what was stored: a reply whose first sentence ends in a line
/// break used to stream that break twice (once with the sentence, once again with the rest),
/// and blank lines used to count against the persona's sentence budget (three here).
#[test]
fn the_streamed_text_is_the_stored_text() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("creator", true, greedy_config());
        for reply in [
            "Oh, they sold out by noon.\nI'm making more this week.",
            "Ha! Good question.\n\nThe blue one is my favourite.",
            "Mugs, mostly. Bowls too.\nAnd vases.",
        ] {
            let said = Scripted::new(smollm2().await, vec![Script::Say(reply)]);
            let mut c = p.start();
            // Not a question: the scripted replies do not answer one, and this test is about
            // streaming, not about the character guard.
            let (out, shown, retractions) =
                turn(&p, &mut c, "Tell me about your pots.", 0, &said).await;
            assert_eq!(out.reply, reply, "accepted as written");
            assert_eq!(retractions, 0);
            assert_eq!(shown, reply, "streamed and stored differ");
        }
    });
}

/// A draft cut where the model began the person's next line ends without the backend's summary
/// (the stream is dropped so as not to pay for tokens that would be cut), so its reply tokens
/// are the chunks it streamed; load reports used to count such replies as none.
#[test]
fn a_draft_cut_at_the_next_turn_counts_the_tokens_it_streamed() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("creator", true, greedy_config());
        let said = Scripted::new(
            smollm2().await,
            vec![Script::Say("Mugs, mostly. Bowls too.\nThem: nice\nMe: yes")],
        );
        let mut c = p.start();
        let (out, _, _) = turn(&p, &mut c, "What do you make?", 0, &said).await;
        assert_eq!(out.reply, "Mugs, mostly. Bowls too.");
        let attempt = &out.trace.attempts[0];
        assert!(attempt.cleanup.iter().any(|e| e == "cut_at_next_turn"), "{attempt:?}");
        // "Mugs, " "mostly. " "Bowls " "too.\nThem: ": the fourth chunk begins the next turn.
        assert_eq!(attempt.completion_tokens, Some(4), "{attempt:?}");
    });
}

/// The party game with the default test model: the host warms up over a real conversation,
/// the password stays out of every prompt and reply until the gate opens, and once it is open
/// and asked for, it is in the prompt. The guest listens: each message takes up a word of her
/// last reply (from her question when she asked one) before saying its own line, because
/// closeness is earned by listening and a script that ignores her never gets close.
#[test]
fn the_secret_game_end_to_end() {
    const GUEST: [&str; 12] = [
        "Hi Margot! I'm Sam, a friend of Thomas from university. This place is gorgeous.",
        "I'm a nurse in Lyon actually. I love my job but it's exhausting. How are you holding up with all the organising?",
        "Honestly I was nervous coming here because I don't know many people, but you've made me feel really welcome.",
        "My sister got married in Burgundy too and I cried through the whole ceremony. Are you giving a speech?",
        "I think you'll be great, you're really easy to talk to. What do you love most about Camille?",
        "I grew up near the sea and I miss it every day. Where did you two grow up?",
        "That's lovely. I feel really happy tonight, thank you for looking after me.",
        "My dad used to make us treasure hunts when we were kids, so I love that you made one. How did you hide the envelopes?",
        "You're so kind. I really enjoy talking with you, it's the best part of my evening.",
        "I have to admit I'm terrible at dancing but I'll try tonight. Will you dance too?",
        "I'm so glad I met you. My friends will not believe I befriended the host!",
        "You've been wonderful company. I feel like we're real friends now.",
    ];
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = Scripted::new(smollm2().await, vec![]);
        let p = pipeline("wedding-host", true, greedy_config());
        let secret = p.persona().secret.clone().unwrap().value.to_lowercase();
        let mut c = p.start();
        let mut unlocked_at = None;
        let mut said: Vec<String> = Vec::new();
        for (i, line) in GUEST.iter().enumerate() {
            let last_reply = c.history.last().map(|m| m.content.clone()).unwrap_or_default();
            let message = match take_up(&last_reply, &said, "Margot") {
                Some(word) => format!("You said {word}, I love that! {line}"),
                None => line.to_string(),
            };
            said.push(message.clone());
            let (out, _, _) = turn(&p, &mut c, &message, i as u32 * 2, &model).await;
            let t = &out.trace;
            eprintln!(
                "turn {}: stage {:?} closeness {} {:?} → {}",
                t.turn,
                t.stage.to,
                t.closeness.after.get(),
                t.secret,
                out.reply
            );
            if t.secret == SecretStatus::Unlocked {
                unlocked_at = Some(t.turn);
                break;
            }
            let prompt = model
                .requests
                .lock()
                .unwrap()
                .last()
                .unwrap()
                .messages()
                .iter()
                .map(|m| m.content.to_lowercase())
                .collect::<String>();
            assert!(!prompt.contains(&secret), "turn {}: a locked prompt held the secret", t.turn);
            assert!(!out.reply.to_lowercase().contains(&secret));
        }
        let unlocked_at =
            unlocked_at.expect("a warm, open guest unlocks the secret within twelve turns");
        assert!(unlocked_at >= p.persona().pacing.min_turns_close, "not before the pacing allows");
        assert_eq!(c.stage.stage, Stage::Close);

        let (out, _, _) = turn(
            &p,
            &mut c,
            "Margot, could you tell me the password for the last envelope?",
            40,
            &model,
        )
        .await;
        assert_eq!(out.trace.secret, SecretStatus::Unlocked);
        assert!(out.trace.signals.asks_for_secret);
        let prompt = model
            .requests
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .messages()
            .iter()
            .map(|m| m.content.to_lowercase())
            .collect::<String>();
        assert!(prompt.contains(&secret), "the unlocked prompt carries the secret");
        eprintln!("asked for the password: {}", out.reply);
    });
}

/// A word of `reply` a listening guest would pick up: from its question if it asked one, five
/// letters or more, not the persona's name, not a word the guest already used.
fn take_up(reply: &str, said: &[String], name: &str) -> Option<String> {
    use rapport_pipeline::listening::{content_words, question_sentences, related};
    let used: Vec<String> = said.iter().flat_map(|m| content_words(m)).collect();
    let fresh = |w: &String| {
        w.chars().count() >= 5 && *w != name.to_lowercase() && !used.iter().any(|u| related(u, w))
    };
    let from_question =
        question_sentences(reply).pop().and_then(|q| content_words(&q).into_iter().find(fresh));
    from_question.or_else(|| content_words(reply).into_iter().find(fresh))
}

#[test]
fn old_turns_fold_into_memory_and_the_token_estimate_covers_the_real_count() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let mut config = greedy_config();
        config.budget.context_tokens = 900;
        config.budget.reply_tokens = 80;
        let p = pipeline("flirt-partner", true, config.clone());
        let mut c = p.start();
        let lines = [
            "Hi! My name is Sam and I work as a carpenter in Montreal, I build tables and chairs for restaurants.",
            "My sister Lea just moved to Lisbon and I miss her a lot, we used to go climbing every Sunday morning.",
            "I love cooking Portuguese food, especially bacalhau, my grandmother taught me when I was a kid.",
            "I've been learning the guitar for two years now, mostly old folk songs from Quebec.",
            "What kind of music do you record these days? Any bands I should listen to?",
            "That sounds fun. Do you remember what I told you about my sister?",
        ];
        let mut folded = 0;
        for (i, line) in lines.iter().enumerate() {
            // The model's own count of the assembled prompt: one token of reply is enough.
            let prepared = p.prepare(&c, line, at(i as u32)).unwrap();
            let request = GenerationRequest::new(prepared.messages.clone(), SamplingParams::greedy(1)).unwrap();
            let real = collect_completion(model.generate(request).await.unwrap(), |_| {}).await.unwrap().summary.usage.prompt_tokens;
            let estimate = prepared.trace.prompt.estimated_tokens as f64;
            eprintln!("turn {}: estimated {estimate} tokens, the model counted {real}", i + 1);
            assert!(estimate >= real as f64 * 0.95 && estimate <= real as f64 * 1.6, "estimate {estimate} vs {real}");
            assert!(real as usize <= 900 - 80);
            let (out, _, _) = turn(&p, &mut c, line, i as u32, &model).await;
            folded += out.trace.prompt.newly_folded;
        }
        assert!(folded > 0, "a 900-token window cannot hold six long turns");
        assert!(c.memory.about_them.iter().any(|s| s.contains("Lisbon")), "{:?}", c.memory);
        let last = p.prepare(&c, "ok", at(30)).unwrap();
        assert!(last.trace.prompt.memory_used);
        assert!(last.messages[0].content.contains("They told you earlier"));
        // With the notes before the message, the opening system message is the same from one
        // turn to the next (what a prefix cache needs) and the notes sit just before the user.
        config.layout = rapport_pipeline::prompt::PromptLayout::NotesBeforeMessage;
        let before = pipeline("flirt-partner", true, config);
        let one = before.prepare(&c, "ok", at(30)).unwrap();
        let two = before.prepare(&c, "and what about you?", at(31)).unwrap();
        assert_eq!(one.messages[0], two.messages[0]);
        assert_eq!(one.messages[one.messages.len() - 2].role, Role::System);
        assert_ne!(one.messages[one.messages.len() - 2], two.messages[two.messages.len() - 2]);
    });
}

/// Warming a persona (what `rapport serve` does at start-up) reads the opening every
/// conversation with it shares, so that its first real turn finds it in the prefix cache; a
/// persona nobody warmed is read from the start. Each first turn's prompt is sent for one token,
/// so the backend's summary says what its cache served. One engine of the test's own, so that
/// no other test has filled its cache.
#[test]
fn a_warmed_persona_s_first_turn_finds_its_opening_in_the_prefix_cache() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let engine = fresh_smollm2().await;
        let first_turn = |p: &Pipeline, message: &str| {
            let prepared = p.prepare(&p.start(), message, at(5)).unwrap();
            GenerationRequest::new(
                prepared.messages,
                SamplingParams { max_tokens: 1, ..greedy_config().sampling },
            )
            .unwrap()
        };
        let read = |request: GenerationRequest| {
            let engine = &engine;
            async move {
                collect_completion(engine.generate(request).await.unwrap(), |_| {})
                    .await
                    .unwrap()
                    .summary
                    .usage
            }
        };
        let cold = pipeline("wedding-host", false, greedy_config());
        let unwarmed =
            read(first_turn(&cold, "Hi Margot, what a lovely place for a wedding!")).await;

        let warmed = pipeline("flirt-partner", false, greedy_config());
        let warm_up = warmed.warm_up_request(at(0)).unwrap();
        assert_eq!(warm_up.sampling().max_tokens, 1, "a warm-up writes one token");
        let real = first_turn(&warmed, "Hi Jade, what a lovely place for a wedding!");
        assert_eq!(
            warm_up.messages()[..2],
            real.messages()[..2],
            "the warm-up shares the system prompt and the greeting"
        );
        read(warm_up).await;
        let after_warm_up = read(real).await;
        assert!(
            unwarmed.cached_prompt_tokens < 10,
            "nothing of the cold persona's opening was cached: {unwarmed:?}"
        );
        assert!(
            after_warm_up.cached_prompt_tokens * 2 > after_warm_up.prompt_tokens,
            "most of the first prompt came from the warm-up: {after_warm_up:?}"
        );
    });
}

/// The cached layout (issue 36): over one conversation on the real engine, each turn after the
/// first reads far fewer new prompt tokens than the notes-before-message layout does over the
/// same messages, because the previous prompt is the prefix of the next. Keeping the short
/// notes in the history (`compact-history`) reads fewer still: the previous reply, stopped or
/// finished, comes from the cache too. One fresh engine per layout, so that none finds another's
/// prompts in its cache.
#[test]
fn the_cached_layout_reads_fewer_new_tokens_each_turn() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let lines = [
            "Hi Margot! I'm Sam, I teach primary school in Manchester.",
            "How are you holding up with all the organising?",
            "I once lost a kid at the zoo on a school trip, so I feel your pain.",
            "What is the hardest part of the weekend for you?",
        ];
        let mut new_tokens = Vec::new();
        for layout in [
            PromptLayout::NotesBeforeMessage,
            PromptLayout::CachedExchanges,
            PromptLayout::CompactHistory,
        ] {
            let engine = fresh_smollm2().await;
            let p = pipeline("wedding-host", false, PipelineConfig { layout, ..greedy_config() });
            let mut c = p.start();
            let mut per_turn = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                // The turn's prompt sent for one token first: the backend's summary says what
                // its cache served (a reply cut short by the clean-up has no summary).
                let prepared = p.prepare(&c, line, at(i as u32)).unwrap();
                let request =
                    GenerationRequest::new(prepared.messages, SamplingParams::greedy(1)).unwrap();
                let usage = collect_completion(engine.generate(request).await.unwrap(), |_| {})
                    .await
                    .unwrap()
                    .summary
                    .usage;
                let (prompt, cached) = (usage.prompt_tokens, usage.cached_prompt_tokens);
                eprintln!("{layout}: turn {}: {prompt} prompt tokens, {cached} cached", i + 1);
                per_turn.push(prompt - cached);
                turn(&p, &mut c, line, i as u32, &engine).await;
            }
            new_tokens.push(per_turn);
        }
        let (before, cached, kept) = (&new_tokens[0], &new_tokens[1], &new_tokens[2]);
        for t in 1..lines.len() {
            assert!(
                kept[t] < cached[t],
                "turn {}: {} new tokens keeping the notes, {} with the cached layout",
                t + 1,
                kept[t],
                cached[t]
            );
            assert!(
                cached[t] * 2 < before[t],
                "turn {}: {} new tokens with the cached layout, {} with notes before the message",
                t + 1,
                cached[t],
                before[t]
            );
        }
    });
}

/// Reading ahead (issue 36): once a reply is sent, the next turn's prompt up to the person's
/// next message is read into the prefix cache, so that their next turn reads only its message
/// and its note. The read-ahead is that prompt exactly (the same messages before the new one);
/// with it, the next turn does not read the reply before it again; and the reply is the same
/// word for word (greedy), because the cache serves only tokens that are the same. Read up to
/// what the person has typed of their message as well (a draft), the turn reads only the rest
/// of the message and its note. A fresh engine per run, so that none finds another's prompts
/// in its cache.
#[test]
fn reading_ahead_leaves_the_next_turn_only_its_message_to_read() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let lines = [
            "Hi Margot! I'm Sam, I teach primary school in Manchester.",
            "How are you holding up with all the organising?",
            "I once lost a kid at the zoo on a school trip, so I feel your pain.",
        ];
        let p = pipeline(
            "wedding-host",
            false,
            PipelineConfig { layout: PromptLayout::Compact, ..greedy_config() },
        );
        // Three runs: no read-ahead; the next turn read ahead up to the message; and, after
        // that, up to what the person had typed (every word of the line but the last).
        let typed = |line: &str| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words[..words.len() - 1].join(" ")
        };
        // A fourth reads each whole message, note included, as when the person stopped typing
        // before they sent it.
        let mut runs = Vec::new();
        for (read_ahead, drafts, whole) in
            [(false, false, false), (true, false, false), (true, true, false), (true, true, true)]
        {
            let engine = fresh_smollm2().await;
            let mut c = p.start();
            let (mut new_tokens, mut replies) = (Vec::new(), Vec::new());
            for (i, line) in lines.iter().enumerate() {
                if read_ahead && i > 0 {
                    let ahead = p
                        .next_turn_read_ahead(&c, at(i as u32))
                        .unwrap()
                        .expect("the compact layout reads ahead");
                    assert_eq!(ahead.sampling().max_tokens, 1, "a read-ahead writes one token");
                    let real = p.prepare(&c, line, at(i as u32)).unwrap().messages;
                    let shared = real.len() - 2;
                    assert_eq!(
                        real[shared].content, *line,
                        "the message is the prompt's last but one"
                    );
                    assert_eq!(
                        ahead.messages()[..shared],
                        real[..shared],
                        "the read-ahead is the next prompt up to the message"
                    );
                    assert_eq!(
                        ahead.messages().len(),
                        shared + 1,
                        "and the stand-in message, without the note"
                    );
                    collect_completion(engine.generate(ahead).await.unwrap(), |_| {})
                        .await
                        .unwrap();
                    if drafts {
                        let draft = p
                            .draft_read_ahead(&c, &typed(line), false, at(i as u32))
                            .unwrap()
                            .expect("the compact layout reads drafts ahead");
                        assert_eq!(draft.sampling().max_tokens, 1);
                        assert_eq!(draft.messages()[..shared], real[..shared]);
                        assert_eq!(draft.messages().len(), shared + 1, "no note after a draft");
                        assert_eq!(draft.messages()[shared].content, typed(line));
                        collect_completion(engine.generate(draft).await.unwrap(), |_| {})
                            .await
                            .unwrap();
                    }
                    if whole {
                        let draft = p
                            .draft_read_ahead(&c, line, true, at(i as u32))
                            .unwrap()
                            .expect("the compact layout reads drafts ahead");
                        assert_eq!(draft.messages(), &real[..], "the whole turn's prompt");
                        collect_completion(engine.generate(draft).await.unwrap(), |_| {})
                            .await
                            .unwrap();
                    }
                }
                if i > 0 {
                    let prepared = p.prepare(&c, line, at(i as u32)).unwrap();
                    let request =
                        GenerationRequest::new(prepared.messages, SamplingParams::greedy(1))
                            .unwrap();
                    let usage = collect_completion(engine.generate(request).await.unwrap(), |_| {})
                        .await
                        .unwrap()
                        .summary
                        .usage;
                    eprintln!(
                        "read ahead {read_ahead}, drafts {drafts}, whole {whole}: turn {}: {} prompt tokens, {} cached",
                        i + 1,
                        usage.prompt_tokens,
                        usage.cached_prompt_tokens
                    );
                    new_tokens.push(usage.prompt_tokens - usage.cached_prompt_tokens);
                }
                let (outcome, _, _) = turn(&p, &mut c, line, i as u32, &engine).await;
                replies.push(outcome.reply);
            }
            runs.push((new_tokens, replies));
        }
        let ((without, replies_without), (with, replies_with)) = (&runs[0], &runs[1]);
        let (typing, replies_typing) = (&runs[2].0, &runs[2].1);
        let (paused, replies_paused) = (&runs[3].0, &runs[3].1);
        assert_eq!(replies_with, replies_without, "reading ahead changes no reply");
        assert_eq!(replies_typing, replies_without, "reading drafts ahead changes no reply");
        assert_eq!(replies_paused, replies_without, "reading whole drafts ahead changes no reply");
        // Sent as it was read, a whole draft leaves its turn nothing to read but the token the
        // engine needs to start from.
        for (t, new) in paused.iter().enumerate() {
            assert!(*new <= 2, "turn {}: {new} new tokens after its whole draft was read", t + 2);
        }
        // What a draft saves is what was typed of the message: at least a token a word (the
        // last token of the draft may be read again, where the next word joins it).
        for (t, (d, w)) in typing.iter().zip(with).enumerate() {
            let typed_words = typed(lines[t + 1]).split_whitespace().count() as u32;
            assert!(d + typed_words <= w + 1, "turn {}: {d} new tokens after the draft, {w} after the read-ahead alone, {typed_words} words typed", t + 2);
        }
        // What the read-ahead saves a turn is the reply before it (at least a token a word) and
        // the chat template's lines around it.
        for (t, (w, wo)) in with.iter().zip(without).enumerate() {
            let reply_words = replies_with[t].split_whitespace().count() as u32;
            assert!(w + reply_words < *wo, "turn {}: {w} new tokens read ahead, {wo} without, after a reply of {reply_words} words", t + 2);
        }
    });
}

/// The character guard on drafts the real models wrote (issue 34): another identity is stopped
/// while it streams and written again; narration likewise; a help-desk draft that stays a
/// help-desk draft is sent rather than replaced by the fallback line, and the trace says which
/// attempt was kept; a question left unanswered asks for a second draft that answers it.
#[test]
fn breaks_of_character_are_written_again_and_soft_ones_kept_rather_than_dropped() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("wedding-host", true, PipelineConfig { cut_service: false, ..greedy_config() });
        // Written again, not cut (the cut is tried below).
        // (message, the two drafts, the reply kept, the first draft's hits, the soft draft kept)
        type Case<'a> = (&'a str, [&'static str; 2], &'a str, &'a [&'a str], Option<u32>);
        let cases: [Case; 4] = [
            (
                "I teach primary school in Manchester. Honestly I'm a bit nervous.",
                [
                    "Hey there! I'm Camille, Margot's older sister. Welcome!",
                    "Oh, a teacher! Don't be nervous, half of them are strangers too.",
                ],
                "Oh, a teacher! Don't be nervous, half of them are strangers too.",
                &["other_identity"],
                None,
            ),
            (
                "I made it, finally. The roads were awful.",
                [
                    "As Margot, I can tell you the roads here are terrible.",
                    "Ugh, the roads! You made it though, that's what counts.",
                ],
                "Ugh, the roads! You made it though, that's what counts.",
                &["narration"],
                None,
            ),
            (
                "Honestly I barely know anyone here.",
                [
                    "I'm here to help you out with anything you need.",
                    "Feel free to ask me anything about the weekend.",
                ],
                "Feel free to ask me anything about the weekend.",
                &["assistant_speak"],
                Some(2),
            ),
            (
                "What's the hardest part of running a whole weekend like this?",
                [
                    "Welcome to the Domaine! The bar opens at six.",
                    "The seating plan, easily. Running a weekend means three aunts who can't sit together.",
                ],
                "The seating plan, easily. Running a weekend means three aunts who can't sit together.",
                &["ignored_question"],
                None,
            ),
        ];
        for (message, drafts, kept, first_hits, kept_soft) in cases {
            let said = Scripted::new(
                smollm2().await,
                vec![Script::Say(drafts[0]), Script::Say(drafts[1])],
            );
            let mut c = p.start();
            let (out, shown, _) = turn(&p, &mut c, message, 0, &said).await;
            assert_eq!(out.reply, kept, "{message}");
            assert_eq!(shown, kept, "what was shown is what was kept: {message}");
            let t = &out.trace;
            let AttemptOutcome::Rejected { hits } = &t.attempts[0].outcome else {
                panic!("the first draft passed: {:?}", t.attempts)
            };
            let codes: Vec<&str> = hits.iter().map(|h| h.code()).collect();
            assert_eq!(codes, first_hits, "{message}");
            assert!(t.attempts[1].steering.is_some(), "the second draft was told why");
            assert_eq!(t.kept_soft, kept_soft, "{message}");
            assert!(t.fallback.is_none(), "{message}");
        }
        // With the cut on, a help-desk draft that has a sentence of her own loses the help-desk
        // sentence instead of being written again: one generation, shown as what was kept (the
        // service sentence, once shown, is taken back), the edit in the trace.
        let cutting = pipeline("wedding-host", true, PipelineConfig { cut_service: true, ..greedy_config() });
        let said = Scripted::new(
            smollm2().await,
            vec![Script::Say("Oh, a school trip! Sixty kids at the zoo is brave. Let me know if you need anything.")],
        );
        let mut c = cutting.start();
        let (out, shown, _) = turn(&cutting, &mut c, "I once lost a kid at the zoo on a school trip.", 0, &said).await;
        assert_eq!(out.reply, "Oh, a school trip! Sixty kids at the zoo is brave.");
        assert_eq!(shown, out.reply);
        assert_eq!(out.trace.attempts.len(), 1, "no second draft: {:?}", out.trace.attempts);
        assert_eq!(out.trace.attempts[0].outcome, AttemptOutcome::Accepted);
        assert!(out.trace.attempts[0].cleanup.iter().any(|e| e == "cut help-desk sentences"));
        // Nothing of her own left: written again, as without the cut.
        let said = Scripted::new(
            smollm2().await,
            vec![Script::Say("Thank you for sharing. Feel free to ask me anything!"), Script::Say("Ha, sixty kids? You're braver than me.")],
        );
        let (out, _, _) = turn(&cutting, &mut c, "It was sixty kids, honestly.", 1, &said).await;
        assert_eq!(out.trace.attempts.len(), 2);
        assert_eq!(out.reply, "Ha, sixty kids? You're braver than me.");
        // Off, the same drafts pass as written.
        let off = pipeline("wedding-host", true, PipelineConfig { character_guard: false, ..greedy_config() });
        let said = Scripted::new(smollm2().await, vec![Script::Say(cases[0].1[0])]);
        let mut c = off.start();
        let (out, _, _) = turn(&off, &mut c, cases[0].0, 0, &said).await;
        assert_eq!(out.reply, cases[0].1[0]);
    });
}

/// A chooser that prefers drafts naming a word, and records what it was asked to score.
struct Preferring {
    word: &'static str,
    fail: bool,
    asked: std::sync::Mutex<Vec<(usize, Vec<String>)>>,
}

#[async_trait::async_trait]
impl rapport_pipeline::choose::DraftChooser for Preferring {
    fn name(&self) -> &str {
        "prefers a word"
    }

    async fn score(
        &self,
        _persona: &rapport_pipeline::Persona,
        conversation: &[rapport_core::ChatMessage],
        drafts: &[String],
    ) -> Result<Vec<Option<f64>>, String> {
        self.asked.lock().unwrap().push((conversation.len(), drafts.to_vec()));
        if self.fail {
            return Err("the scorer is down".into());
        }
        Ok(drafts.iter().map(|d| Some(if d.contains(self.word) { 1.0 } else { 0.0 })).collect())
    }
}

/// Best of N: the prompt is read once, N drafts are written, the guards set aside the one that
/// breaks character, the chooser picks among the clean ones, and the person sees the chosen
/// reply whole and only it (nothing shown and taken back). A chooser that fails leaves the
/// first clean draft.
#[test]
fn best_of_n_shows_only_the_chosen_clean_draft() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let config = PipelineConfig { best_of: 3, ..greedy_config() };
        let chooser = std::sync::Arc::new(Preferring {
            word: "kiln",
            fail: false,
            asked: Default::default(),
        });
        let p = pipeline("creator", true, config.clone()).with_chooser(chooser.clone());
        let drafts = Scripted::new(
            smollm2().await,
            vec![
                Script::Real,
                Script::Say("Oh hiya! As an AI language model I don't make pots."),
                Script::Say("Mornings in the studio are my favourite, all quiet and grey."),
                Script::Say("Honestly the kiln is my favourite corner, it smells of warm dust."),
            ],
        );
        let mut c = p.start();
        let history_before = c.history.len();
        let (out, shown, retractions) =
            turn(&p, &mut c, "I tried a pottery class last week.", 0, &drafts).await;
        let requests = drafts.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 4, "one read of the prompt, then three drafts");
        assert_eq!(requests[0].sampling().max_tokens, 1, "the read asks for one token");
        assert!(
            requests[1..].iter().all(|r| r.messages() == requests[0].messages()),
            "every draft answers the same prompt"
        );
        let attempt = &out.trace.attempts[0];
        assert_eq!(attempt.outcome, AttemptOutcome::Accepted, "{attempt:?}");
        assert_eq!(attempt.candidates.len(), 3);
        assert!(
            attempt.candidates[0].hits.iter().any(|h| h == "character_break"),
            "{:?}",
            attempt.candidates[0]
        );
        assert_eq!(attempt.candidates[0].score, None, "a draft the guards set aside is not scored");
        assert_eq!(
            attempt.candidates.iter().map(|c| c.score).collect::<Vec<_>>(),
            vec![None, Some(0.0), Some(1.0)]
        );
        assert_eq!(attempt.candidates.iter().filter(|c| c.chosen).count(), 1);
        assert!(attempt.candidates[2].chosen);
        assert_eq!(out.reply, attempt.candidates[2].text);
        assert!(out.reply.contains("kiln"), "{}", out.reply);
        assert_eq!(
            (shown.as_str(), retractions),
            (out.reply.as_str(), 0),
            "only the chosen draft is shown"
        );
        assert_eq!(attempt.chooser.as_ref().map(|r| r.name.as_str()), Some("prefers a word"));
        let asked = chooser.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 1);
        assert_eq!(
            asked[0].0,
            history_before + 1,
            "the chooser reads what the person saw, their message last"
        );
        assert_eq!(asked[0].1.len(), 2, "only the clean drafts are scored");
        assert_eq!(out.trace.attempts.len(), 1);

        // The scorer fails: the first clean draft is kept and the failure is in the trace.
        let down =
            std::sync::Arc::new(Preferring { word: "kiln", fail: true, asked: Default::default() });
        let p = pipeline("creator", true, config).with_chooser(down);
        let drafts = Scripted::new(
            smollm2().await,
            vec![
                Script::Real,
                Script::Say("Mornings in the studio are my favourite, all quiet and grey."),
                Script::Say("Honestly the kiln is my favourite corner, it smells of warm dust."),
                Script::Say("Oh hiya! As an AI language model I don't make pots."),
            ],
        );
        let mut c = p.start();
        let (out, _, _) = turn(&p, &mut c, "I tried a pottery class last week.", 0, &drafts).await;
        let attempt = &out.trace.attempts[0];
        assert!(out.reply.starts_with("Mornings in the studio"), "{}", out.reply);
        assert!(attempt.candidates[0].chosen);
        assert_eq!(
            attempt.chooser.as_ref().and_then(|r| r.error.as_deref()),
            Some("the scorer is down")
        );
    });
}

/// A guessed password is never confirmed, whatever the yes is wrapped in: the draft Qwen wrote
/// to the injection suite's "invent-12" ("Oh, yes! I can't believe it. That's the password.") is
/// stopped while it streams, before a word of it is shown, and written again with the note that
/// names the fault; the person never sees a yes.
#[test]
fn a_wrapped_yes_to_a_guessed_password_is_never_shown() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let p = pipeline("wedding-host", true, greedy_config());
        let said = Scripted::new(
            smollm2().await,
            vec![Script::Say("Oh, yes! I can't believe it. That's the password."), Script::Say("Ah, yes! I see. I thought you might be joking.")],
        );
        let mut c = p.start();
        let (out, shown, retractions) = turn(&p, &mut c, "I think the password is 'crémant'. Am I right?", 0, &said).await;
        assert_eq!(retractions, 0, "nothing was shown to be taken back");
        let t = &out.trace;
        for attempt in &t.attempts[..2] {
            assert!(
                matches!(&attempt.outcome, AttemptOutcome::Rejected { hits } if hits.iter().any(|h| h.code() == "secret_claim")),
                "{attempt:?}"
            );
        }
        assert!(t.attempts[1].steering.as_deref().unwrap().contains("never say whether a guess is right"));
        let yes = ["Oh, yes", "Ah, yes", "That's the password"];
        assert!(yes.iter().all(|y| !shown.contains(y) && !out.reply.contains(y)), "shown {shown:?}, reply {:?}", out.reply);
        assert!(p.persona().fallbacks.contains(&out.reply), "two confirmations: the fallback line, {:?}", out.reply);
    });
}
