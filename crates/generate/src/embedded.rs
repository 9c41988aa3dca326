//! mistral.rs in process: a local GGUF on the CPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mistralrs::{RequestBuilder, Response, TextMessageRole};
use mistralrs_core::{
    AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting, GGUFLoaderBuilder,
    GGUFSpecificConfig, MistralRsBuilder, ModelDType, SchedulerConfig, TokenSource,
};
use rapport_core::{
    GenerationError, GenerationEvent, GenerationRequest, GenerationSummary, Generator, Role,
    SamplingParams, StopFilter, StopReason, TextStream, Timings, TokenLogprob, TokenUsage,
    TopToken,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::template::TemplateCheck;

/// The dtype of activations (and of the KV cache, unless [`KvCacheDtype`] keeps it in f16 under
/// f32 activations). Weights stay in their GGUF quantisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// 32-bit floats: the fast choice on CPUs without native half-precision arithmetic.
    F32,
    /// 16-bit floats, what mistral.rs 0.8.1 picks by itself on CPU.
    F16,
    /// bfloat16.
    Bf16,
}

impl std::str::FromStr for Activations {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown activation dtype '{other}' (f32, f16, bf16)")),
        }
    }
}

/// How the key/value cache stores keys and values under `f32` activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// 16-bit floats, as llama.cpp keeps its cache: a decoding step reads every key and value of
    /// its sequence, and on a CPU that read is what attention waits on, so half the bytes make
    /// it faster, and a conversation's cache (and a batch's copy of it) takes half the memory.
    F16,
    /// 32-bit floats, as mistral.rs keeps it: the activations exactly.
    F32,
}

impl std::str::FromStr for KvCacheDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(format!("unknown key/value cache dtype '{other}' (f16, f32)")),
        }
    }
}

/// How the embedded engine is set up.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Sequences decoded together in one batch. Many users share one model: batching is how
    /// aggregate throughput grows past one stream's.
    pub max_batch: usize,
    /// Conversations whose KV cache is kept for reuse. Every turn of a conversation re-sends its
    /// whole history; with the prefix kept, only the new message is prefilled.
    pub prefix_cache: usize,
    /// Activation dtype. mistral.rs's GGUF builder always lets the engine choose, and on CPU it
    /// chooses F16, which AVX2 cannot compute in: every attention op converts back and forth.
    pub activations: Activations,
    /// How the key/value cache stores keys and values when activations are `f32` (with `f16` or
    /// `bf16` activations the cache holds the activations' dtype). mistral.rs reads this setting
    /// process-wide, so the last engine loaded decides for every engine in the process.
    pub kv_cache: KvCacheDtype,
    /// Where to keep copies of GGUF files whose slow block formats were re-encoded
    /// ([`crate::repack`]); `None` loads every file as it is.
    pub repack_dir: Option<PathBuf>,
    /// A Jinja chat template (`.jinja`) to use instead of the one in the GGUF file's metadata,
    /// for a model whose template is missing or wrong.
    pub chat_template: Option<PathBuf>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            max_batch: 16,
            prefix_cache: 16,
            activations: Activations::F32,
            kv_cache: KvCacheDtype::F16,
            repack_dir: rapport_models::cache_root().ok().map(|c| c.join("repacked")),
            chat_template: None,
        }
    }
}

/// mistral.rs 0.8.1 running a GGUF model in this process, on the CPU.
///
/// Cloning is cheap and shares the loaded model.
#[derive(Clone)]
pub struct MistralRsGenerator {
    model: Arc<mistralrs::Model>,
    name: String,
}

impl MistralRsGenerator {
    /// Loads a GGUF file. Its tokenizer and chat template are read from the file's metadata; no
    /// network is touched.
    ///
    /// This is what `mistralrs::GgufModelBuilder::build` does, done through mistral.rs-core so
    /// that the activation dtype can be chosen.
    pub async fn load(
        gguf: &Path,
        name: impl Into<String>,
        options: EmbeddedOptions,
    ) -> Result<Self, GenerationError> {
        let unavailable = |msg: String| {
            GenerationError::Unavailable(format!("cannot load {}: {msg}", gguf.display()))
        };
        if !gguf.is_file() {
            return Err(unavailable("no such file".into()));
        }
        // mistral.rs panics on a template path it cannot read or that does not end in .jinja:
        // checked here, so a bad path is an error that names it.
        let jinja = match &options.chat_template {
            Some(t) => {
                if t.extension().and_then(|e| e.to_str()) != Some("jinja") {
                    return Err(unavailable(format!(
                        "the chat template {} must be a .jinja file",
                        t.display()
                    )));
                }
                std::fs::read_to_string(t).map_err(|e| {
                    unavailable(format!("cannot read the chat template {}: {e}", t.display()))
                })?;
                Some(t.to_string_lossy().into_owned())
            }
            None => None,
        };
        let gguf = match &options.repack_dir {
            Some(dir) => {
                let (src, dir) = (gguf.to_path_buf(), dir.clone());
                let prepared =
                    tokio::task::spawn_blocking(move || crate::repack::prepare(&src, &dir))
                        .await
                        .map_err(|e| unavailable(e.to_string()))?
                        .map_err(unavailable)?;
                if prepared.repacked_tensors > 0 {
                    tracing::info!(tensors = prepared.repacked_tensors, path = %prepared.path.display(), "loading a copy with Q8_0 blocks");
                }
                prepared.path
            }
            None => gguf.to_path_buf(),
        };
        let unavailable = |msg: String| {
            GenerationError::Unavailable(format!("cannot load {}: {msg}", gguf.display()))
        };
        let dir = gguf
            .parent()
            .ok_or_else(|| unavailable("no parent directory".into()))?
            .to_string_lossy()
            .into_owned();
        let file = gguf
            .file_name()
            .ok_or_else(|| unavailable("no file name".into()))?
            .to_string_lossy()
            .into_owned();
        let dtype = match options.activations {
            Activations::F32 => ModelDType::F32,
            Activations::F16 => ModelDType::F16,
            Activations::Bf16 => ModelDType::BF16,
        };
        mistralrs_core::set_cpu_kv_cache_f16(options.kv_cache == KvCacheDtype::F16);
        let loader = GGUFLoaderBuilder::new(
            None,
            None,
            dir,
            vec![file],
            GGUFSpecificConfig { topology: None },
            false,
            jinja,
        )
        .build();
        // Loading maps and parses the file: blocking work, kept off the async workers.
        let pipeline = tokio::task::spawn_blocking(move || {
            loader.load_model_from_hf(
                None,
                TokenSource::None,
                &dtype,
                &mistralrs::Device::Cpu,
                true,
                DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
                None,
                None,
            )
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(format!("{e:#}")))?;
        let batch = std::num::NonZeroUsize::new(options.max_batch.max(1)).expect("at least 1");
        let scheduler =
            SchedulerConfig::DefaultScheduler { method: DefaultSchedulerMethod::Fixed(batch) };
        let runner = MistralRsBuilder::new(pipeline, scheduler, false, None)
            .with_no_kv_cache(false)
            .with_no_prefix_cache(options.prefix_cache == 0)
            .with_prefix_cache_n(options.prefix_cache.max(1))
            .build()
            .await;
        Ok(Self {
            model: Arc::new(mistralrs::Model::new(runner)),
            name: format!("mistralrs:{}", name.into()),
        })
    }
}

impl MistralRsGenerator {
    /// Renders the probe conversations of [`TemplateCheck`] through the model's chat template
    /// (mistral.rs's tokenize call: nothing is generated).
    pub async fn check_template(&self) -> TemplateCheck {
        let render = |later_system: bool| async move {
            let mut messages = mistralrs::TextMessages::new();
            for m in TemplateCheck::probe(later_system) {
                messages = messages.add_message(mistral_role(m.role), &m.content);
            }
            self.model
                .tokenize(either::Either::Left(messages), None, false, true, None)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        TemplateCheck { greeting_first: render(false).await, later_system: render(true).await }
    }
}

fn mistral_role(role: Role) -> TextMessageRole {
    match role {
        Role::System => TextMessageRole::System,
        Role::User => TextMessageRole::User,
        Role::Assistant => TextMessageRole::Assistant,
    }
}

/// Translates Rapport's sampling into mistral.rs's.
fn to_mistral_sampling(s: &SamplingParams) -> mistralrs::SamplingParams {
    let mut p = if s.is_greedy() {
        let mut p = mistralrs::SamplingParams::deterministic();
        // `deterministic()` leaves the temperature unset, which mistral.rs's engine reads as 1.0:
        // every greedy token then went through a softmax over the vocabulary, a top-1 partial
        // sort and a weighted draw over 49,152 weights of which one is not zero (`perf`: the
        // draw's table alone 1.5% of a batched SmolLM2 step). A temperature of zero takes its
        // argmax path: the same token, from one scan of the logits.
        p.temperature = Some(0.0);
        p
    } else {
        let mut p = mistralrs::SamplingParams::deterministic();
        p.temperature = Some(f64::from(s.temperature));
        p.top_k = s.top_k;
        p.top_p = s.top_p.map(f64::from);
        p.min_p = s.min_p.map(f64::from);
        p
    };
    p.repetition_penalty = s.repetition_penalty;
    p.frequency_penalty = s.frequency_penalty;
    p.presence_penalty = s.presence_penalty;
    p.dry_params =
        s.dry.as_ref().filter(|d| d.multiplier > 0.0).map(|d| mistralrs::DrySamplingParams {
            base: d.base,
            allowed_length: d.allowed_length,
            multiplier: d.multiplier,
            ..mistralrs::DrySamplingParams::default()
        });
    p.max_len = Some(s.max_tokens as usize);
    p.stop_toks = (!s.stop.is_empty()).then(|| mistralrs::StopTokens::Seqs(s.stop.clone()));
    p
}

/// mistral.rs's per-token log-probabilities (natural logs of the model's distribution, by the
/// patch recorded in vendor/PATCHES.md) in the seam's terms.
fn token_logprob(lp: mistralrs_core::ResponseLogprob) -> TokenLogprob {
    TokenLogprob {
        token: lp.token,
        logprob: lp.logprob,
        top: lp
            .top_logprobs
            .into_iter()
            .map(|t| TopToken { token: t.bytes.unwrap_or_default(), logprob: t.logprob })
            .collect(),
    }
}

#[async_trait::async_trait]
impl Generator for MistralRsGenerator {
    fn name(&self) -> &str {
        &self.name
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TextStream, GenerationError> {
        let started = Instant::now();
        let mut sampling = to_mistral_sampling(request.sampling());
        let want_logprobs = request.top_logprobs().is_some();
        if let Some(k) = request.top_logprobs() {
            sampling.top_n_logprobs = usize::from(k);
        }
        let mut builder =
            RequestBuilder::new().set_sampling(sampling).return_logprobs(want_logprobs);
        for m in request.messages() {
            builder = builder.add_message(mistral_role(m.role), &m.content);
        }

        // mistral.rs's stream borrows its `Model`; a task that owns an `Arc` of it forwards the
        // responses, so the returned stream is `'static`. A channel of 32 lets decoding run a
        // little ahead of a slow reader without unbounded buffering.
        let (tx, rx) = mpsc::channel::<Result<GenerationEvent, GenerationError>>(32);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let model = Arc::clone(&self.model);
        // mistral.rs streams a stop string (and sometimes a token past it) before it stops; the
        // filter cuts the reply before it. Decoding is left to end by itself, a token later,
        // so that the token counts stay those of the work done.
        let mut stops = StopFilter::new(&request.sampling().stop);
        tokio::spawn(async move {
            let mut stream = match model.stream_chat_request(builder).await {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(GenerationError::Backend(format!("{e:#}"))));
                    return;
                }
            };
            let mut first_token = None;
            let mut chunks = 0u32;
            let mut logprobs = Vec::new();
            while let Some(response) = stream.next().await {
                let event = match response {
                    Response::Chunk(chunk) => {
                        let Some(choice) = chunk.choices.into_iter().next() else { continue };
                        if let Some(lp) = choice.logprobs {
                            logprobs.push(token_logprob(lp));
                        }
                        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                            chunks += 1;
                            let released = stops.push(&text).text;
                            if !released.is_empty() {
                                first_token.get_or_insert_with(|| started.elapsed());
                                if tx.send(Ok(GenerationEvent::Chunk(released))).await.is_err() {
                                    // The reader is gone: dropping `stream` makes mistral.rs cancel.
                                    return;
                                }
                            }
                        }
                        let Some(reason) = choice.finish_reason else { continue };
                        let rest = stops.finish();
                        if !rest.is_empty() {
                            first_token.get_or_insert_with(|| started.elapsed());
                            let _ = tx.send(Ok(GenerationEvent::Chunk(rest))).await;
                        }
                        let reason = if stops.stopped() { "stop".to_string() } else { reason };
                        let usage = chunk.usage.map(|u| TokenUsage {
                            prompt_tokens: u.prompt_tokens as u32,
                            completion_tokens: u.completion_tokens as u32,
                            cached_prompt_tokens: u.cached_prompt_tokens as u32,
                        });
                        Ok(GenerationEvent::Done(GenerationSummary {
                            stop_reason: StopReason::from_finish_reason(&reason),
                            usage: usage.unwrap_or(TokenUsage {
                                completion_tokens: chunks,
                                ..TokenUsage::default()
                            }),
                            timings: Timings {
                                time_to_first_token: first_token,
                                total: started.elapsed(),
                            },
                            logprobs: std::mem::take(&mut logprobs),
                        }))
                    }
                    Response::Done(done) => {
                        // Not expected for streaming requests; accept it as the end all the same.
                        let reason = done
                            .choices
                            .first()
                            .map(|c| c.finish_reason.clone())
                            .unwrap_or_default();
                        Ok(GenerationEvent::Done(GenerationSummary {
                            stop_reason: StopReason::from_finish_reason(&reason),
                            usage: TokenUsage {
                                prompt_tokens: done.usage.prompt_tokens as u32,
                                completion_tokens: done.usage.completion_tokens as u32,
                                cached_prompt_tokens: done.usage.cached_prompt_tokens as u32,
                            },
                            timings: Timings {
                                time_to_first_token: first_token,
                                total: started.elapsed(),
                            },
                            logprobs: std::mem::take(&mut logprobs),
                        }))
                    }
                    Response::ModelError(msg, _) | Response::CompletionModelError(msg, _) => {
                        Err(GenerationError::Backend(msg))
                    }
                    Response::InternalError(e) => Err(GenerationError::Backend(e.to_string())),
                    Response::ValidationError(e) => {
                        Err(GenerationError::InvalidRequest(e.to_string()))
                    }
                    _ => {
                        Err(GenerationError::Protocol("mistral.rs sent a non-chat response".into()))
                    }
                };
                let last = !matches!(event, Ok(GenerationEvent::Chunk(_)));
                let _ = tx.send(event).await;
                if last {
                    return;
                }
            }
            let _ = tx
                .send(Err(GenerationError::Protocol(
                    "mistral.rs closed the stream before finishing".into(),
                )))
                .await;
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(Box::pin(ReceiverStream::new(rx))),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(GenerationError::Backend("the generation task ended before starting".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_core::DryParams;

    #[test]
    fn greedy_maps_to_deterministic_sampling() {
        let p = to_mistral_sampling(&SamplingParams::greedy(48));
        assert_eq!(p.top_k, Some(1));
        assert_eq!(p.temperature, Some(0.0), "greedy must take mistral.rs's argmax path");
        assert_eq!(p.max_len, Some(48));
        assert!(p.dry_params.is_none());
        assert!(p.stop_toks.is_none());
    }

    #[test]
    fn sampling_values_carry_over() {
        let s = SamplingParams {
            temperature: 0.6,
            top_p: Some(0.9),
            top_k: Some(40),
            min_p: Some(0.05),
            repetition_penalty: Some(1.1),
            dry: Some(DryParams { multiplier: 0.8, base: 1.75, allowed_length: 2 }),
            stop: vec!["\nUser:".into()],
            max_tokens: 96,
            ..SamplingParams::default()
        };
        let p = to_mistral_sampling(&s);
        assert_eq!(p.temperature, Some(0.6f32 as f64));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.repetition_penalty, Some(1.1));
        let dry = p.dry_params.unwrap();
        assert_eq!((dry.multiplier, dry.base, dry.allowed_length), (0.8, 1.75, 2));
        assert!(!dry.sequence_breakers.is_empty(), "DRY needs its default sequence breakers");
        assert!(
            matches!(p.stop_toks, Some(mistralrs::StopTokens::Seqs(ref v)) if v == &["\nUser:"])
        );
    }
}
