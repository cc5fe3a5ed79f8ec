//! Writes the CRD YAML generated from the API types to `crds/yaml/` and, when it exists, the
//! Helm chart's `crds/` folder. `crdgen --check` fails when the committed YAML differs.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let check = std::env::args().any(|a| a == "--check");
    let mut dirs = vec![root.join("yaml")];
    let chart = root.join("../charts/bridgenet/crds");
    if chart.is_dir() {
        dirs.push(chart);
    }
    let files = match bridgenet_crds::crdgen::render_all() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = false;
    for dir in &dirs {
        for (name, text) in &files {
            let path = dir.join(name);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    eprintln!(
                        "crdgen: {} is stale; run `cargo run -p bridgenet-crds --bin crdgen`",
                        path.display()
                    );
                    stale = true;
                }
            } else if let Err(err) = std::fs::write(&path, text) {
                eprintln!("crdgen: writing {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
