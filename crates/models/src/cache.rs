//! Where installed models live, and how a name or a path resolves to files on disk.

use std::path::{Path, PathBuf};

use crate::presets::{self, Preset};
use crate::ModelError;

/// The name of the manifest written inside a model's directory just before it is renamed into
/// place; its presence is what makes a directory an installed model.
pub(crate) const MANIFEST: &str = "rapport-model.json";

/// Rapport's cache directory, `$XDG_CACHE_HOME/rapport` (else `~/.cache/rapport`): models,
/// re-encoded GGUF copies and encoded features each live in a directory of their own under it.
pub fn cache_root() -> Result<PathBuf, ModelError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(dirs::cache_dir)
        .ok_or(ModelError::NoCacheDir)?;
    Ok(base.join("rapport"))
}

/// The directory that holds installed models: `$XDG_CACHE_HOME/rapport/models`, else
/// `~/.cache/rapport/models`, unless set explicitly.
#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
}

/// A model that is ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModel {
    /// The preset's name, or the file name for a model given by path.
    pub name: String,
    /// The directory holding its files.
    pub dir: PathBuf,
    /// The file to load (the GGUF, or the encoder's weights).
    pub primary: PathBuf,
}

/// What a user named: a preset, or a GGUF file of their own.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A known preset.
    Preset(Preset),
    /// A local file.
    File(PathBuf),
}

impl ModelCache {
    /// A cache rooted at `root` (created on first pull).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default location, honouring `RAPPORT_MODELS_DIR` and `XDG_CACHE_HOME`.
    pub fn default_location() -> Result<Self, ModelError> {
        if let Some(dir) = std::env::var_os("RAPPORT_MODELS_DIR").filter(|d| !d.is_empty()) {
            return Ok(Self::at(dir));
        }
        Ok(Self::at(cache_root()?.join("models")))
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory a preset is installed into.
    pub fn dir_of(&self, preset: &Preset) -> PathBuf {
        self.root.join(preset.name)
    }

    /// The installed copy of a preset, if it is complete.
    ///
    /// Checks the manifest and every file's size; hashes were checked when it was installed and
    /// re-hashing 1 GB on every start would cost seconds.
    pub fn installed(&self, preset: &Preset) -> Option<InstalledModel> {
        let dir = self.dir_of(preset);
        if !dir.join(MANIFEST).is_file() {
            return None;
        }
        let complete = preset.files.iter().all(|f| {
            std::fs::metadata(dir.join(f.name)).map(|m| m.len() == f.size).unwrap_or(false)
        });
        complete.then(|| InstalledModel {
            name: preset.name.to_string(),
            primary: dir.join(preset.files[0].name),
            dir,
        })
    }

    /// Resolves what a user typed: a preset name, or a path to an existing file.
    pub fn source(name_or_path: &str) -> Result<ModelSource, ModelError> {
        if let Some(p) = presets::preset(name_or_path) {
            return Ok(ModelSource::Preset(p));
        }
        let path = PathBuf::from(name_or_path);
        if path.is_file() {
            return Ok(ModelSource::File(path));
        }
        Err(ModelError::Unknown {
            name: name_or_path.to_string(),
            known: presets::presets().iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        })
    }

    /// Resolves a name or path to a model ready to load.
    pub fn resolve(&self, name_or_path: &str) -> Result<InstalledModel, ModelError> {
        match Self::source(name_or_path)? {
            ModelSource::Preset(p) => {
                self.installed(&p).ok_or_else(|| ModelError::NotInstalled(p.name.to_string()))
            }
            ModelSource::File(path) => {
                let path = path.canonicalize().map_err(ModelError::io(&path))?;
                let dir =
                    path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
                let name =
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(InstalledModel { name, dir, primary: path })
            }
        }
    }
}
