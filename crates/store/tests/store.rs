//! The store against real databases: a SQLite file and, through RAPPORT_TEST_POSTGRES_URL
//! (scripts/test.sh starts one), a throw-away PostgreSQL database per test.

use std::collections::HashSet;
use std::time::Duration;

use rapport_store::{Backend, ConversationId, JobKind, JobStatus, SessionId, Store, StoreError};

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rapport.db").display());
    Db { store: Store::connect(&url).await.unwrap(), _dir: Some(dir) }
}

/// A fresh database on the test server, so counts are this test's own.
async fn postgres() -> Db {
    let url = std::env::var("RAPPORT_TEST_POSTGRES_URL").expect("RAPPORT_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh, which starts PostgreSQL");
    let admin = Store::connect(&url).await.unwrap();
    let name = format!("rapport_test_{}", rand_suffix());
    admin.execute_admin(&format!("CREATE DATABASE {name}")).await.unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    Db { store: Store::connect(&format!("{base}/{name}")).await.unwrap(), _dir: None }
}

fn rand_suffix() -> String {
    format!("{:x}{:x}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

async fn conversation(store: &Store) -> (SessionId, ConversationId) {
    let session = store.create_session().await.unwrap().session.id;
    let c = store.create_conversation(&session, "wedding-host", "Hello!", r#"{"turns":0}"#).await.unwrap();
    (session, c.id)
}

async fn a_message_and_its_reply_are_stored_once(db: Db) {
    let store = &db.store;
    let (session, id) = conversation(store).await;
    let posted = store.post_message(&id, "hi there", Some("key-1"), 60).await.unwrap();
    assert!(!posted.duplicate);
    assert_eq!(posted.message.seq, 1);
    // The client retried: same key, nothing new.
    let again = store.post_message(&id, "hi there", Some("key-1"), 60).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.id, posted.message.id);
    assert_eq!(again.job.id, posted.job.id);
    // A different message while the reply is open is refused.
    assert!(matches!(store.post_message(&id, "hello?", Some("key-2"), 60).await, Err(StoreError::Conflict(_))));

    let claimed = store.claim("w1", Duration::from_secs(30)).await.unwrap().expect("a queued job");
    assert_eq!(claimed.message, "hi there");
    assert_eq!(claimed.state, r#"{"turns":0}"#);
    assert_eq!(claimed.utc_offset_min, 60);
    assert!(store.claim("w2", Duration::from_secs(30)).await.unwrap().is_none(), "a held job is not claimed twice");
    assert!(store.heartbeat(&claimed.job.id, &claimed.claim, Duration::from_secs(30), Some("Hel")).await.unwrap());
    assert_eq!(store.job(&id, &claimed.job.id).await.unwrap().partial, "Hel");
    let reply = store.complete(&claimed, "Hello you.", r#"{"turns":1}"#, r#"{"turn":1}"#).await.unwrap();
    assert_eq!((reply.seq, reply.alternative), (2, 0));

    let messages = store.messages(&id).await.unwrap();
    assert_eq!(messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect::<Vec<_>>(), [("assistant", "Hello!"), ("user", "hi there"), ("assistant", "Hello you.")]);
    assert_eq!(store.trace(&id, &reply.id).await.unwrap(), r#"{"turn":1}"#);
    assert_eq!(store.job(&id, &claimed.job.id).await.unwrap().status, JobStatus::Done);
    assert_eq!(store.list_conversations(&session).await.unwrap()[0].title, "hi there");

    // Another session sees nothing of it.
    let stranger = store.create_session().await.unwrap().session.id;
    assert!(matches!(store.conversation(&stranger, &id).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete_conversation(&stranger, &id).await, Err(StoreError::NotFound(_))));
    assert!(store.list_conversations(&stranger).await.unwrap().is_empty());
}

async fn a_claim_whose_lease_ran_out_is_taken_again_and_the_first_holder_commits_nothing(db: Db) {
    let store = &db.store;
    let (_, id) = conversation(store).await;
    store.post_message(&id, "are you there?", None, 0).await.unwrap();
    let first = store.claim("dead", Duration::from_millis(200)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = store.claim("alive", Duration::from_secs(30)).await.unwrap().expect("the expired job is claimed again");
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.job.attempts, 2);
    assert!(!store.heartbeat(&first.job.id, &first.claim, Duration::from_secs(30), None).await.unwrap());
    assert!(matches!(store.complete(&first, "stale", "{}", "{}").await, Err(StoreError::Conflict(_))));
    store.complete(&second, "fresh", "{}", "{}").await.unwrap();
    let replies: Vec<_> = store.messages(&id).await.unwrap().into_iter().filter(|m| m.seq == 2).collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].content, "fresh");
    assert_eq!(replies[0].alternatives, 1);
}

async fn regenerating_keeps_alternatives_and_either_can_be_chosen(db: Db) {
    let store = &db.store;
    let (_, id) = conversation(store).await;
    assert!(matches!(store.regenerate(&id).await, Err(StoreError::Conflict(_))), "only a greeting");
    store.post_message(&id, "tell me a joke", None, 0).await.unwrap();
    let c = store.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    store.complete(&c, "first", r#"{"v":1}"#, "{}").await.unwrap();
    let job = store.regenerate(&id).await.unwrap();
    assert_eq!(job.kind, JobKind::Regenerate);
    let c = store.claim("w", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(c.message, "tell me a joke");
    assert_eq!(c.state, r#"{"turns":0}"#, "a regeneration starts from the state before the turn");
    store.complete(&c, "second", r#"{"v":2}"#, "{}").await.unwrap();
    let last = store.messages(&id).await.unwrap().pop().unwrap();
    assert_eq!((last.content.as_str(), last.alternative, last.alternatives), ("second", 1, 2));
    let chosen = store.choose_alternative(&id, 2, 0).await.unwrap();
    assert_eq!(chosen.content, "first");
    assert_eq!(store.state_after(&id, 2).await.unwrap(), r#"{"v":1}"#, "the next turn continues from the chosen reply");
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
        expected.insert(store.post_message(&id, &format!("message {i}"), None, 0).await.unwrap().job.id);
    }
    let mut workers = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = store.claim(&format!("w{w}"), Duration::from_secs(60)).await.unwrap() {
                store.complete(&job, "ok", "{}", "{}").await.unwrap();
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
);

#[test]
fn a_database_url_of_another_kind_is_refused_with_the_forms_that_work() {
    let err = rt().block_on(Store::connect("mysql://x")).unwrap_err().to_string();
    assert!(err.contains("sqlite://") && err.contains("postgres://"), "{err}");
    let _ = Backend::Sqlite;
}
