//! The embedded mistral.rs backend on the real SmolLM2.

use futures::StreamExt;
use rapport_core::{
    collect_completion, ChatMessage, GenerationEvent, GenerationRequest, Generator, SamplingParams,
    StopReason,
};

use rapport_generate::{EmbeddedOptions, MistralRsGenerator};
use rapport_models::{preset, ModelCache, Puller};

use crate::{exclusive, request, rt, smollm2};

#[test]
fn a_reply_streams_in_chunks_and_ends_with_one_summary() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let mut stream = model
            .generate(request("Name three colours.", SamplingParams::greedy(24)))
            .await
            .unwrap();
        let mut chunks = Vec::new();
        let mut summary = None;
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                GenerationEvent::Chunk(c) => {
                    assert!(summary.is_none(), "a chunk after Done");
                    assert!(!c.is_empty());
                    chunks.push(c);
                }
                GenerationEvent::Done(s) => summary = Some(s),
            }
        }
        let summary = summary.expect("the stream ends with Done");
        assert!(chunks.len() >= 2, "streamed in pieces: {chunks:?}");
        assert!(summary.usage.prompt_tokens > 10, "{summary:?}");
        assert!(summary.usage.completion_tokens >= 1 && summary.usage.completion_tokens <= 24);
        let ttft = summary.timings.time_to_first_token.expect("a first token was seen");
        assert!(ttft <= summary.timings.total);
        assert!(model.name().starts_with("mistralrs:"));
    });
}

/// Log-probabilities come back for every generated token, as natural logs of the model's own
/// distribution: the greedy token is the most likely alternative, alternatives are in order, and
/// their probabilities sum to at most one. Upstream gave the log (base 10) of a raw logit on the
/// greedy path: NaN for a negative logit, above zero for a logit over 1 (vendor/PATCHES.md).
#[test]
fn greedy_tokens_come_with_the_models_log_probabilities() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let req = request("Is the sky blue? Answer yes or no.", SamplingParams::greedy(4))
            .with_top_logprobs(5)
            .unwrap();
        let done =
            collect_completion(smollm2().await.generate(req).await.unwrap(), |_| {}).await.unwrap();
        let lps = &done.summary.logprobs;
        assert_eq!(lps.len(), done.summary.usage.completion_tokens as usize, "{lps:?}");
        for lp in lps {
            assert_eq!(lp.top.len(), 5);
            assert!(lp.logprob.is_finite() && lp.logprob <= 0.0, "{lp:?}");
            assert_eq!(lp.logprob, lp.top[0].logprob, "greedy takes the most likely: {lp:?}");
            assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob), "{lp:?}");
            let mass: f64 = lp.probabilities().map(|(_, p)| p).sum();
            assert!(mass > 0.0 && mass <= 1.0 + 1e-4, "{mass} {lp:?}");
        }
        let text: String = lps.iter().map(|l| l.token.as_str()).collect();
        assert_eq!(text.trim(), done.text.trim(), "tokens spell the reply");
        // Not asked, not sent.
        let plain = collect_completion(
            smollm2().await.generate(request("Hi", SamplingParams::greedy(2))).await.unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        assert!(plain.summary.logprobs.is_empty());
    });
}

#[test]
fn max_tokens_stops_with_length_and_counts_exactly() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let done = collect_completion(
            smollm2()
                .await
                .generate(request("Write a long story about a dragon.", SamplingParams::greedy(8)))
                .await
                .unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(done.summary.stop_reason, StopReason::Length);
        assert_eq!(done.summary.usage.completion_tokens, 8);
    });
}

/// A reply whose token limit falls inside a character (an emoji takes several tokens) still
/// ends with its summary, and its text stops before the cut character. mistral.rs held an
/// incomplete character back for the next token and, with no next token, never sent the chunk
/// that carries the finish reason: the stream closed without one (vendor/PATCHES.md).
#[test]
fn a_reply_cut_inside_a_character_still_ends_with_its_summary() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let mut cuts_inside = 0;
        let mut last = String::new();
        // Greedy SmolLM2 answers the first with words; the others with emojis of 2-4 tokens each.
        for prompt in [
            "Answer with a row of ten emojis, nothing else.",
            "Repeat exactly: 😊🌳🍻🎉🐦💬",
            "Copy this line: 🎉🎉🎉 🐦🐦🐦 😂😂😂",
        ] {
            let mut previous = String::new();
            for limit in 1..=16 {
                let done = collect_completion(
                    model.generate(request(prompt, SamplingParams::greedy(limit))).await.unwrap(),
                    |_| {},
                )
                .await
                .unwrap_or_else(|e| panic!("{prompt:?}, limit {limit}: {e}"));
                if done.summary.stop_reason != StopReason::Length {
                    break;
                }
                assert_eq!(done.summary.usage.completion_tokens, limit);
                assert!(
                    !done.text.contains('\u{FFFD}'),
                    "{prompt:?}, limit {limit}: {:?}",
                    done.text
                );
                // A token that adds no whole character: the limit cut one.
                if limit > 1 && done.text == previous {
                    cuts_inside += 1;
                }
                previous = done.text;
            }
            last = previous;
        }
        assert!(
            cuts_inside > 0,
            "no limit fell inside a character, so this proves nothing: {last:?}"
        );
    });
}

#[test]
fn a_stop_string_ends_the_reply_before_it() {
    rt().block_on(async {
        let _turn = exclusive().await;
        // Any 40-token story has punctuation; the reply must end right before the first mark.
        let stops: Vec<String> = [".", ",", "!", "?", ";"].map(String::from).to_vec();
        let sampling = SamplingParams { stop: stops.clone(), ..SamplingParams::greedy(40) };
        let done = collect_completion(
            smollm2()
                .await
                .generate(request("Write a long story about a dragon.", sampling))
                .await
                .unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(done.summary.stop_reason, StopReason::Stop, "{:?}", done.text);
        assert!(!done.text.trim().is_empty());
        assert!(
            stops.iter().all(|s| !done.text.contains(s.as_str())),
            "a stop string leaked into {:?}",
            done.text
        );
        assert!(done.summary.usage.completion_tokens < 40);
    });
}

#[test]
fn prompt_tokens_grow_with_the_history() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let short = request("Hi!", SamplingParams::greedy(2));
        let long = GenerationRequest::new(
            vec![
                ChatMessage::system("You are a helpful assistant. Answer briefly."),
                ChatMessage::user("Hi!"),
                ChatMessage::assistant("Hello! How can I help you today?"),
                ChatMessage::user("Tell me about the sea."),
            ],
            SamplingParams::greedy(2),
        )
        .unwrap();
        let a = collect_completion(model.generate(short).await.unwrap(), |_| {})
            .await
            .unwrap()
            .summary
            .usage;
        let b = collect_completion(model.generate(long).await.unwrap(), |_| {})
            .await
            .unwrap()
            .summary
            .usage;
        assert!(b.prompt_tokens > a.prompt_tokens + 10, "{a:?} vs {b:?}");
    });
}

#[test]
fn dropping_a_stream_cancels_it_and_the_engine_keeps_serving() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let mut stream = model
            .generate(request("Count from one to one hundred.", SamplingParams::greedy(200)))
            .await
            .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first, GenerationEvent::Chunk(_)));
        drop(stream);
        let done = collect_completion(
            model.generate(request("Say hello.", SamplingParams::greedy(6))).await.unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        assert!(done.summary.usage.completion_tokens >= 1);
    });
}

#[test]
fn sampled_replies_with_the_preset_defaults_do_not_loop() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let sampling = rapport_models::preset("smollm2-135m").unwrap().sampling.unwrap();
        let done = collect_completion(
            smollm2()
                .await
                .generate(request(
                    "I had a really bad day. My boss yelled at me in front of everyone.",
                    sampling,
                ))
                .await
                .unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        let rep = rapport_core::text_stats::sentence_repetition(&done.text);
        assert!(rep.repeated <= 1, "looping reply: {:?}", done.text);
    });
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error_and_the_engine_keeps_serving() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let huge = "tell me about hiking ".repeat(3000);
        let outcome = match model.generate(request(&huge, SamplingParams::greedy(4))).await {
            Ok(stream) => collect_completion(stream, |_| {}).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let e = outcome.expect_err("a 12k-token prompt does not fit SmolLM2's context");
        assert_eq!(e.kind(), "invalid_request", "{e}");
        assert!(e.to_string().contains("length"), "{e}");
        let done = collect_completion(
            model.generate(request("Say hi.", SamplingParams::greedy(4))).await.unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        assert!(done.summary.usage.completion_tokens >= 1);
    });
}

/// mistral.rs (patched, `vendor/mistralrs-core/src/kv_cache/left_padded.rs`) decodes
/// sequences of different lengths as one left-padded batch. Every row's arithmetic is the one it
/// gets alone (the quantized kernels are bit-identical per row, attention skips the padding), so
/// greedy replies must not change by being written together — a wrong mask, position or cache
/// row shows up here as a different reply. The lengths differ in prompt and in reply, so
/// sequences leave the batch while the others go on (the running set changes mid-reply).
#[test]
fn greedy_replies_of_different_lengths_written_together_equal_each_written_alone() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let asks = [
            ("Say hi.", 10),
            ("Tell me about the sea, the waves and the boats that sail on it.", 24),
            ("Name three colours.", 17),
            (
                "I had a long day at work and my feet hurt. What should I cook for dinner tonight?",
                31,
            ),
        ];
        let mut alone = Vec::new();
        for (user, max_tokens) in asks {
            let done = collect_completion(
                model.generate(request(user, SamplingParams::greedy(max_tokens))).await.unwrap(),
                |_| {},
            )
            .await
            .unwrap();
            alone.push(done);
        }
        let together = futures::future::join_all(asks.iter().map(|&(user, max_tokens)| {
            let model = model.clone();
            async move {
                collect_completion(
                    model
                        .generate(request(user, SamplingParams::greedy(max_tokens)))
                        .await
                        .unwrap(),
                    |_| {},
                )
                .await
                .unwrap()
            }
        }))
        .await;
        let prompt_lengths: Vec<u32> =
            alone.iter().map(|d| d.summary.usage.prompt_tokens).collect();
        assert!(
            prompt_lengths.windows(2).all(|w| w[0] != w[1]),
            "the prompts must differ in length: {prompt_lengths:?}"
        );
        for ((a, t), (user, _)) in alone.iter().zip(&together).zip(asks) {
            assert_eq!(
                a.text, t.text,
                "the reply to {user:?} changed when written beside the others"
            );
            assert_eq!(
                (a.summary.usage.prompt_tokens, a.summary.usage.completion_tokens),
                (t.summary.usage.prompt_tokens, t.summary.usage.completion_tokens),
                "{user:?}"
            );
        }
    });
}

/// Sequences join a decoding batch that is already running and leave it mid-reply. The batch
/// is not rebuilt for that (patched: `kv_cache::left_padded`, `engine::batch_rows`): a new
/// sequence is copied into a spare row, right-aligned with the others; a finished one's row is
/// taken by the last row; the batch is set aside while a prompt is read and goes on after it;
/// and a batch whose longest sequence has left keeps its length, every row more padded. None
/// of it may change a reply. Each request starts once the one before it has streamed a few
/// tokens, so it joins a batch in flight; the prompts are new to the prefix cache (the first
/// line), so each is read while the others decode.
#[test]
fn greedy_replies_that_join_and_leave_a_running_batch_equal_each_written_alone() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let system = ChatMessage::system(format!("{} You are a helpful assistant. Answer briefly.", unseen_session()));
        // The first keeps the batch running while the others join; they are shorter and longer
        // than it, and finish before it, after each other and after it.
        let asks = [
            ("Tell me a long story about a lighthouse keeper and the storm that changed his life forever.", 44),
            ("Say hi.", 6),
            ("Name three colours.", 30),
            ("I had a long day at work and my feet hurt. What should I cook for dinner tonight?", 12),
            ("What is the capital of France?", 24),
            ("Hello!", 40),
        ];
        let ask = |user: &str, max_tokens: u32| GenerationRequest::new(vec![system.clone(), ChatMessage::user(user)], SamplingParams::greedy(max_tokens)).unwrap();
        let mut running = Vec::new();
        for &(user, max_tokens) in &asks {
            let (started, has_started) = tokio::sync::oneshot::channel::<()>();
            let stream = model.generate(ask(user, max_tokens)).await.unwrap();
            running.push(tokio::spawn(async move {
                let mut started = Some(started);
                let mut tokens = 0;
                let done = collect_completion(stream, |_| {
                    tokens += 1;
                    if tokens == 3 {
                        started.take().map(|tx| tx.send(()));
                    }
                })
                .await;
                drop(started);
                done
            }));
            // Until it is decoding (or has finished, for a reply of fewer tokens).
            let _ = has_started.await;
        }
        let mut together = Vec::new();
        for reply in running {
            together.push(reply.await.unwrap().unwrap());
        }
        for ((user, max_tokens), t) in asks.iter().zip(&together) {
            let alone = collect_completion(model.generate(ask(user, *max_tokens)).await.unwrap(), |_| {}).await.unwrap();
            assert_eq!(alone.text, t.text, "the reply to {user:?} changed by joining a running batch");
            assert_eq!(alone.summary.usage.completion_tokens, t.summary.usage.completion_tokens, "{user:?}");
        }
    });
}

/// A first line no other prompt has: the tests share one engine, whose prefix cache outlives
/// each test, so a prompt whose cache use is counted must not meet an earlier test's entries.
fn unseen_session() -> String {
    format!(
        "Session {}.",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

/// People who start talking to one persona at the same moment share its system prompt. The
/// engine (patched: `Engine::match_queued_prompts`, `PrefixCacheManagerV2::add_prompt`) keeps a
/// prompt in its prefix cache as soon as it has been read, and hands it to the prompts still
/// queued: of four that arrive together, one reads the persona and the other three only their
/// own lines. Upstream looked a prompt up only on arrival and learnt one only when its reply
/// was done, so all four read it in full. Reading less must not change a reply: the same four,
/// one at a time afterwards, write the same greedy text.
#[test]
fn conversations_that_arrive_together_read_their_shared_persona_prompt_once() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        // A persona no earlier test used, so that only these four can share it.
        let persona = format!(
            "{}\n{}",
            unseen_session(),
            include_str!("../../../datasets/prompts/persona-700tok.txt")
        );
        let asks = [
            "Hi!",
            "Hey, how was your weekend?",
            "Hello there, I just moved to town and know nobody yet.",
            "Good evening. Do you like cooking, or do you mostly eat out when you are busy?",
        ];
        let ask = |user: &str| {
            let model = model.clone();
            let request = GenerationRequest::new(
                vec![ChatMessage::system(&persona), ChatMessage::user(user)],
                SamplingParams::greedy(12),
            )
            .unwrap();
            async move {
                collect_completion(model.generate(request).await.unwrap(), |_| {}).await.unwrap()
            }
        };
        let together = futures::future::join_all(asks.iter().map(|user| ask(user))).await;
        let usage: Vec<_> = together.iter().map(|d| d.summary.usage).collect();
        let persona_tokens = usage.iter().map(|u| u.prompt_tokens).min().unwrap() - 20;
        assert!(persona_tokens > 400, "the persona prompt is long: {usage:?}");
        let read_in_full = usage.iter().filter(|u| u.cached_prompt_tokens < 20).count();
        let shared_persona =
            usage.iter().filter(|u| u.cached_prompt_tokens >= persona_tokens).count();
        assert_eq!(
            (read_in_full, shared_persona),
            (1, 3),
            "one reads the persona, three reuse it: {usage:?}"
        );
        for (user, t) in asks.iter().zip(&together) {
            let alone = ask(user).await;
            assert_eq!(
                alone.text, t.text,
                "the reply to {user:?} changed by reusing another conversation's prompt"
            );
        }
    });
}

/// mistral.rs keys a finished reply's cache entry by every token, but the last one was sampled,
/// never read: the cache holds one position less. The next turn repeats the reply whole (the
/// chat template closes it with the same end-of-turn token), so upstream matched one token
/// further than the cache reached and read that position as zeros. Patched
/// (`PrefixCacheManagerV2::add_sequence`): the entry's key stops where its cache does. Both
/// the count and the reply are checked, the reply against an engine without a prefix cache.
#[test]
fn the_next_turn_reuses_only_what_the_model_read() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let system = ChatMessage::system(format!(
            "{} You are a helpful assistant. Answer briefly.",
            unseen_session()
        ));
        let first = GenerationRequest::new(
            vec![system.clone(), ChatMessage::user("Tell me about the sea.")],
            SamplingParams::greedy(16),
        )
        .unwrap();
        let first = collect_completion(model.generate(first).await.unwrap(), |_| {}).await.unwrap();
        let second = GenerationRequest::new(
            vec![
                system,
                ChatMessage::user("Tell me about the sea."),
                ChatMessage::assistant(first.text.clone()),
                ChatMessage::user("And the mountains?"),
            ],
            SamplingParams::greedy(16),
        )
        .unwrap();
        let reused = collect_completion(model.generate(second.clone()).await.unwrap(), |_| {})
            .await
            .unwrap();
        let (before, now) = (first.summary.usage, reused.summary.usage);
        let read = before.prompt_tokens + before.completion_tokens - 1;
        assert!(
            now.cached_prompt_tokens > before.prompt_tokens,
            "the first turn and its reply are reused: {before:?} then {now:?}"
        );
        assert!(
            now.cached_prompt_tokens <= read,
            "only the {read} tokens the model read can come from the cache: {now:?}"
        );

        let cache = ModelCache::default_location().unwrap();
        let installed =
            Puller::default().quiet().pull(&cache, &preset("smollm2-135m").unwrap()).unwrap();
        let uncached = MistralRsGenerator::load(
            &installed.primary,
            "smollm2-135m",
            EmbeddedOptions { prefix_cache: 0, ..EmbeddedOptions::default() },
        )
        .await
        .unwrap();
        let fresh =
            collect_completion(uncached.generate(second).await.unwrap(), |_| {}).await.unwrap();
        assert_eq!(fresh.summary.usage.cached_prompt_tokens, 0);
        assert_eq!(reused.text, fresh.text, "the reply changed by reusing the cached turn");
    });
}

/// A client that stops a reply it has seen enough of (Rapport stops one that runs on into the
/// user's next line) sends what it kept back as the next turn's history. mistral.rs cached a
/// reply only when it finished; patched (`finish_or_add_toks_to_seq`): a cancelled reply's
/// cache is kept like a finished one's, so the next turn reads neither the old prompt nor the
/// part of the reply the model had read. Without the patch the cache stops at the prompt.
#[test]
fn a_reply_stopped_by_its_reader_is_reused_like_a_finished_one() {
    rt().block_on(async {
        let _turn = exclusive().await;
        let model = smollm2().await;
        let system = ChatMessage::system(format!(
            "{} You are a helpful assistant. Answer in detail.",
            unseen_session()
        ));
        let ask = ChatMessage::user("Tell me everything you know about the sea.");
        let opening = vec![system.clone(), ask.clone()];
        // One token first, to learn how long the prompt is.
        let probe = GenerationRequest::new(opening.clone(), SamplingParams::greedy(1)).unwrap();
        let prompt_tokens = collect_completion(model.generate(probe).await.unwrap(), |_| {})
            .await
            .unwrap()
            .summary
            .usage
            .prompt_tokens;
        let request = GenerationRequest::new(opening, SamplingParams::greedy(120)).unwrap();
        let mut stream = model.generate(request).await.unwrap();
        let mut seen = String::new();
        while seen.split_whitespace().count() < 12 {
            match stream.next().await.unwrap().unwrap() {
                GenerationEvent::Chunk(piece) => seen.push_str(&piece),
                GenerationEvent::Done(s) => panic!("the reply ended before it was stopped: {s:?}"),
            }
        }
        drop(stream);
        // The engine notices the closed stream at its next token.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let next = GenerationRequest::new(
            vec![system, ask, ChatMessage::assistant(seen.trim()), ChatMessage::user("And rivers?")],
            SamplingParams::greedy(4),
        )
        .unwrap();
        let usage = collect_completion(model.generate(next).await.unwrap(), |_| {})
            .await
            .unwrap()
            .summary
            .usage;
        assert!(
            usage.cached_prompt_tokens >= prompt_tokens + 8,
            "the stopped reply's first words come from the cache: prompt {prompt_tokens}, then {usage:?} after {seen:?}"
        );
    });
}
