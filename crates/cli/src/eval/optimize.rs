//! `rapport eval optimize`: a persona's prompt choices searched on a finished batch's
//! dialogues and the winner reported on held-out ones ([`rapport_eval::optimize`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use rapport_eval::judge::JudgeMethod;
use rapport_eval::optimize::{self, Bench, Ledger, Search, Space};
use rapport_eval::rubric::Side;
use rapport_eval::Rubric;
use rapport_pipeline::layout::NotePhrasing;
use rapport_pipeline::prompt::{PromptLayout, Prompts};
use rapport_pipeline::Pipeline;
use serde::{Deserialize, Serialize};

use super::{
    finished_batch, judge_backend, make_judge, suite_evening, suite_progress, JudgeArgs, Suite,
    SuiteArgs,
};

#[derive(Args, Debug)]
pub struct OptimizeArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    /// A finished batch (`rapport eval run --out DIR`) whose dialogues with the persona are
    /// replayed.
    #[arg(long)]
    from: PathBuf,
    /// The persona to tune.
    #[arg(long)]
    persona: String,
    /// The person's message numbers to replay in each dialogue, comma-separated (default:
    /// every one).
    #[arg(long, value_delimiter = ',')]
    turns: Vec<usize>,
    /// Candidates drawn besides the persona as it is (1 to 64).
    #[arg(long, default_value_t = 6)]
    candidates: usize,
    /// Layouts to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "compact,cached-exchanges")]
    layouts: Vec<PromptLayout>,
    /// Examples per stage to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3,5,8")]
    stage_examples: Vec<usize>,
    /// Note phrasings to try, comma-separated (curious, answer-first, friend).
    #[arg(long, value_delimiter = ',', default_value = "curious,answer-first,friend")]
    phrasings: Vec<NotePhrasing>,
    /// Show every example in the file's order instead of drawing subsets and orders.
    #[arg(long)]
    all_examples: bool,
    /// Share of the simulator × seed cells held out from the search (0 to 1, exclusive).
    #[arg(long, default_value_t = 0.5)]
    held_out: f64,
    /// Training turns of the first round of successive halving.
    #[arg(long, default_value_t = 6)]
    first_round: usize,
    /// Judged points (on the 1–5 scale) a fault costs: a sent break of character counts 1, a
    /// rejected first draft ½.
    #[arg(long, default_value_t = 1.0)]
    fault_cost: f64,
    /// The default rubric's persona criteria the turn scorer scores, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "in_role,engaging")]
    criteria: Vec<String>,
    /// Draws the candidates, the split and the order of the turns.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where every scored answer is kept (`scored.jsonl`, resumed when it exists) with
    /// `search.json`, `summary.json`, `summary.md` and, when a candidate beat the persona as
    /// it is, `<persona>.prompt.toml`.
    #[arg(long)]
    dir: PathBuf,
}

/// What a search directory was started with: a resumed search must be the same search, or its
/// scored answers would be mixed with another's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    persona: String,
    from: PathBuf,
    turns: Vec<usize>,
    space: Space,
    candidates: Vec<optimize::Candidate>,
    split: optimize::Split,
    first_round: usize,
    fault_cost: f64,
    criteria: Vec<String>,
    seed: u64,
    model: String,
    judge_model: String,
}

pub async fn run(args: OptimizeArgs) -> anyhow::Result<()> {
    // Everything that can be refused is refused before a model loads.
    anyhow::ensure!(
        (1..=64).contains(&args.candidates),
        "--candidates must be 1 to 64 (got {})",
        args.candidates
    );
    anyhow::ensure!(
        args.fault_cost.is_finite() && args.fault_cost >= 0.0,
        "--fault-cost must be a number of at least 0"
    );
    anyhow::ensure!(args.first_round >= 1, "--first-round must be at least 1");
    anyhow::ensure!(
        args.judge.method == JudgeMethod::Expected,
        "the search scores replies with the turn scorer, which reads probabilities: use --method expected"
    );
    let space = Space {
        layouts: args.layouts.clone(),
        stage_examples: args.stage_examples.clone(),
        phrasings: args.phrasings.clone(),
        example_subsets: !args.all_examples,
    };
    space.check()?;
    let rubric = Rubric::load("default")?;
    let criteria = rubric.judged_named(Side::Persona, &args.criteria)?;
    let dialogues: Vec<_> = finished_batch(&args.from)?
        .into_iter()
        .filter(|d| d.persona == args.persona && d.error.is_none())
        .collect();
    anyhow::ensure!(
        !dialogues.is_empty(),
        "{} holds no finished dialogue with the persona '{}'",
        args.from.display(),
        args.persona
    );
    let library = args.suite.library()?;
    let persona = library.get(&args.persona)?.clone();
    let split = optimize::split(&dialogues, args.held_out, args.seed)?;
    let turns: Vec<usize> =
        if args.turns.is_empty() { (1..=64).collect() } else { args.turns.clone() };
    let all = rapport_eval::best_of::turns_of(&dialogues, &turns, usize::MAX);
    let (held, train): (Vec<_>, Vec<_>) = all.into_iter().partition(|(d, _)| split.is_held_out(d));
    anyhow::ensure!(
        !train.is_empty() && !held.is_empty(),
        "turn(s) {turns:?} leave the training or the held-out cells without a turn to replay"
    );
    let train = optimize::shuffled(train, args.seed);

    let Suite { backend, nlu, config, .. } = args.suite.load_with(library).await?;
    for &layout in &space.layouts {
        backend.layout(Some(layout))?;
    }
    let candidates = optimize::candidates(&persona, &space, args.candidates, args.seed);
    let judge_backend = judge_backend(&args.judge, &args.suite.backend, Some(&backend)).await?;
    let settings = Settings {
        persona: args.persona.clone(),
        from: args.from.clone(),
        turns: args.turns.clone(),
        space,
        candidates: candidates.clone(),
        split: split.clone(),
        first_round: args.first_round,
        fault_cost: args.fault_cost,
        criteria: args.criteria.clone(),
        seed: args.seed,
        model: backend.model_name.clone(),
        judge_model: judge_backend.model_name.clone(),
    };
    std::fs::create_dir_all(&args.dir)?;
    let started_with = args.dir.join("search.json");
    if started_with.exists() {
        let earlier: Settings = serde_json::from_str(&std::fs::read_to_string(&started_with)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", started_with.display()))?;
        anyhow::ensure!(
            earlier == settings,
            "{} holds a search started with other settings (persona, batch, space, seed, models or the persona's file differ): give another --dir",
            args.dir.display()
        );
    } else {
        std::fs::write(&started_with, serde_json::to_string_pretty(&settings)? + "\n")?;
    }

    let prompts = Arc::new(Prompts::embedded());
    let mut pipelines = BTreeMap::new();
    for c in &candidates {
        let mut tuned = persona.clone();
        tuned.prompt = c.tuning.clone();
        pipelines.insert(
            c.id.clone(),
            Pipeline::new(tuned, nlu.clone(), prompts.clone(), config.clone())?,
        );
    }
    let judge = make_judge(&args.judge, &judge_backend)?;
    let bench = Bench {
        pipelines: &pipelines,
        generator: backend.generator.as_ref(),
        judge: &judge,
        criteria: &criteria,
    };
    let mut ledger = Ledger::open(&args.dir.join("scored.jsonl"))?;
    let progress = suite_progress(
        optimize::most_answers(candidates.len(), args.first_round, train.len(), held.len()),
        "answers",
    );
    let search = Search {
        persona: &args.persona,
        candidates: &candidates,
        split: &split,
        train: &train,
        held_out: &held,
        first_round: args.first_round,
        fault_cost: args.fault_cost,
        seed: args.seed,
    };
    let outcome =
        optimize::search(&search, &bench, &mut ledger, suite_evening(), Some(&progress)).await?;
    progress.finish_and_clear();
    let md = outcome.markdown();
    let summary = serde_json::json!({
        "model": backend.model_name,
        "judge_model": judge_backend.model_name,
        "from": args.from,
        "criteria": args.criteria,
        "outcome": outcome,
        "significant_gain": outcome.significant_gain(),
    });
    std::fs::write(args.dir.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    std::fs::write(args.dir.join("summary.md"), &md)?;
    let command: Vec<String> = std::env::args().collect();
    let tuning = args.dir.join(format!("{}.prompt.toml", args.persona));
    match outcome.tuning_file(&command.join(" ")) {
        Some(file) => std::fs::write(&tuning, file)?,
        None if tuning.exists() => std::fs::remove_file(&tuning)?,
        None => {}
    }
    println!("{md}");
    Ok(())
}
