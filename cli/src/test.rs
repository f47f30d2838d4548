//! `palisade test`: scenario files through the engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use palisade_crds::scenario::{load_file, LoadError};
use palisade_policy::scenario::{summary_line, Outcome};

use crate::Output;

/// Runs every scenario; prints the contract's output; exit 2 if any file could not
/// be read or parsed, else 1 if any scenario failed, else 0.
pub fn run(paths: &[PathBuf], output: Output) -> ExitCode {
    let mut outcomes = Vec::new();
    let mut broken = false;
    for file in expand(paths) {
        match file.and_then(|f| run_file(&f)) {
            Ok(outcome) => {
                match output {
                    Output::Plain => print!("{}", outcome.plain()),
                    Output::Json => match serde_json::to_string(&outcome) {
                        Ok(json) => println!("{json}"),
                        Err(e) => {
                            eprintln!("error: {}: {e}", outcome.name);
                            broken = true;
                        }
                    },
                }
                outcomes.push(outcome);
            }
            Err(e) => {
                eprintln!("error: {e}");
                broken = true;
            }
        }
    }
    if output == Output::Plain {
        println!("{}", summary_line(&outcomes));
    }
    if broken {
        ExitCode::from(2)
    } else if outcomes.iter().all(|o| o.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run_file(path: &Path) -> Result<Outcome, LoadError> {
    let loaded = load_file(path)?;
    Ok(loaded
        .scenario
        .compare(loaded.scenario.evaluate(&loaded.engine)))
}

/// Files as given, folders as their scenario files in name order.
fn expand(paths: &[PathBuf]) -> Vec<Result<PathBuf, LoadError>> {
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
