//! `palisade-uninstall`: the Helm chart's uninstall hooks (`palisade_operator::uninstall`).
//! `--phase pre-delete` stops the enforcers and removes Palisade's chains, hooks and sets from
//! every node, prints one JSON report on stdout and exits 1 when a node could not be cleaned
//! (a retry runs the plan the failed attempt saved; `"found": false` in the report means no
//! DaemonSet and no saved plan: nothing was installed to clean);
//! `--phase post-delete` waits for the operator's pods to go and deletes its certificate
//! Secret and leader Lease.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use palisade_operator::uninstall::{self, UninstallSettings};

#[derive(Debug, Parser)]
#[command(name = "palisade-uninstall", version, about)]
struct Cli {
    /// Namespace of the release (default: $POD_NAMESPACE).
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// The enforcer DaemonSet.
    #[arg(long, default_value = "palisade-enforcer", value_name = "NAME")]
    daemonset: String,
    /// Longest wait for the enforcers to stop, and again for the cleanups (seconds).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    timeout_secs: u64,
    /// Which hook runs: `pre-delete` (clean the nodes) or `post-delete` (the operator's
    /// leftovers).
    #[arg(long, default_value = "pre-delete", value_parser = ["pre-delete", "post-delete"])]
    phase: String,
    /// post-delete: the operator's pods (label selector), waited for before deleting.
    #[arg(
        long,
        default_value = "app.kubernetes.io/component=operator",
        value_name = "SELECTOR"
    )]
    operator_selector: String,
    /// post-delete: delete this Secret (the stream certificate the operator issued).
    #[arg(long, value_name = "NAME")]
    tls_secret: Option<String>,
    /// post-delete: delete this Lease (the operator's leader election).
    #[arg(long, value_name = "NAME")]
    lease: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let namespace = match cli.namespace {
        Some(ns) => ns,
        None => std::env::var("POD_NAMESPACE").context("--namespace or $POD_NAMESPACE")?,
    };
    let settings = UninstallSettings {
        namespace,
        daemonset: cli.daemonset,
        timeout: Duration::from_secs(cli.timeout_secs.max(1)),
        poll: Duration::from_secs(2),
        tls_secret: cli.tls_secret,
        lease: cli.lease,
        operator_selector: cli.operator_selector,
    };
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API")?;
    if cli.phase == "post-delete" {
        return uninstall::remove_leftovers(&client, &settings)
            .await
            .context("removing the operator's leftovers failed");
    }
    let report = uninstall::run(client, &settings)
        .await
        .context("uninstall cleanup failed")?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.failed.is_empty() {
        let nodes: Vec<&str> = report.failed.keys().map(String::as_str).collect();
        anyhow::bail!(
            "not cleaned: {}; run `palisade-enforcer cleanup` on each of these nodes (README, \
             \"Uninstall\"), or retry the uninstall",
            nodes.join(", ")
        );
    }
    Ok(())
}
