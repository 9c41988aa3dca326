//! The short versions of the load runs and chaos drills, against real `rapport serve` processes
//! with SmolLM2 and MiniLM (scripts/test.sh builds `rapport` and pulls both first). The long
//! versions are the same code with bigger numbers: see docs/dev/performance.md.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar};
use rapport_load::drills::{self, DrillConfig};
use rapport_load::faults::Fault;
use rapport_load::report::Summary;
use rapport_load::run::{run, Scenario};
use rapport_load::server::{rapport_bin, sqlite_url, RssTrace, ServeSpec, ServerProcess};
use rapport_load::sweep::{self, SweepConfig};

/// One experiment at a time: each starts servers that load the model, and two at once on two
/// cores would time each other out.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serialised() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// SmolLM2 with short replies and the short-prompt persona of `datasets/load/personas`: on two
/// cores the shipped personas' prompts cost ~20 s of prefill per new conversation, and these
/// tests are about the server, not about prefill.
fn serve_args(extra: &[&str]) -> Vec<String> {
    assert!(
        rapport_bin().is_file() || std::env::var_os("RAPPORT_BIN").is_some(),
        "build `rapport` first (scripts/test.sh does): {}",
        rapport_bin().display()
    );
    let personas =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/load/personas");
    let mut args: Vec<String> = [
        "--model",
        "smollm2-135m",
        "--max-tokens",
        "24",
        "--rate-per-minute",
        "100000",
        "--rate-burst",
        "100000",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    args.extend(["--personas".to_string(), personas.display().to_string()]);
    args
}

const PERSONA: &str = "brief";

fn config(people: usize, extra: &[&str]) -> DrillConfig {
    DrillConfig {
        serve_args: serve_args(extra),
        people,
        persona: PERSONA.into(),
        messages: Arc::new(rapport_load::default_messages()),
        seed: 3,
    }
}

#[test]
fn short_chats_all_get_replies_with_latency_tokens_and_memory_measured() {
    let _one = serialised();
    let dir = tempfile::tempdir().unwrap();
    let spec = ServeSpec::serve(&sqlite_url(dir.path()), &serve_args(&["--workers", "2"]));
    let mut server = ServerProcess::start(&spec).unwrap();
    let rt = rt();
    let summary = rt.block_on(async {
        let (rss, sampler) = RssTrace::sample(server.pid(), Duration::from_millis(200));
        let mut plan = Scenario::Short.plan(Some(4), Some(2));
        plan.persona = PERSONA.into();
        plan.think_ms = (0, 300);
        plan.ramp_ms = 500;
        let outcome = run(&server.base, &plan, &rapport_load::default_messages(), None).await;
        sampler.abort();
        Summary::of(&outcome, &rss.samples())
    });
    server.stop(Duration::from_secs(20));
    assert_eq!(summary.errors, 0, "{}", summary.markdown());
    assert_eq!(summary.sent, 8);
    assert_eq!(summary.reply_ms.count, 8);
    assert_eq!(summary.ttft_ms.count, 8, "every reply streamed some text before done");
    assert!(summary.ttft_ms.p50 <= summary.reply_ms.p50);
    assert_eq!(summary.queue_wait_ms.count, 8, "the server's queue wait of every reply");
    assert!(summary.tokens > 8, "tokens counted from the traces: {}", summary.tokens);
    assert!(summary.fairness > 0.5 && summary.fairness <= 1.0);
    assert!(
        summary.memory.peak_mib > 50.0,
        "the server's RSS was sampled: {:?}",
        summary.memory.peak_mib
    );
}

#[test]
fn a_long_conversation_folds_old_turns_into_memory() {
    let _one = serialised();
    let dir = tempfile::tempdir().unwrap();
    // A small context window, so a dozen turns overflow it.
    let spec = ServeSpec::serve(&sqlite_url(dir.path()), &serve_args(&["--context-tokens", "600"]));
    let mut server = ServerProcess::start(&spec).unwrap();
    let summary = rt().block_on(async {
        let mut plan = Scenario::Long.plan(Some(1), Some(14));
        plan.persona = PERSONA.into();
        Summary::of(&run(&server.base, &plan, &rapport_load::default_messages(), None).await, &[])
    });
    server.stop(Duration::from_secs(20));
    assert_eq!(summary.errors, 0, "{}", summary.markdown());
    assert!(
        summary.memory_turns > 0 && summary.folded > 0,
        "the memory was used: {}",
        summary.markdown()
    );
}

#[test]
fn the_sweep_measures_each_level_on_a_fresh_server_and_draws_the_charts() {
    let _one = serialised();
    let out = tempfile::tempdir().unwrap();
    let steps = out.path().join("engine-steps.log");
    let config = SweepConfig {
        levels: vec![1, 4],
        turns: 1,
        min_conversations: 4,
        workers: None,
        serve_args: serve_args(&[]),
        persona: PERSONA.into(),
        engine_steps: Some(steps.clone()),
    };
    let points = rt()
        .block_on(sweep::sweep(
            &config,
            &rapport_load::default_messages(),
            &MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
        ))
        .unwrap();
    assert_eq!(
        points.iter().map(|p| (p.concurrency, p.workers)).collect::<Vec<_>>(),
        [(1, 1), (4, 4)]
    );
    for p in &points {
        assert_eq!(p.summary.errors, 0, "{}", p.summary.markdown());
        assert_eq!(p.summary.reply_ms.count, 4);
    }
    sweep::write(&points, out.path(), &serde_json::json!({})).unwrap();
    for file in ["sweep.json", "sweep.md", "latency.svg", "throughput.svg"] {
        assert!(out.path().join(file).metadata().unwrap().len() > 100, "{file}");
    }
    let table = std::fs::read_to_string(out.path().join("sweep.md")).unwrap();
    assert!(table.contains("1.00×"));
    // A saved sweep can be drawn again from its JSON alone, to the same table.
    assert_eq!(sweep::markdown(&sweep::redraw(out.path()).unwrap()), table);

    // Both servers logged their engine steps, and the summary finds each level's replies in
    // them: a prompt read per attempt (at least one per reply; a draft the clean-up rejects is
    // written again), a batch of more than one at four.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/engine_steps.py");
    let summary = std::process::Command::new("python3").arg(&script).arg(&steps).output().unwrap();
    let summary = String::from_utf8_lossy(&summary.stdout);
    let rows: Vec<Vec<&str>> = summary
        .lines()
        .skip(2)
        .map(|line| line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        ["1 worker(s)", "4 worker(s)"],
        "{summary}"
    );
    assert!(rows.iter().all(|r| r[1].parse::<usize>().unwrap() >= 4), "{summary}");
    let mean_batch = |row: &[&str]| row[9].parse::<f64>().unwrap();
    assert_eq!(mean_batch(&rows[0]), 1.0, "{summary}");
    assert!(mean_batch(&rows[1]) > 1.0, "four people shared decoding steps: {summary}");
}

#[test]
fn a_step_log_that_cannot_be_written_or_read_gets_a_clear_error() {
    // A log path whose folder does not exist: refused before any server starts.
    let missing = std::path::Path::new("/nonexistent-rapport-dir/steps.log");
    let spec = ServeSpec {
        engine_steps: Some(missing.into()),
        ..ServeSpec::serve("sqlite::memory:", &[])
    };
    let error = ServerProcess::start(&spec).err().expect("no server without its log").to_string();
    assert!(error.contains("opening /nonexistent-rapport-dir/steps.log"), "{error}");

    // The summary refuses a missing log, a log without engine steps and a garbled step line by
    // name and reason, with a failing status and no traceback.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/engine_steps.py");
    let dir = tempfile::tempdir().unwrap();
    let quiet = dir.path().join("quiet.log");
    std::fs::write(&quiet, "model smollm2-135m · 1 worker(s)\n").unwrap();
    let garbled = dir.path().join("garbled.log");
    std::fs::write(
        &garbled,
        "Beginning dummy run\nDummy run completed\nPrompt[five] Completion[] - 3.0ms\n",
    )
    .unwrap();
    for (log, reason) in [
        (missing, "No such file"),
        (quiet.as_path(), "no engine steps"),
        (garbled.as_path(), "line 3: unreadable prompt length 'five'"),
    ] {
        let out = std::process::Command::new("python3").arg(&script).arg(log).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{log:?}");
        assert!(stderr.contains(reason) && !stderr.contains("Traceback"), "{log:?}: {stderr}");
    }
}

#[test]
fn servers_killed_at_random_moments_lose_no_acknowledged_message() {
    let _one = serialised();
    let dir = tempfile::tempdir().unwrap();
    let report = rt()
        .block_on(drills::kill(
            &config(2, &["--lease-secs", "3"]),
            &sqlite_url(dir.path()),
            3,
            (1000, 4000),
            &ProgressBar::hidden(),
        ))
        .unwrap();
    let i = &report.integrity;
    assert!(i.holds(), "{i:?}");
    assert!(i.acknowledged >= 2, "people kept chatting through the kills: {i:?}");
    assert_eq!(
        i.unacknowledged, 0,
        "every post was acknowledged in the end (retried under its key): {i:?}"
    );
}

#[test]
fn a_model_server_that_hangs_resets_and_babbles_costs_replies_not_messages() {
    let _one = serialised();
    let dir = tempfile::tempdir().unwrap();
    let schedule = vec![
        Fault::Hang,
        Fault::Pass,
        Fault::Reset,
        Fault::Pass,
        Fault::Garbage,
        Fault::Unavailable,
        Fault::Pass,
    ];
    let report = rt()
        .block_on(drills::backend(
            &config(2, &["--lease-secs", "3"]),
            &sqlite_url(dir.path()),
            "smollm2-135m",
            schedule,
            3,
            15,
            &ProgressBar::hidden(),
        ))
        .unwrap();
    let i = &report.integrity;
    assert!(i.holds(), "{i:?}");
    assert_eq!(i.failed_jobs, 0, "a failing model gives a fallback line, not a failed job: {i:?}");
    for fault in ["hang", "reset", "garbage"] {
        assert!(
            report.injected.get(fault).copied().unwrap_or(0) >= 1,
            "{fault} was injected: {:?}",
            report.injected
        );
    }
    assert!(
        report.injected.get("pass").copied().unwrap_or(0) >= 1,
        "some requests reached the real model"
    );
    // The timeout (15 s) leaves room for a CPU prefill: what passed became real replies.
    assert!(
        i.fallbacks < i.acknowledged,
        "some replies came from the model, not the fallback: {i:?}"
    );
}

#[test]
fn two_processes_writing_one_sqlite_file_lose_nothing() {
    let _one = serialised();
    let dir = tempfile::tempdir().unwrap();
    let report = rt()
        .block_on(drills::sqlite_writers(
            &config(4, &["--lease-secs", "3", "--workers", "2"]),
            &sqlite_url(dir.path()),
            2,
            &ProgressBar::hidden(),
        ))
        .unwrap();
    let i = &report.integrity;
    assert!(i.holds(), "{i:?}");
    assert_eq!(i.unacknowledged, 0, "{i:?}");
    assert!(i.acknowledged >= 8, "{i:?}");
}

/// A fresh database on the test cluster (scripts/test.sh starts it), with the admin
/// connection that made it and its name.
fn fresh_postgres_database(
    rt: &tokio::runtime::Runtime,
    prefix: &str,
) -> (rapport_store::Store, String, String) {
    let Ok(url) = std::env::var("RAPPORT_TEST_POSTGRES_URL") else {
        panic!("RAPPORT_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh, which starts PostgreSQL");
    };
    rt.block_on(async {
        let admin = rapport_store::Store::connect(&url).await.unwrap();
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        );
        admin.execute_admin(&format!("CREATE DATABASE {name}")).await.unwrap();
        let database = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
        (admin, database, name)
    })
}

#[test]
fn postgres_restarted_under_load_loses_nothing() {
    let _one = serialised();
    let Ok(restart) = std::env::var("RAPPORT_TEST_POSTGRES_RESTART") else {
        panic!("RAPPORT_TEST_POSTGRES_RESTART is not set: run the tests through scripts/test.sh, which starts PostgreSQL");
    };
    let rt = rt();
    let (_admin, database, _) = fresh_postgres_database(&rt, "rapport_load");
    // Three restarts 1.5-3.5 s apart: with one, a stream read rarely met the outage, and a
    // stream that said `failed` for a reply still being written slipped through most runs.
    let report = rt
        .block_on(drills::postgres_restart(
            &config(2, &["--lease-secs", "3"]),
            &database,
            &restart,
            3,
            (1500, 3500),
            &ProgressBar::hidden(),
        ))
        .unwrap();
    let i = &report.integrity;
    assert!(i.holds(), "{i:?}");
    assert_eq!(
        i.false_failures, 0,
        "no stream said failed for a reply that was still coming: {i:?}"
    );
    assert_eq!(
        i.unacknowledged, 0,
        "posts during the restart were retried until acknowledged: {i:?}"
    );
}

/// The database goes away on purpose while one reply is being written and another waits in the
/// queue: PostgreSQL refuses the server's connections (`CONNECTION LIMIT 0`, open ones
/// terminated) for longer than the pool waits for a connection (10 s), so the server's reads and
/// writes fail rather than wait. Neither stream may tell its person `failed` (before the fix,
/// the queued reply's stream did, at its first failed read), and both replies end stored once.
#[test]
fn replies_ride_out_a_database_that_refuses_connections() {
    use rapport_load::chaos::follow_to_the_end;
    use rapport_load::client::{Ending, Session};

    let _one = serialised();
    let rt = rt();
    let (admin, database, name) = fresh_postgres_database(&rt, "rapport_outage");
    let mut server =
        ServerProcess::start(&ServeSpec::serve(&database, &serve_args(&["--workers", "1"])))
            .unwrap();
    let base = server.base.clone();
    rt.block_on(async {
        let session =
            Session::open(&reqwest::Client::new(), &base, rapport_load::chaos::chaos_patience())
                .await
                .unwrap();
        let (a, b) =
            (session.create(PERSONA).await.unwrap(), session.create(PERSONA).await.unwrap());
        // One reply first, so the persona and the model are warm when the outage comes.
        let warm = session.post(&a, "hi there", "warm").await.unwrap();
        assert!(matches!(
            follow_to_the_end(&session, &a, &warm.job_id, Duration::from_secs(120)).await,
            Ending::Done { .. }
        ));

        let running = session.post(&a, "tell me about your day", "a-1").await.unwrap();
        let waiting = session.post(&b, "what do you like to do?", "b-1").await.unwrap();
        // Each stream signals once it shows the state the outage must catch it in: the first
        // reply being written, the second queued behind it for the one worker.
        let follow = |conversation: String, job: String, signal_on: &'static str| {
            let session = session.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let mut tx = Some(tx);
            let task = tokio::spawn(async move {
                session
                    .follow_observed(&conversation, &job, |event| {
                        if event == signal_on {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    })
                    .await
            });
            (task, rx)
        };
        let (first, first_started) = follow(a.clone(), running.job_id.clone(), "started");
        let (queued, second_queued) = follow(b.clone(), waiting.job_id.clone(), "queued");
        first_started.await.expect("the first reply started");
        second_queued.await.expect("the second reply queued");
        admin.execute_admin(&format!("ALTER DATABASE {name} CONNECTION LIMIT 0")).await.unwrap();
        admin
            .execute_admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .await
            .unwrap();
        let outage_began = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(13)).await;
        admin.execute_admin(&format!("ALTER DATABASE {name} CONNECTION LIMIT -1")).await.unwrap();
        let (first, queued) = (first.await.unwrap(), queued.await.unwrap());
        assert!(
            matches!(first.ending, Ending::Done { .. }),
            "the reply being written when the database left: {:?}",
            first.ending
        );
        assert!(first.ended > outage_began, "the outage began before that reply was done");
        assert!(
            matches!(queued.ending, Ending::Done { .. }),
            "the reply queued behind it: {:?}",
            queued.ending
        );
        // Both replies stored once, and nothing else.
        for (conversation, replies) in [(&a, 2), (&b, 1)] {
            let convo = session.get(&format!("/api/conversations/{conversation}")).await.unwrap();
            let assistant = convo["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "assistant")
                .count();
            assert_eq!(assistant, replies + 1, "the greeting and one reply per message: {convo}");
        }
    });
    server.stop(Duration::from_secs(20));
}

/// The abuse drill, short, on two server processes sharing one PostgreSQL database: reads
/// without cookies write nothing, the cookie-dropping flood is refused with clear reasons
/// (the session limit held across both processes: the flood made at most the burst plus the
/// rate's worth of sessions), and the guest's replies all arrive meanwhile.
#[test]
fn the_abuse_drill_refuses_the_flood_and_the_guest_is_still_answered() {
    let _one = serialised();
    let rt = rt();
    let (_admin, database, _) = fresh_postgres_database(&rt, "rapport_abuse");
    // The server's own limits (not the raised ones of the load runs), short replies.
    let personas =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/load/personas");
    let serve_args = [
        "--model",
        "smollm2-135m",
        "--max-tokens",
        "24",
        "--personas",
        &personas.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let config = rapport_load::abuse::AbuseConfig {
        serve_args,
        database_url: database,
        processes: 2,
        persona: PERSONA.into(),
        messages: Arc::new(rapport_load::default_messages()),
        turns: 2,
        readers: 2,
        reads_per_second: 60.0,
        reads_secs: 3,
        flooders: 4,
        flood_addresses: 1,
        flood_pause: Duration::from_millis(20),
        guest_pause: Duration::from_secs(1),
    };
    let report = rt.block_on(rapport_load::abuse::abuse(&config, &ProgressBar::hidden())).unwrap();
    eprintln!("{}", report.markdown());
    assert!(report.reads.reads >= 100, "{:?}", report.reads);
    assert!(
        report.reads.wrote_nothing(),
        "reads without a cookie changed the database: {:?}",
        report.reads
    );
    assert_eq!(
        (report.quiet.answered, report.flood.answered),
        (2, 2),
        "{:?} {:?}",
        report.quiet.problems,
        report.flood.problems
    );
    assert!(
        report.flood_refused() > 0 && report.flood_accepted() >= 1,
        "{:?}",
        report.flood_answers
    );
    for answer in report.flood_answers.keys() {
        assert!(
            answer.ends_with(" 201")
                || answer.ends_with(" 202")
                || answer.contains(" 429 rate_limited")
                || answer.contains(" 429 client_queue_full"),
            "an answer the drill did not expect: {answer}"
        );
    }
    let sessions = |rows: &[(String, i64)]| rows.iter().find(|(t, _)| t == "sessions").unwrap().1;
    let made = sessions(&report.rows_after_flood) - sessions(&report.rows_before_flood);
    // Default: 20 at once, then 20 a minute, for one address, over both processes.
    let allowed = 20 + (report.flood_seconds / 3.0).ceil() as i64 + 1;
    assert!(
        made <= allowed,
        "the flood made {made} sessions over two processes; the shared limit allows {allowed}"
    );
    let refused_sessions =
        report.flood_answers.get("POST /conversations 429 rate_limited").copied().unwrap_or(0)
            as f64;
    assert_eq!(
        report.rejections.get("client_sessions").copied().unwrap_or(0.0),
        refused_sessions,
        "the servers counted what the clients were told"
    );
    assert!(report.flood.first_words_ms.max < 30_000.0, "{:?}", report.flood.first_words_ms);
}
