//! Ranking runs from pairwise verdicts: which of several runs of the same dialogues (layouts,
//! personas, models) does the judge prefer, and how sure can we be?
//!
//! Every pair of runs is compared dialogue by dialogue with the judge's two-order comparison
//! ([`crate::judge::Judge::compare`]: a win counts only when both orders agree); the verdicts
//! are fitted per criterion to a Bradley–Terry model, in which run i beats run j with
//! probability πᵢ / (πᵢ + πⱼ) — how EQ-Bench 3 ranks its leaderboard. A tie counts half a win to
//! each side. Each run also plays one win and one loss against a fixed average opponent (a weak
//! prior), so that a run that wins every comparison still gets a finite strength. Strengths are
//! reported as logits centred on the runs' mean (the difference of two is the log-odds that one
//! beats the other), with 95% intervals from resampling the dialogues (every verdict on a
//! dialogue goes with it, so the intervals respect that one dialogue's comparisons are related).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::judge::PairOutcome;
use crate::stats::{quantile, Estimate, SplitMix64};

/// One criterion's verdict on one dialogue between two runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairVerdict {
    /// The dialogue (same persona, simulated user and seed in both runs).
    pub dialogue: String,
    /// The run shown as A first.
    pub a: String,
    /// The run shown as B first.
    pub b: String,
    /// The criterion's id.
    pub criterion: String,
    /// Who won, in both orders.
    pub outcome: PairOutcome,
}

/// One run's place in a criterion's ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// The run.
    pub run: String,
    /// Log-strength, centred on the runs' mean, with its interval over resampled dialogues.
    pub strength: Estimate,
    /// Share of resamples in which this run was the strongest.
    pub p_best: f64,
    /// Comparisons won, tied and lost (over all opponents).
    pub wins: usize,
    /// Ties (or orders that disagreed).
    pub ties: usize,
    /// Comparisons lost.
    pub losses: usize,
}

/// One criterion's ranking, strongest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// The criterion's id.
    pub criterion: String,
    /// Dialogues with at least one verdict.
    pub dialogues: usize,
    /// Verdicts fitted.
    pub verdicts: usize,
    /// The runs, strongest first.
    pub runs: Vec<Ranked>,
}

/// Bradley–Terry log-strengths of `k` players from `games` (i, j, i's score: 1 win, ½ tie,
/// 0 loss), centred on their mean; each player also has one win and one loss against a fixed
/// opponent of strength 1. Hunter's (2004) minorisation–maximisation updates, to convergence.
pub fn fit(k: usize, games: &[(usize, usize, f64)]) -> Vec<f64> {
    if k == 0 {
        return Vec::new();
    }
    // Points scored by each player, the prior's win included.
    let mut points = vec![1.0; k];
    for &(i, j, s) in games {
        points[i] += s;
        points[j] += 1.0 - s;
    }
    // Games per pair: the updates need only how often each pair met.
    let mut met = vec![0.0f64; k * k];
    for &(i, j, _) in games {
        met[i * k + j] += 1.0;
        met[j * k + i] += 1.0;
    }
    let mut pi = vec![1.0f64; k];
    for _ in 0..10_000 {
        let next: Vec<f64> = (0..k)
            .map(|i| {
                // The prior's two games against the opponent of strength 1, then the real ones.
                let mut d = 2.0 / (pi[i] + 1.0);
                for j in (0..k).filter(|&j| j != i && met[i * k + j] > 0.0) {
                    d += met[i * k + j] / (pi[i] + pi[j]);
                }
                points[i] / d
            })
            .collect();
        let change = next.iter().zip(&pi).map(|(a, b)| (a.ln() - b.ln()).abs()).fold(0.0, f64::max);
        pi = next;
        if change < 1e-10 {
            break;
        }
    }
    let logs: Vec<f64> = pi.iter().map(|p| p.ln()).collect();
    let mean = logs.iter().sum::<f64>() / k as f64;
    logs.iter().map(|l| l - mean).collect()
}

/// Rankings of `runs`, one per criterion present in `verdicts`, with `resamples` bootstrap
/// resamples of the dialogues (seeded).
pub fn rank(
    runs: &[String],
    verdicts: &[PairVerdict],
    resamples: usize,
    seed: u64,
) -> Vec<Ranking> {
    let index: BTreeMap<&str, usize> =
        runs.iter().enumerate().map(|(i, r)| (r.as_str(), i)).collect();
    let criteria: BTreeSet<&str> = verdicts.iter().map(|v| v.criterion.as_str()).collect();
    let mut out = Vec::new();
    for criterion in criteria {
        // Games grouped by dialogue, the unit the bootstrap resamples.
        let mut by_dialogue: BTreeMap<&str, Vec<(usize, usize, f64)>> = BTreeMap::new();
        let mut tallies = vec![(0usize, 0usize, 0usize); runs.len()];
        for v in verdicts.iter().filter(|v| v.criterion == criterion) {
            let (Some(&a), Some(&b)) = (index.get(v.a.as_str()), index.get(v.b.as_str())) else {
                continue;
            };
            let score = match v.outcome {
                PairOutcome::A => {
                    tallies[a].0 += 1;
                    tallies[b].2 += 1;
                    1.0
                }
                PairOutcome::B => {
                    tallies[b].0 += 1;
                    tallies[a].2 += 1;
                    0.0
                }
                PairOutcome::Tie => {
                    tallies[a].1 += 1;
                    tallies[b].1 += 1;
                    0.5
                }
            };
            by_dialogue.entry(v.dialogue.as_str()).or_default().push((a, b, score));
        }
        let groups: Vec<&Vec<(usize, usize, f64)>> = by_dialogue.values().collect();
        let games = |chosen: &mut dyn Iterator<Item = usize>| -> Vec<(usize, usize, f64)> {
            chosen.flat_map(|g| groups[g].iter().copied()).collect()
        };
        let whole = fit(runs.len(), &games(&mut (0..groups.len())));
        let mut draws: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); runs.len()];
        let mut best = vec![0.0f64; runs.len()];
        let mut rng = SplitMix64::new(seed);
        if !groups.is_empty() {
            for _ in 0..resamples {
                let chosen: Vec<usize> =
                    (0..groups.len()).map(|_| rng.below(groups.len())).collect();
                let strengths = fit(runs.len(), &games(&mut chosen.into_iter()));
                // Runs tied for the top share the resample.
                let top = strengths.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let tied: Vec<usize> =
                    (0..runs.len()).filter(|&x| strengths[x] >= top - 1e-9).collect();
                for &x in &tied {
                    best[x] += 1.0 / tied.len() as f64;
                }
                for (d, s) in draws.iter_mut().zip(strengths) {
                    d.push(s);
                }
            }
        }
        let drawn = if groups.is_empty() { 0 } else { resamples };
        let mut ranked: Vec<Ranked> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let mut d = std::mem::take(&mut draws[i]);
                d.sort_by(f64::total_cmp);
                let (low, high) = if d.is_empty() {
                    (whole[i], whole[i])
                } else {
                    (quantile(&d, 0.025), quantile(&d, 0.975))
                };
                Ranked {
                    run: run.clone(),
                    strength: Estimate {
                        value: whole[i],
                        low,
                        high,
                        n: groups.len(),
                        dropped: 0,
                        resamples: drawn,
                    },
                    p_best: if drawn == 0 { 0.0 } else { best[i] / drawn as f64 },
                    wins: tallies[i].0,
                    ties: tallies[i].1,
                    losses: tallies[i].2,
                }
            })
            .collect();
        ranked.sort_by(|x, y| y.strength.value.total_cmp(&x.strength.value));
        out.push(Ranking {
            criterion: criterion.to_string(),
            dialogues: groups.len(),
            verdicts: groups.iter().map(|g| g.len()).sum(),
            runs: ranked,
        });
    }
    out
}

/// The rankings as Markdown: one table per criterion.
pub fn markdown(rankings: &[Ranking]) -> String {
    let mut out = String::from(
        "Bradley–Terry strengths from the judge's two-order pairwise verdicts (a tie or a \
         disagreement between the orders counts half to each), as logits centred on the runs' \
         mean: the difference of two is the log-odds that one is preferred to the other. \
         95% intervals from resampling the dialogues.\n",
    );
    for r in rankings {
        out.push_str(&format!(
            "\n**{}** ({} dialogues, {} verdicts)\n\n| rank | run | strength [95% CI] | P(best) | won / tied / lost |\n|---:|---|---|---:|---|\n",
            r.criterion, r.dialogues, r.verdicts
        ));
        for (i, run) in r.runs.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} / {} / {} |\n",
                i + 1,
                run.run,
                run.strength.display(2),
                run.p_best,
                run.wins,
                run.ties,
                run.losses
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verdicts drawn from a known Bradley–Terry model (no ties).
    fn simulated(
        strengths: &[f64],
        dialogues: usize,
        seed: u64,
    ) -> (Vec<String>, Vec<PairVerdict>) {
        let runs: Vec<String> = (0..strengths.len()).map(|i| format!("run{i}")).collect();
        let mut rng = SplitMix64::new(seed);
        let mut verdicts = Vec::new();
        for d in 0..dialogues {
            for i in 0..runs.len() {
                for j in i + 1..runs.len() {
                    let p = 1.0 / (1.0 + (strengths[j] - strengths[i]).exp());
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    verdicts.push(PairVerdict {
                        dialogue: format!("d{d}"),
                        a: runs[i].clone(),
                        b: runs[j].clone(),
                        criterion: "overall".into(),
                        outcome: if u < p { PairOutcome::A } else { PairOutcome::B },
                    });
                }
            }
        }
        (runs, verdicts)
    }

    #[test]
    fn known_strengths_are_recovered_in_order_with_honest_intervals() {
        let truth = [-1.0, 0.0, 1.0];
        let (runs, verdicts) = simulated(&truth, 400, 7);
        let r = &rank(&runs, &verdicts, 300, 1)[0];
        let order: Vec<&str> = r.runs.iter().map(|x| x.run.as_str()).collect();
        assert_eq!(order, ["run2", "run1", "run0"]);
        for x in &r.runs {
            let i: usize = x.run[3..].parse().unwrap();
            // 1,200 verdicts: the standard error is about 0.07.
            assert!((x.strength.value - truth[i]).abs() < 0.25, "{}: {:?}", x.run, x.strength);
            assert!(x.strength.low <= x.strength.value && x.strength.value <= x.strength.high);
            assert!(x.strength.high - x.strength.low < 0.5, "400 dialogues give a narrow interval");
        }
        assert!(r.runs[0].p_best > 0.95, "{:?}", r.runs[0]);
        assert_eq!(r.dialogues, 400);
        assert_eq!(r.verdicts, 1200);
        // Coverage: over 40 simulated batches of 60 dialogues, the strongest run's 95% interval
        // holds its true strength about 38 times; fewer than 33 would happen by chance with
        // probability under 0.2% if the intervals were right.
        let covered = (0..40)
            .filter(|&s| {
                let (runs, verdicts) = simulated(&truth, 60, 100 + s);
                let r = &rank(&runs, &verdicts, 400, s)[0];
                let top = r.runs.iter().find(|x| x.run == "run2").unwrap();
                top.strength.low <= 1.0 && 1.0 <= top.strength.high
            })
            .count();
        assert!(covered >= 33, "covered {covered} of 40");
    }

    #[test]
    fn ties_and_evenly_split_verdicts_give_equal_strengths() {
        let runs = vec!["x".to_string(), "y".to_string()];
        let v = |d: &str, outcome| PairVerdict {
            dialogue: d.into(),
            a: "x".into(),
            b: "y".into(),
            criterion: "c".into(),
            outcome,
        };
        let verdicts =
            vec![v("1", PairOutcome::A), v("2", PairOutcome::B), v("3", PairOutcome::Tie)];
        let r = &rank(&runs, &verdicts, 200, 3)[0];
        assert!(r.runs.iter().all(|x| x.strength.value.abs() < 1e-9), "{r:?}");
        assert!(r.runs[0].strength.low < 0.0 && r.runs[0].strength.high > 0.0, "3 dialogues: wide");
        assert_eq!((r.runs[0].wins, r.runs[0].ties, r.runs[0].losses), (1, 1, 1));
        // Nothing but ties: equal strengths, and being first is shared, not given to one.
        let all_tied = vec![v("1", PairOutcome::Tie), v("2", PairOutcome::Tie)];
        let r = &rank(&runs, &all_tied, 100, 3)[0];
        assert!(r.runs.iter().all(|x| (x.p_best - 0.5).abs() < 1e-9), "{r:?}");
    }

    #[test]
    fn a_run_that_wins_everything_has_a_finite_strength() {
        let s = fit(2, &[(0, 1, 1.0), (0, 1, 1.0), (0, 1, 1.0)]);
        assert!(s.iter().all(|v| v.is_finite()) && s[0] > 0.5, "{s:?}");
        // More evidence, further apart.
        let more = fit(2, &[(0, 1, 1.0); 30]);
        assert!(more[0] > s[0], "{more:?} vs {s:?}");
        assert!(fit(0, &[]).is_empty());
    }

    #[test]
    fn verdicts_of_other_runs_are_ignored_and_criteria_ranked_apart() {
        let runs = vec!["x".to_string(), "y".to_string()];
        let verdicts = vec![
            PairVerdict {
                dialogue: "1".into(),
                a: "x".into(),
                b: "y".into(),
                criterion: "warm".into(),
                outcome: PairOutcome::A,
            },
            PairVerdict {
                dialogue: "1".into(),
                a: "x".into(),
                b: "y".into(),
                criterion: "witty".into(),
                outcome: PairOutcome::B,
            },
            PairVerdict {
                dialogue: "1".into(),
                a: "x".into(),
                b: "zzz".into(),
                criterion: "warm".into(),
                outcome: PairOutcome::B,
            },
        ];
        let r = rank(&runs, &verdicts, 50, 1);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].criterion.as_str(), r[0].runs[0].run.as_str(), r[0].verdicts),
            ("warm", "x", 1)
        );
        assert_eq!((r[1].criterion.as_str(), r[1].runs[0].run.as_str()), ("witty", "y"));
        assert!(markdown(&r).contains("| 1 | x |"));
    }
}
