//! `rapport persona`: list and check personas, import Character Cards, export them.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use rapport_pipeline::card::{export_v2, export_v2_png};
use rapport_pipeline::PersonaLibrary;

use crate::persona_chat::{import_card, load_persona, personas_dir};

#[derive(Subcommand, Debug)]
pub enum PersonaCommand {
    /// List the personas (and check every file).
    List {
        /// Persona directory.
        #[arg(long, env = "RAPPORT_PERSONAS")]
        personas: Option<PathBuf>,
    },
    /// Import a Character Card (V1/V2/V3, JSON or PNG) as a persona TOML.
    Import {
        /// The card file.
        card: PathBuf,
        /// Where to write the TOML (prints it when absent).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Export a persona as a Character Card V2.
    Export {
        /// Persona id or file.
        persona: String,
        /// Write a PNG card (onto --image, or a blank image) instead of JSON.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Image to carry the card when writing PNG.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Include the persona's secret (in extensions.rapport).
        #[arg(long)]
        with_secret: bool,
        /// Persona directory.
        #[arg(long, env = "RAPPORT_PERSONAS")]
        personas: Option<PathBuf>,
    },
}

pub fn run(command: PersonaCommand) -> anyhow::Result<()> {
    match command {
        PersonaCommand::List { personas } => {
            let dir = personas_dir(personas);
            let library = PersonaLibrary::load_dir(&dir)?;
            for p in library.iter() {
                let secret = if p.secret.is_some() { " · has a secret" } else { "" };
                // A tuning changes what the model sees: say so where people look first.
                let tuned = if p.prompt.is_default() {
                    String::new()
                } else {
                    format!(" · prompt tuned: {}", p.prompt.describe())
                };
                println!(
                    "{:<16} {} · {} examples · {} forbidden topics{secret}{tuned}",
                    p.id,
                    p.name,
                    p.examples.len(),
                    p.forbidden_topics.len()
                );
            }
            eprintln!("from {}", dir.display());
        }
        PersonaCommand::Import { card, out } => {
            let imported = import_card(&card)?;
            let toml = imported.persona.to_toml();
            match out {
                Some(path) => {
                    std::fs::write(&path, toml)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "imported {:?} card '{}' → {}",
                        imported.spec,
                        imported.persona.name,
                        path.display()
                    );
                }
                None => print!("{toml}"),
            }
        }
        PersonaCommand::Export { persona, out, image, with_secret, personas } => {
            let persona = load_persona(&persona, &personas_dir(personas))?;
            match out {
                Some(path) if path.extension().is_some_and(|e| e == "png") => {
                    let image = image
                        .map(|i| {
                            std::fs::read(&i).with_context(|| format!("reading {}", i.display()))
                        })
                        .transpose()?;
                    std::fs::write(&path, export_v2_png(&persona, with_secret, image.as_deref())?)?;
                    eprintln!("wrote {}", path.display());
                }
                Some(path) => std::fs::write(
                    &path,
                    serde_json::to_string_pretty(&export_v2(&persona, with_secret))?,
                )?,
                None => {
                    println!("{}", serde_json::to_string_pretty(&export_v2(&persona, with_secret))?)
                }
            }
        }
    }
    Ok(())
}
