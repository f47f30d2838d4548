//! `palisade-enforcer`: programs the network namespace it runs in from a node's
//! compiled rule set: followed on the operator's stream (`agent`), or read from a
//! JSON file (`apply`, `run`).
//!
//! Reports on stdout as JSON lines: `{"applied_version":N,...}` after each apply,
//! `{"error":...}` for failures and for rules enforced fail-closed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use palisade_enforcer::audit::{Attribution, AuditConfig, Capture};
use palisade_enforcer::stream::{run_agent, AgentConfig, Applier};
use palisade_enforcer::{
    cleanup, render, ApplyOptions, ApplyReport, AuditRules, Backend, Enforcer, NodeRuleSet,
    RenderOptions,
};
use palisade_wire::RuleError;
use serde_json::json;

#[derive(Parser)]
#[command(name = "palisade-enforcer", version, about = "Palisade's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Nft,
    Legacy,
}

/// What the rules log for the audit log.
#[derive(clap::Args, Clone, Copy)]
struct AuditRuleArgs {
    /// Render no logging rules (and, for `agent`, capture nothing).
    #[arg(long)]
    no_audit: bool,
    /// The NFLOG group the rules log to and the agent reads.
    #[arg(long, default_value_t = palisade_enforcer::render::DEFAULT_NFLOG_GROUP)]
    nflog_group: u16,
    /// Denied packets logged per second and source address...
    #[arg(long, default_value_t = 10)]
    audit_deny_rate: u32,
    /// ...after a burst of this many.
    #[arg(long, default_value_t = 20)]
    audit_deny_burst: u32,
    /// Denied packets logged per second on the whole node, whatever their sources.
    #[arg(long, default_value_t = 1000)]
    audit_deny_node_rate: u32,
}

impl AuditRuleArgs {
    fn rules(&self) -> Option<AuditRules> {
        (!self.no_audit).then_some(AuditRules {
            group: self.nflog_group,
            deny_per_sec: self.audit_deny_rate.max(1),
            deny_burst: self.audit_deny_burst.max(1),
            deny_node_per_sec: self.audit_deny_node_rate.max(1),
        })
    }
}

#[derive(clap::Args)]
struct ApplyArgs {
    /// The node's compiled rule set (JSON NodeRuleSet).
    #[arg(long)]
    state: PathBuf,
    /// Reject denied connections (TCP reset / ICMP port unreachable) instead of dropping.
    #[arg(long)]
    reject: bool,
    /// Keep established connections that a new state denies.
    #[arg(long)]
    no_revoke: bool,
    /// iptables backend (default: detected like kube-proxy, nft on a tie).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    #[command(flatten)]
    audit: AuditRuleArgs,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The operator's stream, `https://HOST:PORT`.
    #[arg(long)]
    operator: String,
    /// The node this agent enforces (the node its pod runs on).
    #[arg(long)]
    node: String,
    /// The projected ServiceAccount token (re-read at each connection).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    token_file: PathBuf,
    /// The CA certificate (PEM) that signs the operator's certificate.
    #[arg(long)]
    ca_file: PathBuf,
    /// Check the operator's certificate against this name (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Where the last applied rule set is kept (default: /var/lib/palisade/NODE.json).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// First reconnection delay; doubles per failed attempt (jittered) up to --backoff-max-ms.
    #[arg(long, default_value_t = 200)]
    backoff_min_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    backoff_max_ms: u64,
    #[arg(long, default_value_t = 5000)]
    connect_timeout_ms: u64,
    /// HTTP/2 ping interval; a silent operator is dropped after one more timeout.
    #[arg(long, default_value_t = 10_000)]
    keepalive_ms: u64,
    /// How often to check that our hooks are still in FORWARD.
    #[arg(long, default_value_t = 5000)]
    hook_check_ms: u64,
    #[arg(long)]
    reject: bool,
    #[arg(long)]
    no_revoke: bool,
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    #[command(flatten)]
    audit: AuditRuleArgs,
    /// Aggregation window of the audit capture: identical decisions inside it are
    /// sent as one record with a count.
    #[arg(long, default_value_t = 2000)]
    audit_window_ms: u64,
    /// Where decision batches wait for the operator's acknowledgement (default:
    /// `audit-NODE` next to the state file).
    #[arg(long)]
    audit_spool_dir: Option<PathBuf>,
    /// Size bound of the spool; when full, the oldest batches are dropped and a
    /// gap is recorded.
    #[arg(long, default_value_t = 64 << 20)]
    audit_spool_max_bytes: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply a state once.
    Apply(ApplyArgs),
    /// Apply a state, then re-apply whenever the file changes (polled every 50 ms).
    /// SIGTERM/SIGINT exit and keep the rules.
    Run {
        #[command(flatten)]
        args: ApplyArgs,
        /// Remove everything Palisade installed on exit (uninstall).
        #[arg(long)]
        cleanup_on_exit: bool,
        /// How often to check that our hooks are still in FORWARD (restoring them,
        /// and every chain when they are gone too).
        #[arg(long, default_value_t = 5000)]
        hook_check_ms: u64,
    },
    /// Follow this node's rule set on the operator's stream (TLS, ServiceAccount
    /// token) and apply each one; report back what is realised. When the operator
    /// is unreachable the rules in force stay and the agent reconnects with
    /// backoff; the last applied rule set is kept in --state-file and applied first
    /// after a restart. SIGTERM/SIGINT exit and keep the rules.
    Agent(AgentArgs),
    /// Remove every chain, hook and set Palisade installed (both families and backends).
    Cleanup,
    /// Print the ipset and iptables-restore scripts for a state.
    Render {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        reject: bool,
        #[command(flatten)]
        audit: AuditRuleArgs,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Apply(args) => {
            let state = read_state(&args.state)?;
            let mut enforcer = enforcer(&args);
            match enforcer.apply(&state) {
                Ok(report) => emit_report(&report),
                Err(e) => {
                    emit(json!({"error": e.to_string(), "version": state.version}));
                    return Err(e).context("apply failed");
                }
            }
        }
        Cmd::Run {
            args,
            cleanup_on_exit,
            hook_check_ms,
        } => run(&args, cleanup_on_exit, Duration::from_millis(hook_check_ms))?,
        Cmd::Agent(args) => agent(args)?,
        Cmd::Cleanup => {
            let report = cleanup().context("cleanup failed")?;
            emit(json!({"cleaned_up": report}));
        }
        Cmd::Render {
            state,
            reject,
            audit,
        } => {
            let state = read_state(&state)?;
            let rendered = render(
                &state,
                &RenderOptions {
                    reject,
                    audit: audit.rules(),
                },
            )?;
            print!("{}", rendered.scripts());
            for issue in &rendered.issues {
                eprintln!(
                    "{}",
                    json!({"error": "rule enforced fail-closed", "rule": issue})
                );
            }
        }
    }
    Ok(())
}

fn enforcer(args: &ApplyArgs) -> Enforcer {
    make_enforcer(
        args.reject,
        args.no_revoke,
        args.backend,
        args.audit.rules(),
    )
}

fn make_enforcer(
    reject: bool,
    no_revoke: bool,
    backend: Option<BackendArg>,
    audit: Option<AuditRules>,
) -> Enforcer {
    let opts = ApplyOptions {
        reject,
        revoke: !no_revoke,
        audit,
    };
    match backend {
        Some(BackendArg::Nft) => Enforcer::with_backend(Backend::Nft, opts),
        Some(BackendArg::Legacy) => Enforcer::with_backend(Backend::Legacy, opts),
        None => Enforcer::new(opts),
    }
}

fn read_state(path: &Path) -> Result<NodeRuleSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

fn emit_report(report: &ApplyReport) {
    emit(json!({
        "applied_version": report.version,
        "elapsed_ms": report.elapsed_us as f64 / 1000.0,
        "chains_written": report.chains_written,
        "chains_removed": report.chains_removed,
        "sets_created": report.sets_created,
        "sets_updated": report.sets_updated,
        "sets_removed": report.sets_removed,
        "revoked": report.revoked,
    }));
    for issue in &report.issues {
        emit(
            json!({"error": "rule enforced fail-closed", "version": report.version, "rule": issue}),
        );
    }
    for error in &report.errors {
        emit(json!({"error": error, "version": report.version}));
    }
    let read_max_sets =
        || std::fs::read_to_string(palisade_enforcer::apply::IPSET_MAX_SETS_PARAM).ok();
    if let Some(hint) =
        palisade_enforcer::apply::ipset_table_hint(report.sets_created, read_max_sets)
    {
        emit(json!({"hint": hint, "version": report.version}));
    }
}

/// Identity of the file's current content, as cheap as a stat.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn run(args: &ApplyArgs, cleanup_on_exit: bool, hook_check: Duration) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handler")?;
    }
    let mut enforcer = enforcer(args);
    emit(json!({"started": true, "backend": enforcer.backend()}));
    let poll = Duration::from_millis(50);
    let retry = Duration::from_secs(1);
    let mut seen: Option<(SystemTime, u64)> = None;
    // Some(deadline) while the last attempt failed: retry then, even without a change.
    let mut retry_at: Option<Instant> = None;
    let mut applied = false;
    let mut last_hook_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now_stamp = stamp(&args.state);
        let changed = now_stamp != seen;
        let due = retry_at.is_some_and(|t| Instant::now() >= t);
        if changed || due {
            seen = now_stamp;
            match read_state(&args.state) {
                Err(e) => {
                    emit(json!({"error": format!("{e:#}")}));
                    retry_at = None;
                }
                Ok(state) => match enforcer.apply(&state) {
                    Ok(report) => {
                        emit_report(&report);
                        retry_at = None;
                        applied = true;
                    }
                    Err(e) => {
                        emit(json!({"error": e.to_string(), "version": state.version}));
                        retry_at = Some(Instant::now() + retry);
                    }
                },
            }
        }
        if applied && last_hook_check.elapsed() >= hook_check {
            last_hook_check = Instant::now();
            if let Err(e) = enforcer.ensure_hooks() {
                // Our chains are gone too (the hook could not be inserted): forget
                // what we installed and rewrite everything from the file now.
                emit(json!({"error": e.to_string()}));
                enforcer.forget();
                retry_at = Some(Instant::now());
            }
        }
        std::thread::sleep(poll);
    }
    if cleanup_on_exit {
        let report = enforcer.cleanup().context("cleanup on exit failed")?;
        emit(json!({"cleaned_up": report}));
    }
    emit(json!({"stopped": true}));
    Ok(())
}

/// Applies the operator's rule sets to the kernel, reporting like `run`.
struct KernelApplier {
    enforcer: Enforcer,
    applied: bool,
    /// The audit capture's view of the rules in force.
    attribution: Option<Arc<Mutex<Attribution>>>,
}

impl Applier for KernelApplier {
    fn apply(&mut self, state: &NodeRuleSet) -> Result<Vec<RuleError>, String> {
        // The capture learns the new rules' ids before the kernel logs under them.
        let report = match &self.attribution {
            Some(attribution) => self.enforcer.apply_attributed(state, attribution),
            None => self.enforcer.apply(state),
        }
        .map_err(|e| e.to_string())?;
        self.applied = true;
        emit_report(&report);
        Ok(report
            .issues
            .iter()
            .map(|i| RuleError {
                policy: i.policy.clone(),
                direction: i.direction.as_str().to_string(),
                rule: i.rule_index,
                reason: i.reason.clone(),
            })
            .collect())
    }

    fn check(&mut self) -> Result<(), String> {
        if !self.applied {
            return Ok(());
        }
        self.enforcer.ensure_hooks().map_err(|e| {
            // Our chains are gone too: forget what we installed, so the re-apply
            // the agent does next rewrites everything.
            self.enforcer.forget();
            e.to_string()
        })
    }
}

fn agent(args: AgentArgs) -> Result<()> {
    let mut config = AgentConfig::new(
        &args.operator,
        &args.node,
        args.token_file.clone(),
        args.ca_file.clone(),
    );
    config.server_name = args.server_name.clone();
    if let Some(path) = &args.state_file {
        config.state_file = path.clone();
    }
    config.backoff_min = Duration::from_millis(args.backoff_min_ms.max(1));
    config.backoff_max = Duration::from_millis(args.backoff_max_ms.max(args.backoff_min_ms));
    config.connect_timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    config.keepalive = Duration::from_millis(args.keepalive_ms.max(100));
    config.keepalive_timeout = Duration::from_millis(args.keepalive_ms.max(100) / 2);
    config.check_interval = Duration::from_millis(args.hook_check_ms.max(100));
    let enforcer = make_enforcer(
        args.reject,
        args.no_revoke,
        args.backend,
        args.audit.rules(),
    );
    emit(
        json!({"started": true, "backend": enforcer.backend(), "node": args.node, "operator": args.operator}),
    );
    let emitter: palisade_enforcer::stream::Emit = std::sync::Arc::new(emit);
    let capture = match args.audit.rules() {
        None => None,
        Some(rules) => {
            let spool_dir = args.audit_spool_dir.clone().unwrap_or_else(|| {
                config
                    .state_file
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(format!("audit-{}", args.node))
            });
            let audit = AuditConfig {
                group: rules.group,
                window: Duration::from_millis(args.audit_window_ms.max(10)),
                spool_dir,
                spool_max_bytes: args.audit_spool_max_bytes,
                keep_previous: Duration::from_secs(30),
            };
            // Enforcement does not depend on the audit log: without a capture the
            // rules still decide, and the error says what is not recorded.
            match Capture::start(&audit, &args.node, Arc::clone(&emitter)) {
                Ok(c) => {
                    emit(
                        json!({"audit": {"group": audit.group, "source": c.spool.source(), "spool": audit.spool_dir}}),
                    );
                    Some(c)
                }
                Err(e) => {
                    emit(
                        json!({"error": format!("audit capture off, decisions are not recorded: {e}")}),
                    );
                    None
                }
            }
        }
    };
    config.audit = capture.as_ref().map(|c| Arc::clone(&c.spool));
    let applier = KernelApplier {
        enforcer,
        applied: false,
        attribution: capture.as_ref().map(|c| Arc::clone(&c.attribution)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing signal handler")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing signal handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop_tx.send_replace(true);
        });
        run_agent(config, applier, emitter, stop_rx)
            .await
            .context("agent failed")
    })?;
    if let Some(capture) = capture {
        // The window in progress is spooled (sent after the next start).
        let counters = capture.counters();
        capture.stop();
        emit(json!({"audit_stopped": counters}));
    }
    emit(json!({"stopped": true}));
    Ok(())
}
