//! The audit log on the operator: decision batches from the enforcers' streams stored in
//! the audit database (crate `palisade-audit`), retention, and the read-only query API.
//!
//! ```text
//!   audit store (sqlx) ◄── decision batches ◄── enforcer: NFLOG reader
//!         │
//!         ▼
//!   query: SQL, `palisade audit`, HTTP API
//! ```
//!
//! - [`ingest`]: one task writes batches in order, retrying while the database is down;
//!   a batch's stream acknowledges it only after its commit.
//! - [`pod_ips`]: address → pod, published by reconcile, to name the ends the enforcer
//!   could not.
//! - [`retention`]: deletes by age and by size, in small chunks, on the leader.
//! - [`api`] and [`access`]: the HTTP query API and who may use it (TokenReview and
//!   SubjectAccessReview).

pub mod access;
pub mod api;
pub mod args;
pub mod ingest;
pub mod metrics;
pub mod pod_ips;
pub mod retention;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub use args::AuditArgs;
pub use ingest::{Backoff, Ingest, IngestTask, StoreSlot};
pub use metrics::AuditMetrics;
use palisade_audit::Retention;
pub use pod_ips::PodIps;

/// The SQLite file the operator writes when no `--audit-database` is given.
pub const DEFAULT_DATABASE: &str = "sqlite:///var/lib/palisade/audit.db";

/// Which decisions a policy without an audit setting of its own records
/// (`--audit-default`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuditMode {
    /// Allowed and denied connections.
    #[default]
    All,
    /// Denials only.
    Deny,
    /// Nothing.
    None,
}

impl FromStr for AuditMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(AuditMode::All),
            "deny" => Ok(AuditMode::Deny),
            "none" => Ok(AuditMode::None),
            _ => Err(format!("{s:?}: expected all, deny or none")),
        }
    }
}

impl AuditMode {
    /// What the published rule sets carry: `None` for `all` (their own default).
    pub fn rule_set_default(self) -> Option<palisade_policy::model::AuditMode> {
        match self {
            AuditMode::All => None,
            AuditMode::Deny => Some(palisade_policy::model::AuditMode::Deny),
            AuditMode::None => Some(palisade_policy::model::AuditMode::None),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuditMode::All => "all",
            AuditMode::Deny => "deny",
            AuditMode::None => "none",
        }
    }
}

/// The audit log's settings (the operator's `--audit-*` flags).
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// `sqlite://PATH` or `postgres://...`; `None`: no audit log (batches are not
    /// acknowledged, so the enforcers keep them spooled).
    pub database: Option<String>,
    pub retention: Retention,
    /// How often retention runs.
    pub retention_every: Duration,
    pub default_mode: AuditMode,
    /// Where the query API listens (HTTPS with the stream's certificate); `None`: off.
    pub api_listen: Option<SocketAddr>,
    pub backoff: Backoff,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            database: Some(DEFAULT_DATABASE.to_string()),
            retention: Retention::default(),
            retention_every: Duration::from_secs(60),
            default_mode: AuditMode::All,
            api_listen: None,
            backoff: Backoff::default(),
        }
    }
}

/// The reports' "denied in the last hour" per policy, read from the audit log (no counts
/// while the database is not open here).
pub struct DeniedFromAudit(pub StoreSlot);

impl crate::report::DeniedCounts for DeniedFromAudit {
    fn denied_last_hour(
        &self,
    ) -> futures::future::BoxFuture<'_, std::collections::BTreeMap<String, u64>> {
        Box::pin(async move {
            let mut out = std::collections::BTreeMap::new();
            let Some(store) = self.0.borrow().clone() else {
                return out;
            };
            let since = palisade_audit::now_ms() - 3_600_000;
            match store.denied_counts_since(since).await {
                Ok(counts) => {
                    for c in counts {
                        *out.entry(c.policy).or_default() += u64::try_from(c.count).unwrap_or(0);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "audit log: denied counts for reports"),
            }
            out
        })
    }
}

/// The audit log's running parts.
pub struct Running {
    pub ingest: Ingest,
    pub store: StoreSlot,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The query API's server, when it listens.
    pub api: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Why the audit log cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error("--audit-api-listen needs the Kubernetes API (TokenReview, SubjectAccessReview)")]
    ApiWithoutCluster,
    #[error("--audit-api-listen needs the stream's certificate (--stream-cert, --stream-key)")]
    ApiWithoutCertificate,
    #[error("audit query API: {0}")]
    Api(#[from] crate::stream::StreamError),
}

/// Starts the ingest, retention and (when asked) the query API.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    settings: &AuditSettings,
    database: &str,
    hub: std::sync::Arc<crate::hub::Hub>,
    pod_ips: PodIps,
    metrics: AuditMetrics,
    client: Option<kube::Client>,
    certificate: Option<(&std::path::Path, &std::path::Path)>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Running, AuditStartError> {
    let (ingest, store, ingest_task) = IngestTask {
        url: database.to_string(),
        pod_ips,
        hub: hub.clone(),
        metrics: metrics.clone(),
        backoff: settings.backoff,
        shutdown: shutdown.clone(),
    }
    .spawn();
    let retention_task = tokio::spawn(retention::run(
        store.clone(),
        settings.retention,
        settings.retention_every,
        hub,
        metrics.clone(),
        shutdown.clone(),
    ));
    let api = match settings.api_listen {
        None => None,
        Some(listen) => {
            let client = client.ok_or(AuditStartError::ApiWithoutCluster)?;
            let (cert, key) = certificate.ok_or(AuditStartError::ApiWithoutCertificate)?;
            let router = api::router(store.clone(), access::Access::new(client), metrics);
            Some(api::serve(listen, cert, key, router, shutdown).await?)
        }
    };
    Ok(Running {
        ingest,
        store,
        tasks: vec![ingest_task, retention_task],
        api,
    })
}
