//! Batches: personas × simulators × seeds × turns, generated, judged and written to a run
//! directory that survives interruption.
//!
//! A run directory holds `spec.json` (what was asked), `dialogues.jsonl` (one finished dialogue
//! per line) and `verdicts.jsonl` (one judged dialogue per line). Each line is written whole and
//! synced before the next work starts, so a batch killed at any point loses at most the
//! dialogues in flight; run the same command again and it continues where it stopped. A line
//! torn by the kill is dropped on resume. Asking a run directory for a different batch is an
//! error, because mixing two batches would silently corrupt the comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, FixedOffset};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rapport_core::{Generator, SamplingParams};
use rapport_pipeline::{Pipeline, TurnEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::dialogue::{Dialogue, SimulatedOutcome, Speaker, Turn};
use crate::judge::{Judge, PersonaBrief, Verdict};
use crate::rubric::{Rubric, Side};
use crate::simulator::{RuleMatcher, SimulatedUser, SimulatorSpec};
use crate::EvalError;

/// What a batch is; stored in `spec.json` and compared on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSpec {
    /// Persona ids.
    pub personas: Vec<String>,
    /// Simulator ids.
    pub simulators: Vec<String>,
    /// Seeds, one dialogue per (persona, simulator, seed).
    pub seeds: Vec<u64>,
    /// User messages per dialogue.
    pub turns: u32,
    /// The persona's model.
    pub model: String,
    /// The simulated users' model.
    pub simulator_model: String,
    /// The judge's model, or none (metrics only).
    pub judge_model: Option<String>,
    /// The rubric's id.
    pub rubric: String,
    /// Judge samples per dialogue.
    pub judge_samples: usize,
    /// How the judge read scores (`json`, `expected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_method: Option<String>,
    /// The judge's key ([`crate::judge::Judge::key`]): a calibration mapping applies to this
    /// run's scores only when it was fitted under the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_key: Option<String>,
    /// The persona pipeline's options that a comparison of two runs needs to name (none in
    /// runs written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineOptions>,
}

/// What a run's persona pipeline was set to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineOptions {
    /// The prompt layout (`rapport_pipeline::prompt::PromptLayout`'s name).
    pub layout: String,
    /// Whether drafts were checked for breaks of character.
    pub character_guard: bool,
    /// Whether help-desk sentences were cut rather than the draft written again (false in runs
    /// from before the cut existed, which is what they did).
    #[serde(default)]
    pub cut_service: bool,
    /// Whether drafts were checked against the persona's facts (`None` in runs written before
    /// it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact_guard: Option<bool>,
    /// Drafts written together per reply, with the criteria the turn scorer chose by (absent
    /// for one draft, as every run before best of N wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<(usize, Vec<String>)>,
}

impl BatchSpec {
    /// Every dialogue of the batch, by id, in a fixed order.
    pub fn cells(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for p in &self.personas {
            for s in &self.simulators {
                for seed in &self.seeds {
                    out.push((p.clone(), s.clone(), *seed));
                }
            }
        }
        out
    }
}

/// The id of one dialogue of a batch.
pub fn dialogue_id(persona: &str, simulator: &str, seed: u64) -> String {
    format!("{persona}/{simulator}/{seed}")
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// One judged dialogue, as stored in `verdicts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictLine {
    /// Which dialogue.
    pub dialogue: String,
    /// The judge's verdict.
    pub verdict: Verdict,
}

impl RunDir {
    /// Opens (creating if needed) `root`.
    pub fn open(root: &Path) -> Result<Self, EvalError> {
        std::fs::create_dir_all(root)
            .map_err(|e| EvalError::Io(format!("creating {}: {e}", root.display())))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Writes `spec`, or checks it matches the one already there.
    pub fn claim(&self, spec: &BatchSpec) -> Result<bool, EvalError> {
        let path = self.root.join("spec.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
            let existing: BatchSpec = serde_json::from_str(&text)
                .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
            if &existing != spec {
                return Err(EvalError::Invalid(format!(
                    "{} holds another batch ({} personas × {} simulators × {} seeds, {} turns, model {}); use another --out to start a new one",
                    self.root.display(),
                    existing.personas.len(),
                    existing.simulators.len(),
                    existing.seeds.len(),
                    existing.turns,
                    existing.model
                )));
            }
            return Ok(true);
        }
        write_atomically(&path, &serde_json::to_vec_pretty(spec).expect("a spec serialises"))?;
        Ok(false)
    }

    /// The batch this directory holds, if it was written by `eval run`.
    pub fn spec(&self) -> Result<Option<BatchSpec>, EvalError> {
        let path = self.root.join("spec.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The finished dialogues.
    pub fn dialogues(&self) -> Result<Vec<Dialogue>, EvalError> {
        read_lines(&self.root.join("dialogues.jsonl"))
    }

    /// The judged dialogues.
    pub fn verdicts(&self) -> Result<Vec<VerdictLine>, EvalError> {
        read_lines(&self.root.join("verdicts.jsonl"))
    }

    /// Appends a dialogue (whole line, synced).
    pub fn append_dialogue(&self, d: &Dialogue) -> Result<(), EvalError> {
        append_line(&self.root.join("dialogues.jsonl"), d)
    }

    /// Appends a verdict (whole line, synced).
    pub fn append_verdict(&self, v: &VerdictLine) -> Result<(), EvalError> {
        append_line(&self.root.join("verdicts.jsonl"), v)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| EvalError::Io(format!("writing {}: {e}", path.display())))
}

/// Reads a JSONL file of `T`, dropping a torn last line (and truncating the file to the last
/// whole line, so that the next append starts on a line of its own). A bad line elsewhere is
/// an error: that is not an interruption but a corrupted file.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, EvalError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut good_bytes = 0usize;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(v) if line.ends_with('\n') => {
                out.push(v);
                good_bytes += line.len();
            }
            _ if last => {
                tracing::warn!(file = %path.display(), "dropping a torn last line (the run was interrupted while writing it)");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
                f.set_len(good_bytes as u64)
                    .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
            }
            Err(e) => return Err(EvalError::Invalid(format!("{}:{}: {e}", path.display(), i + 1))),
            Ok(_) => unreachable!("only the last line can lack its newline"),
        }
    }
    Ok(out)
}

/// Appends `value` as one JSON line and syncs it, so that a kill loses at most that line.
pub fn append_line<T: Serialize>(path: &Path, value: &T) -> Result<(), EvalError> {
    let mut line = serde_json::to_vec(value).map_err(|e| EvalError::Invalid(e.to_string()))?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
    f.write_all(&line)
        .and_then(|_| f.sync_data())
        .map_err(|e| EvalError::Io(format!("appending to {}: {e}", path.display())))
}

/// Everything a batch generates with.
pub struct BatchParts {
    /// A pipeline per persona id.
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    /// The simulators by id.
    pub simulators: BTreeMap<String, SimulatorSpec>,
    /// Writes the persona's replies.
    pub persona_generator: Arc<dyn Generator>,
    /// Writes the simulated users' messages.
    pub simulator_generator: Arc<dyn Generator>,
    /// Sampling defaults of the simulators' model.
    pub simulator_sampling: SamplingParams,
    /// Decides when reaction rules fire.
    pub matcher: RuleMatcher,
    /// The judge, unless the batch is metrics-only.
    pub judge: Option<Judge>,
    /// The rubric.
    pub rubric: Rubric,
}

/// Dialogues generated at once. Within one embedded model concurrent requests are batched by
/// mistral.rs, so 2 keeps both cores busy during the other dialogue's CPU-side steps.
pub const DEFAULT_JOBS: usize = 2;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    /// Dialogues found already finished in the run directory.
    pub resumed: usize,
    /// Dialogues generated now.
    pub generated: usize,
    /// Dialogues judged now.
    pub judged: usize,
    /// Dialogues whose generation failed part-way (kept, with their error).
    pub failed: usize,
}

/// Runs (or resumes) a batch into `run`.
pub async fn run(
    spec: &BatchSpec,
    parts: &BatchParts,
    run: &RunDir,
    jobs: usize,
    progress: &MultiProgress,
) -> Result<RunSummary, EvalError> {
    let resumed = run.claim(spec)?;
    for p in &spec.personas {
        if !parts.pipelines.contains_key(p) {
            return Err(EvalError::Invalid(format!("unknown persona {p:?}")));
        }
    }
    for s in &spec.simulators {
        if !parts.simulators.contains_key(s) {
            return Err(EvalError::Invalid(format!(
                "unknown simulator {s:?} (known: {})",
                parts.simulators.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let done: BTreeSet<String> = run.dialogues()?.into_iter().map(|d| d.id).collect();
    let cells: Vec<_> = spec
        .cells()
        .into_iter()
        .filter(|(p, s, seed)| !done.contains(&dialogue_id(p, s, *seed)))
        .collect();
    let mut summary = RunSummary { resumed: done.len(), ..RunSummary::default() };
    if resumed && !done.is_empty() {
        progress
            .println(format!(
                "resuming {}: {} of {} dialogues already done",
                run.path().display(),
                done.len(),
                spec.cells().len()
            ))
            .ok();
    }

    let dialogues_bar = progress.add(bar(spec.cells().len() as u64, "dialogues"));
    dialogues_bar.set_position(done.len() as u64);
    let turns_bar = progress.add(bar(cells.len() as u64 * u64::from(spec.turns), "turns"));
    let writer = Mutex::new(());
    let results = futures::stream::iter(cells.into_iter().map(|(persona, simulator, seed)| {
        let turns_bar = turns_bar.clone();
        let writer = &writer;
        let dialogues_bar = dialogues_bar.clone();
        async move {
            let d = simulate(&persona, &simulator, seed, spec.turns, parts, &turns_bar).await?;
            let _guard = writer.lock().await;
            run.append_dialogue(&d)?;
            dialogues_bar.inc(1);
            Ok::<bool, EvalError>(d.error.is_some())
        }
    }))
    .buffer_unordered(jobs.max(1))
    .collect::<Vec<_>>()
    .await;
    for r in results {
        summary.generated += 1;
        summary.failed += usize::from(r?);
    }
    turns_bar.finish_and_clear();
    dialogues_bar.finish();

    if let Some(judge) = &parts.judge {
        summary.judged = judge_all(judge, &parts.rubric, parts, run, progress).await?;
    }
    Ok(summary)
}

/// Judges every dialogue in `run` that has no verdict yet.
async fn judge_all(
    judge: &Judge,
    rubric: &Rubric,
    parts: &BatchParts,
    run: &RunDir,
    progress: &MultiProgress,
) -> Result<usize, EvalError> {
    let judged: BTreeSet<String> = run.verdicts()?.into_iter().map(|v| v.dialogue).collect();
    let todo: Vec<Dialogue> =
        run.dialogues()?.into_iter().filter(|d| !judged.contains(&d.id)).collect();
    let criteria = rubric.judged(Side::Persona);
    if criteria.is_empty() || todo.is_empty() {
        return Ok(0);
    }
    let judge_bar = progress.add(bar(todo.len() as u64, "judged"));
    let mut n = 0;
    for d in todo {
        let brief =
            parts.pipelines.get(&d.persona).map(|p| brief_of(p.persona())).unwrap_or_default();
        let verdict = judge.score(&d, &criteria, Side::Persona, &brief).await?;
        run.append_verdict(&VerdictLine { dialogue: d.id.clone(), verdict })?;
        judge_bar.inc(1);
        n += 1;
    }
    judge_bar.finish();
    Ok(n)
}

/// What the judge is told about a persona.
pub fn brief_of(p: &rapport_pipeline::Persona) -> PersonaBrief {
    let voice =
        if p.voice.is_empty() { String::new() } else { format!(" Voice: {}.", p.voice.join("; ")) };
    PersonaBrief { name: p.name.clone(), description: format!("{}{voice}", p.bio) }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} {wide_bar} {pos}/{len} [{elapsed_precise}, eta {eta}]",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// The clock a simulated dialogue runs on: a fixed evening, 40 s per exchange. The pipeline is a
/// pure function of its inputs and the time, so a fixed clock keeps batches reproducible.
fn simulated_now(turn: u32) -> DateTime<FixedOffset> {
    let start =
        DateTime::parse_from_rfc3339("2026-01-10T19:30:00+00:00").expect("a valid timestamp");
    start + Duration::seconds(40 * i64::from(turn))
}

/// One simulated dialogue. A generation error ends it early and is recorded on it: a partial
/// dialogue with its reason is worth more to a researcher than a missing row.
async fn simulate(
    persona: &str,
    simulator: &str,
    seed: u64,
    turns: u32,
    parts: &BatchParts,
    turns_bar: &ProgressBar,
) -> Result<Dialogue, EvalError> {
    let pipeline = &parts.pipelines[persona];
    let spec = &parts.simulators[simulator];
    let mut conversation = pipeline.start();
    let greeting = conversation.history[0].content.clone();
    let mut dialogue = Dialogue {
        id: dialogue_id(persona, simulator, seed),
        persona: persona.to_string(),
        persona_name: Some(pipeline.persona().name.clone()),
        simulator: Some(simulator.to_string()),
        seed: Some(seed),
        turns: vec![Turn { speaker: Speaker::Persona, text: greeting.clone(), trace: None }],
        secret: pipeline.persona().secret.as_ref().map(|s| s.value.clone()),
        outcome: None,
        error: None,
    };
    let mut user = SimulatedUser::new(spec, seed);
    user.react(&greeting, &parts.matcher)?;
    let name = pipeline.persona().name.clone();
    let mut done_turns = 0;
    for turn in 1..=turns {
        let message = match user
            .next_message(
                &dialogue,
                &name,
                parts.simulator_generator.as_ref(),
                &parts.simulator_sampling,
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                dialogue.error = Some(format!("simulated user, turn {turn}: {e}"));
                break;
            }
        };
        dialogue.turns.push(Turn { speaker: Speaker::User, text: message.clone(), trace: None });
        let mut ignore = |_: TurnEvent| {};
        match pipeline
            .respond(
                &mut conversation,
                &message,
                simulated_now(turn),
                parts.persona_generator.as_ref(),
                &mut ignore,
            )
            .await
        {
            Ok(outcome) => {
                user.react(&outcome.reply, &parts.matcher)?;
                dialogue.turns.push(Turn {
                    speaker: Speaker::Persona,
                    text: outcome.reply,
                    trace: Some(Box::new(outcome.trace)),
                });
            }
            Err(e) => {
                dialogue.error = Some(format!("persona, turn {turn}: {e}"));
                break;
            }
        }
        turns_bar.inc(1);
        done_turns += 1;
        if user.ended {
            break;
        }
    }
    turns_bar.inc(u64::from(turns - done_turns));
    dialogue.outcome = Some(SimulatedOutcome {
        initial_emotion: spec.initial_state.emotion,
        final_emotion: user.state().emotion,
        initial_stance: spec.initial_state.stance.clone(),
        final_stance: user.state().stance.clone(),
        reactions: user.reactions.clone(),
        ended_early: user.ended,
    });
    Ok(dialogue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_the_file_mended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "{\"dialogue\":\"a\",\"verdict\":{\"criteria\":{},\"calls\":1,\"failed_calls\":0}}\n{\"dialogue\":\"b\",\"ver").unwrap();
        let lines: Vec<VerdictLine> = read_lines(&path).unwrap();
        assert_eq!(lines.len(), 1);
        append_line(&path, &VerdictLine { dialogue: "c".into(), verdict: Verdict::default() })
            .unwrap();
        let lines: Vec<VerdictLine> = read_lines(&path).unwrap();
        assert_eq!(lines.iter().map(|l| l.dialogue.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        // A bad line in the middle is corruption, not interruption.
        std::fs::write(&path, "not json\n{\"dialogue\":\"a\",\"verdict\":{\"criteria\":{},\"calls\":1,\"failed_calls\":0}}\n").unwrap();
        assert!(read_lines::<VerdictLine>(&path).unwrap_err().to_string().contains(":1:"));
    }

    #[test]
    fn a_run_directory_refuses_another_batch() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        let spec = BatchSpec {
            personas: vec!["a".into()],
            simulators: vec!["s".into()],
            seeds: vec![1, 2],
            turns: 3,
            model: "m".into(),
            simulator_model: "m".into(),
            judge_model: None,
            rubric: "default".into(),
            judge_samples: 1,
            judge_method: None,
            judge_key: None,
            pipeline: None,
        };
        assert!(!run.claim(&spec).unwrap());
        assert!(run.claim(&spec).unwrap(), "the same batch resumes");
        let other = BatchSpec { turns: 4, ..spec.clone() };
        assert!(run.claim(&other).unwrap_err().to_string().contains("another batch"));
        assert_eq!(spec.cells().len(), 2);
    }
}
