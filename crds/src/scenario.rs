//! Loading a scenario file whole: the scenario itself (parsed by the engine crate),
//! its policies (converted here), and the indexed engine, so that `palisade test`,
//! `palisade explain` and the lab all read files the same way.

use std::fmt;
use std::path::{Path, PathBuf};

use palisade_policy::engine::Engine;
use palisade_policy::scenario::Scenario;

use crate::convert::parse_manifests;

/// A scenario ready to evaluate.
pub struct Loaded {
    pub path: PathBuf,
    pub scenario: Scenario,
    pub engine: Engine,
}

/// A scenario file that cannot be used: the file, and where and why.
#[derive(Debug)]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    pub fn read(path: &Path, e: &std::io::Error) -> LoadError {
        LoadError {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        }
    }
}

/// Reads, parses and indexes a scenario file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::read(path, &e))?;
    load_text(path, &text)
}

/// Parses and indexes a scenario's text (`path` names it in errors).
pub fn load_text(path: &Path, text: &str) -> Result<Loaded, LoadError> {
    let fail = |message: String| LoadError {
        path: path.to_path_buf(),
        message,
    };
    let scenario = Scenario::parse(text).map_err(|e| fail(e.to_string()))?;
    let manifests = parse_manifests(&scenario.policies).map_err(|e| {
        fail(format!(
            "policies (the block starting at line {}): {e}",
            policies_line(text)
        ))
    })?;
    let cluster = scenario.cluster(manifests.policies, manifests.tiers);
    let engine = Engine::new(cluster).map_err(|e| fail(e.to_string()))?;
    Ok(Loaded {
        path: path.to_path_buf(),
        scenario,
        engine,
    })
}

/// Files as given, folders as their `*.yaml` / `*.yml` files in name order.
pub fn scenario_files(paths: &[PathBuf]) -> Vec<Result<PathBuf, LoadError>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(Ok(path.clone()));
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    })
                    .collect();
                found.sort();
                files.extend(found.into_iter().map(Ok));
            }
            Err(e) => files.push(Err(LoadError::read(path, &e))),
        }
    }
    files
}

/// The line (1-based) where the `policies` block's content starts.
fn policies_line(text: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with("policies:"))
        .map_or(0, |i| i + 2)
}
