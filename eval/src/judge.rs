//! The LLM judge: scores a dialogue against a rubric's judged criteria, or compares two.
//!
//! It generates through [`rapport_core::Generator`], so the judge can be the local model or any
//! OpenAI-compatible server. Judges, small ones above all, do not always answer in clean JSON,
//! so the parser takes the first JSON object it can find, accepts the shapes judges actually
//! produce (`{"id": 4}`, `{"id": {"score": "4/5"}}`, `{"scores": {…}}`, a list of objects),
//! falls back to `"id": 4` patterns in free text, and refuses scores off the scale. What it
//! could not read is counted, never guessed: a criterion with no readable score has no score.
//!
//! Several samples per dialogue are aggregated by their median (one wild sample does not move
//! it). Pairwise comparison asks twice with A and B swapped; a winner counts only when both
//! orders agree, which removes the judge's position bias instead of averaging it in.

use std::collections::BTreeMap;
use std::sync::Arc;

use rapport_core::{collect_completion, ChatMessage, GenerationRequest, Generator, SamplingParams};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tera::{Context, Tera};

use crate::dialogue::Dialogue;
use crate::expected::{self, DigitScale, ScoreDistribution};
use crate::rubric::{Criterion, Side};
use crate::EvalError;

const SINGLE: &str = "judge.tera";
const PAIRWISE: &str = "judge_pairwise.tera";
const SCORE: &str = "judge_score.tera";
const TURN: &str = "judge_turn.tera";
const SYSTEM: &str =
    "You are a careful, strict evaluator of conversations. You answer with one JSON object only.";
const SYSTEM_SCORE: &str =
    "You are a careful, strict evaluator of conversations. You answer with one digit only.";

/// Who the persona is, for criteria such as voice consistency.
#[derive(Debug, Clone, Default)]
pub struct PersonaBrief {
    /// Its name in the transcript.
    pub name: String,
    /// Bio and voice, in a sentence or two.
    pub description: String,
}

/// How the judge turns its model's answer into a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMethod {
    /// One call writes a JSON object with an integer score and a reason per criterion (or per
    /// criterion with `per_criterion`); the score is the integer written. For backends without
    /// log-probabilities.
    Json,
    /// One call per criterion answers a single digit; the score is the probability-weighted mean
    /// over the scale's digits at that position ([`crate::expected`]). Needs a backend that
    /// returns log-probabilities. The default: on 100 held-out chitchat conversations it agreed
    /// with people significantly better than `Json` on two of three dimensions, at 0.59× the
    /// cost (docs/eval/evaluation.md).
    #[default]
    Expected,
}

impl std::str::FromStr for JudgeMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(JudgeMethod::Json),
            "expected" => Ok(JudgeMethod::Expected),
            other => Err(format!("unknown judge method '{other}' (json, expected)")),
        }
    }
}

impl JudgeMethod {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeMethod::Json => "json",
            JudgeMethod::Expected => "expected",
        }
    }
}

/// How the judge runs.
#[derive(Debug, Clone)]
pub struct JudgeConfig {
    /// Samples per dialogue (1 = one greedy answer).
    pub samples: usize,
    /// Temperature of samples when there are several.
    pub temperature: f32,
    /// Transcript budget in characters (the judge's context is finite; long dialogues keep
    /// their start and end).
    pub max_transcript_chars: usize,
    /// Seed of the first sample; sample k uses seed + k.
    pub seed: u64,
    /// Score each criterion in its own call: slower, but small judges manage one question
    /// far better than a JSON object with eight.
    pub per_criterion: bool,
    /// How a score is read from the model.
    pub method: JudgeMethod,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            samples: 1,
            temperature: 0.7,
            max_transcript_chars: 6000,
            seed: 0,
            per_criterion: false,
            method: JudgeMethod::Expected,
        }
    }
}

/// One criterion's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionVerdict {
    /// The median of the readable samples; `None` if none was readable.
    pub score: Option<f64>,
    /// Every readable sample.
    pub samples: Vec<f64>,
    /// The judge's reasons, one per readable sample.
    pub reasons: Vec<String>,
    /// Samples whose score for this criterion could not be read (or was off the scale).
    pub unreadable: usize,
    /// With [`JudgeMethod::Expected`]: the probabilities behind each sample's score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distributions: Vec<ScoreDistribution>,
}

/// A judge's verdict on one dialogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Verdict {
    /// By criterion id.
    pub criteria: BTreeMap<String, CriterionVerdict>,
    /// Generation calls made.
    pub calls: usize,
    /// Calls whose generation failed (after the backend's own retries).
    pub failed_calls: usize,
}

/// Which of two dialogues was better on one criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairOutcome {
    /// A, in both orders.
    A,
    /// B, in both orders.
    B,
    /// The judge said tie, or the two orders disagreed (position bias), or it was unreadable.
    Tie,
}

/// What one parse of a judge's answer found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// Readable, on-scale scores with their reasons.
    pub scores: BTreeMap<String, (f64, String)>,
    /// Criteria with no readable score, and why.
    pub problems: Vec<(String, String)>,
}

/// Reads a judge's answer for `criteria`. Never fails: what cannot be read is listed.
pub fn parse_scores(answer: &str, criteria: &[&Criterion]) -> Parsed {
    let object = first_json_object(answer);
    let table = object.as_ref().map(|o| match o.get("scores") {
        Some(Value::Object(inner)) => Value::Object(inner.clone()),
        Some(Value::Array(items)) => list_to_object(items),
        _ => Value::Object(o.clone()),
    });
    let mut parsed = Parsed::default();
    for c in criteria {
        let from_json = table.as_ref().and_then(|t| t.get(&c.id)).and_then(score_and_reason);
        // A single-criterion call may be answered with {"score": 4, "reason": …}.
        let from_json = from_json.or_else(|| {
            if criteria.len() == 1 {
                table.as_ref().and_then(score_and_reason)
            } else {
                None
            }
        });
        let found = from_json.or_else(|| score_in_text(answer, &c.id).map(|s| (s, String::new())));
        match found {
            Some((score, _)) if !c.scale.contains(score) => parsed.problems.push((
                c.id.clone(),
                format!("score {score} is off the scale {}..{}", c.scale.min, c.scale.max),
            )),
            Some((score, reason)) => {
                parsed.scores.insert(c.id.clone(), (score, reason));
            }
            None => parsed.problems.push((c.id.clone(), "no score found".into())),
        }
    }
    parsed
}

/// Reads a pairwise answer: "A", "B" or "tie" per criterion (as seen in this order).
pub fn parse_winners(answer: &str, criteria: &[&Criterion]) -> BTreeMap<String, Option<char>> {
    let object = first_json_object(answer);
    criteria
        .iter()
        .map(|c| {
            let value = object.as_ref().and_then(|o| o.get(&c.id)).cloned();
            let text = match value {
                Some(Value::String(s)) => Some(s),
                Some(Value::Object(m)) => m
                    .get("winner")
                    .or_else(|| m.get("better"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                _ => None,
            };
            let winner = text.and_then(|t| match t.trim().to_ascii_lowercase().as_str() {
                "a" | "conversation a" => Some('A'),
                "b" | "conversation b" => Some('B'),
                "tie" | "equal" | "neither" | "both" => Some('='),
                _ => None,
            });
            (c.id.clone(), winner)
        })
        .collect()
}

/// The first balanced JSON object in `text` (code fences and chatter around it are ignored).
fn first_json_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    for (i, _) in text.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(map))) = stream.next() {
            return Some(map);
        }
    }
    None
}

fn list_to_object(items: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for item in items {
        if let Some(id) = item.get("criterion").or_else(|| item.get("id")).and_then(|v| v.as_str())
        {
            out.insert(id.to_string(), item.clone());
        }
    }
    Value::Object(out)
}

fn score_and_reason(value: &Value) -> Option<(f64, String)> {
    match value {
        Value::Number(n) => n.as_f64().map(|s| (s, String::new())),
        Value::String(s) => leading_number(s).map(|n| (n, String::new())),
        Value::Object(m) => {
            let score = m.get("score").or_else(|| m.get("rating")).or_else(|| m.get("value"))?;
            let score = match score {
                Value::Number(n) => n.as_f64()?,
                Value::String(s) => leading_number(s)?,
                _ => return None,
            };
            let reason = m
                .get("reason")
                .or_else(|| m.get("explanation"))
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .to_string();
            Some((score, reason))
        }
        _ => None,
    }
}

/// "4", "4/5", " 4 out of 5" → 4.
fn leading_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (c == '-' && i == 0)))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    s[..end].parse().ok().filter(|v: &f64| v.is_finite())
}

fn score_in_text(text: &str, id: &str) -> Option<f64> {
    let pattern = format!(
        r#"(?i)"?{}"?\s*[:=]\s*\{{?\s*(?:"?score"?\s*[:=]\s*)?"?(-?\d+(?:\.\d+)?)"#,
        regex::escape(id)
    );
    let re = Regex::new(&pattern).ok()?;
    re.captures(text)?.get(1)?.as_str().parse().ok()
}

/// The judge: a generator and its prompts.
pub struct Judge {
    generator: Arc<dyn Generator>,
    tera: Tera,
    config: JudgeConfig,
    /// Template texts by name, for [`Judge::key`].
    sources: BTreeMap<&'static str, String>,
}

impl Judge {
    /// A judge with the templates compiled in (`prompts/judge*.tera`).
    pub fn new(generator: Arc<dyn Generator>, config: JudgeConfig) -> Self {
        let mut tera = Tera::default();
        let sources: BTreeMap<&'static str, String> = [
            (SINGLE, include_str!("../../prompts/judge.tera")),
            (PAIRWISE, include_str!("../../prompts/judge_pairwise.tera")),
            (SCORE, include_str!("../../prompts/judge_score.tera")),
            (TURN, include_str!("../../prompts/judge_turn.tera")),
        ]
        .into_iter()
        .map(|(name, text)| (name, text.to_string()))
        .collect();
        for (name, text) in &sources {
            tera.add_raw_template(name, text).expect("the embedded template parses");
        }
        Self { generator, tera, config, sources }
    }

    /// A judge with templates read from `dir` (to edit prompts without rebuilding).
    pub fn with_prompts_dir(
        generator: Arc<dyn Generator>,
        config: JudgeConfig,
        dir: &std::path::Path,
    ) -> Result<Self, EvalError> {
        let Judge { mut tera, mut sources, .. } = Self::new(generator.clone(), config.clone());
        for name in [SINGLE, PAIRWISE, SCORE, TURN] {
            let path = dir.join(name);
            // A directory made before a template existed keeps the compiled-in one for it.
            if (name == SCORE || name == TURN) && !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| EvalError::Io(format!("{}: {e}", path.display())))?;
            tera.add_raw_template(name, &text)
                .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
            sources.insert(name, text);
        }
        Ok(Self { generator, tera, config, sources })
    }

    /// The configuration.
    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// What makes two judges' scores interchangeable: the model, the method and its settings,
    /// the prompt template it fills and the criteria it is asked. Saved scores and calibration
    /// mappings carry it, and are reused or applied only under the same key: a run with another
    /// model, rubric, prompt or method must never pass off old scores as its own.
    pub fn key(&self, model: &str, criteria: &[&Criterion]) -> String {
        let template = match self.config.method {
            JudgeMethod::Json => SINGLE,
            JudgeMethod::Expected => SCORE,
        };
        self.key_with(model, criteria, template)
    }

    /// [`Judge::key`] of the turn scorer ([`Judge::score_reply`]): its own template, so scores
    /// of single replies are never mistaken for scores of whole conversations.
    pub fn turn_key(&self, model: &str, criteria: &[&Criterion]) -> String {
        format!("{}|turns", self.key_with(model, criteria, TURN))
    }

    fn key_with(&self, model: &str, criteria: &[&Criterion], template: &str) -> String {
        let c = &self.config;
        let mut text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            model,
            c.method.as_str(),
            c.samples,
            c.per_criterion,
            c.max_transcript_chars,
            c.seed,
            self.sources.get(template).map(String::as_str).unwrap_or_default()
        );
        for criterion in criteria {
            text.push_str(&serde_json::to_string(criterion).unwrap_or_default());
        }
        let hash = crate::stats::fnv1a(&text);
        format!("{model}|{}|{hash:016x}", c.method.as_str())
    }

    /// The prompt the judge sees for `criteria` (public so that tests and `--dry-run` can show it).
    pub fn render(
        &self,
        dialogue: &Dialogue,
        criteria: &[&Criterion],
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<String, EvalError> {
        let (user, name) = names(side, persona);
        self.render_transcript(
            &dialogue.transcript(&user, &name, self.config.max_transcript_chars),
            criteria,
            side,
            persona,
        )
    }

    fn render_transcript(
        &self,
        transcript: &str,
        criteria: &[&Criterion],
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<String, EvalError> {
        let mut ctx = conversation_context(transcript, side, persona);
        ctx.insert("criteria", &views(criteria));
        self.tera
            .render(SINGLE, &ctx)
            .map_err(|e| EvalError::Invalid(format!("judge template: {e}")))
    }

    /// The single-digit prompt for one criterion ([`JudgeMethod::Expected`]): the conversation
    /// first and the criterion last, so that a conversation's criteria share a cached prefix.
    pub fn render_score(
        &self,
        transcript: &str,
        criterion: &Criterion,
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<String, EvalError> {
        self.render_digit(SCORE, conversation_context(transcript, side, persona), criterion)
    }

    /// The turn scorer's prompt: the conversation before a message, the message, one criterion.
    pub fn render_turn(
        &self,
        before: &str,
        reply: &str,
        criterion: &Criterion,
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<String, EvalError> {
        let mut ctx = conversation_context(before, side, persona);
        ctx.insert("reply", reply);
        self.render_digit(TURN, ctx, criterion)
    }

    fn render_digit(
        &self,
        template: &str,
        mut ctx: Context,
        criterion: &Criterion,
    ) -> Result<String, EvalError> {
        let digits = DigitScale::for_scale(criterion.scale);
        let mut view = views(&[criterion]).remove(0);
        view.scale = ScaleView { min: digits.low.to_string(), max: digits.high.to_string() };
        if !digits.is_native() {
            for (a, anchor) in view.anchors.iter_mut().zip(&criterion.anchors) {
                a.score = digits.to_digit(anchor.score).to_string();
            }
        }
        ctx.insert("criterion", &view);
        self.tera
            .render(template, &ctx)
            .map_err(|e| EvalError::Invalid(format!("judge template {template}: {e}")))
    }

    /// One greedy call that answers a digit, read as a distribution over the scale.
    async fn ask_distribution(
        &self,
        prompt: &str,
        digits: DigitScale,
    ) -> Result<Option<ScoreDistribution>, rapport_core::GenerationError> {
        let request = GenerationRequest::new(
            vec![ChatMessage::system(SYSTEM_SCORE), ChatMessage::user(prompt)],
            SamplingParams::greedy(expected::MAX_TOKENS),
        )?
        .with_top_logprobs(expected::TOP_LOGPROBS)?;
        let done = collect_completion(self.generator.generate(request).await?, |_| {}).await?;
        let read = expected::read_distribution(&done.summary.logprobs, digits);
        if read.is_none() {
            tracing::debug!(answer = %done.text, "no score digit in the judge's answer");
        }
        Ok(read)
    }

    /// Scores `dialogue` on `criteria` (all judged, all on `side`).
    pub async fn score(
        &self,
        dialogue: &Dialogue,
        criteria: &[&Criterion],
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<Verdict, EvalError> {
        let (user, name) = names(side, persona);
        let verdict = self
            .score_transcript(
                &dialogue.transcript(&user, &name, self.config.max_transcript_chars),
                criteria,
                side,
                persona,
            )
            .await?;
        tracing::debug!(dialogue = %dialogue.id, calls = verdict.calls, "judged");
        Ok(verdict)
    }

    /// Scores a ready transcript (`Name: text` lines) on `criteria`.
    pub async fn score_transcript(
        &self,
        transcript: &str,
        criteria: &[&Criterion],
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<Verdict, EvalError> {
        let verdict = empty_verdict(criteria);
        if self.config.method == JudgeMethod::Expected {
            return self
                .score_digits(verdict, criteria, |c| {
                    self.render_score(transcript, c, side, persona)
                })
                .await;
        }
        self.score_json(verdict, transcript, criteria, side, persona).await
    }

    /// The turn scorer: `reply`, the message written after the conversation `before`, scored on
    /// `criteria` in that context, one single-digit call per criterion read as probabilities
    /// (the expected method only). Successive replies of one conversation share most of their
    /// prompt, which the engine's prefix cache reads once.
    pub async fn score_reply(
        &self,
        before: &str,
        reply: &str,
        criteria: &[&Criterion],
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<Verdict, EvalError> {
        if self.config.method != JudgeMethod::Expected {
            return Err(EvalError::Invalid(
                "the turn scorer reads the judge's probabilities: use --method expected".into(),
            ));
        }
        let verdict = empty_verdict(criteria);
        self.score_digits(verdict, criteria, |c| self.render_turn(before, reply, c, side, persona))
            .await
    }

    /// One single-digit call per criterion, read as a distribution over the scale.
    async fn score_digits(
        &self,
        mut verdict: Verdict,
        criteria: &[&Criterion],
        prompt_of: impl Fn(&Criterion) -> Result<String, EvalError>,
    ) -> Result<Verdict, EvalError> {
        for c in criteria {
            let prompt = prompt_of(c)?;
            verdict.calls += 1;
            let v = verdict.criteria.get_mut(&c.id).expect("inserted above");
            match self.ask_distribution(&prompt, DigitScale::for_scale(c.scale)).await {
                Ok(Some(d)) => {
                    v.samples.push(d.expected);
                    v.distributions.push(d);
                }
                Ok(None) => v.unreadable += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "judge call failed");
                    verdict.failed_calls += 1;
                    v.unreadable += 1;
                }
            }
            v.score = v.samples.first().copied();
        }
        Ok(verdict)
    }

    /// The JSON method: the criteria in one call (or one each), an integer and a reason each.
    async fn score_json(
        &self,
        mut verdict: Verdict,
        transcript: &str,
        criteria: &[&Criterion],
        side: Side,
        persona: &PersonaBrief,
    ) -> Result<Verdict, EvalError> {
        let groups: Vec<Vec<&Criterion>> = if self.config.per_criterion {
            criteria.iter().map(|c| vec![*c]).collect()
        } else {
            vec![criteria.to_vec()]
        };
        for group in groups {
            let prompt = self.render_transcript(transcript, &group, side, persona)?;
            for k in 0..self.config.samples.max(1) {
                verdict.calls += 1;
                let answer = match self.ask(&prompt, group.len(), k as u64).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "judge call failed");
                        verdict.failed_calls += 1;
                        for c in &group {
                            verdict.criteria.get_mut(&c.id).expect("inserted above").unreadable +=
                                1;
                        }
                        continue;
                    }
                };
                let parsed = parse_scores(&answer, &group);
                for (id, (score, reason)) in parsed.scores {
                    let v = verdict.criteria.get_mut(&id).expect("inserted above");
                    v.samples.push(score);
                    v.reasons.push(reason);
                }
                for (id, why) in parsed.problems {
                    tracing::debug!(criterion = %id, %why, "unreadable judge score");
                    verdict.criteria.get_mut(&id).expect("inserted above").unreadable += 1;
                }
            }
        }
        for v in verdict.criteria.values_mut() {
            v.score = crate::stats::median(&v.samples);
        }
        Ok(verdict)
    }

    /// Compares the persona's side of `a` and `b` on `criteria`, asking in both orders.
    pub async fn compare(
        &self,
        a: &Dialogue,
        b: &Dialogue,
        criteria: &[&Criterion],
        persona: &PersonaBrief,
    ) -> Result<BTreeMap<String, PairOutcome>, EvalError> {
        let first = self.ask_pair(a, b, criteria, persona).await?;
        let swapped = self.ask_pair(b, a, criteria, persona).await?;
        Ok(criteria
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    combine(
                        first.get(&c.id).copied().flatten(),
                        swapped.get(&c.id).copied().flatten(),
                    ),
                )
            })
            .collect())
    }

    async fn ask_pair(
        &self,
        a: &Dialogue,
        b: &Dialogue,
        criteria: &[&Criterion],
        persona: &PersonaBrief,
    ) -> Result<BTreeMap<String, Option<char>>, EvalError> {
        let (user, name) = names(Side::Persona, persona);
        let half = self.config.max_transcript_chars / 2;
        let mut ctx = Context::new();
        ctx.insert("persona_name", &name);
        ctx.insert("persona_description", &persona.description);
        ctx.insert("transcript_a", &a.transcript(&user, &name, half));
        ctx.insert("transcript_b", &b.transcript(&user, &name, half));
        ctx.insert("criteria", &views(criteria));
        let prompt = self
            .tera
            .render(PAIRWISE, &ctx)
            .map_err(|e| EvalError::Invalid(format!("pairwise template: {e}")))?;
        let answer = self
            .ask(&prompt, criteria.len(), 0)
            .await
            .map_err(|e| EvalError::Generation(e.to_string()))?;
        Ok(parse_winners(&answer, criteria))
    }

    async fn ask(
        &self,
        prompt: &str,
        criteria: usize,
        sample: u64,
    ) -> Result<String, rapport_core::GenerationError> {
        // Room for a short reason per criterion; more only invites rambling.
        let max_tokens = (24 + 40 * criteria as u32).min(512);
        let mut sampling = if self.config.samples <= 1 {
            SamplingParams::greedy(max_tokens)
        } else {
            SamplingParams {
                temperature: self.config.temperature,
                max_tokens,
                ..SamplingParams::greedy(max_tokens)
            }
        };
        sampling.seed = Some(self.config.seed.wrapping_add(sample));
        let request = GenerationRequest::new(
            vec![ChatMessage::system(SYSTEM), ChatMessage::user(prompt)],
            sampling,
        )?;
        let stream = self.generator.generate(request).await?;
        let answer = collect_completion(stream, |_| {}).await?.text;
        // `RAPPORT_LOG=rapport_eval::judge=debug` shows what the judge actually wrote.
        tracing::debug!(%answer, "judge answer");
        Ok(answer)
    }
}

/// One criterion's pairwise outcome from the answer with (a, b) in order and the answer with
/// them swapped, where the second answer's "A" is dialogue b. A judge that always prefers the
/// first position answers A then A, which after the swap is a disagreement: a tie.
pub fn combine(in_order: Option<char>, swapped: Option<char>) -> PairOutcome {
    let swapped = swapped.map(|w| match w {
        'A' => 'B',
        'B' => 'A',
        other => other,
    });
    match (in_order, swapped) {
        (Some('A'), Some('A')) => PairOutcome::A,
        (Some('B'), Some('B')) => PairOutcome::B,
        _ => PairOutcome::Tie,
    }
}

/// A criterion as the templates see it: scores written as people write them ("4", not "4.0").
#[derive(Serialize)]
struct CriterionView<'a> {
    id: &'a str,
    name: &'a str,
    question: &'a str,
    scale: ScaleView,
    anchors: Vec<AnchorView<'a>>,
}

#[derive(Serialize)]
struct ScaleView {
    min: String,
    max: String,
}

#[derive(Serialize)]
struct AnchorView<'a> {
    score: String,
    text: &'a str,
}

/// A score as text: integers without a decimal point.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

fn views<'a>(criteria: &[&'a Criterion]) -> Vec<CriterionView<'a>> {
    criteria
        .iter()
        .map(|c| CriterionView {
            id: &c.id,
            name: &c.name,
            question: &c.question,
            scale: ScaleView { min: number(c.scale.min), max: number(c.scale.max) },
            anchors: c
                .anchors
                .iter()
                .map(|a| AnchorView { score: number(a.score), text: &a.text })
                .collect(),
        })
        .collect()
}

/// What both single-dialogue templates say about the conversation and who is in it.
/// A verdict with every criterion present and nothing scored yet.
fn empty_verdict(criteria: &[&Criterion]) -> Verdict {
    let mut verdict = Verdict::default();
    for c in criteria {
        verdict.criteria.insert(
            c.id.clone(),
            CriterionVerdict {
                score: None,
                samples: vec![],
                reasons: vec![],
                unreadable: 0,
                distributions: vec![],
            },
        );
    }
    verdict
}

fn conversation_context(transcript: &str, side: Side, persona: &PersonaBrief) -> Context {
    let (user, name) = names(side, persona);
    let mut ctx = Context::new();
    ctx.insert("side", &side);
    ctx.insert("persona_name", &name);
    ctx.insert("user_name", &user);
    ctx.insert("persona_description", &persona.description);
    ctx.insert("transcript", transcript);
    ctx
}

fn names(side: Side, persona: &PersonaBrief) -> (String, String) {
    let name = if persona.name.is_empty() { "Persona".to_string() } else { persona.name.clone() };
    match side {
        Side::Dialogue => ("A".into(), "B".into()),
        _ => ("User".into(), name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rubric::Rubric;

    fn criteria(r: &Rubric) -> Vec<&Criterion> {
        r.judged(Side::Persona)
    }

    #[test]
    fn clean_json_is_read() {
        let r = Rubric::load("default").unwrap();
        let c = criteria(&r);
        let answer = r#"{"in_role": {"score": 4, "reason": "natural"}, "engaging": {"score": 3, "reason": "ok"}, "empathy": {"score": 5, "reason": "kind"}, "safety": {"score": 5, "reason": ""}, "pacing": {"score": 2, "reason": "rushed"}, "voice": {"score": 4, "reason": ""}}"#;
        let p = parse_scores(answer, &c);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.scores["pacing"], (2.0, "rushed".into()));
    }

    #[test]
    fn malformed_answers_yield_what_can_be_read_and_nothing_more() {
        let r = Rubric::load("default").unwrap();
        let c = criteria(&r);
        // Chatter and a code fence around the object; scores as strings; a list under "scores".
        let fenced = "Sure! Here is my evaluation:\n```json\n{\"scores\": [{\"criterion\": \"in_role\", \"score\": \"4/5\"}, {\"criterion\": \"empathy\", \"score\": 2}]}\n```\nHope this helps.";
        let p = parse_scores(fenced, &c);
        assert_eq!(p.scores["in_role"].0, 4.0);
        assert_eq!(p.scores["empathy"].0, 2.0);
        assert_eq!(p.problems.len(), 4, "four criteria were not answered: {:?}", p.problems);
        // Truncated JSON (the judge ran out of tokens): the text fallback still finds scores.
        let truncated =
            r#"{"in_role": {"score": 5, "reason": "good"}, "engaging": {"score": 4, "rea"#;
        let p = parse_scores(truncated, &c);
        assert_eq!(p.scores["in_role"].0, 5.0);
        assert_eq!(p.scores["engaging"].0, 4.0);
        // Off the scale is refused, not clamped.
        let p = parse_scores(r#"{"in_role": 9}"#, &c);
        assert!(p.scores.is_empty());
        assert!(p
            .problems
            .iter()
            .any(|(id, why)| id == "in_role" && why.contains("off the scale")));
        // Prose with no numbers: nothing, and every criterion says so.
        let p = parse_scores("The persona was lovely and kind.", &c);
        assert!(p.scores.is_empty() && p.problems.len() == c.len());
        // Empty and garbage input never panic.
        for junk in [
            "",
            "{",
            "}{",
            "{\"in_role\": }",
            "\u{0}\u{ffff}",
            "[1,2,3]",
            "{\"in_role\": {\"score\": null}}",
        ] {
            let p = parse_scores(junk, &c);
            assert!(p.scores.is_empty(), "{junk:?} gave {:?}", p.scores);
        }
    }

    #[test]
    fn a_single_criterion_may_be_answered_bare() {
        let r = Rubric::load("default").unwrap();
        let one = vec![r.criterion("empathy").unwrap()];
        assert_eq!(
            parse_scores(r#"{"score": 3, "reason": "stock phrase"}"#, &one).scores["empathy"],
            (3.0, "stock phrase".into())
        );
        assert_eq!(parse_scores("empathy: 4", &one).scores["empathy"].0, 4.0);
    }

    #[test]
    fn pairwise_answers_are_read() {
        let r = Rubric::load("default").unwrap();
        let c = criteria(&r);
        let w = parse_winners(
            r#"{"in_role": {"winner": "A"}, "engaging": "b", "empathy": {"winner": "tie"}, "safety": {"winner": "maybe"}}"#,
            &c,
        );
        assert_eq!(w["in_role"], Some('A'));
        assert_eq!(w["engaging"], Some('B'));
        assert_eq!(w["empathy"], Some('='));
        assert_eq!(w["safety"], None);
        assert_eq!(w["voice"], None);
    }

    #[test]
    fn pairwise_wins_count_only_when_both_orders_agree() {
        assert_eq!(combine(Some('A'), Some('B')), PairOutcome::A, "a first, then a second: a");
        assert_eq!(combine(Some('B'), Some('A')), PairOutcome::B);
        assert_eq!(combine(Some('A'), Some('A')), PairOutcome::Tie, "position bias is not a win");
        assert_eq!(combine(Some('='), Some('=')), PairOutcome::Tie);
        assert_eq!(combine(None, Some('B')), PairOutcome::Tie, "unreadable is no win");
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics_and_never_returns_off_scale_scores(answer in ".{0,400}") {
            let r = Rubric::load("default").unwrap();
            let c = criteria(&r);
            let p = parse_scores(&answer, &c);
            for (id, (score, _)) in &p.scores {
                proptest::prop_assert!(r.criterion(id).unwrap().scale.contains(*score));
            }
            proptest::prop_assert_eq!(p.scores.len() + p.problems.len(), c.len());
        }
    }
}
