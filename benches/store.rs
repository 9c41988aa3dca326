//! The store's cost per message, on SQLite (a file on this disk) beside PostgreSQL (Debian's
//! server on loopback; `RAPPORT_TEST_POSTGRES_URL`, which scripts/services.sh sets):
//! - `acknowledge`: what stands between a user pressing Send and the 202 — the message and
//!   its job committed in one transaction (the session check included);
//! - `claim_complete`: a worker's database work per reply — claim the job, store the reply,
//!   its trace and state, close the job.
//!
//! source scripts/services.sh; cargo bench --workspace --bench store

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rapport_store::{Admission, ConversationId, SessionId, Store};
use std::time::Duration;

/// A trace of the size the pipeline writes (a few KB of JSON).
fn trace() -> String {
    format!("{{\"turn\":3,\"notes\":\"{}\"}}", "x".repeat(3000))
}

fn stores(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = rt
        .block_on(Store::connect(&format!("sqlite://{}", dir.path().join("bench.db").display())))
        .expect("sqlite");
    let mut out = vec![("sqlite", sqlite, Some(dir))];
    match std::env::var("RAPPORT_TEST_POSTGRES_URL") {
        Ok(url) => {
            let admin = rt.block_on(Store::connect(&url)).expect("postgres");
            let name = format!("rapport_bench_{}", std::process::id());
            rt.block_on(admin.execute_admin(&format!("DROP DATABASE IF EXISTS {name}")))
                .expect("drop");
            rt.block_on(admin.execute_admin(&format!("CREATE DATABASE {name}"))).expect("create");
            let store = rt
                .block_on(Store::connect(&format!(
                    "{}/{name}",
                    url.rsplit_once('/').expect("a database in the URL").0
                )))
                .expect("postgres");
            out.push(("postgres", store, None));
        }
        Err(_) => eprintln!(
            "RAPPORT_TEST_POSTGRES_URL is not set: PostgreSQL skipped (source scripts/services.sh)"
        ),
    }
    out
}

async fn fresh_conversation(store: &Store, session: &SessionId) -> ConversationId {
    store
        .create_conversation(session, "wedding-host", "Welcome!", "{\"turns\":0}")
        .await
        .expect("conversation")
        .id
}

fn queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let trace = trace();
    let mut group = c.benchmark_group("store");
    group.sample_size(200).measurement_time(Duration::from_secs(8));
    for (name, store, _dir) in stores(&rt) {
        let session = rt.block_on(store.create_session()).expect("session").session.id;
        group.bench_function(format!("{name}/acknowledge"), |b| {
            b.iter_batched(
                || rt.block_on(fresh_conversation(&store, &session)),
                |id| {
                    rt.block_on(async {
                        store.conversation(&session, &id).await.expect("owned");
                        store
                            .post_message(
                                &id,
                                "Hi Margot! How do you know the couple?",
                                Some("k"),
                                60,
                                &Admission::unbounded("bench"),
                            )
                            .await
                            .expect("posted")
                    })
                },
                BatchSize::SmallInput,
            )
        });
        // Drain what the acknowledge runs queued, so claims below find their own jobs.
        rt.block_on(async {
            while let Some(j) = store.claim("drain", Duration::from_secs(60)).await.expect("claim")
            {
                store.complete(&j, "-", "{}", "{}", &[]).await.expect("complete");
            }
        });
        group.bench_function(format!("{name}/claim_complete"), |b| {
            b.iter_batched(
                || {
                    rt.block_on(async {
                        let id = fresh_conversation(&store, &session).await;
                        store
                            .post_message(
                                &id,
                                "Hi Margot!",
                                None,
                                60,
                                &Admission::unbounded("bench"),
                            )
                            .await
                            .expect("posted");
                    })
                },
                |()| {
                    rt.block_on(async {
                        let job = store
                            .claim("bench", Duration::from_secs(60))
                            .await
                            .expect("claim")
                            .expect("a job");
                        store
                            .complete(
                                &job,
                                "Lovely to meet you! I'm the bride's sister.",
                                "{\"turns\":1}",
                                &trace,
                                &[],
                            )
                            .await
                            .expect("complete")
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
