//! `rapport`: the one binary. It parses the command line and wires the library crates together;
//! the work itself lives in those crates.

mod backend;
mod bench;
mod chat;
mod datasets;
#[cfg(test)]
mod docs_check;
mod emotion;
mod eval;
mod models;
mod persona;
mod persona_chat;
mod serve;
mod serve_llm;
mod terminal;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rapport",
    version,
    about = "Rapport: practise conversation with empathetic AI personas"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, pull and locate models.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Chat in the terminal.
    Chat(chat::ChatArgs),
    /// Measure speed and reply quality.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Serve the chat app: the page, the JSON and OpenAI-compatible APIs, and the workers.
    Serve(serve::ServeArgs),
    /// Serve a model over an OpenAI-compatible API, so other machines can generate on this one.
    ServeLlm(serve_llm::ServeLlmArgs),
    /// List, check, import and export personas (Character Cards V1/V2/V3 in, V2 out).
    Persona {
        #[command(subcommand)]
        command: persona::PersonaCommand,
    },
    /// Evaluate personas, prompts and models: simulated batches, logged conversations, judge
    /// calibration, reports, comparisons, and the practice coach.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Train, run and score emotion recognition.
    Emotion {
        #[command(subcommand)]
        command: emotion::EmotionCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAPPORT_LOG")
                // mistral.rs's GGUF loader warns on every CPU start that "device mapping contains a
                // mix of GPU and CPU" (it is all CPU): only its errors are shown by default.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,mistralrs_core::pipeline::gguf=error,rapport=info",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Models { command } => models::run(command),
            Command::Chat(args) => chat::run(args).await,
            Command::Persona { command } => persona::run(command),
            Command::Bench { command } => bench::run(command).await,
            Command::Serve(args) => serve::run(args).await,
            Command::ServeLlm(args) => serve_llm::run(args).await,
            Command::Eval { command } => eval::run(command).await,
            Command::Emotion { command } => tokio::task::block_in_place(|| emotion::run(command)),
        }
    })
}
