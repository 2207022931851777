//! Real Envoy 1.36 (`envoy --mode validate`) over vigil's config corpus (`core/tests/configs/`):
//! Envoy must agree with vigil. Every good file validates; every bad file is rejected, except the
//! ones marked `# envoy: accepts (<why>)` — valid Envoy config that vigil refuses on purpose —
//! which Envoy must accept (so the marker cannot go stale). vigil's side of the agreement (each
//! bad file fails with its `# expect:` message) is `core/tests/config_corpus.rs`.
//!
//! Validate mode parses and builds the whole config (clusters, health checkers) but binds no port
//! and resolves no name, so this needs no network. Files run one at a time (~0.15 s each).

use std::path::{Path, PathBuf};
use vigil_tests::envoy::validate;
use vigil_tests::paths;

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = paths::workspace_root()
        .join("core/tests/configs")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// The reason given in a `# envoy: accepts (<why>)` header line, if any.
fn envoy_accepts(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).expect("corpus file");
    String::from_utf8_lossy(&bytes)
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix("# envoy: accepts")
                .map(|r| r.trim().to_string())
        })
}

#[test]
fn envoy_agrees_with_the_config_corpus() {
    let envoy = paths::envoy_binary();
    let scratch = paths::scratch_dir("config-corpus");
    let mut disagreements = Vec::new();
    let mut report = Vec::new();

    for path in corpus("good") {
        let (accepted, reason) = validate(&envoy, &path, &scratch);
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        report.push(format!(
            "good/{name}: {}",
            if accepted { "OK" } else { &reason }
        ));
        if !accepted {
            disagreements.push(format!("good/{name}: Envoy rejects it: {reason}"));
        }
    }
    for path in corpus("bad") {
        let (accepted, reason) = validate(&envoy, &path, &scratch);
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        report.push(format!(
            "bad/{name}: {}",
            if accepted { "OK" } else { &reason }
        ));
        match (envoy_accepts(&path), accepted) {
            (None, true) => disagreements.push(format!(
                "bad/{name}: Envoy accepts it; fix the file, or mark it `# envoy: accepts (<why>)` \
                 if vigil refuses it on purpose"
            )),
            (Some(why), false) => disagreements.push(format!(
                "bad/{name}: marked `envoy: accepts {why}` but Envoy rejects it: {reason}"
            )),
            _ => {}
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        disagreements.is_empty(),
        "Envoy disagrees with the corpus (logs in {}):\n{}",
        scratch.display(),
        disagreements.join("\n")
    );
}
