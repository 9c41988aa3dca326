//! Training the emotion head on frozen encoder features.
//!
//! Calibration and thresholds are fitted on a slice held out of the *training* file, so that the
//! development file stays an honest estimate: nothing about the model is chosen on it.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::metrics::best_threshold;
use super::model::{sigmoid, EmotionHead, HeadMeta, FEATURE_DIM};
use super::{LABELS, NUM_LABELS};
use crate::goemotions::Example;
use crate::NluError;

/// Training settings.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOptions {
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Upper bound on passes over the data.
    pub epochs: usize,
    /// Stop after this many epochs without a better held-out macro-F1.
    pub patience: usize,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Dropout on the hidden layer while training.
    pub dropout: f32,
    /// Share of the training file held out for early stopping, calibration and thresholds.
    pub holdout_fraction: f64,
    /// Seed of the split, the shuffles and dropout's order.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            hidden: 512,
            epochs: 60,
            patience: 8,
            batch_size: 128,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            dropout: 0.2,
            holdout_fraction: 0.1,
            seed: 20_201_005,
        }
    }
}

/// What happened while training.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Examples the weights were fitted on.
    pub fit_examples: usize,
    /// Examples held out for early stopping, calibration and thresholds.
    pub holdout_examples: usize,
    /// Epochs run before stopping.
    pub epochs_run: usize,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Macro-F1 on the held-out slice with tuned thresholds.
    pub holdout_macro_f1: f64,
}

/// Features `[n, 768]` of many texts, computed by `features` (e.g. [`SentenceEncoder::features`]
/// or [`super::EmotionClassifier::features`]) in batches of similar length; `progress` is told
/// how many texts are done.
pub fn extract_features(
    features: impl Fn(&[&str]) -> Result<Tensor, NluError>,
    texts: &[&str],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<Tensor, NluError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut rows: Vec<Option<Tensor>> = vec![None; texts.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let f = features(&batch)?;
        for (k, &i) in chunk.iter().enumerate() {
            rows[i] = Some(f.get(k)?);
        }
        progress(chunk.len());
    }
    let rows: Vec<Tensor> = rows.into_iter().map(|r| r.expect("every text was encoded")).collect();
    if rows.is_empty() {
        return Ok(Tensor::zeros((0, FEATURE_DIM), DType::F32, &Device::Cpu)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// Multi-hot targets `[n, 28]`.
pub fn multi_hot(examples: &[Example]) -> Result<Tensor, NluError> {
    let mut data = vec![0f32; examples.len() * NUM_LABELS];
    for (i, e) in examples.iter().enumerate() {
        for &l in &e.labels {
            data[i * NUM_LABELS + l] = 1.0;
        }
    }
    Ok(Tensor::from_vec(data, (examples.len(), NUM_LABELS), &Device::Cpu)?)
}

/// Mean binary cross-entropy on logits, in the stable form
/// `max(x, 0) - x * y + log(1 + exp(-|x|))` (candle's version takes `log(sigmoid(x))`, which
/// is `-inf` for confident logits).
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let loss = ((logits.relu()? - (logits * targets)?)?
        + logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    loss.mean_all()
}

/// Trains the head. `features`/`targets` are the whole training file; a seeded slice of it is
/// held out. `on_epoch(epoch, loss, holdout_macro_f1)` reports progress.
pub fn train_head(
    features: &Tensor,
    targets: &Tensor,
    options: &TrainOptions,
    mut on_epoch: impl FnMut(usize, f32, f64),
) -> Result<(EmotionHead, TrainReport), NluError> {
    let n = features.dim(0)?;
    if n < 20 {
        return Err(NluError::Data(format!("{n} training examples are too few")));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rng);
    let holdout_n = ((n as f64 * options.holdout_fraction).round() as usize).clamp(10, n - 10);
    let (holdout_idx, fit_idx) = order.split_at(holdout_n);
    let take = |idx: &[u32], t: &Tensor| -> candle_core::Result<Tensor> {
        t.index_select(&Tensor::from_slice(idx, idx.len(), &Device::Cpu)?, 0)
    };
    let (hold_x, hold_y) = (take(holdout_idx, features)?, take(holdout_idx, targets)?);
    let hold_gold = gold_matrix(&hold_y)?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let fc1 = candle_nn::linear(FEATURE_DIM, options.hidden, vb.pp("fc1"))?;
    let fc2 = candle_nn::linear(options.hidden, NUM_LABELS, vb.pp("fc2"))?;
    let dropout = candle_nn::Dropout::new(options.dropout);
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: options.learning_rate,
            weight_decay: options.weight_decay,
            ..Default::default()
        },
    )?;
    let forward = |x: &Tensor, train: bool| -> candle_core::Result<Tensor> {
        use candle_core::Module;
        let h = dropout.forward(&fc1.forward(x)?.gelu_erf()?, train)?;
        fc2.forward(&h)
    };

    let mut fit = fit_idx.to_vec();
    // The best epoch so far: its number, its dev score and a copy of its weights.
    type Best = (usize, f64, Vec<(String, Tensor)>);
    let mut best: Option<Best> = None;
    let mut epochs_run = 0;
    for epoch in 1..=options.epochs {
        epochs_run = epoch;
        fit.shuffle(&mut rng);
        let mut total = 0f32;
        let mut steps = 0;
        for chunk in fit.chunks(options.batch_size.max(1)) {
            let (x, y) = (take(chunk, features)?, take(chunk, targets)?);
            let loss = bce_with_logits(&forward(&x, true)?, &y)?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()?;
            steps += 1;
        }
        let logits = forward(&hold_x, false)?.to_vec2::<f32>()?;
        let probs: Vec<Vec<f32>> =
            logits.iter().map(|r| r.iter().map(|&z| sigmoid(z)).collect()).collect();
        let f1 = tuned_macro_f1(&probs, &hold_gold);
        on_epoch(epoch, total / steps.max(1) as f32, f1);
        if best.as_ref().is_none_or(|(_, b, _)| f1 > *b) {
            best = Some((epoch, f1, snapshot(&varmap)?));
        } else if best.as_ref().is_some_and(|(e, _, _)| epoch - e >= options.patience) {
            break;
        }
    }
    let (best_epoch, _, weights) = best.expect("at least one epoch ran");
    restore(&varmap, &weights)?;

    // Calibrate each label on the held-out logits, then tune its threshold on the calibrated
    // probabilities.
    let logits = forward(&hold_x, false)?.to_vec2::<f32>()?;
    let mut platt = Vec::with_capacity(NUM_LABELS);
    let mut thresholds = Vec::with_capacity(NUM_LABELS);
    for l in 0..NUM_LABELS {
        let z: Vec<f32> = logits.iter().map(|r| r[l]).collect();
        let y: Vec<bool> = hold_gold.iter().map(|g| g[l]).collect();
        let (a, b) = fit_platt(&z, &y);
        let p: Vec<f32> = z.iter().map(|&z| sigmoid(a * z + b)).collect();
        platt.push([a, b]);
        thresholds.push(best_threshold(&p, &y).0);
    }
    let calibrated: Vec<Vec<f32>> = logits
        .iter()
        .map(|r| r.iter().zip(&platt).map(|(&z, [a, b])| sigmoid(a * z + b)).collect())
        .collect();
    let holdout_macro_f1 = macro_f1_at(&calibrated, &hold_gold, &thresholds);

    let report = TrainReport {
        fit_examples: fit.len(),
        holdout_examples: holdout_n,
        epochs_run,
        best_epoch,
        holdout_macro_f1,
    };
    let meta = HeadMeta {
        format: 1,
        features: "all-MiniLM-L6-v2: L2-normalised mean over tokens, then max over tokens (768)"
            .into(),
        hidden: options.hidden,
        encoder: None,
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        platt,
        thresholds,
        training: serde_json::json!({"options": options, "report": &report}),
        attribution: "Trained on GoEmotions (Demszky et al., ACL 2020), CC BY 4.0.".into(),
    };
    // Detach the weights from the optimiser's variables.
    let fc1 = candle_nn::Linear::new(fc1.weight().detach(), fc1.bias().map(Tensor::detach));
    let fc2 = candle_nn::Linear::new(fc2.weight().detach(), fc2.bias().map(Tensor::detach));
    Ok((EmotionHead::from_parts(fc1, fc2, meta), report))
}

fn gold_matrix(targets: &Tensor) -> Result<Vec<Vec<bool>>, NluError> {
    Ok(targets
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| r.into_iter().map(|v| v > 0.5).collect())
        .collect())
}

/// Macro-F1 with each label's threshold tuned on the same data (used only to pick the epoch).
fn tuned_macro_f1(probs: &[Vec<f32>], gold: &[Vec<bool>]) -> f64 {
    (0..NUM_LABELS)
        .map(|l| {
            let p: Vec<f32> = probs.iter().map(|r| r[l]).collect();
            let y: Vec<bool> = gold.iter().map(|g| g[l]).collect();
            best_threshold(&p, &y).1
        })
        .sum::<f64>()
        / NUM_LABELS as f64
}

fn macro_f1_at(probs: &[Vec<f32>], gold: &[Vec<bool>], thresholds: &[f32]) -> f64 {
    let gold: Vec<Vec<usize>> =
        gold.iter().map(|g| (0..NUM_LABELS).filter(|&l| g[l]).collect()).collect();
    super::metrics::f1_report(&gold, &super::metrics::predict(probs, thresholds), NUM_LABELS)
        .macro_f1
}

/// Platt scaling: the (a, b) minimising the log-loss of sigmoid(a z + b), by Newton's method
/// with Platt's smoothed targets (so that separable labels do not send a to infinity).
pub fn fit_platt(z: &[f32], y: &[bool]) -> (f32, f32) {
    let positives = y.iter().filter(|&&v| v).count() as f64;
    let negatives = y.len() as f64 - positives;
    let hi = (positives + 1.0) / (positives + 2.0);
    let lo = 1.0 / (negatives + 2.0);
    let t: Vec<f64> = y.iter().map(|&v| if v { hi } else { lo }).collect();
    let (mut a, mut b) = (1.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-6, 0.0, 1e-6);
        for (&zi, &ti) in z.iter().zip(&t) {
            let zi = zi as f64;
            let p = 1.0 / (1.0 + (-(a * zi + b)).exp());
            let d = p - ti;
            let w = (p * (1.0 - p)).max(1e-12);
            ga += d * zi;
            gb += d;
            haa += w * zi * zi;
            hab += w * zi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a -= da;
        b -= db;
        if da.abs() < 1e-9 && db.abs() < 1e-9 {
            break;
        }
    }
    (a as f32, b as f32)
}

fn snapshot(varmap: &VarMap) -> candle_core::Result<Vec<(String, Tensor)>> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect()
}

fn restore(varmap: &VarMap, weights: &[(String, Tensor)]) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (k, t) in weights {
        let var: &Var = data.get(k).expect("the same variables");
        var.set(t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_loss_matches_the_textbook_one_and_survives_large_logits() {
        let logits = Tensor::new(&[[2.0f32, -1.0], [0.5, 40.0]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let got = bce_with_logits(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        let textbook =
            |x: f32, y: f32| -(y * sigmoid(x).ln() + (1.0 - y) * (1.0 - sigmoid(x)).ln());
        let want = (textbook(2.0, 1.0) + textbook(-1.0, 0.0) + textbook(0.5, 0.0) + 0.0) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let extreme = Tensor::new(&[[100.0f32, -100.0]], &Device::Cpu).unwrap();
        let wrong = Tensor::new(&[[0.0f32, 1.0]], &Device::Cpu).unwrap();
        let l = bce_with_logits(&extreme, &wrong).unwrap().to_scalar::<f32>().unwrap();
        assert!(l.is_finite() && (l - 100.0).abs() < 1e-3, "{l}");
    }

    #[test]
    fn platt_scaling_recovers_a_known_calibration() {
        // Labels drawn from p = sigmoid(2z - 1): the fit must find a ~ 2, b ~ -1.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut z = Vec::new();
        let mut y = Vec::new();
        for i in 0..20_000 {
            let zi = (i as f32 / 20_000.0) * 8.0 - 4.0;
            let p = sigmoid(2.0 * zi - 1.0);
            z.push(zi);
            y.push(rand::Rng::random::<f32>(&mut rng) < p);
        }
        let (a, b) = fit_platt(&z, &y);
        assert!((a - 2.0).abs() < 0.15 && (b + 1.0).abs() < 0.1, "a={a} b={b}");
    }

    #[test]
    fn a_separable_toy_problem_is_learned() {
        // Label l is on when feature l is positive.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 600;
        let mut x = vec![0f32; n * FEATURE_DIM];
        let mut examples = Vec::new();
        for i in 0..n {
            let mut labels = Vec::new();
            for l in 0..NUM_LABELS {
                let v: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
                x[i * FEATURE_DIM + l] = v;
                if v > 0.3 {
                    labels.push(l);
                }
            }
            examples.push(Example { text: String::new(), labels });
        }
        let features = Tensor::from_vec(x, (n, FEATURE_DIM), &Device::Cpu).unwrap();
        let targets = multi_hot(&examples).unwrap();
        let options = TrainOptions {
            hidden: 64,
            epochs: 40,
            patience: 40,
            batch_size: 32,
            learning_rate: 3e-3,
            ..Default::default()
        };
        let (head, report) = train_head(&features, &targets, &options, |_, _, _| {}).unwrap();
        assert!(report.holdout_macro_f1 > 0.9, "{report:?}");
        let probs = head.probabilities(&features.narrow(0, 0, 5).unwrap()).unwrap();
        assert!(probs.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
    }
}
