//! The generation seam: messages in, a stream of text chunks out.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::GenerationRequest;

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn, or produced one of the request's stop strings.
    Stop,
    /// `max_tokens` (or the model's context) was reached: the reply may be cut mid-sentence.
    Length,
    /// The request was cancelled (the client went away).
    Cancelled,
    /// A reason this crate does not know, as the backend spelled it.
    Other(String),
}

impl StopReason {
    /// Maps an OpenAI-style `finish_reason`, which both backends report.
    pub fn from_finish_reason(reason: &str) -> Self {
        match reason {
            "stop" | "eos" | "end_turn" => StopReason::Stop,
            "length" | "model_length" => StopReason::Length,
            "canceled" | "cancelled" => StopReason::Cancelled,
            other => StopReason::Other(other.to_string()),
        }
    }
}

/// Tokens counted by the backend's own tokenizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Of the prompt's tokens, those the backend did not read again because its prefix cache
    /// held them (an earlier turn of the conversation, or another conversation with the same
    /// persona); 0 where the backend does not say.
    #[serde(default)]
    pub cached_prompt_tokens: u32,
}

/// Wall-clock timings of one generation, measured where the backend is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the call to the first non-empty text chunk: what a person waits before words appear.
    pub time_to_first_token: Option<Duration>,
    /// From the call to the end of the stream.
    pub total: Duration,
}

impl Timings {
    /// Decode speed: tokens after the first one over the time after the first one.
    ///
    /// The first token is excluded because its latency is the prefill, reported as TTFT.
    pub fn decode_tokens_per_sec(&self, usage: &TokenUsage) -> Option<f64> {
        let ttft = self.time_to_first_token?;
        let decode = self.total.checked_sub(ttft)?.as_secs_f64();
        let tokens = usage.completion_tokens.checked_sub(1)? as f64;
        (decode > 0.0 && tokens > 0.0).then(|| tokens / decode)
    }
}

/// One alternative at a generated position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    /// The token's text.
    pub token: String,
    /// Its natural log-probability under the model's distribution at this position.
    pub logprob: f32,
}

/// One generated token with how sure the model was of it and of the alternatives.
///
/// Log-probabilities are natural logs of the model's own distribution (before temperature,
/// penalties and truncation), as OpenAI's API defines them; both backends report them so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token generated.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (as many as asked for, or
    /// fewer where the backend gives fewer).
    pub top: Vec<TopToken>,
}

impl TokenLogprob {
    /// The probability the model gave each alternative, by its text, for the listed ones.
    pub fn probabilities(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.top.iter().map(|t| (t.token.as_str(), f64::from(t.logprob).exp()))
    }
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Token accounting.
    pub usage: TokenUsage,
    /// Timings.
    pub timings: Timings,
    /// One entry per generated token when the request asked for log-probabilities
    /// ([`crate::GenerationRequest::with_top_logprobs`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// One item of a generation stream. A well-formed stream is zero or more `Chunk`s and then
/// exactly one `Done`; a stream that ends without `Done` is reported as a protocol error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerationEvent {
    /// The next piece of the reply.
    Chunk(String),
    /// The reply is complete.
    Done(GenerationSummary),
}

/// Everything that can go wrong between a request and its last token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GenerationError {
    /// The request was refused before generation started.
    #[error("invalid generation request: {0}")]
    InvalidRequest(String),
    /// The backend could not be reached or refused the connection.
    #[error("generation backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("generation timed out after {0:?}")]
    Timeout(Duration),
    /// The backend answered something that is not a valid generation stream.
    #[error("generation backend sent a malformed response: {0}")]
    Protocol(String),
    /// The backend reported an error of its own.
    #[error("generation failed in the backend: {0}")]
    Backend(String),
}

impl GenerationError {
    /// A stable tag for metrics labels and API error types.
    pub fn kind(&self) -> &'static str {
        match self {
            GenerationError::InvalidRequest(_) => "invalid_request",
            GenerationError::Unavailable(_) => "unavailable",
            GenerationError::Timeout(_) => "timeout",
            GenerationError::Protocol(_) => "protocol",
            GenerationError::Backend(_) => "backend",
        }
    }

    /// Whether trying the same request again may succeed (callers retry these with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GenerationError::Unavailable(_)
                | GenerationError::Timeout(_)
                | GenerationError::Protocol(_)
        )
    }
}

/// A stream of generation events.
pub type TextStream = Pin<Box<dyn Stream<Item = Result<GenerationEvent, GenerationError>> + Send>>;

/// A text-generation backend: chat messages in, a stream of text chunks out.
///
/// Implementations: the embedded mistral.rs engine and the OpenAI-compatible HTTP client in
/// `rapport-generate`. Dropping the returned stream cancels the generation.
#[async_trait::async_trait]
pub trait Generator: Send + Sync {
    /// A short name for logs and traces ("mistralrs:smollm2-135m", "openai:http://…").
    fn name(&self) -> &str;

    /// Starts generating a reply to the request's last message.
    ///
    /// Errors before the first token are returned here; errors after it arrive in the stream.
    async fn generate(&self, request: GenerationRequest) -> Result<TextStream, GenerationError>;
}

/// A whole reply, gathered from a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The reply's text.
    pub text: String,
    /// How the generation ended.
    pub summary: GenerationSummary,
}

/// Drains a stream into one [`Completion`], calling `on_chunk` for every piece as it arrives.
pub async fn collect_completion(
    mut stream: TextStream,
    mut on_chunk: impl FnMut(&str),
) -> Result<Completion, GenerationError> {
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Chunk(chunk) => {
                on_chunk(&chunk);
                text.push_str(&chunk);
            }
            GenerationEvent::Done(summary) => return Ok(Completion { text, summary }),
        }
    }
    Err(GenerationError::Protocol("the stream ended before the generation was done".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        assert_eq!(StopReason::from_finish_reason("stop"), StopReason::Stop);
        assert_eq!(StopReason::from_finish_reason("length"), StopReason::Length);
        assert_eq!(StopReason::from_finish_reason("canceled"), StopReason::Cancelled);
        assert_eq!(
            StopReason::from_finish_reason("tool_calls"),
            StopReason::Other("tool_calls".into())
        );
    }

    #[test]
    fn decode_speed_excludes_the_first_token() {
        let t = Timings {
            time_to_first_token: Some(Duration::from_secs(1)),
            total: Duration::from_secs(3),
        };
        let u = TokenUsage { prompt_tokens: 10, completion_tokens: 21, cached_prompt_tokens: 0 };
        assert_eq!(t.decode_tokens_per_sec(&u), Some(10.0));
        let one = TokenUsage { prompt_tokens: 10, completion_tokens: 1, cached_prompt_tokens: 0 };
        assert_eq!(t.decode_tokens_per_sec(&one), None);
    }

    #[tokio::test]
    async fn a_stream_without_done_is_a_protocol_error() {
        let s: TextStream =
            Box::pin(futures::stream::iter(vec![Ok(GenerationEvent::Chunk("a".into()))]));
        let err = collect_completion(s, |_| {}).await.unwrap_err();
        assert_eq!(err.kind(), "protocol");
    }

    #[tokio::test]
    async fn collect_gathers_chunks_in_order() {
        let summary = GenerationSummary {
            stop_reason: StopReason::Stop,
            usage: TokenUsage { prompt_tokens: 3, completion_tokens: 2, cached_prompt_tokens: 0 },
            timings: Timings::default(),
            logprobs: Vec::new(),
        };
        let s: TextStream = Box::pin(futures::stream::iter(vec![
            Ok(GenerationEvent::Chunk("he".into())),
            Ok(GenerationEvent::Chunk("llo".into())),
            Ok(GenerationEvent::Done(summary.clone())),
        ]));
        let mut seen = Vec::new();
        let c = collect_completion(s, |c| seen.push(c.to_string())).await.unwrap();
        assert_eq!(c.text, "hello");
        assert_eq!(seen, ["he", "llo"]);
        assert_eq!(c.summary, summary);
    }
}
