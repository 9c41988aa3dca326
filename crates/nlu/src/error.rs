use std::path::PathBuf;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NluError {
    /// A model file is missing or unreadable.
    #[error("{path}: {message}; run `rapport models pull minilm-l6`")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Tokenisation failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// Training or evaluation data (or a trained head) is malformed or missing.
    #[error("{0}")]
    Data(String),
    /// A tensor operation failed.
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
}
