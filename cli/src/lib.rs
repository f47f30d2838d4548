//! The `palisade` command (also the kubectl plugin `kubectl-palisade`).
//!
//! `test` runs scenario files through the engine, `explain` shows why a connection
//! is allowed or denied, `report` prints the policy report the operator wrote, `audit`
//! queries the audit log (its database, or the operator's query API). All policy logic
//! lives in `palisade-policy`; this crate reads files, report objects or the audit log,
//! and prints.

mod audit;
mod explain;
mod report;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Test and explain Kubernetes network policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (or folders of them) through the policy engine.
    Test {
        /// Scenario files, or folders whose *.yaml / *.yml files are run in name order.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        #[arg(long, short, value_enum, default_value = "plain")]
        output: Output,
    },
    /// Show the verdict on one connection of a scenario, with the whole path of the decision.
    Explain(explain::Args),
    /// Show a namespace's (or the cluster's) policy report: what is enforced, where, and
    /// what is not.
    Report(report::Args),
    /// Show flow decisions from the audit log (the database, or the operator's query API).
    Audit(Box<audit::Args>),
}

/// Runs the command line; the exit code follows the scenario-format contract
/// (0 passed, 1 a scenario failed or the connection is denied, 2 bad input).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Test { paths, output } => test::run(&paths, output),
        Command::Explain(args) => explain::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Audit(args) => audit::run(&args),
    }
}
