//! The audit log's metrics (registered into the operator's registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Counters of the ingest, retention and query API. Clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct AuditMetrics {
    /// `palisade_audit_decisions_stored_total`.
    pub stored: Counter,
    /// `palisade_audit_gaps_stored_total`.
    pub gaps: Counter,
    /// `palisade_audit_duplicates_total`: entries of batches sent again, skipped.
    pub duplicates: Counter,
    /// `palisade_audit_write_failures_total`: failed writes (each retried).
    pub write_failures: Counter,
    /// `palisade_audit_batches_rejected_total`: batches that cannot be stored as sent
    /// (recorded as a gap instead).
    pub rejected: Counter,
    /// `palisade_audit_open_failed_total`: the database could not be opened for a reason
    /// retrying cannot fix (bad URL, foreign schema): the audit log is off.
    pub open_failed: Counter,
    /// `palisade_audit_backlog_full_total`: streams ended because the ingest queue was full.
    pub backlog_full: Counter,
    /// `palisade_audit_pending_batches`: batches waiting to be written.
    pub pending: Gauge,
    /// `palisade_audit_pruned_total{outcome}`: rows deleted by retention (`age`, `size`,
    /// `gaps`).
    pub pruned: Family<OutcomeLabels, Counter>,
    /// `palisade_audit_api_requests_total{outcome}`: query API requests (`ok`,
    /// `unauthenticated`, `forbidden`, `bad_request`, `unavailable`).
    pub api: Family<OutcomeLabels, Counter>,
}

impl AuditMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "palisade_audit_decisions_stored",
            "Decisions stored in the audit log",
            self.stored.clone(),
        );
        registry.register(
            "palisade_audit_gaps_stored",
            "Gaps (decisions an enforcer had to drop) stored in the audit log",
            self.gaps.clone(),
        );
        registry.register(
            "palisade_audit_duplicates",
            "Entries of batches sent again, already stored",
            self.duplicates.clone(),
        );
        registry.register(
            "palisade_audit_write_failures",
            "Failed audit database writes (retried with backoff)",
            self.write_failures.clone(),
        );
        registry.register(
            "palisade_audit_batches_rejected",
            "Decision batches that could not be stored as sent (recorded as gaps)",
            self.rejected.clone(),
        );
        registry.register(
            "palisade_audit_open_failed",
            "The audit database could not be opened for a reason retrying cannot fix (audit log off)",
            self.open_failed.clone(),
        );
        registry.register(
            "palisade_audit_backlog_full",
            "Enforcer streams ended because the audit ingest queue was full",
            self.backlog_full.clone(),
        );
        registry.register(
            "palisade_audit_pending_batches",
            "Decision batches waiting to be written",
            self.pending.clone(),
        );
        registry.register(
            "palisade_audit_pruned",
            "Rows deleted by retention, by reason",
            self.pruned.clone(),
        );
        registry.register(
            "palisade_audit_api_requests",
            "Audit query API requests, by outcome",
            self.api.clone(),
        );
    }

    pub fn api_outcome(&self, outcome: &str) {
        self.api
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn pruned(&self, reason: &str, n: u64) {
        self.pruned
            .get_or_create(&OutcomeLabels {
                outcome: reason.to_string(),
            })
            .inc_by(n);
    }
}
