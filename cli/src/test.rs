//! `palisade test`: scenario files through the engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use palisade_crds::scenario::{load_file, scenario_files, LoadError};
use palisade_policy::scenario::{summary_line, Outcome};

use crate::Output;

/// Runs every scenario; prints the contract's output; exit 2 if any file could not
/// be read or parsed, else 1 if any scenario failed, else 0.
pub fn run(paths: &[PathBuf], output: Output) -> ExitCode {
    let mut outcomes = Vec::new();
    let mut broken = false;
    for file in scenario_files(paths) {
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
