//! A client for OpenAI-compatible `/v1/chat/completions` servers, streaming.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rapport_core::{
    GenerationError, GenerationEvent, GenerationRequest, GenerationSummary, Generator, StopFilter,
    StopReason, TextStream, Timings, TokenLogprob, TokenUsage, TopToken,
};
use serde::Deserialize;
use serde_json::{json, Value};

use rapport_core::SseDecoder;

/// Where the server is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct OpenAiCompatOptions {
    /// The API base, e.g. `http://10.0.0.5:8000/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The `model` field sent with each request.
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// Time allowed to open the connection.
    pub connect_timeout: Duration,
    /// Time allowed until the first byte of the reply. Generous by default: a CPU server may
    /// queue the request behind others and then prefill a long persona prompt.
    pub first_byte_timeout: Duration,
    /// Longest silence allowed between two pieces of the stream once it has begun.
    pub idle_timeout: Duration,
    /// Send sampling fields beyond OpenAI's own (`top_k`, `min_p`, `repetition_penalty`, DRY),
    /// which mistral.rs, llama.cpp and vLLM servers understand. Turn off for strict servers.
    pub send_extensions: bool,
}

impl OpenAiCompatOptions {
    /// Options with default timeouts for a server at `base_url` serving `model`.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            send_extensions: true,
        }
    }
}

/// Generation on an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiCompatGenerator {
    client: reqwest::Client,
    url: String,
    options: OpenAiCompatOptions,
    name: String,
}

impl OpenAiCompatGenerator {
    /// A client for the server described by `options`.
    pub fn new(options: OpenAiCompatOptions) -> Result<Self, GenerationError> {
        let base = options.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(GenerationError::InvalidRequest(format!(
                "the generation server's URL must start with http:// or https://, got '{}'",
                options.base_url
            )));
        }
        let client =
            reqwest::Client::builder().connect_timeout(options.connect_timeout).build().map_err(
                |e| GenerationError::Unavailable(format!("cannot build an HTTP client: {e}")),
            )?;
        Ok(Self {
            client,
            url: format!("{base}/chat/completions"),
            name: format!("openai:{base}#{}", options.model),
            options,
        })
    }

    /// The JSON body for a request.
    fn body(&self, request: &GenerationRequest) -> Value {
        let s = request.sampling();
        let messages: Vec<Value> = request
            .messages()
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": self.options.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
        });
        let obj = body.as_object_mut().expect("a JSON object");
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                obj.insert(k.to_string(), v);
            }
        };
        // An omitted field means "the server's default", which need not be "off": a setting the
        // request leaves unset is sent as its neutral value, so the server does what we mean.
        put("top_p", Some(s.top_p.unwrap_or(1.0).into()));
        put("frequency_penalty", Some(s.frequency_penalty.unwrap_or(0.0).into()));
        put("presence_penalty", Some(s.presence_penalty.unwrap_or(0.0).into()));
        put("seed", s.seed.map(Value::from));
        put("stop", (!s.stop.is_empty()).then(|| Value::from(s.stop.clone())));
        if let Some(k) = request.top_logprobs() {
            put("logprobs", Some(true.into()));
            put("top_logprobs", Some(k.into()));
        }
        if self.options.send_extensions {
            // top_k has no neutral value all servers share (vLLM -1, llama.cpp 0): omitted when unset.
            put("top_k", s.top_k.map(Value::from));
            put("min_p", Some(s.min_p.unwrap_or(0.0).into()));
            put("repetition_penalty", Some(s.repetition_penalty.unwrap_or(1.0).into()));
            match s.dry.as_ref().filter(|d| d.multiplier > 0.0) {
                Some(d) => {
                    put("dry_multiplier", Some(d.multiplier.into()));
                    put("dry_base", Some(d.base.into()));
                    put("dry_allowed_length", Some(d.allowed_length.into()));
                }
                None => put("dry_multiplier", Some(0.0.into())),
            }
        }
        body
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<ChunkUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    finish_reason: Option<String>,
    /// OpenAI's shape, which vLLM and llama.cpp's server follow: `{"content": [{token,
    /// logprob, top_logprobs: [{token, logprob}]}]}`, one entry per token of the delta.
    #[serde(default)]
    logprobs: Option<ChunkLogprobs>,
}

#[derive(Deserialize)]
struct ChunkLogprobs {
    #[serde(default)]
    content: Option<Vec<ChunkTokenLogprob>>,
}

#[derive(Deserialize)]
struct ChunkTokenLogprob {
    token: String,
    logprob: f32,
    #[serde(default)]
    top_logprobs: Vec<ChunkTopLogprob>,
}

#[derive(Deserialize)]
struct ChunkTopLogprob {
    token: String,
    logprob: f32,
}

#[derive(Deserialize)]
struct ChunkDelta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    /// OpenAI's place for cached prompt tokens; vLLM and llama.cpp's server fill it in when
    /// their prefix caching is on.
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

/// What the stream has said so far; turned into the summary at `[DONE]`.
struct StreamState {
    started: Instant,
    first_token: Option<Duration>,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
    chunks: u32,
    /// Not every server honours `stop` strictly; cutting again here is harmless where it does.
    stops: StopFilter,
    /// Whether the request asked for log-probabilities; a server that ignores the request
    /// (`logprobs` is an optional feature of OpenAI-compatible servers) is then an error.
    want_logprobs: bool,
    logprobs: Vec<TokenLogprob>,
}

impl StreamState {
    /// Interprets one event's data: text to forward, then possibly the end.
    fn on_data(&mut self, data: &str) -> Result<Vec<GenerationEvent>, GenerationError> {
        if data == "[DONE]" {
            let Some(mut reason) = self.finish_reason.take() else {
                return Err(GenerationError::Protocol(
                    "the stream ended with [DONE] but no finish_reason".into(),
                ));
            };
            if self.stops.stopped() {
                reason = "stop".into();
            }
            if self.want_logprobs && self.logprobs.is_empty() && self.chunks > 0 {
                return Err(GenerationError::Backend(
                    "log-probabilities were asked for but the server sent none: it does not \
                     support `logprobs` (vLLM and llama.cpp's server do)"
                        .into(),
                ));
            }
            let mut events = Vec::new();
            let held = self.stops.finish();
            if !held.is_empty() {
                self.first_token.get_or_insert_with(|| self.started.elapsed());
                events.push(GenerationEvent::Chunk(held));
            }
            events.push(GenerationEvent::Done(GenerationSummary {
                stop_reason: StopReason::from_finish_reason(&reason),
                // Servers that ignore `include_usage` leave us the chunk count, one token each
                // on every server we know; better an estimate than a zero.
                usage: self.usage.unwrap_or(TokenUsage {
                    completion_tokens: self.chunks,
                    ..TokenUsage::default()
                }),
                timings: Timings {
                    time_to_first_token: self.first_token,
                    total: self.started.elapsed(),
                },
                logprobs: std::mem::take(&mut self.logprobs),
            }));
            return Ok(events);
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            GenerationError::Protocol(format!("an event is not JSON ({e}): {}", preview(data)))
        })?;
        if let Some(err) = value.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            return Err(GenerationError::Backend(msg));
        }
        let chunk: Chunk = serde_json::from_value(value).map_err(|e| {
            GenerationError::Protocol(format!(
                "an event is not a chat completion chunk ({e}): {}",
                preview(data)
            ))
        })?;
        if let Some(u) = chunk.usage {
            self.usage = Some(TokenUsage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cached_prompt_tokens: u
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
            });
        }
        let mut text = String::new();
        for choice in chunk.choices {
            let tokens = choice.logprobs.and_then(|l| l.content).unwrap_or_default();
            self.logprobs.extend(tokens.into_iter().map(|t| {
                TokenLogprob {
                    token: t.token,
                    logprob: t.logprob,
                    top: t
                        .top_logprobs
                        .into_iter()
                        .map(|a| TopToken { token: a.token, logprob: a.logprob })
                        .collect(),
                }
            }));
            if let Some(content) = choice.delta.and_then(|d| d.content) {
                text.push_str(&content);
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.chunks += 1;
        let text = self.stops.push(&text).text;
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.first_token.get_or_insert_with(|| self.started.elapsed());
        Ok(vec![GenerationEvent::Chunk(text)])
    }
}

fn preview(s: &str) -> String {
    let cut: String = s.chars().take(120).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn transport_error(e: reqwest::Error, first_byte: Duration) -> GenerationError {
    if e.is_timeout() {
        GenerationError::Timeout(first_byte)
    } else if e.is_connect() {
        GenerationError::Unavailable(format!("cannot connect: {e}"))
    } else {
        GenerationError::Unavailable(e.to_string())
    }
}

#[async_trait::async_trait]
impl Generator for OpenAiCompatGenerator {
    fn name(&self) -> &str {
        &self.name
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TextStream, GenerationError> {
        let started = Instant::now();
        let mut http = self.client.post(&self.url).json(&self.body(&request));
        if let Some(key) = &self.options.api_key {
            http = http.bearer_auth(key);
        }
        let first_byte = self.options.first_byte_timeout;
        let response = tokio::time::timeout(first_byte, http.send())
            .await
            .map_err(|_| GenerationError::Timeout(first_byte))?
            .map_err(|e| transport_error(e, first_byte))?;

        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message").and_then(Value::as_str).map(str::to_string)
                })
                .unwrap_or_else(|| preview(&body));
            let msg = format!("HTTP {status}: {detail}");
            return Err(match status.as_u16() {
                400 | 404 | 413 | 422 => GenerationError::InvalidRequest(msg),
                408 | 429 | 500..=599 => GenerationError::Unavailable(msg),
                _ => GenerationError::Backend(msg),
            });
        }

        let idle = self.options.idle_timeout;
        let mut bytes = response.bytes_stream();
        let mut decoder = SseDecoder::new();
        let mut state = StreamState {
            started,
            first_token: None,
            finish_reason: None,
            usage: None,
            chunks: 0,
            stops: StopFilter::new(&request.sampling().stop),
            want_logprobs: request.top_logprobs().is_some(),
            logprobs: Vec::new(),
        };
        let stream = async_stream(move |tx| async move {
            let mut got_bytes = false;
            loop {
                let wait = if got_bytes { idle } else { first_byte };
                let next = match tokio::time::timeout(wait, bytes.next()).await {
                    Err(_) => return tx.fail(GenerationError::Timeout(wait)).await,
                    Ok(None) => {
                        return tx
                            .fail(GenerationError::Protocol(
                                "the server closed the stream before [DONE]".into(),
                            ))
                            .await
                    }
                    Ok(Some(Err(e))) => {
                        return tx
                            .fail(GenerationError::Protocol(format!("the stream broke: {e}")))
                            .await
                    }
                    Ok(Some(Ok(b))) => b,
                };
                got_bytes = true;
                let events = match decoder.push(&next) {
                    Ok(ev) => ev,
                    Err(e) => return tx.fail(GenerationError::Protocol(e)).await,
                };
                for event in events {
                    let produced = match state.on_data(&event.data) {
                        Ok(produced) => produced,
                        Err(e) => return tx.fail(e).await,
                    };
                    for item in produced {
                        let done = matches!(item, GenerationEvent::Done(_));
                        if !tx.send(Ok(item)).await || done {
                            return; // done, or the reader is gone (dropping the body closes the connection)
                        }
                    }
                }
            }
        });
        Ok(stream)
    }
}

/// A tiny generator-to-stream adapter over a channel, so the body above reads top to bottom.
struct Sender(tokio::sync::mpsc::Sender<Result<GenerationEvent, GenerationError>>);

impl Sender {
    async fn send(&self, item: Result<GenerationEvent, GenerationError>) -> bool {
        self.0.send(item).await.is_ok()
    }
    async fn fail(&self, e: GenerationError) {
        let _ = self.0.send(Err(e)).await;
    }
}

fn async_stream<F, Fut>(body: F) -> TextStream
where
    F: FnOnce(Sender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    tokio::spawn(body(Sender(tx)));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_core::{ChatMessage, SamplingParams};

    fn state() -> StreamState {
        StreamState {
            started: Instant::now(),
            first_token: None,
            finish_reason: None,
            usage: None,
            chunks: 0,
            stops: StopFilter::new(&[]),
            want_logprobs: false,
            logprobs: Vec::new(),
        }
    }

    #[test]
    fn the_body_carries_messages_sampling_and_extensions() {
        let g =
            OpenAiCompatGenerator::new(OpenAiCompatOptions::new("http://127.0.0.1:1/v1/", "mia"))
                .unwrap();
        let req = GenerationRequest::new(
            vec![ChatMessage::system("be Mia"), ChatMessage::user("hi")],
            SamplingParams { stop: vec!["\nUser:".into()], ..SamplingParams::default() },
        )
        .unwrap();
        let body = g.body(&req);
        assert_eq!(g.url, "http://127.0.0.1:1/v1/chat/completions");
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stop"][0], "\nUser:");
        assert!(body.get("min_p").is_some() && body.get("dry_multiplier").is_some());

        let mut strict = OpenAiCompatOptions::new("http://127.0.0.1:1/v1", "mia");
        strict.send_extensions = false;
        let body = OpenAiCompatGenerator::new(strict).unwrap().body(&req);
        assert!(body.get("min_p").is_none() && body.get("dry_multiplier").is_none());

        // Unset penalties are sent as "off", not left to the server's defaults.
        let greedy =
            GenerationRequest::new(req.messages().to_vec(), SamplingParams::greedy(4)).unwrap();
        let body = g.body(&greedy);
        assert_eq!(
            (body["dry_multiplier"].as_f64(), body["repetition_penalty"].as_f64()),
            (Some(0.0), Some(1.0))
        );
        assert_eq!((body["min_p"].as_f64(), body["top_p"].as_f64()), (Some(0.0), Some(1.0)));
    }

    #[test]
    fn logprobs_are_asked_for_read_back_and_their_absence_is_an_error() {
        let g = OpenAiCompatGenerator::new(OpenAiCompatOptions::new("http://127.0.0.1:1/v1", "m"))
            .unwrap();
        let req = GenerationRequest::new(
            vec![ChatMessage::system("judge"), ChatMessage::user("score?")],
            SamplingParams::greedy(1),
        )
        .unwrap();
        assert!(g.body(&req).get("logprobs").is_none(), "not asked, not sent");
        let req = req.with_top_logprobs(5).unwrap();
        let body = g.body(&req);
        assert_eq!(
            (body["logprobs"].as_bool(), body["top_logprobs"].as_u64()),
            (Some(true), Some(5))
        );

        let mut s = state();
        s.want_logprobs = true;
        s.on_data(r#"{"choices":[{"delta":{"content":"4"},"finish_reason":"length","logprobs":{"content":[{"token":"4","logprob":-0.25,"top_logprobs":[{"token":"4","logprob":-0.25},{"token":"3","logprob":-1.6}]}]}}]}"#).unwrap();
        let [GenerationEvent::Done(summary)] = &s.on_data("[DONE]").unwrap()[..] else {
            panic!("expected Done")
        };
        assert_eq!(summary.logprobs.len(), 1);
        assert_eq!(summary.logprobs[0].token, "4");
        assert_eq!(summary.logprobs[0].top[1], TopToken { token: "3".into(), logprob: -1.6 });

        // A server that ignores `logprobs` must not pass for one that gave them.
        let mut s = state();
        s.want_logprobs = true;
        s.on_data(r#"{"choices":[{"delta":{"content":"4"},"finish_reason":"stop"}]}"#).unwrap();
        let err = s.on_data("[DONE]").unwrap_err();
        assert!(err.to_string().contains("does not support `logprobs`"), "{err}");
    }

    #[test]
    fn a_url_without_scheme_is_refused() {
        let err = OpenAiCompatGenerator::new(OpenAiCompatOptions::new("localhost:8000", "m"))
            .unwrap_err();
        assert_eq!(err.kind(), "invalid_request");
    }

    #[test]
    fn chunks_usage_and_done_are_interpreted() {
        let mut s = state();
        let c =
            s.on_data(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(c, vec![GenerationEvent::Chunk("Hi".into())]);
        assert_eq!(
            s.on_data(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap(),
            vec![]
        );
        s.on_data(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#,
        )
        .unwrap();
        let [GenerationEvent::Done(summary)] = &s.on_data("[DONE]").unwrap()[..] else {
            panic!("expected Done")
        };
        assert_eq!(summary.stop_reason, StopReason::Length);
        assert_eq!(
            summary.usage,
            TokenUsage { prompt_tokens: 7, completion_tokens: 3, cached_prompt_tokens: 0 }
        );
        assert!(summary.timings.time_to_first_token.is_some());
    }

    #[test]
    fn cached_prompt_tokens_are_read_where_openai_puts_them() {
        let mut s = state();
        s.on_data(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#).unwrap();
        s.on_data(r#"{"choices":[],"usage":{"prompt_tokens":700,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":512}}}"#).unwrap();
        let [GenerationEvent::Done(summary)] = &s.on_data("[DONE]").unwrap()[..] else {
            panic!("expected Done")
        };
        assert_eq!(
            summary.usage,
            TokenUsage { prompt_tokens: 700, completion_tokens: 3, cached_prompt_tokens: 512 }
        );
    }

    #[test]
    fn a_stop_string_the_server_let_through_is_cut_and_held_text_is_flushed() {
        let mut s = state();
        s.stops = StopFilter::new(&["\nUser:".to_string()]);
        let chunk = |t: &str| {
            format!(
                r#"{{"choices":[{{"delta":{{"content":{}}},"finish_reason":null}}]}}"#,
                serde_json::to_string(t).unwrap()
            )
        };
        assert_eq!(
            s.on_data(&chunk("Sure!\nUs")).unwrap(),
            vec![GenerationEvent::Chunk("Sure!".into())]
        );
        assert_eq!(s.on_data(&chunk("er: hi")).unwrap(), vec![]);
        s.on_data(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap();
        let [GenerationEvent::Done(summary)] = &s.on_data("[DONE]").unwrap()[..] else {
            panic!("expected Done")
        };
        assert_eq!(summary.stop_reason, StopReason::Stop);

        let mut s = state();
        s.stops = StopFilter::new(&["\nUser:".to_string()]);
        assert_eq!(
            s.on_data(&chunk("Bye\nUs")).unwrap(),
            vec![GenerationEvent::Chunk("Bye".into())]
        );
        s.on_data(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        let events = s.on_data("[DONE]").unwrap();
        assert_eq!(
            events[0],
            GenerationEvent::Chunk("\nUs".into()),
            "held text is reply text after all"
        );
    }

    #[test]
    fn garbage_errors_and_missing_finish_are_reported() {
        assert_eq!(state().on_data("not json").unwrap_err().kind(), "protocol");
        assert_eq!(state().on_data(r#"{"choices":"nope"}"#).unwrap_err().kind(), "protocol");
        let e = state().on_data(r#"{"error":{"message":"model overloaded"}}"#).unwrap_err();
        assert!(matches!(e, GenerationError::Backend(ref m) if m == "model overloaded"));
        assert_eq!(state().on_data("[DONE]").unwrap_err().kind(), "protocol");
    }
}
