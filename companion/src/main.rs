//! `vigil`, the companion binary. It will read the same Envoy v3 YAML users already run and do the
//! whole job natively: discovery, active health checking with Envoy's semantics, a load-balancing
//! proxy and an Envoy-compatible admin API (tracked in the companion issues).
//!
//! Today it only parses its command line; running it with a config says plainly that the
//! companion is not built yet and exits non-zero, so nobody mistakes it for a working proxy.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Command-line options, shaped like Envoy's (`-c FILE`, `--mode serve|validate`).
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
struct Options {
    /// Envoy v3 bootstrap YAML to run.
    #[arg(short = 'c', long = "config-path")]
    config_path: Option<PathBuf>,
}

fn main() -> ExitCode {
    let options = Options::parse();
    match options.config_path {
        Some(path) => {
            eprintln!(
                "vigil: cannot run {}: the companion's health checking is not implemented in this build",
                path.display()
            );
            ExitCode::from(2)
        }
        None => {
            eprintln!("vigil: no config given (use -c FILE); see --help");
            ExitCode::from(1)
        }
    }
}
