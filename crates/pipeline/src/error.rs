use std::path::PathBuf;

/// What can go wrong in the pipeline. Bad user messages are not errors (they are answered in
/// character); these are problems with personas, cards, templates and models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A persona file could not be read or does not describe a usable persona.
    #[error("persona {path}: {message}")]
    Persona {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A persona failed validation (no file involved, e.g. one imported from a card).
    #[error("invalid persona: {0}")]
    InvalidPersona(String),
    /// A Character Card could not be imported.
    #[error("character card: {0}")]
    Card(String),
    /// No persona by that name.
    #[error("no persona named '{name}' (known: {known})")]
    UnknownPersona {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A prompt template failed to load or render.
    #[error("prompt template: {0}")]
    Template(String),
    /// Even without history and examples the prompt does not fit the token budget.
    #[error(
        "the message is too long: the prompt needs about {tokens} tokens, the budget is {budget}"
    )]
    PromptTooLong {
        /// Estimated tokens.
        tokens: usize,
        /// Tokens available for the prompt.
        budget: usize,
    },
    /// The emotion or embedding model failed.
    #[error(transparent)]
    Nlu(#[from] rapport_nlu::NluError),
}

impl PipelineError {
    /// A stable tag for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Persona { .. }
            | PipelineError::InvalidPersona(_)
            | PipelineError::UnknownPersona { .. } => "persona",
            PipelineError::Card(_) => "card",
            PipelineError::Template(_) => "template",
            PipelineError::PromptTooLong { .. } => "too_long",
            PipelineError::Nlu(_) => "nlu",
        }
    }
}
