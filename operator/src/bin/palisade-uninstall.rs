//! `palisade-uninstall`: the Helm chart's pre-delete hook. Stops the enforcers and removes
//! Palisade's chains, hooks and sets from every node (`palisade_operator::uninstall`).
//! Prints one JSON report on stdout; exits 1 when a node could not be cleaned.

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
    /// Also delete this Secret (the stream certificate the operator issued).
    #[arg(long, value_name = "NAME")]
    tls_secret: Option<String>,
    /// Also delete this Lease (the operator's leader election).
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
    };
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API")?;
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
