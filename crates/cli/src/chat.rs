//! `rapport chat`: a multi-turn conversation in the terminal, streamed as it is generated.

use std::io::{IsTerminal, Write};

use clap::Args;
use rapport_core::{collect_completion, ChatMessage, GenerationRequest};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::backend::BackendArgs;

const DEFAULT_SYSTEM: &str = "You are Mia, a warm, playful 27-year-old landscape architect who loves hiking and bad puns. \
You are chatting with someone you just met. Reply like a real person texting: one or two short sentences, \
sometimes a question back. Never mention being an AI.";

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// The system prompt (who the model plays).
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    system: String,
    /// Upper bound on tokens per reply (defaults to the model's preset).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Print token counts and timings after each reply.
    #[arg(long)]
    stats: bool,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let backend = args.backend.build().await?;
    let mut sampling = backend.sampling.clone();
    if let Some(n) = args.max_tokens {
        sampling.max_tokens = n;
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Chatting with {} — /reset starts over, /quit or Ctrl-D ends.", backend.model_name);
    }
    let mut history = vec![ChatMessage::system(args.system.clone())];
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            print!("you> ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next_line().await? else { break };
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                history.truncate(1);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
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
                    let ttft = s.timings.time_to_first_token.map(|d| format!("{:.2}s", d.as_secs_f64())).unwrap_or("-".into());
                    let tps = s.timings.decode_tokens_per_sec(&s.usage).map(|t| format!("{t:.1}")).unwrap_or("-".into());
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

fn short_name(model: &str) -> &str {
    model.split(['-', '.']).next().unwrap_or(model)
}
