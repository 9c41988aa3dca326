//! `rapport chat`: a multi-turn conversation in the terminal, streamed as it is generated.

use std::io::{IsTerminal, Write};

use clap::Args;
use rapport_core::{collect_completion, ChatMessage, GenerationRequest};
use tokio::io::{AsyncBufReadExt, BufReader};

use rapport_pipeline::prompt::PromptLayout;

use crate::backend::BackendArgs;
use crate::terminal::{next_input, Input};

const DEFAULT_SYSTEM: &str = "You are Mia, a warm, playful 27-year-old landscape architect who loves hiking and bad puns. \
You are chatting with someone you just met. Reply like a real person texting: one or two short sentences, \
sometimes a question back. Never mention being an AI.";

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
    /// The system prompt (who the model plays).
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    pub(crate) system: String,
    /// Upper bound on tokens per reply (defaults to the model's preset).
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Print token counts and timings after each reply.
    #[arg(long)]
    pub(crate) stats: bool,
    /// Chat with a persona through the whole pipeline: an id from --personas, or a persona
    /// TOML file, or a Character Card (JSON or PNG).
    #[arg(long)]
    pub(crate) persona: Option<String>,
    /// Where persona ids are looked up.
    #[arg(long, env = "RAPPORT_PERSONAS")]
    pub(crate) personas: Option<std::path::PathBuf>,
    /// Show each turn's stage, emotion, closeness, decision, guards and examples.
    #[arg(long, requires = "persona")]
    pub(crate) trace: bool,
    /// Append each turn's full trace as a JSON line to this file.
    #[arg(long, requires = "persona")]
    pub(crate) trace_json: Option<std::path::PathBuf>,
    /// Skip the emotion model and sentence vectors (lexical guards and neutral emotion only).
    #[arg(long, requires = "persona")]
    pub(crate) lexical_only: bool,
    /// Prompt templates directory (defaults to the templates built into the binary).
    #[arg(long, requires = "persona")]
    pub(crate) prompts: Option<std::path::PathBuf>,
    /// Where each turn's notes and the persona's examples go (docs/eval/prompt-layout.md):
    /// `compact-history`, `compact`, `cached-exchanges`, `cached`, `notes-before-message`, or
    /// `notes-in-system` (for chat templates that allow only one system message). Default:
    /// `compact`, or `notes-in-system` for a model whose chat template needs it.
    #[arg(long, requires = "persona")]
    pub(crate) layout: Option<PromptLayout>,
    /// Context window the prompt may fill, in tokens.
    #[arg(long, default_value_t = 2048)]
    pub(crate) context_tokens: usize,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let backend = args.backend.build().await?;
    let mut sampling = backend.sampling.clone();
    if let Some(n) = args.max_tokens {
        sampling.max_tokens = n;
    }
    if let Some(persona) = &args.persona {
        let options = crate::persona_chat::Options {
            personas: args.personas.clone(),
            lexical_only: args.lexical_only,
            prompts: args.prompts.clone(),
            layout: backend.layout(args.layout)?,
            context_tokens: args.context_tokens,
            trace_json: args.trace_json.clone(),
            trace: args.trace,
            stats: args.stats,
        };
        return crate::persona_chat::run(&options, persona, backend, sampling).await;
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {} — /reset starts over, /quit or Ctrl-D ends.",
            backend.model_name
        );
    }
    let mut history = vec![ChatMessage::system(args.system.clone())];
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match next_input(&mut lines, interactive).await? {
            Input::Quit => break,
            Input::Reset => {
                history.truncate(1);
                eprintln!("(conversation cleared)");
                continue;
            }
            Input::Message(line) => line,
        };
        history.push(ChatMessage::user(line));
        let request = GenerationRequest::new(history.clone(), sampling.clone())?;
        print!("{}> ", short_name(&backend.model_name));
        std::io::stdout().flush()?;
        let result = match backend.generator.generate(request).await {
            Ok(stream) => {
                collect_completion(stream, |chunk| {
                    print!("{chunk}");
                    let _ = std::io::stdout().flush();
                })
                .await
            }
            Err(e) => Err(e),
        };
        println!();
        match result {
            Ok(done) => {
                if args.stats {
                    let s = &done.summary;
                    let ttft = s
                        .timings
                        .time_to_first_token
                        .map(|d| format!("{:.2}s", d.as_secs_f64()))
                        .unwrap_or("-".into());
                    let tps = s
                        .timings
                        .decode_tokens_per_sec(&s.usage)
                        .map(|t| format!("{t:.1}"))
                        .unwrap_or("-".into());
                    eprintln!(
                        "[{} prompt + {} reply tokens, ttft {ttft}, {tps} tok/s, {:?}]",
                        s.usage.prompt_tokens, s.usage.completion_tokens, s.stop_reason
                    );
                }
                history.push(ChatMessage::assistant(done.text.trim()));
            }
            Err(e) => {
                // Drop the unanswered message so the history stays user/assistant alternating;
                // the person can simply send it again.
                history.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

pub(crate) fn short_name(model: &str) -> &str {
    model.split(['-', '.']).next().unwrap_or(model)
}
