//! Wiring: starts the source, reconcile, leader election and the health server, and stops
//! them in order on shutdown. `main` parses the command line into a [`Config`] and calls
//! [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::health;
use crate::hub::Hub;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::{Debounce, Reconciler};
use crate::source::dir::DirSource;
use crate::source::kube::KubeSource;
use crate::source::{Source, SourceError};
use crate::status::Status;

/// Where the cluster's objects come from (`--source`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// `kubernetes`: the API server (in-cluster config or kubeconfig).
    Kubernetes,
    /// `dir:PATH`: a manifest directory.
    Directory(PathBuf),
}

impl FromStr for SourceConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "kubernetes" {
            return Ok(SourceConfig::Kubernetes);
        }
        match s.strip_prefix("dir:") {
            Some(path) if !path.is_empty() => Ok(SourceConfig::Directory(PathBuf::from(path))),
            _ => Err(format!("{s:?}: expected kubernetes or dir:PATH")),
        }
    }
}

/// Leader-election settings (used with the Kubernetes source only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease; `None`: `POD_NAMESPACE`, else the client's default namespace.
    pub namespace: Option<String>,
    pub name: String,
    /// This replica's identity; `None`: `POD_NAME`, else the host name.
    pub identity: Option<String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            namespace: None,
            name: "palisade-operator".to_string(),
            identity: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: SourceConfig,
    pub listen_health: SocketAddr,
    /// Poll interval of the manifest directory.
    pub poll: Duration,
    /// How often the Kubernetes source looks for CRDs that were not installed.
    pub crd_recheck: Duration,
    pub debounce: Debounce,
    pub lease: LeaseSettings,
    /// The enforcers' stream (operator/src/stream); `None`: not served.
    pub stream: Option<crate::stream::StreamSettings>,
    /// Policy reports (operator/src/report).
    pub report: crate::report::ReportSettings,
    /// The audit log (operator/src/audit).
    pub audit: crate::audit::AuditSettings,
}

impl Config {
    pub fn new(source: SourceConfig, listen_health: SocketAddr) -> Self {
        Config {
            source,
            listen_health,
            poll: Duration::from_millis(100),
            crd_recheck: Duration::from_secs(30),
            debounce: Debounce::default(),
            lease: LeaseSettings::default(),
            stream: None,
            report: crate::report::ReportSettings::default(),
            audit: crate::audit::AuditSettings::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("health listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("health server: {0}")]
    Health(#[source] std::io::Error),
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("enforcer stream: {0}")]
    Stream(#[from] crate::stream::StreamError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditStartError),
    #[error("policy reports: {0}")]
    Report(#[from] crate::report::ReportError),
}

/// The shared parts of a running operator, for the parts that serve from it.
#[derive(Clone)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    /// The API client, with the Kubernetes source; `None` with a manifest directory.
    pub client: Option<kube::Client>,
    /// Cancelled when the operator stops.
    pub shutdown: CancellationToken,
}

/// Runs the operator until `shutdown` is cancelled (or a part fails).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let hub = Hub::new();
    let metrics = Metrics::new(hub.clone());
    let status = Status::new();
    let (source, client) = match &config.source {
        SourceConfig::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .map_err(RunError::Client)?;
            let source =
                KubeSource::new(client.clone(), metrics.clone()).with_recheck(config.crd_recheck);
            (Source::Kubernetes(source), Some(client))
        }
        SourceConfig::Directory(path) => (
            Source::Directory(DirSource::new(path.clone(), config.poll, metrics.clone())),
            None,
        ),
    };
    let shared = Shared {
        hub: hub.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        client: client.clone(),
        shutdown: shutdown.clone(),
    };

    let listener = health::bind(config.listen_health)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen_health,
            source,
        })?;
    info!(addr = %config.listen_health, "health endpoints: /healthz /readyz /metrics");
    let mut health_task = tokio::spawn(health::serve(
        listener,
        hub.clone(),
        status.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // Leadership: a Lease with the API server; always the leader without one.
    let leader_task: Option<JoinHandle<()>> = match &client {
        Some(client) if source.needs_leader_election() => {
            let lease = lease_config(&config.lease, client);
            info!(namespace = %lease.namespace, name = %lease.name, identity = %lease.identity,
                "leader election");
            let elector = LeaderElector::new(client.clone(), lease);
            Some(tokio::spawn(elector.run(
                hub.clone(),
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        _ => {
            hub.set_leader(true);
            metrics.set_leader(true);
            None
        }
    };

    let (events_tx, events_rx) = mpsc::channel(1024);
    let pod_ips = crate::audit::PodIps::new();
    let reconciler = Reconciler::new(
        hub.clone(),
        metrics.clone(),
        status.clone(),
        config.debounce,
    )
    .with_pod_ips(pod_ips.clone())
    .with_audit_default(config.audit.default_mode.rule_set_default());
    // The audit log: decision batches from the streams, retention, the query API.
    let audit = match &config.audit.database {
        Some(database) => {
            let audit_metrics = crate::audit::AuditMetrics::new();
            metrics.register(|registry| audit_metrics.register(registry));
            let certificate = config
                .stream
                .as_ref()
                .map(|s| (s.cert.as_path(), s.key.as_path()));
            info!(database = %palisade_audit::redact(database), default = config.audit.default_mode.as_str(), "audit log");
            Some(
                crate::audit::start(
                    &config.audit,
                    database,
                    hub.clone(),
                    pod_ips.clone(),
                    audit_metrics,
                    client.clone(),
                    certificate,
                    shutdown.clone(),
                )
                .await?,
            )
        }
        None => {
            tracing::warn!("no audit database: decision batches are not stored");
            None
        }
    };
    let denied: Arc<dyn crate::report::DeniedCounts> = match &audit {
        Some(a) => Arc::new(crate::audit::DeniedFromAudit(a.store.clone())),
        None => Arc::new(crate::report::NoAudit),
    };
    let reconcile_task = tokio::spawn(reconciler.run(events_rx));
    // Policy reports read a copy of the source's events (a tee in front of reconcile).
    let (events_tx, report_task) = crate::report::start(
        &config.report,
        hub.clone(),
        status.clone(),
        client.clone(),
        denied,
        events_tx,
    )?;
    let mut source_task = tokio::spawn(source.run(events_tx));
    // `kubectl get tnp` rule counts, written by the leader (a cluster only).
    let tnp_status_task = client
        .clone()
        .map(|client| tokio::spawn(crate::tnp_status::run(client, hub.clone())));

    // The enforcers' stream: served while this replica leads (see operator/src/stream).
    let mut stream_task = match &config.stream {
        Some(settings) => {
            let stream_metrics = crate::stream::StreamMetrics::new();
            shared
                .metrics
                .register(|registry| stream_metrics.register(registry));
            crate::stream::run(
                settings.clone(),
                shared.hub.clone(),
                shared.client.clone(),
                stream_metrics,
                audit.as_ref().map(|a| a.ingest.clone()),
                shared.shutdown.clone().cancelled_owned(),
            )
            .await?
        }
        None => {
            tracing::warn!("no stream certificate given: enforcers are not served");
            let stop = shared.shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                Ok(())
            })
        }
    };

    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        ended = &mut source_task => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Source(e)),
            Err(e) => Err(RunError::Task(e)),
        },
        ended = &mut health_task => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Health(e)),
            Err(e) => Err(RunError::Task(e)),
        },
        ended = &mut stream_task => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Stream(e)),
            Err(e) => Err(RunError::Task(e)),
        },
    };
    if let Err(e) = &result {
        error!(error = %e, "stopping");
    }
    info!("shutting down");
    shutdown.cancel();
    if let Some(task) = leader_task {
        // Releases the Lease when leading.
        let _ = task.await;
    }
    source_task.abort();
    reconcile_task.abort();
    if let Some(task) = report_task {
        task.abort();
    }
    if let Some(audit) = audit {
        // The ingest ends on shutdown (what it had not committed is resent by the
        // enforcers to the next leader).
        for task in audit.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        if let Some(api) = audit.api {
            let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
        }
    }
    if let Some(task) = tnp_status_task {
        task.abort();
    }
    if !health_task.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut health_task).await;
    }
    if !stream_task.is_finished() {
        // Streams end with UNAVAILABLE (the enforcers keep their rules and retry).
        if tokio::time::timeout(Duration::from_secs(2), &mut stream_task)
            .await
            .is_err()
        {
            stream_task.abort();
        }
    }
    result
}

fn lease_config(settings: &LeaseSettings, client: &kube::Client) -> LeaseConfig {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let namespace = settings
        .namespace
        .clone()
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or_else(|| client.default_namespace().to_string());
    let identity = settings
        .identity
        .clone()
        .or_else(|| env("POD_NAME"))
        .or_else(|| env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("palisade-operator-{}", std::process::id()));
    LeaseConfig {
        namespace,
        name: settings.name.clone(),
        identity,
        lease_duration: settings.lease_duration,
        renew_deadline: settings.renew_deadline,
        retry_period: settings.retry_period,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_flag() {
        assert_eq!("kubernetes".parse(), Ok(SourceConfig::Kubernetes));
        assert_eq!(
            "dir:/tmp/lab".parse(),
            Ok(SourceConfig::Directory(PathBuf::from("/tmp/lab")))
        );
        assert!("dir:".parse::<SourceConfig>().is_err());
        assert!("k8s".parse::<SourceConfig>().is_err());
    }
}
