//! The store against real databases: a SQLite file and, through RAPPORT_TEST_POSTGRES_URL
//! (scripts/test.sh starts one), a throw-away PostgreSQL database per test.

use std::collections::HashSet;
use std::time::Duration;

use rapport_store::{
    Admission, Backend, ConversationId, Expiry, Gcra, JobKind, JobStatus, NewMemory, QueueFull,
    SessionId, Store, StoreError, MEMORIES_KEPT,
};

struct Db {
    store: Store,
    /// Where it is, so that a test can open it again as a second process would.
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rapport.db").display());
    Db { store: Store::connect(&url).await.unwrap(), url, _dir: Some(dir) }
}

/// A fresh database on the test server, so counts are this test's own.
async fn postgres() -> Db {
    let url = std::env::var("RAPPORT_TEST_POSTGRES_URL").expect("RAPPORT_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh, which starts PostgreSQL");
    let admin = Store::connect(&url).await.unwrap();
    let name = format!("rapport_test_{}", rand_suffix());
    admin.execute_admin(&format!("CREATE DATABASE {name}")).await.unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    Db { store: Store::connect(&url).await.unwrap(), url, _dir: None }
}

fn rand_suffix() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

async fn conversation(store: &Store) -> (SessionId, ConversationId) {
    let session = store.create_session().await.unwrap().session.id;
    let c = store
        .create_conversation(&session, "wedding-host", "Hello!", r#"{"turns":0}"#)
        .await
        .unwrap();
    (session, c.id)
}

async fn a_message_and_its_reply_are_stored_once(db: Db) {
    let store = &db.store;
    let (session, id) = conversation(store).await;
    let posted = store
        .post_message(&id, "hi there", Some("key-1"), 60, &Admission::unbounded("test"))
        .await
        .unwrap();
    assert!(!posted.duplicate);
    assert_eq!(posted.message.seq, 1);
    // The client retried: same key, nothing new.
    let again = store
        .post_message(&id, "hi there", Some("key-1"), 60, &Admission::unbounded("test"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.id, posted.message.id);
    assert_eq!(again.job.id, posted.job.id);
    // A different message while the reply is open is refused.
    assert!(matches!(
        store.post_message(&id, "hello?", Some("key-2"), 60, &Admission::unbounded("test")).await,
        Err(StoreError::Conflict(_))
    ));

    let claimed = store.claim("w1", Duration::from_secs(30)).await.unwrap().expect("a queued job");
    assert_eq!(claimed.message, "hi there");
    assert_eq!(claimed.state, r#"{"turns":0}"#);
    assert_eq!(claimed.utc_offset_min, 60);
    assert!(
        store.claim("w2", Duration::from_secs(30)).await.unwrap().is_none(),
        "a held job is not claimed twice"
    );
    assert!(store
        .heartbeat(&claimed.job.id, &claimed.claim, Duration::from_secs(30), Some("Hel"))
        .await
        .unwrap());
    assert_eq!(store.job(&id, &claimed.job.id).await.unwrap().partial, "Hel");
    let reply = store
        .complete(&claimed, "Hello you.", r#"{"turns":1}"#, r#"{"turn":1}"#, &[])
        .await
        .unwrap();
    assert_eq!((reply.seq, reply.alternative), (2, 0));

    let messages = store.messages(&id).await.unwrap();
    assert_eq!(
        messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect::<Vec<_>>(),
        [("assistant", "Hello!"), ("user", "hi there"), ("assistant", "Hello you.")]
    );
    assert_eq!(store.trace(&id, &reply.id).await.unwrap(), r#"{"turn":1}"#);
    assert_eq!(store.job(&id, &claimed.job.id).await.unwrap().status, JobStatus::Done);
    assert_eq!(store.list_conversations(&session).await.unwrap()[0].title, "hi there");

    // Another session sees nothing of it.
    let stranger = store.create_session().await.unwrap().session.id;
    assert!(matches!(store.conversation(&stranger, &id).await, Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.delete_conversation(&stranger, &id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list_conversations(&stranger).await.unwrap().is_empty());
}

async fn a_claim_whose_lease_ran_out_is_taken_again_and_the_first_holder_commits_nothing(db: Db) {
    let store = &db.store;
    let (_, id) = conversation(store).await;
    store
        .post_message(&id, "are you there?", None, 0, &Admission::unbounded("test"))
        .await
        .unwrap();
    let first = store.claim("dead", Duration::from_millis(200)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = store
        .claim("alive", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the expired job is claimed again");
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.job.attempts, 2);
    assert!(!store
        .heartbeat(&first.job.id, &first.claim, Duration::from_secs(30), None)
        .await
        .unwrap());
    assert!(matches!(
        store.complete(&first, "stale", "{}", "{}", &[]).await,
        Err(StoreError::Conflict(_))
    ));
    store.complete(&second, "fresh", "{}", "{}", &[]).await.unwrap();
    let replies: Vec<_> =
        store.messages(&id).await.unwrap().into_iter().filter(|m| m.seq == 2).collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].content, "fresh");
    assert_eq!(replies[0].alternatives, 1);
}

async fn regenerating_keeps_alternatives_and_either_can_be_chosen(db: Db) {
    let store = &db.store;
    let (_, id) = conversation(store).await;
    assert!(
        matches!(
            store.regenerate(&id, &Admission::unbounded("test")).await,
            Err(StoreError::Conflict(_))
        ),
        "only a greeting"
    );
    store
        .post_message(&id, "tell me a joke", None, 0, &Admission::unbounded("test"))
        .await
        .unwrap();
    let c = store.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    store.complete(&c, "first", r#"{"v":1}"#, "{}", &[]).await.unwrap();
    let job = store.regenerate(&id, &Admission::unbounded("test")).await.unwrap();
    assert_eq!(job.kind, JobKind::Regenerate);
    let c = store.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(c.message, "tell me a joke");
    assert_eq!(c.state, r#"{"turns":0}"#, "a regeneration starts from the state before the turn");
    store.complete(&c, "second", r#"{"v":2}"#, "{}", &[]).await.unwrap();
    let last = store.messages(&id).await.unwrap().pop().unwrap();
    assert_eq!((last.content.as_str(), last.alternative, last.alternatives), ("second", 1, 2));
    let chosen = store.choose_alternative(&id, 2, 0).await.unwrap();
    assert_eq!(chosen.content, "first");
    assert_eq!(
        store.state_after(&id, 2).await.unwrap(),
        r#"{"v":1}"#,
        "the next turn continues from the chosen reply"
    );
    let export = store.export(&store_session(store, &id).await, &id).await.unwrap();
    assert_eq!(export.messages.iter().filter(|m| m.seq == 2).count(), 2);
}

async fn store_session(store: &Store, id: &ConversationId) -> SessionId {
    store.session_of(id).await.unwrap()
}

async fn concurrent_workers_claim_every_job_exactly_once(db: Db) {
    let store = db.store.clone();
    let mut expected = HashSet::new();
    for i in 0..24 {
        let (_, id) = conversation(&store).await;
        expected.insert(
            store
                .post_message(&id, &format!("message {i}"), None, 0, &Admission::unbounded("test"))
                .await
                .unwrap()
                .job
                .id,
        );
    }
    let mut workers = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) =
                store.claim(&format!("w{w}"), Duration::from_secs(60)).await.unwrap()
            {
                store.complete(&job, "ok", "{}", "{}", &[]).await.unwrap();
                mine.push(job.job.id);
            }
            mine
        }));
    }
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    assert_eq!(seen.len(), expected.len(), "no job taken twice");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(store.depth().await.unwrap(), (0, 0));
}

fn bounded(client: &str, max_queued: i64, max_per_client: i64) -> Admission {
    Admission { client: client.into(), max_queued, max_per_client }
}

async fn a_burst_from_one_client_waits_behind_everyone_elses_next_job(db: Db) {
    let store = &db.store;
    let mut flood = Vec::new();
    for i in 0..4 {
        let (_, id) = conversation(store).await;
        flood.push(
            store
                .post_message(
                    &id,
                    &format!("flood {i}"),
                    None,
                    0,
                    &Admission::unbounded("203.0.113.5"),
                )
                .await
                .unwrap()
                .job
                .id,
        );
    }
    let (_, guest_conversation) = conversation(store).await;
    let guest = store
        .post_message(&guest_conversation, "hello", None, 0, &Admission::unbounded("198.51.100.7"))
        .await
        .unwrap()
        .job;
    assert_eq!(
        store.position(&guest).await.unwrap().ahead,
        1,
        "only the flood's first job is ahead of the guest"
    );
    let mut order = Vec::new();
    for _ in 0..2 {
        order.push(store.claim("w", Duration::from_secs(60)).await.unwrap().unwrap().job.id);
    }
    assert_eq!(
        order,
        [flood[0].clone(), guest.id.clone()],
        "the guest is served second, not fifth"
    );
    // Someone who arrives while the flood's second job is being written goes before its third.
    order.push(store.claim("w", Duration::from_secs(60)).await.unwrap().unwrap().job.id);
    let (_, late_conversation) = conversation(store).await;
    let late = store
        .post_message(&late_conversation, "hi all", None, 0, &Admission::unbounded("192.0.2.44"))
        .await
        .unwrap()
        .job;
    while let Some(job) = store.claim("w", Duration::from_secs(60)).await.unwrap() {
        order.push(job.job.id);
    }
    assert_eq!(
        order,
        [flood[0].clone(), guest.id, flood[1].clone(), late.id, flood[2].clone(), flood[3].clone()]
    );
}

async fn the_queue_refuses_past_its_bounds_and_keeps_nothing_of_what_it_refused(db: Db) {
    let store = &db.store;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(conversation(store).await.1);
    }
    for id in &ids[..2] {
        store.post_message(id, "mine", None, 0, &bounded("a", 3, 2)).await.unwrap();
    }
    let refused = store
        .post_message(&ids[2], "one too many", None, 0, &bounded("a", 3, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::QueueFull(QueueFull::Client { unfinished: 3, limit: 2 })),
        "{refused:?}"
    );
    assert_eq!(
        store.messages(&ids[2]).await.unwrap().len(),
        1,
        "the refused message is not stored"
    );
    assert!(store.open_job(&ids[2]).await.unwrap().is_none());
    store.post_message(&ids[2], "another client", None, 0, &bounded("b", 3, 2)).await.unwrap();
    let full = store
        .post_message(&ids[3], "a third client", None, 0, &bounded("c", 3, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(full, StoreError::QueueFull(QueueFull::Server { waiting: 4, limit: 3 })),
        "{full:?}"
    );
    assert!(
        matches!(
            store.regenerate(&ids[3], &bounded("c", 3, 2)).await,
            Err(StoreError::Conflict(_))
        ),
        "only a greeting to regenerate"
    );
    // A running job no longer waits, but still counts against its client.
    store.claim("w", Duration::from_secs(60)).await.unwrap().unwrap();
    store.post_message(&ids[3], "now there is room", None, 0, &bounded("c", 3, 2)).await.unwrap();
    assert_eq!(store.depth().await.unwrap(), (3, 1));

    // At once, from one client, on fresh conversations: exactly the bound gets in.
    let mut fresh = Vec::new();
    for _ in 0..10 {
        fresh.push(conversation(store).await.1);
    }
    let tries: Vec<_> = fresh
        .iter()
        .map(|id| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                store.post_message(&id, "burst", None, 0, &bounded("d", 100, 2)).await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(StoreError::QueueFull(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, 2, "concurrent posts cannot squeeze past the bound");
}

async fn shared_rate_limits_hold_across_connections_and_at_once(db: Db) {
    let other = Store::connect(&db.url).await.unwrap();
    let rate = Gcra::per_minute(6, 3);
    let tries: Vec<_> = (0..12)
        .map(|i| {
            let store = if i % 2 == 0 { db.store.clone() } else { other.clone() };
            tokio::spawn(async move {
                store.take_rate("client_messages:203.0.113.5", rate).await.unwrap()
            })
        })
        .collect();
    let mut passed = 0;
    let mut waits = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            Ok(()) => passed += 1,
            Err(ms) => waits.push(ms),
        }
    }
    assert_eq!(passed, 3, "the burst, and no more, across two pools");
    // At most one interval, plus the few milliseconds between the moments the concurrent
    // requests read the clock: a request that read it just before the one that moved the
    // limit waits that much longer, measured from its own clock (seen: 10,001).
    assert!(waits.iter().all(|ms| (1..=10_050).contains(ms)), "{waits:?}");
    assert_eq!(
        db.store.take_rate("client_messages:192.0.2.1", rate).await.unwrap(),
        Ok(()),
        "keys are limited apart"
    );
}

async fn a_minted_session_costs_no_row_until_it_writes(db: Db) {
    let store = &db.store;
    let before = store.row_counts().await.unwrap();
    let made = store.mint_session();
    let found =
        store.session_by_token(&made.token).await.unwrap().expect("a signed token is a session");
    assert_eq!(
        (found.id.clone(), found.csrf.clone(), found.seen_at),
        (made.session.id.clone(), made.session.csrf.clone(), None)
    );
    assert_eq!(store.row_counts().await.unwrap(), before, "minting and reading wrote nothing");
    // Another process on the same database knows the same key.
    let other = Store::connect(&db.url).await.unwrap();
    assert_eq!(
        other.session_by_token(&made.token).await.unwrap().map(|s| s.csrf),
        Some(made.session.csrf.clone())
    );
    // A token the server did not sign is nobody's session.
    let mut forged = made.token.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(63.., last);
    assert_eq!(store.session_by_token(&forged).await.unwrap(), None);
    assert_eq!(
        store.session_by_token(&"ab".repeat(16)).await.unwrap(),
        None,
        "an unknown unsigned token"
    );
    assert_eq!(store.session_by_token("not hex at all").await.unwrap(), None);

    let mut session = found;
    assert!(store.save_session(&mut session).await.unwrap(), "the first write stores it");
    assert!(session.is_stored());
    let mut again = store.session_by_token(&made.token).await.unwrap().unwrap();
    assert!(again.is_stored());
    assert_eq!(again.csrf, made.session.csrf);
    assert!(!store.save_session(&mut again).await.unwrap(), "once");
}

async fn idle_sessions_and_empty_conversations_expire_and_the_rest_stays(db: Db) {
    let store = &db.store;
    // An old session with a real conversation, an old empty one, a recent one with a real
    // conversation and an old greeting-only one.
    let (old_talker, old_talk) = conversation(store).await;
    store
        .post_message(&old_talk, "hello from last year", None, 0, &Admission::unbounded("t"))
        .await
        .unwrap();
    let (old_silent, _) = conversation(store).await;
    let (recent, recent_talk) = conversation(store).await;
    store
        .post_message(&recent_talk, "hello today", None, 0, &Admission::unbounded("t"))
        .await
        .unwrap();
    let abandoned =
        store.create_conversation(&recent, "wedding-host", "Hello!", "{}").await.unwrap().id;
    let day = 86_400_000i64;
    let now = rapport_store::now_ms();
    for (session, age) in [(&old_talker, 40 * day), (&old_silent, 2 * day)] {
        store
            .execute_admin(&format!(
                "UPDATE sessions SET seen_at = {} WHERE id = '{}'",
                now - age,
                session.as_str()
            ))
            .await
            .unwrap();
    }
    store
        .execute_admin(&format!(
            "UPDATE conversations SET updated_at = {} WHERE id = '{}'",
            now - 2 * day,
            abandoned.as_str()
        ))
        .await
        .unwrap();
    store.take_rate("spent", Gcra::per_minute(60_000, 1)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let gone = store
        .expire(&Expiry { session_idle_ms: Some(30 * day), empty_idle_ms: Some(day) })
        .await
        .unwrap();
    assert_eq!((gone.sessions, gone.conversations, gone.rate_limits), (2, 1, 1), "{gone:?}");
    assert!(
        matches!(store.conversation(&old_talker, &old_talk).await, Err(StoreError::NotFound(_))),
        "its conversation went with it"
    );
    assert_eq!(store.messages(&old_talk).await.unwrap().len(), 0, "and its messages");
    assert_eq!(
        store.list_conversations(&recent).await.unwrap().len(),
        1,
        "the recent session keeps its real conversation only"
    );
    assert_eq!(store.messages(&recent_talk).await.unwrap().len(), 2);
    let nothing =
        store.expire(&Expiry { session_idle_ms: None, empty_idle_ms: None }).await.unwrap();
    assert_eq!((nothing.sessions, nothing.conversations), (0, 0), "None keeps everything");
}

async fn a_session_exports_in_one_read_what_each_conversation_exports(db: Db) {
    let store = &db.store;
    let (session, first) = conversation(store).await;
    let second = store
        .create_conversation(&session, "creator", "Hi, I'm Jade.", r#"{"turns":0}"#)
        .await
        .unwrap()
        .id;
    for (id, text) in [(&first, "hello Margot"), (&second, "hi Jade")] {
        store.post_message(id, text, None, 0, &Admission::unbounded("test")).await.unwrap();
    }
    let (stranger, theirs) = conversation(store).await;
    store.post_message(&theirs, "not yours", None, 0, &Admission::unbounded("t")).await.unwrap();
    let all = store.export_session(&session).await.unwrap();
    let listed = store.list_conversations(&session).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.conversation.id.clone()).collect::<Vec<_>>(),
        listed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        "the listing's conversations, in its order"
    );
    for export in &all {
        let one = store.export(&session, &export.conversation.id).await.unwrap();
        assert_eq!(serde_json::to_value(export).unwrap(), serde_json::to_value(&one).unwrap());
    }
    assert_eq!(all.iter().map(|e| e.messages.len()).sum::<usize>(), 2 + 2, "greetings included");
    assert_eq!(store.export_session(&stranger).await.unwrap().len(), 1);
}

fn fact(kind: &str, subject: Option<&str>, content: &str) -> NewMemory {
    NewMemory { kind: kind.into(), subject: subject.map(str::to_string), content: content.into() }
}

/// Posts `message` to `id`, and answers it as a worker would, remembering `told`.
async fn answer(store: &Store, id: &ConversationId, message: &str, told: &[NewMemory]) {
    store.post_message(id, message, None, 0, &Admission::unbounded("test")).await.unwrap();
    let c = store.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    store.complete(&c, "Oh nice.", "{}", "{}", told).await.unwrap();
}

async fn what_a_person_told_is_recalled_elsewhere_and_goes_with_its_conversation(db: Db) {
    let store = &db.store;
    let (session, first) = conversation(store).await;
    answer(
        store,
        &first,
        "I teach in Leeds. My cat is called Biscuit.",
        &[
            fact("work", Some("work"), "I teach in Leeds."),
            fact("pet", Some("pet:cat"), "My cat is called Biscuit."),
        ],
    )
    .await;
    let second =
        store.create_conversation(&session, "wedding-host", "Hello!", "{}").await.unwrap().id;
    let contents = |rows: Vec<rapport_store::MemoryRow>| {
        rows.into_iter().map(|m| m.content).collect::<Vec<_>>()
    };
    assert_eq!(
        contents(store.recall(&second).await.unwrap()),
        ["I teach in Leeds.", "My cat is called Biscuit."]
    );
    assert!(
        store.recall(&first).await.unwrap().is_empty(),
        "a conversation's own facts are in its history"
    );
    // Another persona, and another session, recall nothing of it.
    let other_persona =
        store.create_conversation(&session, "creator", "Hi", "{}").await.unwrap().id;
    assert!(store.recall(&other_persona).await.unwrap().is_empty());
    let (stranger, theirs) = conversation(store).await;
    assert!(store.recall(&theirs).await.unwrap().is_empty());
    assert!(store.memories(&stranger, None).await.unwrap().is_empty());

    // A newer fact of the same subject replaces the older; a regenerated reply remembers
    // nothing again (the person may have deleted what the first one remembered).
    answer(
        store,
        &second,
        "Actually my cat is called Mochi now.",
        &[fact("pet", Some("pet:cat"), "Actually my cat is called Mochi now.")],
    )
    .await;
    assert_eq!(
        contents(store.memories(&session, Some("wedding-host")).await.unwrap()),
        ["I teach in Leeds.", "Actually my cat is called Mochi now."]
    );
    store.regenerate(&second, &Admission::unbounded("test")).await.unwrap();
    let again = store.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    store
        .complete(
            &again,
            "Mochi!",
            "{}",
            "{}",
            &[fact("likes", None, "Actually my cat is called Mochi now.")],
        )
        .await
        .unwrap();
    assert_eq!(store.memories(&session, None).await.unwrap().len(), 2);

    // Corrections and deletions: the session's own only, checked by id.
    let memories = store.memories(&session, None).await.unwrap();
    let teach = &memories[0];
    assert!(matches!(
        store.correct_memory(&stranger, &teach.id, "hacked").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.forget_memory(&stranger, &teach.id).await,
        Err(StoreError::NotFound(_))
    ));
    let corrected = store.correct_memory(&session, &teach.id, "I teach in York.").await.unwrap();
    assert!(corrected.edited && corrected.content == "I teach in York.");
    let export = store.export(&session, &first).await.unwrap();
    assert_eq!(
        contents(export.memories),
        ["I teach in York."],
        "the export carries what was told in it"
    );
    let all = store.export_session(&session).await.unwrap();
    assert_eq!(all.iter().map(|e| e.memories.len()).sum::<usize>(), 2);

    // Deleting the conversation a memory came from deletes it.
    store.delete_conversation(&session, &first).await.unwrap();
    assert_eq!(
        contents(store.memories(&session, None).await.unwrap()),
        ["Actually my cat is called Mochi now."]
    );
    let mochi = store.memories(&session, None).await.unwrap().remove(0);
    store.forget_memory(&session, &mochi.id).await.unwrap();
    assert!(matches!(store.forget_memory(&session, &mochi.id).await, Err(StoreError::NotFound(_))));

    // Bounded per person and persona, the newest kept.
    let many: Vec<NewMemory> = (0..MEMORIES_KEPT + 5)
        .map(|i| fact("likes", None, &format!("I like thing {i}.")))
        .collect();
    answer(store, &other_persona, "I like many things.", &many).await;
    let kept = store.memories(&session, Some("creator")).await.unwrap();
    assert_eq!(kept.len() as i64, MEMORIES_KEPT);
    assert!(kept.iter().any(|m| m.content == format!("I like thing {}.", MEMORIES_KEPT + 4)));
    assert_eq!(store.forget_persona(&session, "creator").await.unwrap() as i64, MEMORIES_KEPT);

    // Deleting the session deletes the rest.
    answer(store, &theirs, "My name is Ana.", &[fact("name", Some("name"), "My name is Ana.")])
        .await;
    assert_eq!(store.memories(&stranger, None).await.unwrap().len(), 1);
    // (Every session of this test's database, seen "a minute from now" at the latest, expires.)
    store.expire(&Expiry { session_idle_ms: Some(-60_000), empty_idle_ms: None }).await.unwrap();
    assert_eq!(
        store.row_counts().await.unwrap().into_iter().find(|(t, _)| *t == "memories").unwrap().1,
        0
    );
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[test] fn $name() { super::rt().block_on(async { super::$name(super::sqlite().await).await }) } )* }
        mod on_postgres { $( #[test] fn $name() { super::rt().block_on(async { let db = super::postgres().await; assert_eq!(db.store.backend(), rapport_store::Backend::Postgres); super::$name(db).await }) } )* }
    };
}

on_both!(
    a_message_and_its_reply_are_stored_once,
    a_claim_whose_lease_ran_out_is_taken_again_and_the_first_holder_commits_nothing,
    regenerating_keeps_alternatives_and_either_can_be_chosen,
    concurrent_workers_claim_every_job_exactly_once,
    a_burst_from_one_client_waits_behind_everyone_elses_next_job,
    the_queue_refuses_past_its_bounds_and_keeps_nothing_of_what_it_refused,
    shared_rate_limits_hold_across_connections_and_at_once,
    a_minted_session_costs_no_row_until_it_writes,
    idle_sessions_and_empty_conversations_expire_and_the_rest_stays,
    a_session_exports_in_one_read_what_each_conversation_exports,
    what_a_person_told_is_recalled_elsewhere_and_goes_with_its_conversation,
);

#[test]
fn a_database_url_of_another_kind_is_refused_with_the_forms_that_work() {
    let err = rt().block_on(Store::connect("mysql://x")).unwrap_err().to_string();
    assert!(err.contains("sqlite://") && err.contains("postgres://"), "{err}");
    let _ = Backend::Sqlite;
}

/// TLS to PostgreSQL against the test server's self-signed certificate (scripts/services.sh):
/// `verify-full` with the certificate as root connects encrypted; without it the connection is
/// refused with the reason; `disable` connects in the clear.
#[test]
fn postgres_over_tls_checks_the_certificate_and_honours_sslmode() {
    let url = std::env::var("RAPPORT_TEST_POSTGRES_URL")
        .expect("RAPPORT_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh");
    let ca = std::env::var("RAPPORT_TEST_POSTGRES_CA")
        .expect("RAPPORT_TEST_POSTGRES_CA is not set: run the tests through scripts/test.sh");
    rt().block_on(async {
        let verified =
            Store::connect(&format!("{url}?sslmode=verify-full&sslrootcert={ca}")).await.unwrap();
        assert_eq!(verified.encrypted().await.unwrap(), Some(true));
        let required = Store::connect(&format!("{url}?sslmode=require")).await.unwrap();
        assert_eq!(
            required.encrypted().await.unwrap(),
            Some(true),
            "require encrypts without checking the certificate"
        );
        let clear = Store::connect(&format!("{url}?sslmode=disable")).await.unwrap();
        assert_eq!(clear.encrypted().await.unwrap(), Some(false));
        let refused =
            Store::connect(&format!("{url}?sslmode=verify-full")).await.unwrap_err().to_string();
        assert!(
            refused.to_lowercase().contains("certificate")
                || refused.to_lowercase().contains("issuer"),
            "a self-signed certificate is not trusted by default: {refused}"
        );
        assert_eq!(sqlite().await.store.encrypted().await.unwrap(), None);
    });
}
