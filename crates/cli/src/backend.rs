//! Choosing and building a generation backend from the command line.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rapport_core::{Generator, SamplingParams};
use rapport_generate::{
    Activations, EmbeddedOptions, KvCacheDtype, MistralRsGenerator, OpenAiCompatGenerator,
    OpenAiCompatOptions, TemplateCheck,
};
use rapport_models::{ModelCache, ModelKind, ModelSource, Puller};
use rapport_pipeline::prompt::PromptLayout;

/// The default chat model for people; tests and CI name `smollm2-135m` explicitly.
pub const DEFAULT_MODEL: &str = "qwen2.5-1.5b";

/// Where replies are generated.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// A preset name (`rapport models list`) or a path to a GGUF file.
    #[arg(long, short, default_value = DEFAULT_MODEL, env = "RAPPORT_MODEL")]
    pub model: String,
    /// Generate on an OpenAI-compatible server instead (e.g. http://10.0.0.5:8000/v1).
    #[arg(long, env = "RAPPORT_LLM_URL")]
    pub llm_url: Option<String>,
    /// The `model` name to send to that server (defaults to --model).
    #[arg(long, requires = "llm_url")]
    pub llm_model: Option<String>,
    /// Bearer token for that server.
    #[arg(long, env = "RAPPORT_LLM_API_KEY", requires = "llm_url", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Pull the model first if it is a preset that is not installed.
    #[arg(long)]
    pub pull: bool,
    /// Activation dtype of the embedded engine: f32 (fast on CPU), f16 or bf16.
    #[arg(long, default_value = "f32", env = "RAPPORT_ACTIVATIONS")]
    pub activations: Activations,
    /// How the embedded engine's key/value cache stores keys and values under f32 activations:
    /// f16 (half the memory and the bytes each decoding step reads, as llama.cpp) or f32.
    #[arg(long, default_value = "f16", env = "RAPPORT_KV_CACHE")]
    pub kv_cache: KvCacheDtype,
    /// Load GGUF files as they are, without re-encoding Q5_0/Q5_1 blocks as Q8_0.
    #[arg(long)]
    pub no_repack: bool,
    /// Sequences the embedded engine decodes together in one batch (replies written at once
    /// beyond this wait for a place in the batch).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Seconds to wait for the OpenAI-compatible server's first byte, and between its chunks,
    /// before the attempt counts as failed (and is retried, then answered with a fallback).
    #[arg(long, requires = "llm_url")]
    pub llm_timeout_secs: Option<u64>,
    /// A Jinja chat template (.jinja) for the embedded engine, instead of the one in the GGUF
    /// file: for a model whose template is missing or wrong.
    #[arg(long, conflicts_with = "llm_url")]
    pub chat_template: Option<std::path::PathBuf>,
}

/// A ready backend and the sampling defaults that go with its model.
pub struct Backend {
    pub generator: Arc<dyn Generator>,
    pub sampling: SamplingParams,
    pub model_name: String,
    /// What the model's chat template accepts: the embedded engine's, or a remote server's as
    /// its answers show (`None` when it could not be asked).
    pub template: Option<TemplateCheck>,
    /// Whose answer `template` is, for people: "MODEL's chat template" or "the server at URL".
    pub template_of: String,
}

/// What a remote server's chat template takes, from its answers to one token of each probe
/// ([`TemplateCheck::ask`]). A server that cannot be asked now is not a reason to refuse to
/// start (it may come up later): the check is skipped, said in the log, and a refusal then
/// shows on the first reply. 30 s is long enough for one token of a short prompt; a hung
/// server would otherwise hold the start for the client's whole first-byte timeout.
async fn probe_server(generator: &dyn Generator, url: &str) -> Option<TemplateCheck> {
    match TemplateCheck::ask(generator, std::time::Duration::from_secs(30)).await {
        Ok(check) => Some(check),
        Err(e) => {
            tracing::warn!(%url, error = %e, "could not ask the server how its chat template takes Rapport's conversations; checked on the first reply instead");
            None
        }
    }
}

impl Backend {
    /// The prompt layout to run with: the one asked for (`requested`), or by default the
    /// default layout, unless the model's chat template cannot take it. A template that
    /// refuses a second system message gets `notes-in-system` when no layout was asked for,
    /// and a clear error when one that needs it was; a template that cannot take the persona's
    /// greeting before the user's first message is refused, whatever the layout.
    pub fn layout(&self, requested: Option<PromptLayout>) -> anyhow::Result<PromptLayout> {
        let Some(check) = &self.template else {
            return Ok(requested.unwrap_or_default());
        };
        if let Err(e) = &check.greeting_first {
            anyhow::bail!(
                "{} cannot take Rapport's conversations, which open with the persona's greeting \
                 before the user's first message: {e}. Give a template that can with \
                 --chat-template FILE.jinja, or use another model",
                self.template_of
            );
        }
        let Err(e) = &check.later_system else { return Ok(requested.unwrap_or_default()) };
        match requested {
            None => {
                tracing::warn!(template = %self.template_of, error = %e, "the chat template refuses a system message after the first: using --layout notes-in-system");
                Ok(PromptLayout::NotesInSystem)
            }
            Some(PromptLayout::NotesInSystem) => Ok(PromptLayout::NotesInSystem),
            Some(layout) => anyhow::bail!(
                "{} refuses a system message after the first ({e}), which the {layout} layout \
                 sends with each turn's notes: run with --layout notes-in-system (or without \
                 --layout, which chooses it)",
                self.template_of
            ),
        }
    }
}

impl BackendArgs {
    pub async fn build(&self) -> anyhow::Result<Backend> {
        let preset = match ModelCache::source(&self.model) {
            Ok(ModelSource::Preset(p)) => Some(p),
            _ => None,
        };
        if let Some(p) = &preset {
            anyhow::ensure!(p.kind == ModelKind::ChatGguf, "'{}' is not a chat model", p.name);
        }
        let sampling = preset.as_ref().and_then(|p| p.sampling.clone()).unwrap_or_default();

        if let Some(url) = &self.llm_url {
            let mut options = OpenAiCompatOptions::new(
                url,
                self.llm_model.clone().unwrap_or_else(|| self.model.clone()),
            );
            options.api_key = self.llm_api_key.clone();
            if let Some(secs) = self.llm_timeout_secs {
                options.first_byte_timeout = std::time::Duration::from_secs(secs.max(1));
                options.idle_timeout = std::time::Duration::from_secs(secs.max(1));
            }
            let generator: Arc<dyn Generator> = Arc::new(OpenAiCompatGenerator::new(options)?);
            let template = probe_server(generator.as_ref(), url).await;
            return Ok(Backend {
                generator,
                sampling,
                model_name: self.model.clone(),
                template,
                template_of: format!("the server at {url} (model {})", self.model),
            });
        }

        let cache = ModelCache::default_location()?;
        let installed = match (&preset, self.pull) {
            (Some(p), true) => {
                let p = p.clone();
                let cache = cache.clone();
                tokio::task::spawn_blocking(move || Puller::default().pull(&cache, &p)).await??
            }
            _ => cache.resolve(&self.model)?,
        };
        let started = std::time::Instant::now();
        let mut options = EmbeddedOptions {
            activations: self.activations,
            kv_cache: self.kv_cache,
            max_batch: self.max_batch.max(1),
            ..EmbeddedOptions::default()
        };
        if self.no_repack {
            options.repack_dir = None;
        }
        options.chat_template = self.chat_template.clone();
        let generator = MistralRsGenerator::load(&installed.primary, &installed.name, options)
            .await
            .with_context(|| format!("loading {}", installed.primary.display()))?;
        tracing::info!(model = %installed.name, secs = started.elapsed().as_secs_f32(), "model loaded");
        let template = Some(generator.check_template().await);
        let template_of = format!("{}'s chat template", installed.name);
        Ok(Backend {
            generator: Arc::new(generator),
            sampling,
            model_name: installed.name,
            template,
            template_of,
        })
    }
}
