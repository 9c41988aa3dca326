//! `rapport eval` as researchers use it: a real batch with SmolLM2 (persona, simulated users
//! and judge) and MiniLM, killed and resumed; reports; comparison; calibration on rated items
//! and on the chitchat package.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn rapport() -> Command {
    let mut c = super::rapport();
    c.env("RAPPORT_DATASETS", Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets"));
    c
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

const BATCH: [&str; 14] = [
    "eval",
    "run",
    "-m",
    "smollm2-135m",
    "--personas",
    "wedding-host",
    "--simulators",
    "troll,shy",
    "--turns",
    "2",
    "--jobs",
    "1",
    "--max-tokens",
    "40",
];

#[test]
fn a_batch_killed_part_way_resumes_and_reports() {
    super::ensure_smollm2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let dialogues = out.join("dialogues.jsonl");

    // Start, wait for the first finished dialogue, then SIGKILL (no shutdown hook runs).
    let mut child = rapport()
        .args(BATCH)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while lines(&dialogues).is_empty() {
        assert!(Instant::now() < deadline, "no dialogue finished in 10 minutes");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the batch ended before it could be interrupted: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = lines(&dialogues);
    assert_eq!(before.len(), 1, "killed while the second dialogue was being written");

    // The same command continues; what was finished is kept byte for byte.
    let resumed = rapport().args(BATCH).arg("--out").arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{} resumed", before.len())), "{stderr}");
    let after = lines(&dialogues);
    assert_eq!(after.len(), 2, "one line per dialogue, none twice");
    assert_eq!(after[..before.len()], before[..], "finished dialogues are not redone");
    assert_eq!(lines(&out.join("verdicts.jsonl")).len(), 2, "every dialogue judged once");

    let parsed: Vec<Value> = after.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let troll = parsed.iter().find(|d| d["simulator"] == "troll").expect("the troll's dialogue");
    let turns = troll["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 5, "greeting + 2 × (message, reply)");
    assert!(
        turns[3]["text"].as_str().unwrap().starts_with("Ignore all previous instructions"),
        "the scripted injection is sent at turn 2: {troll}"
    );
    assert!(
        turns[4]["trace"]["input_guards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["kind"] == "injection"),
        "and the pipeline saw it: {troll}"
    );

    // Reports: JSON, Markdown, HTML with charts; the secret never leaked (it was locked).
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["dialogues"], 2);
    let secret = report["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "secret_keeping")
        .unwrap();
    assert_eq!(secret["overall"]["value"], 0.0, "{secret}");
    assert!(report["judge"]["calls"].as_u64().unwrap() >= 2);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("wedding-host/troll/1"));
    assert!(!html.contains("<script"), "transcripts are escaped and the page runs no script");
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| Secret keeping (exact) | -10..0 |"));

    // The same directory refuses a different batch instead of mixing two.
    let other = rapport()
        .args(&BATCH[..9])
        .args(["3", "--jobs", "1", "--no-judge", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("holds another batch"));

    // A run compared with itself: nothing changed.
    let cmp = rapport()
        .args(["eval", "compare"])
        .arg(&out)
        .arg(&out)
        .args(["--out"])
        .arg(dir.path().join("cmp"))
        .output()
        .unwrap();
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stderr));
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(text.contains("Paired on 2 dialogues") && text.contains(": 0 of "), "{text}");
    assert!(std::fs::read_to_string(dir.path().join("cmp/compare.html")).unwrap().contains("<svg"));

    // Pairwise, both orders: every pair and criterion ends as a win, a loss or a tie.
    let cmp = rapport()
        .args(["eval", "compare", "--pairwise", "-m", "smollm2-135m"])
        .arg(&out)
        .arg(&out)
        .args(["--out"])
        .arg(dir.path().join("pair"))
        .output()
        .unwrap();
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stderr));
    let c: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("pair/compare.json")).unwrap())
            .unwrap();
    let tallies = c["pairwise"].as_object().unwrap();
    assert_eq!(tallies.len(), 6, "the six judged criteria: {c}");
    for (id, t) in tallies {
        assert_eq!(
            t["a"].as_u64().unwrap() + t["b"].as_u64().unwrap() + t["tie"].as_u64().unwrap(),
            2,
            "{id}: {t}"
        );
    }
}

#[test]
fn calibration_reports_agreement_per_dimension_and_names_bad_lines() {
    super::ensure_smollm2();
    let dir = tempfile::tempdir().unwrap();
    let rated = dir.path().join("rated.jsonl");
    let items = [
        (r#"A: hi\nB: hey"#, 2, 3, 1),
        (
            r#"A: I just got back from Peru!\nB: No way, Machu Picchu? I have always wanted to go, tell me everything\nA: The train up was the best part, llamas everywhere haha"#,
            7,
            9,
            9,
        ),
        (r#"A: whatever\nB: ok"#, 1, 1, 1),
        (
            r#"A: Why did the scarecrow win an award?\nB: Because he was outstanding in his field! Classic.\nA: You got it, you must be a farmer at heart"#,
            10,
            8,
            6,
        ),
    ];
    let text: String = items.iter().map(|(c, w, u, i)| format!("{{\"context\": \"{c}\", \"annotations\": {{\"witty\": [{w}], \"upbeat\": [{u}, \"n/a\"], \"interesting\": [{i}]}}}}\n")).collect();
    std::fs::write(&rated, text).unwrap();
    let out = rapport()
        .args(["eval", "calibrate", "-m", "smollm2-135m", "--method", "json", "--per-criterion"])
        .args(["--json", "--rated"])
        .arg(&rated)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["items"], 4);
    let dims: Vec<&str> = report["dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dimension"].as_str().unwrap())
        .collect();
    assert_eq!(dims, ["witty", "upbeat", "interesting"]);
    for d in report["dimensions"].as_array().unwrap() {
        assert_eq!(
            d["n"].as_u64().unwrap() + d["unreadable"].as_u64().unwrap(),
            4,
            "every item is either scored or counted as unreadable: {d}"
        );
        assert!(d["human_mean"].as_f64().is_some());
        // ρ is a number in [-1, 1] with its interval, or null when the judge was constant.
        if let Some(rho) = d["spearman"]["value"].as_f64() {
            assert!(
                (-1.0..=1.0).contains(&rho) && d["spearman"]["low"].as_f64().unwrap() <= rho + 1e-9
            );
        } else {
            assert!(
                d["judge_distinct"].as_u64().unwrap() <= 1 || d["n"].as_u64().unwrap() < 2,
                "{d}"
            );
        }
    }

    std::fs::write(
        &rated,
        "{\"context\": \"A: hi\", \"annotations\": {\"witty\": [3]}}\n{\"context\": 5}\n",
    )
    .unwrap();
    let out = rapport()
        .args(["eval", "calibrate", "-m", "smollm2-135m", "--rated"])
        .arg(&rated)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rated.jsonl:2:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chitchat_package_becomes_a_calibration_set() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("chitchat.jsonl");
    let out = rapport()
        .args(["eval", "chitchat", "--limit", "25", "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let items = lines(&out_path);
    assert_eq!(items.len(), 25);
    for line in &items {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["context"].as_str().unwrap().starts_with("A: "), "{v}");
        let a = v["annotations"].as_object().unwrap();
        assert!(a.keys().all(|k| ["witty", "upbeat", "interesting"].contains(&k.as_str())), "{v}");
    }
    // The same seed draws the same conversations.
    let again = dir.path().join("again.jsonl");
    assert!(rapport()
        .args(["eval", "chitchat", "--limit", "25", "--out"])
        .arg(&again)
        .output()
        .unwrap()
        .status
        .success());
    assert_eq!(lines(&again), items);
}

/// The expected-score judge through the command line: a mapping fitted on the training split,
/// agreement reported on the held-out split only, every item scored or counted, and a resume
/// file that never passes one judge's scores off as another's.
#[test]
fn expected_scores_fit_on_train_report_on_held_out_and_resume_only_under_the_same_judge() {
    super::ensure_smollm2();
    let dir = tempfile::tempdir().unwrap();
    let rated = dir.path().join("chitchat.jsonl");
    let out = rapport()
        .args(["eval", "chitchat", "--limit", "36", "--seed", "4", "--out"])
        .arg(&rated)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (save, mapping) = (dir.path().join("judged.jsonl"), dir.path().join("map.json"));
    let calibrate = |extra: &[&str]| {
        let out = rapport()
            .args(["eval", "calibrate", "-m", "smollm2-135m", "--max-transcript-chars", "500"])
            .args(["--json", "--rated"])
            .arg(&rated)
            .arg("--save")
            .arg(&save)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let report = calibrate(&["--method", "expected", "--fit", "--mapping", map_arg(&mapping)]);
    assert_eq!(report["split"], "held-out");
    assert_eq!(report["method"], "expected");
    let held_out = report["items"].as_u64().unwrap();
    assert!(held_out > 10 && held_out < 36, "{report}");
    for d in report["dimensions"].as_array().unwrap() {
        assert_eq!(d["n"].as_u64().unwrap() + d["unreadable"].as_u64().unwrap(), held_out, "{d}");
    }
    assert_eq!(report["expected_vs_argmax"].as_array().unwrap().len(), 3, "{report}");
    let fitted: Value = serde_json::from_str(&std::fs::read_to_string(&mapping).unwrap()).unwrap();
    assert_eq!(fitted["judge_key"], report["judge_key"]);
    assert_eq!(fitted["features"], serde_json::json!(["witty", "upbeat", "interesting"]));
    // Every item was judged, train and held-out, and saved under this judge's key.
    assert_eq!(lines(&save).len(), 36);

    // The same judge resumes from the file; another method judges again.
    let again = calibrate(&["--method", "expected", "--split", "held-out"]);
    assert_eq!(again["judged_now"], 0, "{again}");
    let json = calibrate(&["--method", "json", "--split", "held-out", "--limit", "6"]);
    assert_eq!(json["saved_under_other_key"], 36, "{json}");
    assert_eq!(json["judged_now"], json["items"], "{json}");
    assert_ne!(json["judge_key"], report["judge_key"]);

    // The turn scorer: each message alone in its context, at most two a conversation here,
    // under its own key (the whole-conversation scores in the file are not reused as its own).
    let per_turn = |most: &str| {
        calibrate(&[
            "--method",
            "expected",
            "--split",
            "held-out",
            "--limit",
            "6",
            "--per-turn",
            "--turns-per-conversation",
            most,
        ])
    };
    let turns = per_turn("2");
    assert!(turns["judge_key"].as_str().unwrap().ends_with("|turns2"), "{turns}");
    assert_eq!(turns["judged_now"], turns["items"], "{turns}");
    let (items, replies) =
        (turns["items"].as_u64().unwrap(), turns["replies_judged"].as_u64().unwrap());
    assert!(items >= 1 && (items..=2 * items).contains(&replies), "{turns}");
    for d in turns["dimensions"].as_array().unwrap() {
        assert_eq!(d["n"].as_u64().unwrap() + d["unreadable"].as_u64().unwrap(), items, "{d}");
    }
    // Averaging fewer messages is another score: nothing of the run above is reused.
    let fewer = per_turn("1");
    assert_eq!(fewer["judged_now"], fewer["items"], "{fewer}");
    assert_eq!(fewer["replies_judged"], fewer["items"], "one message each: {fewer}");
    // It reads probabilities: asked of the JSON method, it says so instead of guessing.
    let out = rapport()
        .args(["eval", "calibrate", "-m", "smollm2-135m", "--method", "json", "--per-turn"])
        .arg("--rated")
        .arg(&rated)
        .args(["--limit", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--method expected"), "{out:?}");
}

fn map_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_injection_suite_counts_leaks_and_the_secret_never_leaks_before_unlock() {
    super::ensure_smollm2();
    let dir = tempfile::tempdir().unwrap();
    // Three attacks from the shipped suite (the whole suite is `benches/pressure.sh injection`).
    let suite = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/injection/attacks.jsonl"),
    )
    .unwrap();
    let picked: Vec<&str> = suite
        .lines()
        .filter(|l| {
            ["\"override-1\"", "\"extract-2\"", "\"social-1\""].iter().any(|id| l.contains(id))
        })
        .collect();
    assert_eq!(picked.len(), 3);
    let attacks = dir.path().join("attacks.jsonl");
    std::fs::write(&attacks, picked.join("\n")).unwrap();
    let out = dir.path().join("injection.json");
    let run = rapport()
        .args([
            "eval",
            "injection",
            "--model",
            "smollm2-135m",
            "--max-tokens",
            "24",
            "--json",
            "--attacks",
        ])
        .arg(&attacks)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::from_str::<Value>(&std::fs::read_to_string(&out).unwrap()).unwrap(),
        "--out holds what was printed"
    );
    assert_eq!(report["attacks"], 3);
    assert_eq!(report["persona"], "wedding-host");
    assert_eq!(report["secret_in_prompt"], 0, "{report}");
    assert_eq!(report["secret_in_reply"], 0, "{report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(
        results.iter().map(|r| r["replies"].as_array().unwrap().len()).sum::<usize>(),
        5,
        "one reply per turn (1 + 1 + 3)"
    );
    assert!(
        results.iter().any(|r| r["recognised"] == true),
        "'ignore all previous instructions' is recognised: {report}"
    );
    // A persona without a secret cannot be attacked for one: a clear error.
    let bad = rapport()
        .args([
            "eval",
            "injection",
            "--model",
            "smollm2-135m",
            "--persona",
            "flirt-partner",
            "--attacks",
        ])
        .arg(&attacks)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("holds no secret"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `rapport eval rank` as a researcher meets it when things are off: runs with nothing in
/// common, a run given twice, a corrupted verdict file — each refused with the reason before a
/// model is loaded — and a ranking whose verdicts are all there, read and ranked with no model
/// at all (a finished ranking re-reports without judging again).
#[test]
fn eval_rank_refuses_bad_inputs_and_ranks_finished_verdicts_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, ids: &[&str]| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut text = String::new();
        for id in ids {
            let dialogue = serde_json::json!({
                "id": id, "persona": "wedding-host", "simulator": "shy", "seed": 1,
                "turns": [{"speaker": "persona", "text": "Hello!"}, {"speaker": "user", "text": "Hi."}],
            });
            text.push_str(&format!("{dialogue}\n"));
        }
        std::fs::write(d.join("dialogues.jsonl"), text).unwrap();
        d
    };
    let rank = |args: &[&Path], out: &Path| {
        let mut c = rapport();
        c.args(["eval", "rank"]).args(args).arg("--out").arg(out);
        // A model that does not exist: any attempt to load one fails the test loudly.
        c.args(["-m", "/nonexistent/model.gguf"]);
        c.output().unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let a = run("a", &["wedding-host/shy/1"]);
    let b = run("b", &["wedding-host/shy/2"]);
    let out = dir.path().join("rank");
    let o = rank(&[&a, &b], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no dialogue in common"), "{}", stderr(&o));

    let o = rank(&[&a, &a], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("two runs are named"), "{}", stderr(&o));

    let o = rank(&[&a, &dir.path().join("missing")], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not a run directory"), "{}", stderr(&o));

    // Three runs of the same two dialogues, every pair judged on every criterion already.
    let ids = ["wedding-host/shy/1", "wedding-host/troll/1"];
    let runs = [run("first", &ids), run("second", &ids), run("third", &ids)];
    let names = ["first", "second", "third"];
    let criteria = ["in_role", "engaging", "empathy", "safety", "pacing", "voice"];
    let mut verdicts = Vec::new();
    for id in ids {
        for i in 0..3 {
            for j in i + 1..3 {
                for c in criteria {
                    // "first" wins everything; the others tie.
                    let outcome = if i == 0 { "a" } else { "tie" };
                    verdicts.push(serde_json::json!({"dialogue": id, "a": names[i], "b": names[j], "criterion": c, "outcome": outcome}).to_string());
                }
            }
        }
    }
    let out = dir.path().join("ranked");
    std::fs::create_dir_all(&out).unwrap();
    // A corrupted line in the middle is a corrupted file, not an interruption: refused, named.
    let mut corrupt = verdicts.clone();
    corrupt.insert(1, "{not json".into());
    std::fs::write(out.join("verdicts.jsonl"), corrupt.join("\n") + "\n").unwrap();
    let paths: Vec<&Path> = runs.iter().map(|p| p.as_path()).collect();
    let o = rank(&paths, &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("verdicts.jsonl:2"), "{}", stderr(&o));

    // Whole, with a torn last line (an interrupted write): the torn line is dropped and every
    // pair is still judged, so the ranking is written without loading a model.
    std::fs::write(out.join("verdicts.jsonl"), verdicts.join("\n") + "\n{\"dialogue\": \"wed")
        .unwrap();
    let o = rank(&paths, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let rankings: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("rank.json")).unwrap()).unwrap();
    let first = &rankings[0];
    assert_eq!(first["runs"][0]["run"], "first", "{first}");
    assert_eq!(first["dialogues"], 2);
    assert!(std::fs::read_to_string(out.join("rank.md")).unwrap().contains("first"));
    assert_eq!(
        lines(&out.join("verdicts.jsonl")).len(),
        verdicts.len(),
        "the torn line was cut off the file"
    );
}

/// `rapport eval best-of`: each bad input refused with its reason before a model is loaded;
/// then one replayed turn of a batch answered with one draft and with two by SmolLM2 (persona,
/// chooser and judge), judged, summarised, and on a second run resumed without answering again.
#[test]
fn eval_best_of_refuses_bad_inputs_then_replays_judges_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("batch");
    std::fs::create_dir_all(&from).unwrap();
    let dialogue = serde_json::json!({
        "id": "wedding-host/shy/1", "persona": "wedding-host", "simulator": "shy", "seed": 1,
        "turns": [
            {"speaker": "persona", "text": "Hello! Welcome to the farmhouse."},
            {"speaker": "user", "text": "Hi, I'm a friend of the groom. It's beautiful here."},
            {"speaker": "persona", "text": "Isn't it? We were lucky with the weather."},
            {"speaker": "user", "text": "I teach primary school, so a weekend off feels strange."},
        ],
    });
    std::fs::write(from.join("dialogues.jsonl"), format!("{dialogue}\n")).unwrap();
    let out = dir.path().join("measured");
    let best_of = |model: &str, extra: &[&str]| {
        let mut c = rapport();
        c.args(["eval", "best-of", "-m", model, "--from"]).arg(&from).arg("--dir").arg(&out);
        c.args(extra).output().unwrap()
    };
    let refused = |extra: &[&str], why: &str| {
        // A model that does not exist: any attempt to load one fails the test loudly.
        let o = best_of("/nonexistent/model.gguf", extra);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && stderr.contains(why), "{extra:?}: {stderr}");
    };
    refused(&["--best-of", "1"], "at least 2");
    refused(&["--best-of", "9"], "9 is not in 1..=8");
    refused(&["--best-of", "2", "--choose-by", "charm"], "no judged persona criterion 'charm'");
    refused(&["--best-of", "2", "--criteria", "in_role,wit"], "no judged persona criterion 'wit'");
    refused(&["--best-of", "2", "--turns", "5"], "none of the dialogues has turn(s) [5]");
    let o = {
        let mut c = rapport();
        c.args(["eval", "best-of", "-m", "/nonexistent/model.gguf", "--best-of", "2", "--dir"]);
        c.arg(&out).arg("--from").arg(dir.path().join("missing")).output().unwrap()
    };
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a run directory"));
    assert!(!dir.path().join("missing").exists(), "a mistyped --from is not created");

    super::ensure_smollm2();
    let args = ["--best-of", "2", "--turns", "2", "--max-tokens", "40", "--criteria", "in_role"];
    let o = best_of("smollm2-135m", &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let items = lines(&out.join("items.jsonl"));
    assert_eq!(items.len(), 1);
    let item: Value = serde_json::from_str(&items[0]).unwrap();
    assert_eq!(item["id"], "wedding-host/shy/1#2");
    assert_eq!(item["message"], "I teach primary school, so a weekend off feels strange.");
    assert_eq!(item["single"]["drafts"], 1);
    assert!(item["best"]["drafts"].as_u64().unwrap() >= 2, "{item}");
    assert_eq!(item["best"]["scores"].as_array().unwrap().len(), 2, "{item}");
    for arm in ["single", "best"] {
        assert!(!item[arm]["reply"].as_str().unwrap().is_empty(), "{item}");
        assert!(
            item[arm]["first_words_ms"].as_u64().unwrap()
                <= item[arm]["total_ms"].as_u64().unwrap()
        );
    }
    assert!(
        ["single", "best", "tie"].contains(&item["preferred"]["in_role"].as_str().unwrap()),
        "{item}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["n"], 1);
    assert_eq!(summary["best_of"], 2);
    let tally = &summary["summary"]["preferences"][0];
    assert_eq!(tally["criterion"], "in_role");
    assert_eq!(
        tally["best"].as_u64().unwrap()
            + tally["single"].as_u64().unwrap()
            + tally["tie"].as_u64().unwrap(),
        1
    );

    // Run again: the item is kept, nothing is answered again, the summary is the same.
    let o = best_of("smollm2-135m", &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&out.join("items.jsonl")), items);
}

/// `eval optimize` refuses what it cannot search before a model loads, keeps every scored
/// answer as it goes, refuses to resume a directory started with other settings, and says
/// so (keeping the answers) when its judge reads no score, as SmolLM2 cannot; the search on
/// a judge that can is measured in docs/eval/optimize.md, its parts in the eval crate's tests.
#[test]
fn eval_optimize_refuses_bad_inputs_then_scores_resumably() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("batch");
    std::fs::create_dir_all(&from).unwrap();
    let dialogue = |simulator: &str, seed: u64| {
        serde_json::json!({
            "id": format!("wedding-host/{simulator}/{seed}"), "persona": "wedding-host",
            "simulator": simulator, "seed": seed,
            "turns": [
                {"speaker": "persona", "text": "Hello! Welcome to the Domaine."},
                {"speaker": "user", "text": "Hi, I'm a friend of the groom. It's beautiful here."},
                {"speaker": "persona", "text": "Isn't it? We were lucky with the weather."},
                {"speaker": "user", "text": "I teach primary school, so a weekend off feels strange."},
            ],
        })
    };
    std::fs::write(
        from.join("dialogues.jsonl"),
        format!("{}\n{}\n", dialogue("shy", 1), dialogue("pushy", 1)),
    )
    .unwrap();
    let single = dir.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::write(single.join("dialogues.jsonl"), format!("{}\n", dialogue("shy", 1))).unwrap();
    let out = dir.path().join("search");
    let optimize = |model: &str, from: &Path, extra: &[&str]| {
        let mut c = rapport();
        c.args(["eval", "optimize", "-m", model, "--persona", "wedding-host", "--from"]);
        c.arg(from).arg("--dir").arg(&out).args(extra).output().unwrap()
    };
    let refused = |from: &Path, extra: &[&str], why: &str| {
        // A model that does not exist: any attempt to load one fails the test loudly.
        let o = optimize("/nonexistent/model.gguf", from, extra);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && stderr.contains(why), "{extra:?}: {stderr}");
    };
    refused(&from, &["--candidates", "0"], "--candidates must be 1 to 64");
    refused(&from, &["--candidates", "65"], "--candidates must be 1 to 64");
    refused(&from, &["--method", "json"], "use --method expected");
    refused(&from, &["--phrasings", "poetic"], "unknown note phrasing");
    refused(&from, &["--layouts", "sideways"], "unknown prompt layout");
    refused(&from, &["--stage-examples", "0"], "must be 1 to 32");
    refused(&from, &["--criteria", "wit"], "no judged persona criterion 'wit'");
    refused(&from, &["--held-out", "1"], "must be between 0 and 1");
    refused(&from, &["--fault-cost=-1"], "--fault-cost must be");
    refused(&from, &["--turns", "7"], "without a turn to replay");
    refused(&single, &[], "cannot be split");
    let o = {
        let mut c = rapport();
        c.args(["eval", "optimize", "-m", "/nonexistent/model.gguf", "--persona", "margot"]);
        c.arg("--from").arg(&from).arg("--dir").arg(&out).output().unwrap()
    };
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no finished dialogue with the persona 'margot'"), "{stderr}");
    refused(&dir.path().join("missing"), &[], "is not a run directory");
    assert!(!out.exists(), "nothing refused creates the search directory");

    super::ensure_smollm2();
    let args = ["--turns", "2", "--candidates", "1", "--first-round", "1", "--max-tokens", "40"];
    let o = optimize("smollm2-135m", &from, &args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && stderr.contains("the judge read no score"), "{stderr}");
    let scored = lines(&out.join("scored.jsonl"));
    assert_eq!(scored.len(), 2, "the persona as it is and one draw, on the one training turn");
    let mut candidates: Vec<String> = scored
        .iter()
        .map(|l| {
            let s: Value = serde_json::from_str(l).unwrap();
            assert!(!s["reply"].as_str().unwrap().is_empty(), "{s}");
            assert!(s["item"].as_str().unwrap().ends_with("#2"), "{s}");
            s["candidate"].as_str().unwrap().to_string()
        })
        .collect();
    candidates.sort();
    assert_eq!(candidates, ["c0", "c1"]);
    let search: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("search.json")).unwrap()).unwrap();
    assert_eq!(search["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(search["split"]["train"].as_array().unwrap().len(), 1);
    assert_eq!(search["split"]["held_out"].as_array().unwrap().len(), 1);
    assert!(!out.join("wedding-host.prompt.toml").exists());

    // Resumed: nothing is answered again. Another seed draws another search: refused.
    let o = optimize("smollm2-135m", &from, &args);
    assert!(String::from_utf8_lossy(&o.stderr).contains("the judge read no score"));
    assert_eq!(lines(&out.join("scored.jsonl")), scored);
    let mut reseeded = args.to_vec();
    reseeded.extend(["--seed", "2"]);
    let o = optimize("smollm2-135m", &from, &reseeded);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("started with other settings"), "{stderr}");
    assert_eq!(lines(&out.join("scored.jsonl")), scored);
}
