//! `e2e`: run scenario files against the real dataplane in network namespaces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use e2e::probe::{Line, Target, Timing};
use e2e::runner::{self, Options, Output};
use e2e::serve::Port;

#[derive(Parser)]
#[command(name = "e2e", about = "Palisade's network-namespace lab (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (or folders of them) against real enforcers and real packets.
    Run {
        /// Scenario files, or folders whose *.yaml / *.yml files are run in name order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, short, value_enum, default_value = "plain")]
        output: Output,
        /// The palisade-enforcer binary (default: next to this binary).
        #[arg(long)]
        enforcer: Option<PathBuf>,
        /// Run without enforcers (only scenarios without policies make sense).
        #[arg(long)]
        no_enforcer: bool,
        /// Compare the kernel's verdicts with the engine's and report disagreements.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        engine_check: bool,
        /// Probe timeout in milliseconds (TCP/SCTP connect, UDP all tries).
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Without kernel SCTP sockets, probe SCTP with a raw INIT / INIT ACK
        /// exchange (real SCTP packets through the real rules) instead of failing.
        #[arg(long)]
        sctp_raw: bool,
        /// Run as a cluster does: palisade-operator (manifest-directory source) and one
        /// palisade-enforcer agent per node, over the TLS stream (default: the lab
        /// writes each node's rule set into a file its enforcer follows).
        #[arg(long, conflicts_with = "no_enforcer")]
        operator: bool,
        /// The palisade-operator binary (default: next to this binary).
        #[arg(long)]
        operator_bin: Option<PathBuf>,
    },
    /// The testweb / testcurl walkthrough, step by step, on one running lab: the
    /// operator and one enforcer agent per node as separate processes, as in a cluster.
    Demo {
        /// The folder with walkthrough-{1,2,3}-*.yaml (default: e2e/scenarios).
        #[arg(long)]
        scenarios: Option<PathBuf>,
        /// The palisade-enforcer binary (default: next to this binary).
        #[arg(long)]
        enforcer: Option<PathBuf>,
        /// Without the operator: the lab writes each node's rule set into a file its
        /// enforcer follows (`palisade-enforcer run`).
        #[arg(long)]
        file_fed: bool,
        /// The palisade-operator binary (default: next to this binary).
        #[arg(long)]
        operator_bin: Option<PathBuf>,
    },
    /// Build one scenario's lab (servers and enforcers running) and keep it up for
    /// inspection (`ip netns exec NS ...`) until Ctrl-C or --seconds.
    Up {
        path: PathBuf,
        #[arg(long)]
        enforcer: Option<PathBuf>,
        #[arg(long)]
        no_enforcer: bool,
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        /// With the operator and enforcer agents (see `run --operator`).
        #[arg(long, conflicts_with = "no_enforcer")]
        operator: bool,
        #[arg(long)]
        operator_bin: Option<PathBuf>,
    },
    /// Remove the namespaces (and what runs in them) left by any lab run (`pal-*`).
    Cleanup,
    /// Serve ports in the current namespace (used by the lab).
    #[command(hide = true)]
    Serve {
        /// `tcp:80`, `udp:53`, `sctp:9000`.
        ports: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
        #[arg(long)]
        sctp_raw: bool,
    },
    /// Probe targets from the current namespace (used by the lab).
    #[command(hide = true)]
    Probe {
        /// `tcp:10.0.0.1:80`, `udp:[fd00::1]:53`.
        targets: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 3)]
        udp_tries: u32,
        #[arg(long, default_value_t = 32)]
        parallel: usize,
        #[arg(long)]
        sctp_raw: bool,
    },
}

fn main() -> ExitCode {
    let code = run(Cli::parse());
    e2e::signals::finish();
    code
}

fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            ports,
            max_seconds,
            sctp_raw,
        } => {
            let parsed: Option<Vec<Port>> = ports.iter().map(|p| Port::parse(p)).collect();
            let Some(parsed) = parsed else {
                eprintln!("e2e serve: bad port in {ports:?} (want PROTO:PORT)");
                return ExitCode::from(2);
            };
            match e2e::serve::serve(&parsed, Duration::from_secs(max_seconds), sctp_raw) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("e2e serve: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Probe {
            targets,
            timeout_ms,
            udp_tries,
            parallel,
            sctp_raw,
        } => {
            let parsed: Option<Vec<Target>> = targets.iter().map(|t| Target::parse(t)).collect();
            let Some(parsed) = parsed else {
                eprintln!("e2e probe: bad target in {targets:?} (want PROTO:ADDR:PORT)");
                return ExitCode::from(2);
            };
            let timing = Timing {
                timeout: Duration::from_millis(timeout_ms),
                udp_tries,
                sctp_raw,
            };
            let outcomes = e2e::probe::probe_all(&parsed, timing, parallel);
            for (t, outcome) in parsed.iter().zip(outcomes) {
                let line = Line {
                    target: t.arg(),
                    outcome,
                };
                match serde_json::to_string(&line) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("e2e probe: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Cleanup => {
            e2e::signals::install();
            let (removed, errors) = e2e::netns::delete_all(e2e::netns::PREFIX);
            for ns in &removed {
                println!("removed {ns}");
            }
            // The enforcers' state directories (`pal-e2e-RUNID` in the temp dir).
            let tmp = std::env::temp_dir();
            let dirs = std::fs::read_dir(&tmp)
                .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
                .unwrap_or_default();
            for entry in dirs {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("pal-e2e-")
                    && entry.path().is_dir()
                    && std::fs::remove_dir_all(entry.path()).is_ok()
                {
                    println!("removed {}", entry.path().display());
                }
            }
            for e in &errors {
                eprintln!("error: {e:#}");
            }
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Run {
            paths,
            output,
            enforcer,
            no_enforcer,
            engine_check,
            timeout_ms,
            sctp_raw,
            operator,
            operator_bin,
        } => {
            e2e::signals::install();
            let mut opts = match options(enforcer, no_enforcer)
                .and_then(|o| with_operator(o, operator, operator_bin))
            {
                Ok(o) => o,
                Err(code) => return code,
            };
            opts.engine_check = engine_check;
            opts.timing.timeout = Duration::from_millis(timeout_ms);
            opts.timing.sctp_raw = sctp_raw;
            ExitCode::from(runner::run_all(&paths, output, &opts))
        }
        Command::Demo {
            scenarios,
            enforcer,
            file_fed,
            operator_bin,
        } => {
            e2e::signals::install();
            let opts = match options(enforcer, false)
                .and_then(|o| with_operator(o, !file_fed, operator_bin))
            {
                Ok(o) => o,
                Err(code) => return code,
            };
            let dir = scenarios.unwrap_or_else(e2e::demo::default_dir);
            let result = e2e::demo::check_dir(&dir).and_then(|()| e2e::demo::run(&dir, &opts));
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Up {
            path,
            enforcer,
            no_enforcer,
            seconds,
            operator,
            operator_bin,
        } => {
            e2e::signals::install();
            let opts = match options(enforcer, no_enforcer)
                .and_then(|o| with_operator(o, operator, operator_bin))
            {
                Ok(o) => o,
                Err(code) => return code,
            };
            match up(&path, &opts, Duration::from_secs(seconds)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The run options: this binary, the enforcer found (unless not wanted).
fn options(enforcer: Option<PathBuf>, no_enforcer: bool) -> Result<Options, ExitCode> {
    let exe = std::env::current_exe().map_err(|e| {
        eprintln!("error: cannot find this binary: {e}");
        ExitCode::from(2)
    })?;
    let mut opts = Options::new(exe);
    if !no_enforcer {
        let found = e2e::enforcer::find_binary(enforcer.as_deref(), &opts.exe).map_err(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        })?;
        opts.enforcer = Some(found);
    }
    Ok(opts)
}

/// Operator mode: finds the operator binary.
fn with_operator(
    mut opts: Options,
    wanted: bool,
    binary: Option<PathBuf>,
) -> Result<Options, ExitCode> {
    if wanted {
        let found = e2e::operator::find_binary(binary.as_deref(), &opts.exe).map_err(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        })?;
        opts.operator = Some(found);
    }
    Ok(opts)
}

fn up(path: &std::path::Path, opts: &Options, keep: Duration) -> anyhow::Result<()> {
    let loaded = runner::load(path)?;
    let mut lab = runner::ScenarioLab::build(&loaded.scenario, opts)?;
    lab.start(&loaded, opts)?;
    println!("lab {} is up:", lab.lab.run_id);
    println!("  fabric  {}", lab.lab.fabric);
    for n in &lab.lab.nodes {
        println!("  node    {:<24} {} ({}, {})", n.name, n.ns, n.v4, n.v6);
    }
    for (e, ns) in loaded.scenario.endpoints.iter().zip(&lab.endpoint_ns) {
        let ips: Vec<String> = e.ips.iter().map(|ip| ip.to_string()).collect();
        println!("  {:<32} {ns} ({})", e.name, ips.join(", "));
    }
    for e in &lab.enforcers {
        println!(
            "  enforcer of {}: state {}, log {}",
            e.node,
            e.state.display(),
            e.log.display()
        );
    }
    if let Some(cp) = &lab.control {
        println!(
            "  operator {} in {} ({}), manifests {}, log {}",
            cp.url(),
            cp.ns,
            cp.ip,
            cp.manifests.display(),
            cp.log.display()
        );
    }
    for a in &lab.agents {
        println!(
            "  agent of {} in {}: state {}, log {}",
            a.spec.node,
            a.ns,
            a.spec.state_file.display(),
            a.spec.log.display()
        );
    }
    println!("Ctrl-C removes it (or it goes after {}s).", keep.as_secs());
    std::thread::sleep(keep);
    lab.teardown()
}
