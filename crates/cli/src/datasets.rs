//! Where the shipped data is read from: personas, the emotion model, simulated users, attack
//! sets and GoEmotions (`datasets/`).
//!
//! `RAPPORT_DATASETS` when set; else the source tree's `datasets/` while the clone this binary
//! was built from is still there (so an edited persona applies without a rebuild); else a copy
//! of the files compiled into the binary (`build.rs`), written once into the data directory
//! (`~/.local/share/rapport/datasets/<digest>`), so an installed binary works from any
//! directory after its clone is gone.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/embedded_datasets.rs"));

/// The datasets directory (resolved once per process). When the embedded copy cannot be
/// written, the reason is printed and the source tree's path returned, so that the file a
/// command then misses is named in its error.
pub(crate) fn datasets_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let source = source_tree();
        let data = dirs::data_dir().map(|d| d.join("rapport"));
        resolve(std::env::var_os("RAPPORT_DATASETS").map(PathBuf::from), &source, data.as_deref())
            .unwrap_or_else(|e| {
                eprintln!("warning: could not write the shipped datasets out: {e}; set RAPPORT_DATASETS to a copy of datasets/");
                source
            })
    })
    .clone()
}

fn source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

/// The override, else `source` when it holds the personas, else the embedded copy under
/// `data` (written if it is not there yet).
fn resolve(over: Option<PathBuf>, source: &Path, data: Option<&Path>) -> io::Result<PathBuf> {
    if let Some(dir) = over {
        return Ok(dir);
    }
    if source.join("personas").is_dir() {
        return Ok(source.to_path_buf());
    }
    let data = data.ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no data directory for this user")
    })?;
    let dir = data.join("datasets").join(DIGEST);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    // Written beside, then renamed into place: a process stopped half-way, or two starting
    // together, never leave a copy that looks complete and is not.
    let partial = data.join("datasets").join(format!("{DIGEST}.partial-{}", std::process::id()));
    for (name, bytes) in FILES {
        let path = partial.join(name);
        std::fs::create_dir_all(path.parent().expect("a file under the copy"))?;
        std::fs::write(&path, bytes)?;
    }
    std::fs::write(partial.join(".complete"), DIGEST)?;
    match std::fs::rename(&partial, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first: use its copy.
        Err(_) if dir.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_source_tree_the_embedded_copy_is_written_once_and_used() {
        let data = tempfile::tempdir().unwrap();
        let gone = data.path().join("no-clone-here");
        let dir = resolve(None, &gone, Some(data.path())).unwrap();
        assert!(dir.starts_with(data.path()), "{}", dir.display());
        // Every shipped file, byte for byte as in the source tree.
        for (name, bytes) in FILES {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
            assert_eq!(&std::fs::read(source_tree().join(name)).unwrap(), bytes, "{name}");
        }
        for needed in [
            "personas/wedding-host.toml",
            "emotion/goemotions-tuned.safetensors",
            "simulators/shy.toml",
            "injection/attacks.jsonl",
            "goemotions/dev.tsv",
            "goemotions/README.md",
        ] {
            assert!(dir.join(needed).is_file(), "{needed} is shipped");
        }
        let library = rapport_pipeline::PersonaLibrary::load_dir(&dir.join("personas"));
        assert!(library.is_ok(), "the copied personas load: {:?}", library.err());
        // A second start finds the copy and writes nothing.
        let marker = dir.join("personas/wedding-host.toml");
        std::fs::write(&marker, "edited").unwrap();
        assert_eq!(resolve(None, &gone, Some(data.path())).unwrap(), dir);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "edited");
        // No half-written copies left beside it.
        let entries = std::fs::read_dir(data.path().join("datasets")).unwrap().count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn the_override_and_then_the_source_tree_come_first() {
        let data = tempfile::tempdir().unwrap();
        let mine = data.path().join("mine");
        assert_eq!(resolve(Some(mine.clone()), &source_tree(), Some(data.path())).unwrap(), mine);
        assert_eq!(resolve(None, &source_tree(), Some(data.path())).unwrap(), source_tree());
        assert!(!data.path().join("datasets").exists(), "nothing written");
        let err = resolve(None, &data.path().join("gone"), None).unwrap_err();
        assert!(err.to_string().contains("no data directory"), "{err}");
    }
}
