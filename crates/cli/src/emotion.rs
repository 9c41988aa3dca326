//! `rapport emotion train | classify | eval`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rapport_models::{preset, ModelCache, Puller};
use rapport_nlu::emotion::metrics::{f1_report, predict};
use rapport_nlu::emotion::train::{extract_features, multi_hot, train_head, TrainOptions};
use rapport_nlu::emotion::{EmotionClassifier, EmotionHead, LABELS, NUM_LABELS};
use rapport_nlu::goemotions::{read_tsv, Example};
use rapport_nlu::SentenceEncoder;
use sha2::{Digest, Sha256};

use crate::datasets::datasets_dir;

/// The model the app uses: MiniLM's embeddings, then a copy of its first layer fine-tuned on
/// GoEmotions (`crates/nlu/train/finetune_emotion.py --variant 1:1 --epochs 10`).
pub(crate) fn default_head() -> PathBuf {
    datasets_dir().join("emotion/goemotions-tuned")
}

/// Where `rapport emotion train` writes: a head on the frozen encoder's features.
fn frozen_feature_head() -> PathBuf {
    datasets_dir().join("emotion/goemotions-mlp")
}

fn goemotions(file: &str) -> PathBuf {
    datasets_dir().join("goemotions").join(file)
}

#[derive(Subcommand, Debug)]
pub enum EmotionCommand {
    /// Train a head on frozen MiniLM features (MLP, calibration) on GoEmotions. The shipped,
    /// fine-tuned model comes from crates/nlu/train/finetune_emotion.py on a GPU.
    Train(TrainArgs),
    /// Print how a message reads: labels, probabilities, Ekman view, valence and arousal.
    Classify {
        /// The message.
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The trained head (PATH.safetensors + PATH.json).
        #[arg(long)]
        head: Option<PathBuf>,
    },
    /// Score the model on a file in GoEmotions TSV format.
    Eval {
        /// `text \t label ids \t id` per line.
        #[arg(long)]
        tsv: PathBuf,
        /// Print JSON (with `macro_f1`).
        #[arg(long)]
        json: bool,
        /// The trained head.
        #[arg(long)]
        head: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data (GoEmotions TSV).
    #[arg(long)]
    train: Option<PathBuf>,
    /// Development data, scored after training (never used to choose anything).
    #[arg(long)]
    dev: Option<PathBuf>,
    /// Where to write the head (PATH.safetensors + PATH.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Hidden layer width.
    #[arg(long, default_value_t = TrainOptions::default().hidden)]
    hidden: usize,
    /// Upper bound on epochs.
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    epochs: usize,
    /// Seed.
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    seed: u64,
}

/// The emotion classifier: MiniLM (pulled on first use) behind `head`, or the shipped head.
pub(crate) fn classifier(head: Option<PathBuf>) -> anyhow::Result<EmotionClassifier> {
    let head = EmotionHead::load(&head.unwrap_or_else(default_head))?;
    Ok(EmotionClassifier::new(encoder()?, head)?)
}

pub(crate) fn encoder() -> anyhow::Result<SentenceEncoder> {
    let cache = ModelCache::default_location()?;
    let installed = Puller::default().pull(&cache, &preset("minilm-l6").expect("a preset"))?;
    Ok(SentenceEncoder::load(&installed.dir)?)
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} [{elapsed_precise}, eta {eta}]")
            .expect("static template"),
    );
    b.set_message(msg.to_string());
    b
}

/// Features of a data file, cached on disk by the file's content: encoding 43k messages takes
/// minutes, and retraining with other settings should not repeat it.
fn cached_features(
    encoder: &SentenceEncoder,
    path: &Path,
    examples: &[Example],
) -> anyhow::Result<candle_core::Tensor> {
    let bytes = std::fs::read(path)?;
    let key = hex::encode(
        &Sha256::new_with_prefix(b"minilm-l6 mean+max v1\0").chain_update(&bytes).finalize()[..16],
    );
    let cache_dir = rapport_models::cache_root()?.join("features");
    let file = cache_dir.join(format!("{key}.safetensors"));
    if let Ok(t) = candle_core::safetensors::load(&file, &candle_core::Device::Cpu) {
        if let Some(f) = t.get("features").filter(|f| f.dim(0).ok() == Some(examples.len())) {
            return Ok(f.clone());
        }
    }
    let label = format!("encoding {}", path.file_name().unwrap_or_default().to_string_lossy());
    let features = features_with_progress(&label, examples, |batch| encoder.features(batch))?;
    std::fs::create_dir_all(&cache_dir)?;
    let tmp = file.with_extension("tmp");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("features".to_string(), features.clone())]),
        &tmp,
    )?;
    std::fs::rename(&tmp, &file)?;
    Ok(features)
}

/// The features of every example, computed in batches of 64 behind a progress bar.
fn features_with_progress(
    label: &str,
    examples: &[Example],
    features: impl Fn(&[&str]) -> Result<candle_core::Tensor, rapport_nlu::NluError>,
) -> anyhow::Result<candle_core::Tensor> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let progress = bar(texts.len() as u64, label);
    let extracted = extract_features(features, &texts, 64, |n| progress.inc(n as u64))?;
    progress.finish_and_clear();
    Ok(extracted)
}

#[derive(serde::Serialize)]
struct EvalReport {
    file: String,
    messages: usize,
    macro_f1: f64,
    micro_f1: f64,
    per_label: std::collections::BTreeMap<&'static str, f64>,
    thresholds: std::collections::BTreeMap<&'static str, f32>,
}

fn evaluate(
    classifier_head: &EmotionHead,
    features: &candle_core::Tensor,
    examples: &[Example],
    file: &Path,
) -> anyhow::Result<EvalReport> {
    let probs = classifier_head.probabilities(features)?;
    let t = classifier_head.thresholds();
    let gold: Vec<Vec<usize>> = examples.iter().map(|e| e.labels.clone()).collect();
    let r = f1_report(&gold, &predict(&probs, t), NUM_LABELS);
    Ok(EvalReport {
        file: file.display().to_string(),
        messages: examples.len(),
        macro_f1: r.macro_f1,
        micro_f1: r.micro_f1,
        per_label: LABELS.iter().copied().zip(r.per_label.iter().copied()).collect(),
        thresholds: LABELS.iter().copied().zip(t.iter().copied()).collect(),
    })
}

fn print_eval(r: &EvalReport) {
    println!("{} ({} messages)", r.file, r.messages);
    println!("macro-F1 {:.3}   micro-F1 {:.3}", r.macro_f1, r.micro_f1);
    println!("{:<16} {:>6} {:>10}", "label", "F1", "threshold");
    for (label, f1) in &r.per_label {
        println!("{:<16} {:>6.3} {:>10.2}", label, f1, r.thresholds[label]);
    }
}

pub fn run(command: EmotionCommand) -> anyhow::Result<()> {
    match command {
        EmotionCommand::Train(args) => train(args),
        EmotionCommand::Classify { text, json, head } => {
            let classifier = classifier(head)?;
            let reading = classifier.classify(&text)?;
            let (valence, arousal) = reading.valence_arousal();
            if json {
                let probs: std::collections::BTreeMap<&str, f32> =
                    LABELS.iter().copied().zip(reading.probabilities.iter().copied()).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "labels": reading.label_names(), "probabilities": probs,
                        "ekman": reading.ekman().into_iter().map(|(e, p)| (serde_json::to_value(e).unwrap().as_str().unwrap().to_string(), p)).collect::<std::collections::BTreeMap<_, _>>(),
                        "valence": valence, "arousal": arousal,
                    }))?
                );
            } else {
                let mut ranked: Vec<(usize, f32)> =
                    reading.probabilities.iter().copied().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                println!("labels: {}", reading.label_names().join(", "));
                for (l, p) in ranked.iter().take(5) {
                    println!("  {:<16} {:.3}", LABELS[*l], p);
                }
                println!(
                    "ekman: {:?}   valence {valence:+.2}   arousal {arousal:+.2}",
                    reading.dominant_ekman()
                );
            }
            Ok(())
        }
        EmotionCommand::Eval { tsv, json, head } => {
            let examples = read_tsv(&tsv)?;
            anyhow::ensure!(!examples.is_empty(), "{} holds no messages", tsv.display());
            let classifier = classifier(head)?;
            let features = if classifier.head().is_tuned() {
                // A tuned branch's features depend on the head's own weights: nothing to cache.
                features_with_progress("classifying", &examples, |batch| {
                    classifier.features(batch)
                })?
            } else {
                cached_features(classifier.encoder(), &tsv, &examples)?
            };
            let report = evaluate(classifier.head(), &features, &examples, &tsv)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?)
            } else {
                print_eval(&report)
            }
            Ok(())
        }
    }
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let train_path = args.train.unwrap_or_else(|| goemotions("train.tsv"));
    let dev_path = args.dev.unwrap_or_else(|| goemotions("dev.tsv"));
    let out = args.out.unwrap_or_else(frozen_feature_head);
    let train_examples = read_tsv(&train_path)?;
    let dev_examples = read_tsv(&dev_path)?;
    let encoder = encoder()?;
    let train_x = cached_features(&encoder, &train_path, &train_examples)?;
    let dev_x = cached_features(&encoder, &dev_path, &dev_examples)?;
    let options = TrainOptions {
        hidden: args.hidden,
        epochs: args.epochs,
        seed: args.seed,
        ..TrainOptions::default()
    };
    let progress = bar(options.epochs as u64, "training");
    let (mut head, report) =
        train_head(&train_x, &multi_hot(&train_examples)?, &options, |epoch, loss, f1| {
            progress.set_position(epoch as u64);
            progress.set_message(format!("training: loss {loss:.4}, held-out macro-F1 {f1:.3}"));
        })?;
    progress.finish_and_clear();
    let dev = evaluate(&head, &dev_x, &dev_examples, &dev_path)?;
    head.record_evaluation("dev", serde_json::json!({"macro_f1": dev.macro_f1, "micro_f1": dev.micro_f1, "messages": dev.messages}));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    head.save(&out)?;
    println!(
        "trained: {} examples fitted, {} held out; best epoch {} of {}; held-out macro-F1 {:.3}",
        report.fit_examples,
        report.holdout_examples,
        report.best_epoch,
        report.epochs_run,
        report.holdout_macro_f1
    );
    print_eval(&dev);
    println!("saved {}.{{safetensors,json}}", out.display());
    Ok(())
}
