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
pub mod ingest;
pub mod metrics;
pub mod pod_ips;
pub mod retention;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

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
