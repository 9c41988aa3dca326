//! `rapport chat --persona NAME`: a conversation through the whole pipeline, with its trace.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rapport_core::SamplingParams;
use rapport_pipeline::card::{import_bytes, ImportedCard};
use rapport_pipeline::prompt::{PromptLayout, Prompts, TokenBudget};
use rapport_pipeline::{Persona, PersonaLibrary, Pipeline, PipelineConfig, TurnEvent, TurnTrace};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::backend::Backend;
use crate::terminal::{next_input, Input};

/// The repository's personas, unless told otherwise.
pub fn personas_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| crate::datasets::datasets_dir().join("personas"))
}

/// A persona by id (from `dir`) or by file: a persona TOML, or a Character Card.
pub fn load_persona(name: &str, dir: &Path) -> anyhow::Result<Persona> {
    let path = Path::new(name);
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Persona::load(path)?),
            _ => Ok(import_card(path)?.persona),
        };
    }
    let library = PersonaLibrary::load_dir(dir)?;
    Ok(library.get(name)?.clone())
}

/// Reads a Character Card file (JSON or PNG), telling the person what was odd about it.
pub fn import_card(path: &Path) -> anyhow::Result<ImportedCard> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let card = import_bytes(&bytes).with_context(|| format!("importing {}", path.display()))?;
    for w in &card.warnings {
        eprintln!("note: {w}");
    }
    Ok(card)
}

/// What `rapport chat --persona` takes from the command line (`chat::ChatArgs`).
pub struct Options {
    pub personas: Option<PathBuf>,
    pub lexical_only: bool,
    pub prompts: Option<PathBuf>,
    pub layout: PromptLayout,
    pub context_tokens: usize,
    pub trace_json: Option<PathBuf>,
    pub trace: bool,
    pub stats: bool,
}

pub async fn run(
    args: &Options,
    persona: &str,
    backend: Backend,
    sampling: SamplingParams,
) -> anyhow::Result<()> {
    let persona = load_persona(persona, &personas_dir(args.personas.clone()))?;
    let nlu = if args.lexical_only {
        None
    } else {
        Some(Arc::new(tokio::task::spawn_blocking(|| crate::emotion::classifier(None)).await??))
    };
    let prompts = match &args.prompts {
        Some(dir) => Prompts::from_dir(dir)?,
        None => Prompts::embedded(),
    };
    let config = PipelineConfig {
        budget: TokenBudget {
            context_tokens: args.context_tokens,
            reply_tokens: sampling.max_tokens as usize,
        },
        sampling,
        layout: args.layout,
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::new(persona, nlu, Arc::new(prompts), config)?;
    let name = pipeline.persona().name.clone();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {name} ({}) — /reset starts over, /quit or Ctrl-D ends.",
            backend.model_name
        );
    }
    let mut conversation = pipeline.start();
    println!("{name}> {}", conversation.history[0].content);
    let mut trace_file = match &args.trace_json {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match next_input(&mut lines, interactive).await? {
            Input::Quit => break,
            Input::Reset => {
                conversation = pipeline.start();
                println!("{name}> {}", conversation.history[0].content);
                continue;
            }
            Input::Message(line) => line,
        };
        let line = line.as_str();
        print!("{name}> ");
        std::io::stdout().flush()?;
        let now = chrono::Local::now().fixed_offset();
        let mut on_event = |event: TurnEvent| match event {
            TurnEvent::Delta(text) => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            TurnEvent::Retract => {
                print!("\n({name} rephrases)\n{name}> ");
                let _ = std::io::stdout().flush();
            }
            TurnEvent::Prepared(_) => {}
        };
        let outcome = pipeline
            .respond(&mut conversation, line, now, backend.generator.as_ref(), &mut on_event)
            .await;
        println!();
        match outcome {
            Ok(outcome) => {
                if args.trace {
                    eprintln!("{}", render_trace(&outcome.trace));
                } else if args.stats {
                    if let Some(a) = outcome.trace.attempts.last() {
                        // A reply stopped before its end (it ran on into the next line) has
                        // no count from the engine: "?" rather than a false 0.
                        eprintln!(
                            "[{} prompt + {} reply tokens, ttft {} ms]",
                            opt(a.prompt_tokens),
                            opt(a.completion_tokens),
                            opt(a.ttft_ms)
                        );
                    }
                }
                if let Some(f) = trace_file.as_mut() {
                    writeln!(f, "{}", serde_json::to_string(&outcome.trace)?)?;
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}

/// The trace as a short block for people.
pub fn render_trace(t: &TurnTrace) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("   {label:<10}{text}\n"));
    let c = &t.context;
    let gap = c.gap_seconds.map(|g| format!(" · gap {g}s")).unwrap_or_default();
    let header = format!(
        "── turn {} · {} {} · {} min in{gap}",
        t.turn, c.local_time, c.weekday, c.minutes_in_conversation
    );
    let e = &t.emotion;
    let labels: Vec<String> = e.labels.iter().map(|(l, p)| format!("{l} {p:.2}")).collect();
    line(
        "emotion",
        format!(
            "{} · {} · valence {:+.2} · mood {:+.2} (trend {:+.2}){}",
            labels.join(", "),
            e.ekman,
            e.valence,
            e.mood,
            e.trend,
            if e.distress { " · DISTRESS" } else { "" }
        ),
    );
    line("stage", format!("{} → {} ({})", t.stage.from.as_str(), t.stage.to.as_str(), t.stage.why));
    let reasons: Vec<String> =
        t.closeness
            .reasons
            .iter()
            .map(|r| {
                if r.points != 0.0 {
                    format!("{:+.1} {}", r.points, r.code)
                } else {
                    r.code.clone()
                }
            })
            .collect();
    line(
        "closeness",
        format!(
            "{} → {} · {}: {}",
            t.closeness.before.get(),
            t.closeness.after.get(),
            t.closeness.decision.as_str(),
            if reasons.is_empty() { "nothing notable".into() } else { reasons.join(", ") }
        ),
    );
    line(
        "secret",
        match &t.secret {
            rapport_pipeline::secret::SecretStatus::None => "none".into(),
            rapport_pipeline::secret::SecretStatus::Locked { missing } => {
                format!("locked (needs {})", missing.join(", "))
            }
            rapport_pipeline::secret::SecretStatus::Unlocked => "UNLOCKED".into(),
        },
    );
    let out_hits: Vec<String> = t
        .attempts
        .iter()
        .flat_map(|a| match &a.outcome {
            rapport_pipeline::trace::AttemptOutcome::Rejected { hits } => {
                hits.iter().map(|h| h.code().to_string()).collect()
            }
            _ => vec![],
        })
        .collect();
    let in_hits: Vec<String> =
        t.input_guards.iter().map(|h| serde_json::to_string(h).unwrap_or_default()).collect();
    line(
        "guards",
        format!(
            "in: {} · out: {}",
            if in_hits.is_empty() { "none".into() } else { in_hits.join(", ") },
            if out_hits.is_empty() { "none".into() } else { out_hits.join(", ") }
        ),
    );
    let ex: Vec<String> = t
        .examples
        .iter()
        .map(|x| {
            format!(
                "#{} {:.2} \"{}\"",
                x.index,
                x.score,
                x.user.chars().take(40).collect::<String>()
            )
        })
        .collect();
    line("examples", if ex.is_empty() { "none".into() } else { ex.join(", ") });
    let p = &t.prompt;
    line(
        "prompt",
        format!(
            "~{} tokens (system {}, {} history messages, {} folded now, memory {})",
            p.estimated_tokens,
            p.system_tokens,
            p.history_messages,
            p.newly_folded,
            if p.memory_used { "yes" } else { "no" }
        ),
    );
    for a in &t.attempts {
        let outcome = match &a.outcome {
            rapport_pipeline::trace::AttemptOutcome::Accepted => "accepted".to_string(),
            rapport_pipeline::trace::AttemptOutcome::Rejected { hits } => format!(
                "rejected ({})",
                hits.iter().map(|h| h.code()).collect::<Vec<_>>().join(", ")
            ),
            rapport_pipeline::trace::AttemptOutcome::Failed { kind, .. } => {
                format!("failed ({kind})")
            }
        };
        line(
            "attempt",
            format!(
                "{} {outcome} · {} prompt tok (model's count), {} reply tok, ttft {} ms, {} ms{}{}",
                a.number,
                opt(a.prompt_tokens),
                opt(a.completion_tokens),
                opt(a.ttft_ms),
                a.total_ms,
                if a.retries > 0 { format!(", {} retries", a.retries) } else { String::new() },
                if a.cleanup.is_empty() {
                    String::new()
                } else {
                    format!(" · cleanup: {}", a.cleanup.join(", "))
                }
            ),
        );
    }
    if let Some(f) = &t.fallback {
        line("fallback", f.clone());
    }
    let tm = &t.timings_us;
    line("timings", format!("prepare {:.1} ms (understand {:.1}, prompt {:.1}) · generate {:.2} s · review {:.1} ms", tm.prepare as f64 / 1e3, tm.understand as f64 / 1e3, tm.prompt as f64 / 1e3, tm.generate as f64 / 1e6, tm.review as f64 / 1e3));
    format!("{header}\n{out}")
}

/// A count the backend may not have reported (a draft cut short has no summary).
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}
