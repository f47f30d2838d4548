//! Palisade's operator.
//!
//! ```text
//!                 Kubernetes API  or  manifest directory
//!                               │  (sources: the only code that knows which)
//!                               ▼
//!   operator:  index (pods, namespaces, nodes, policies)  ──►  compile per node  ──►  hub ──► stream server
//! ```
//!
//! - [`source`]: the Kubernetes API ([`source::kube`]) or a manifest directory
//!   ([`source::dir`]), both turned into [`source::Event`]s; nothing downstream knows which.
//! - [`reconcile`]: one task owns the `ClusterIndex`, applies events, commits (debounced) and
//!   publishes the nodes whose rules changed to the [`hub`].
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease (only the leader serves).
//! - [`health`], [`metrics`], [`telemetry`], [`status`]: `/healthz`, `/readyz`, `/metrics`,
//!   logs and OTLP traces, sync state and rejected objects.
//! - [`report`]: PolicyReports / OpenReports: what is enforced, where, and what is not.
//! - [`app`]: the wiring `main` calls.

pub mod app;
pub mod audit;
pub mod certs;
pub mod files;
pub mod health;
pub mod hub;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod report;
pub mod source;
pub mod status;
pub mod stream;
pub mod telemetry;
pub mod tnp_status;
pub mod uninstall;
#[cfg(test)]
mod verifier;
