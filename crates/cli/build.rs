//! Compiles the shipped data (`datasets/`: personas, the emotion model, simulated users, attack
//! sets, GoEmotions) into the binary, so that an installed `rapport` works from any directory
//! once its clone is gone (`src/datasets.rs` writes the files out on first use). Emits
//! `embedded_datasets.rs`: the files, by path under `datasets/`, and a digest of them all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The folders of `datasets/` the commands read at run time. Not `guards/`, `load/` or
/// `prompts/`: test and benchmark data, read from the source tree by the tests.
const SHIPPED: [&str; 7] =
    ["personas", "scenarios", "coach", "emotion", "simulators", "injection", "goemotions"];

fn main() {
    // Read when the script runs, not when it was compiled: clones that share a target directory
    // (CI's fresh clone and a working copy) reuse one compiled build script, and `env!` would
    // point every one of them at the clone that compiled it.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("../../datasets");
    let mut files = Vec::new();
    for dir in SHIPPED {
        let dir = root.join(dir);
        println!("cargo:rerun-if-changed={}", dir.display());
        collect(&dir, &mut files);
    }
    files.sort();
    // FNV-1a over every path and its bytes: names the extracted copy, so a binary with other
    // data never reads a copy written by an older one.
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::from("/// The shipped files, by path under `datasets/`.\npub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.strip_prefix(&root).unwrap().to_str().expect("UTF-8 file names");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for b in name.bytes().chain([0]).chain(bytes) {
            digest = (digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let absolute = path.canonicalize().unwrap();
        writeln!(out, "    ({name:?}, include_bytes!({:?})),", absolute.to_str().unwrap()).unwrap();
    }
    out.push_str("];\n");
    writeln!(out, "/// A digest of every shipped path and its bytes.\npub(crate) const DIGEST: &str = \"{digest:016x}\";").unwrap();
    let target = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded_datasets.rs");
    std::fs::write(target, out).unwrap();
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("{}: the shipped datasets are missing", dir.display())
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_none_or(|e| e != "py") {
            files.push(path);
        }
    }
}
