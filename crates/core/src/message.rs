//! Chat messages and the validated request that crosses into a backend.

use serde::{Deserialize, Serialize};

use crate::{GenerationError, SamplingParams};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model: the persona, the rules, the context of the moment.
    System,
    /// The person practising conversation.
    User,
    /// The persona (the model's side).
    Assistant,
}

impl Role {
    /// The role's name as chat templates and OpenAI-compatible servers spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: Role::System, content: content.into() }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }
    /// An assistant (persona) message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// A request a backend may run as it is: checked once, here, so backends need not re-check.
///
/// The first message must be a system message. Qwen2.5's chat template inserts a default
/// identity ("You are Qwen, created by Alibaba Cloud…") whenever no system message is sent, which
/// would break every persona; requiring it at the seam makes that mistake impossible. Later
/// system messages are allowed: the pipeline puts each turn's notes in one just before the
/// user's message, so that the opening of the prompt stays the same from turn to turn and the
/// engine's prefix cache can serve it (ChatML templates, used by Qwen2.5 and SmolLM2, render
/// a system message wherever it stands).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRequest {
    messages: Vec<ChatMessage>,
    sampling: SamplingParams,
    top_logprobs: Option<u8>,
}

/// The most alternatives a request may ask for at each position: OpenAI's own limit, which
/// vLLM and llama.cpp's server follow.
pub const MAX_TOP_LOGPROBS: u8 = 20;

impl GenerationRequest {
    /// Validates and builds a request.
    pub fn new(
        messages: Vec<ChatMessage>,
        sampling: SamplingParams,
    ) -> Result<Self, GenerationError> {
        match messages.first() {
            None => return Err(GenerationError::InvalidRequest("a request needs at least one message".into())),
            Some(first) if first.role != Role::System => {
                return Err(GenerationError::InvalidRequest(
                    "the first message must be a system message (models insert a default identity otherwise)".into(),
                ))
            }
            Some(_) => {}
        }
        if messages.last().map(|m| m.role) == Some(Role::Assistant) {
            return Err(GenerationError::InvalidRequest(
                "the last message must not be the assistant's: there would be nothing to answer"
                    .into(),
            ));
        }
        sampling.validate()?;
        Ok(Self { messages, sampling, top_logprobs: None })
    }

    /// Asks the backend for the `k` most likely tokens at each generated position, with their
    /// log-probabilities (returned in [`crate::GenerationSummary::logprobs`]). A backend that
    /// cannot give them fails the request with an error saying so; it never answers without.
    pub fn with_top_logprobs(mut self, k: u8) -> Result<Self, GenerationError> {
        if k == 0 || k > MAX_TOP_LOGPROBS {
            return Err(GenerationError::InvalidRequest(format!(
                "top_logprobs must be between 1 and {MAX_TOP_LOGPROBS}, got {k}"
            )));
        }
        self.top_logprobs = Some(k);
        Ok(self)
    }

    /// How many alternatives per position the request asks log-probabilities for, if any.
    pub fn top_logprobs(&self) -> Option<u8> {
        self.top_logprobs
    }

    /// The conversation, system message first.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// How to sample the reply.
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn a_request_must_start_with_a_system_message() {
        let err = GenerationRequest::new(vec![ChatMessage::user("hi")], sampling()).unwrap_err();
        assert_eq!(err.kind(), "invalid_request");
        assert!(err.to_string().contains("system"), "{err}");
    }

    #[test]
    fn top_logprobs_must_be_between_one_and_twenty() {
        let req = GenerationRequest::new(
            vec![ChatMessage::system("s"), ChatMessage::user("u")],
            sampling(),
        )
        .unwrap();
        assert_eq!(req.top_logprobs(), None);
        assert!(req.clone().with_top_logprobs(0).is_err());
        assert!(req.clone().with_top_logprobs(21).is_err());
        assert_eq!(req.with_top_logprobs(20).unwrap().top_logprobs(), Some(20));
    }

    #[test]
    fn an_empty_request_is_refused() {
        assert!(GenerationRequest::new(vec![], sampling()).is_err());
    }

    #[test]
    fn a_later_system_message_is_allowed() {
        let msgs = vec![
            ChatMessage::system("a"),
            ChatMessage::user("b"),
            ChatMessage::system("c"),
            ChatMessage::user("d"),
        ];
        assert!(GenerationRequest::new(msgs, sampling()).is_ok());
    }

    #[test]
    fn a_request_ending_with_the_assistant_is_refused() {
        let msgs =
            vec![ChatMessage::system("a"), ChatMessage::user("b"), ChatMessage::assistant("c")];
        assert!(GenerationRequest::new(msgs, sampling()).is_err());
    }

    #[test]
    fn a_well_formed_request_is_accepted() {
        let msgs = vec![
            ChatMessage::system("a"),
            ChatMessage::user("b"),
            ChatMessage::assistant("c"),
            ChatMessage::user("d"),
        ];
        let req = GenerationRequest::new(msgs.clone(), sampling()).unwrap();
        assert_eq!(req.messages(), &msgs[..]);
    }

    #[test]
    fn roles_serialise_as_openai_names() {
        assert_eq!(serde_json::to_string(&Role::Assistant).unwrap(), "\"assistant\"");
    }
}
