//! The stream's own metrics (registered into the operator's Prometheus registry
//! with [`StreamMetrics::register`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Counters and gauges of the stream server. Clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct StreamMetrics {
    /// `palisade_stream_refused_total{reason}`: streams refused (`unauthenticated`,
    /// `wrong_user`, `wrong_node`, `no_node`, `auth_unavailable`, `not_leader`,
    /// `bad_hello`, `tls`).
    pub refused: Family<ReasonLabels, Counter>,
    /// `palisade_stream_enforcers_connected`: streams open now.
    pub connected: Gauge,
    /// `palisade_stream_snapshots_sent_total`.
    pub snapshots: Counter,
    /// `palisade_stream_reports_total`: realisation reports received.
    pub reports: Counter,
    /// `palisade_stream_errors_total{reason}`: streams that ended in an error
    /// (`receive`, `send`, `tls`).
    pub errors: Family<ReasonLabels, Counter>,
}

impl StreamMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "palisade_stream_refused",
            "Enforcer streams refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "palisade_stream_enforcers_connected",
            "Enforcer streams open now",
            self.connected.clone(),
        );
        registry.register(
            "palisade_stream_snapshots_sent",
            "Rule sets sent to enforcers",
            self.snapshots.clone(),
        );
        registry.register(
            "palisade_stream_reports",
            "Realisation reports received from enforcers",
            self.reports.clone(),
        );
        registry.register(
            "palisade_stream_errors",
            "Enforcer streams that ended in an error, by reason",
            self.errors.clone(),
        );
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .get()
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}
