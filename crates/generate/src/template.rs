//! What a model's chat template accepts of the conversations Rapport sends.
//!
//! Chat templates differ in what they refuse: some take a system message only first (Gemma's
//! takes none), some want the user to speak first (Llama 2's and Mistral's strict
//! alternation). Rapport's prompts open with the persona's greeting and, in every layout but
//! `notes-in-system`, put a system message after the user's (the turn's notes). Two probe
//! conversations tell, at load, which of those a model's template takes, so a strict template
//! fails the start with its own words instead of every reply.

use std::time::Duration;

use rapport_core::{
    collect_completion, ChatMessage, GenerationError, GenerationRequest, Generator, SamplingParams,
};

/// Each probe: `Ok`, or the template's (or the server's) own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateCheck {
    /// A system message, the persona's greeting, the user's message: every layout's shape.
    pub greeting_first: Result<(), String>,
    /// The same with a further system message after the user's (the turn's notes): every
    /// layout but `notes-in-system` sends one.
    pub later_system: Result<(), String>,
}

impl TemplateCheck {
    /// A probe conversation; `later_system` adds a system message after the user's.
    pub fn probe(later_system: bool) -> Vec<ChatMessage> {
        let mut messages = vec![
            ChatMessage::system("You are Ada."),
            ChatMessage::assistant("Hi! I'm Ada."),
            ChatMessage::user("Hello Ada, how are you?"),
        ];
        if later_system {
            messages.push(ChatMessage::system("(Answer warmly.)"));
        }
        messages
    }

    /// Asks any backend for one token of each probe: for a remote server, whose template is
    /// its own and can only be seen in its answers. A transient failure (it cannot be reached,
    /// did not answer within `timeout`, broke the stream) is returned as such: the server could
    /// not be asked, which says nothing of its template.
    pub async fn ask(
        generator: &dyn Generator,
        timeout: Duration,
    ) -> Result<TemplateCheck, GenerationError> {
        let mut results = Vec::with_capacity(2);
        for later_system in [false, true] {
            let request =
                GenerationRequest::new(Self::probe(later_system), SamplingParams::greedy(1))?;
            let answer = async {
                collect_completion(generator.generate(request).await?, |_| {}).await.map(|_| ())
            };
            match tokio::time::timeout(timeout, answer)
                .await
                .unwrap_or(Err(GenerationError::Timeout(timeout)))
            {
                Err(e) if e.is_transient() => return Err(e),
                other => results.push(other.map_err(|e| e.to_string())),
            }
        }
        let later_system = results.pop().expect("two probes");
        let greeting_first = results.pop().expect("two probes");
        Ok(TemplateCheck { greeting_first, later_system })
    }
}
