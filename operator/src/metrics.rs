//! The operator's Prometheus metrics (prometheus-client), served on `/metrics`.
//!
//! One [`Metrics`] per process holds the registry. The operator's own metrics are fields
//! with small methods; other parts of the operator (the stream server) register theirs into
//! the same registry with [`Metrics::register`], e.g.
//! `metrics.register(|registry| stream_metrics.register(registry))`.
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `palisade_objects` | gauge | `kind` | objects in the index, per kind |
//! | `palisade_rejected_objects` | gauge | `kind` | objects rejected now (not converted) |
//! | `palisade_object_rejections_total` | counter | `kind` | rejections reported by sources |
//! | `palisade_source_errors_total` | counter | `source` | watch / read errors (retried) |
//! | `palisade_source_synced` | gauge | | 1 once the source has read everything at start |
//! | `palisade_compile_duration_seconds` | histogram | | one commit of the index (compile of the nodes) |
//! | `palisade_commits_total`, `palisade_commit_errors_total` | counter | | commits, failed commits |
//! | `palisade_node_states_published_total` | counter | | node states handed to the hub |
//! | `palisade_leader` | gauge | | 1 while this replica leads |
//! | `palisade_node_desired_version` | gauge | `node` | version of the node's desired state (hub) |
//! | `palisade_node_realised_version` | gauge | `node` | version the node's enforcer reported (hub) |
//! | `palisade_node_realisation_errors` | gauge | `node` | rules the enforcer reported it enforces fail-closed |
//! | `palisade_node_realisation_lag` | gauge | `node` | desired minus realised version (desired when none realised) |
//!
//! The per-node gauges are read from the [`Hub`] at each scrape, so nodes that leave
//! disappear from them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::hub::Hub;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// The operator's metrics and the registry they are served from.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    objects: Family<KindLabels, Gauge>,
    rejected: Family<KindLabels, Gauge>,
    rejections: Family<KindLabels, Counter>,
    source_errors: Family<SourceLabels, Counter>,
    synced: Gauge,
    compile: Histogram,
    commits: Counter,
    commit_errors: Counter,
    published: Counter,
    leader: Gauge,
}

impl Metrics {
    /// Creates the registry with the operator's metrics and the per-node gauges of `hub`.
    pub fn new(hub: Arc<Hub>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let objects = Family::<KindLabels, Gauge>::default();
        let rejected = Family::<KindLabels, Gauge>::default();
        let rejections = Family::<KindLabels, Counter>::default();
        let source_errors = Family::<SourceLabels, Counter>::default();
        let synced = Gauge::default();
        // 0.5 ms .. ~16 s.
        let compile = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let commits = Counter::default();
        let commit_errors = Counter::default();
        let published = Counter::default();
        let leader = Gauge::default();
        registry.register(
            "palisade_objects",
            "Objects in the index, per kind",
            objects.clone(),
        );
        registry.register(
            "palisade_rejected_objects",
            "Objects a source could not convert, standing now",
            rejected.clone(),
        );
        registry.register(
            "palisade_object_rejections",
            "Objects a source could not convert, as reported",
            rejections.clone(),
        );
        registry.register(
            "palisade_source_errors",
            "Errors reading a source (retried), per source",
            source_errors.clone(),
        );
        registry.register(
            "palisade_source_synced",
            "1 once the source has read every object that existed at start",
            synced.clone(),
        );
        registry.register(
            "palisade_compile_duration_seconds",
            "Time to commit the index: recompile the nodes whose rules changed",
            compile.clone(),
        );
        registry.register("palisade_commits", "Commits of the index", commits.clone());
        registry.register(
            "palisade_commit_errors",
            "Commits of the index that failed (nothing published)",
            commit_errors.clone(),
        );
        registry.register(
            "palisade_node_states_published",
            "Node states handed to the stream server",
            published.clone(),
        );
        registry.register(
            "palisade_leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register_collector(Box::new(HubCollector { hub }));
        Arc::new(Metrics {
            registry: Mutex::new(registry),
            objects,
            rejected,
            rejections,
            source_errors,
            synced,
            compile,
            commits,
            commit_errors,
            published,
            leader,
        })
    }

    /// Lets another part of the operator register its metrics into the served registry.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.lock());
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock());
        out
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how many objects of `kind` the index holds.
    pub fn set_objects(&self, kind: &str, count: usize) {
        self.objects
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets how many objects of `kind` are rejected now.
    pub fn set_rejected(&self, kind: &str, count: usize) {
        self.rejected
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one rejection reported by a source.
    pub fn rejection(&self, kind: &str) {
        self.rejections
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts an error reading a source (`Pod`, `directory`, `discovery`...).
    pub fn source_error(&self, source: &str) {
        self.source_errors
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc();
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.set(i64::from(synced));
    }

    /// Records one commit: its duration and the number of node states it published.
    pub fn commit(&self, took: Duration, published: usize) {
        self.compile.observe(took.as_secs_f64());
        self.commits.inc();
        self.published
            .inc_by(u64::try_from(published).unwrap_or(u64::MAX));
    }

    pub fn commit_error(&self) {
        self.commit_errors.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

/// Per-node versions, read from the hub at each scrape.
#[derive(Debug)]
struct HubCollector {
    hub: Arc<Hub>,
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let desired = self.hub.desired_versions();
        let realised = self.hub.realisation();
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     values: Vec<(&String, i64)>|
         -> Result<(), std::fmt::Error> {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for (node, value) in values {
                let labels = [("node", node.as_str())];
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "palisade_node_desired_version",
            "Version of the node's desired rule set",
            desired.iter().map(|(n, v)| (n, as_i64(*v))).collect(),
        )?;
        gauge(
            &mut encoder,
            "palisade_node_realised_version",
            "Version of the rule set the node's enforcer reported in force",
            realised
                .iter()
                .map(|(n, r)| (n, as_i64(r.version)))
                .collect(),
        )?;
        gauge(
            &mut encoder,
            "palisade_node_realisation_errors",
            "Rules the node's enforcer reported it enforces fail-closed",
            realised
                .iter()
                .map(|(n, r)| (n, i64::try_from(r.errors.len()).unwrap_or(i64::MAX)))
                .collect(),
        )?;
        gauge(
            &mut encoder,
            "palisade_node_realisation_lag",
            "Desired version minus the version the node's enforcer realised",
            desired
                .iter()
                .map(|(n, v)| {
                    let done = realised.get(n).map_or(0, |r| r.version);
                    (n, as_i64(v.saturating_sub(done)))
                })
                .collect(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::compiled::NodeRuleSet;

    #[test]
    fn exposition_has_operator_and_node_metrics() {
        let hub = Hub::new();
        let metrics = Metrics::new(hub.clone());
        metrics.set_objects("Pod", 3);
        metrics.set_rejected("NetworkPolicy", 1);
        metrics.rejection("NetworkPolicy");
        metrics.commit(Duration::from_millis(3), 2);
        metrics.set_leader(true);
        metrics.source_error("Pod");
        hub.publish(vec![
            NodeRuleSet {
                node: "n1".into(),
                version: 4,
                ..NodeRuleSet::default()
            },
            NodeRuleSet {
                node: "n2".into(),
                version: 1,
                ..NodeRuleSet::default()
            },
        ]);
        hub.report_realised("n1", 3, vec!["rule x fail-closed".into()]);
        // Another part of the operator registers its own metric.
        let extra = Counter::<u64>::default();
        metrics.register(|r| r.register("palisade_stream_test", "test", extra.clone()));
        extra.inc();

        let text = metrics.encode();
        for line in [
            "palisade_objects{kind=\"Pod\"} 3",
            "palisade_rejected_objects{kind=\"NetworkPolicy\"} 1",
            "palisade_object_rejections_total{kind=\"NetworkPolicy\"} 1",
            "palisade_source_errors_total{source=\"Pod\"} 1",
            "palisade_compile_duration_seconds_count 1",
            "palisade_commits_total 1",
            "palisade_node_states_published_total 2",
            "palisade_leader 1",
            "palisade_node_desired_version{node=\"n1\"} 4",
            "palisade_node_desired_version{node=\"n2\"} 1",
            "palisade_node_realised_version{node=\"n1\"} 3",
            "palisade_node_realisation_errors{node=\"n1\"} 1",
            "palisade_node_realisation_lag{node=\"n1\"} 1",
            "palisade_node_realisation_lag{node=\"n2\"} 1",
            "palisade_stream_test_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
