//! `rapport models list | pull NAME | path NAME`.

use clap::Subcommand;
use rapport_models::{presets, ModelCache, ModelKind, ModelSource, Puller};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Show the presets and whether each is installed.
    List,
    /// Download, verify and install a preset.
    Pull {
        /// The preset's name.
        name: String,
    },
    /// Print the file to load for a preset (or a GGUF path), failing if it is not installed.
    Path {
        /// A preset name or a path.
        name: String,
    },
}

pub fn run(command: ModelsCommand) -> anyhow::Result<()> {
    let cache = ModelCache::default_location()?;
    match command {
        ModelsCommand::List => {
            println!(
                "{:<14} {:<10} {:>9}  {:<9}  description",
                "name", "kind", "size", "installed"
            );
            for p in presets() {
                let kind = match p.kind {
                    ModelKind::ChatGguf => "chat",
                    ModelKind::Embedding => "embedding",
                    ModelKind::Dataset => "dataset",
                };
                let installed = if cache.installed(&p).is_some() { "yes" } else { "no" };
                let size = format!("{:.0} MB", p.total_size() as f64 / 1e6);
                println!(
                    "{:<14} {:<10} {:>9}  {:<9}  {}",
                    p.name, kind, size, installed, p.description
                );
            }
            println!("\ncache: {}", cache.root().display());
        }
        ModelsCommand::Pull { name } => {
            let preset = match ModelCache::source(&name)? {
                ModelSource::Preset(p) => p,
                ModelSource::File(path) => {
                    anyhow::bail!("{} is a file, not a preset: nothing to pull", path.display())
                }
            };
            let installed = Puller::default().pull(&cache, &preset)?;
            println!("{}", installed.primary.display());
        }
        ModelsCommand::Path { name } => println!("{}", cache.resolve(&name)?.primary.display()),
    }
    Ok(())
}
