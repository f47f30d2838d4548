//! Reconcile: the one task that owns the [`ClusterIndex`].
//!
//! ```text
//!   source events ──► apply to the index ──(debounce)──► commit ──► hub.publish(changed nodes)
//! ```
//!
//! Events are applied as they come. Nothing is compiled before the source has sent
//! [`Event::Synced`] (a half-read cluster would hand enforcers half the rules); then the index
//! is committed at once, and afterwards `quiet` (20 ms) after the last event of a burst, but
//! never more than `max_delay` (100 ms) after the first one. Each commit hands the nodes whose
//! rules changed to the [`Hub`]. The reconcile never knows which source feeds it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use palisade_crds::{ClusterObject, ObjectKey};
use palisade_policy::index::ClusterIndex;
use palisade_policy::PolicyError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::source::{Event, Rejection, RejectionId};
use crate::status::Status;

/// How commits are spaced after events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// Commit this long after the last event of a burst...
    pub quiet: Duration,
    /// ...but at most this long after its first event.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        }
    }
}

/// At most this many queued events are applied before the commit deadline is looked at again.
const DRAIN: usize = 1024;

/// Owns the index; applies events, commits and publishes.
pub struct Reconciler {
    index: ClusterIndex,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    debounce: Debounce,
    /// The objects in the index (for the per-kind gauges).
    keys: BTreeSet<ObjectKey>,
    counts: BTreeMap<&'static str, usize>,
    rejected_kinds: BTreeSet<String>,
    source_synced: bool,
    /// Address → pod for the audit log, republished on commits after pods changed.
    pod_ips: Option<crate::audit::PodIps>,
    pods_changed: bool,
    /// Addresses claimed by several pods as of the last commit (logged when they change).
    conflicts: Vec<palisade_policy::address::AddressConflict>,
}

impl Reconciler {
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
        debounce: Debounce,
    ) -> Self {
        Reconciler {
            index: ClusterIndex::new(),
            hub,
            metrics,
            status,
            debounce,
            keys: BTreeSet::new(),
            counts: BTreeMap::new(),
            rejected_kinds: BTreeSet::new(),
            source_synced: false,
            pod_ips: None,
            pods_changed: false,
            conflicts: Vec::new(),
        }
    }

    /// Sets the audit default of every published rule set (`None`: all decisions, left
    /// unset so the rule sets' digest is the engine's). The index compiles it into each
    /// state, so a commit publishes the index's own states without copying them.
    pub fn with_audit_default(mut self, mode: Option<palisade_policy::model::AuditMode>) -> Self {
        self.index = std::mem::take(&mut self.index).with_audit_default(mode);
        self
    }

    /// Publishes pod addresses into `pod_ips` on every commit after pods changed.
    pub fn with_pod_ips(mut self, pod_ips: crate::audit::PodIps) -> Self {
        self.pod_ips = Some(pod_ips);
        self.pods_changed = true;
        self
    }

    /// The index (for tests and benchmarks).
    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    /// Applies one event to the index. Returns whether the index may have changed.
    pub fn apply(&mut self, event: Event) -> bool {
        // Anything but another kind's change may move a pod address.
        let other_kind = match &event {
            Event::Apply(o) => !matches!(o, ClusterObject::Pod(_)),
            Event::Delete(k) => !matches!(k, ObjectKey::Pod { .. }),
            _ => false,
        };
        self.pods_changed |= !other_kind;
        match event {
            Event::Apply(object) => {
                let key = object.key();
                let result = match object {
                    ClusterObject::Namespace(ns) => {
                        self.index.apply_namespace(ns);
                        Ok(())
                    }
                    ClusterObject::Node(node) => {
                        self.index.apply_node(node);
                        Ok(())
                    }
                    ClusterObject::Pod(pod) => {
                        self.index.apply_pod(pod);
                        Ok(())
                    }
                    ClusterObject::Policy(policy) => self.index.apply_policy(policy),
                    ClusterObject::Tier(tier) => self.index.apply_tier(tier),
                };
                match result {
                    Ok(()) => {
                        self.clear(&RejectionId::Object(key.clone()));
                        self.count(key, true);
                        true
                    }
                    Err(e) => {
                        self.reject(Rejection::object(key, None, e));
                        false
                    }
                }
            }
            Event::Delete(key) => {
                match &key {
                    ObjectKey::Namespace(name) => self.index.delete_namespace(name),
                    ObjectKey::Node(name) => self.index.delete_node(name),
                    ObjectKey::Pod { namespace, name } => self.index.delete_pod(namespace, name),
                    ObjectKey::Policy(id) => self.index.delete_policy(id),
                    ObjectKey::Tier(name) => self.index.delete_tier(name),
                }
                self.clear(&RejectionId::Object(key.clone()));
                self.count(key, false);
                true
            }
            Event::Reject(rejection) => {
                self.reject(rejection);
                false
            }
            Event::ClearRejection(id) => {
                self.clear(&id);
                false
            }
            Event::Synced => {
                if !self.source_synced {
                    info!(objects = self.keys.len(), "source synced");
                }
                self.source_synced = true;
                self.metrics.set_synced(true);
                true
            }
        }
    }

    fn count(&mut self, key: ObjectKey, present: bool) {
        let kind = key.kind();
        let changed = if present {
            self.keys.insert(key)
        } else {
            self.keys.remove(&key)
        };
        if changed {
            let count = self.counts.entry(kind).or_insert(0);
            *count = if present {
                *count + 1
            } else {
                count.saturating_sub(1)
            };
            self.metrics.set_objects(kind, *count);
        }
    }

    fn reject(&mut self, rejection: Rejection) {
        self.metrics.rejection(&rejection.kind);
        let kind = rejection.kind.clone();
        let (id, origin, reason) = (
            rejection.id.to_string(),
            rejection.origin.clone(),
            rejection.error.clone(),
        );
        if self.status.reject(rejection) {
            warn!(object = %id, origin = origin.as_deref().unwrap_or("API"), error = %reason,
                "object rejected (not applied; an earlier accepted version stays)");
        }
        self.rejected_kinds.insert(kind);
        self.update_rejected();
    }

    fn clear(&mut self, id: &RejectionId) {
        if let Some(old) = self.status.clear(id) {
            info!(object = %id, "rejection cleared");
            self.rejected_kinds.insert(old.rejection.kind);
            self.update_rejected();
        }
    }

    fn update_rejected(&self) {
        let per_kind = self.status.rejected_per_kind();
        for kind in &self.rejected_kinds {
            self.metrics
                .set_rejected(kind, per_kind.get(kind).copied().unwrap_or(0));
        }
    }

    /// Commits the index and publishes the nodes whose rules changed. Returns how many.
    pub fn commit(&mut self) -> Result<usize, PolicyError> {
        let span = tracing::info_span!("commit", nodes_changed = tracing::field::Empty);
        let _entered = span.enter();
        let start = std::time::Instant::now();
        let result = self.index.commit();
        let took = start.elapsed();
        match result {
            Ok(changed) => {
                let n = changed.len();
                span.record("nodes_changed", n);
                self.metrics.commit(took, n);
                self.status.record_commit(took, n);
                self.log_address_conflicts();
                if n > 0 {
                    debug!(nodes = n, took_ms = took.as_secs_f64() * 1e3, "published");
                    self.hub.publish(changed);
                }
                // After the nodes' update (O(pods): it must not delay enforcement).
                if let (Some(ips), true) = (&self.pod_ips, self.pods_changed) {
                    if let Some(engine) = self.index.engine() {
                        // Owners only: a loser's traffic is not its own (see log_address_conflicts).
                        ips.publish_addresses(engine.owned_addresses());
                        self.pods_changed = false;
                    }
                }
                self.hub.retain_nodes(&self.index.node_names());
                if !self.status.is_synced() {
                    info!(
                        nodes = n,
                        took_ms = took.as_secs_f64() * 1e3,
                        "first commit published"
                    );
                    self.status.set_synced();
                }
                Ok(n)
            }
            Err(e) => {
                self.metrics.commit_error();
                error!(error = %e, "commit failed; nothing published");
                Err(e)
            }
        }
    }

    /// Warns about every new address conflict (two pods claiming one address: a pod the
    /// watch has not seen go yet, or a CNI handing out an address twice), naming the owner
    /// and the pods treated as without it, and notes those that ended.
    fn log_address_conflicts(&mut self) {
        let now = self.index.address_conflicts();
        if now == self.conflicts {
            return;
        }
        for c in now.iter().filter(|c| !self.conflicts.contains(c)) {
            warn!(address = %c.address, owner = %c.owner, losers = %c.losers.join(", "),
                "address claimed by several pods: only the owner is enforced with it; the \
                 others are treated as pods without that address");
        }
        for c in self
            .conflicts
            .iter()
            .filter(|c| !now.iter().any(|n| n.address == c.address))
        {
            info!(address = %c.address, owner = %c.owner, "address conflict resolved");
        }
        self.conflicts = now;
    }

    /// Commits from the async task. A commit is CPU work (up to a second for a very large
    /// cluster's first one): on a multi-threaded runtime the worker hands its other tasks
    /// (stream, health) to the other workers meanwhile. Errors are logged and counted.
    fn commit_in_place(&mut self) {
        let _ = in_place(|| self.commit());
    }

    /// Applies events until the channel closes, committing as [`Debounce`] says.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        // (first, last) event of the burst not committed yet.
        let mut pending: Option<(Instant, Instant)> = None;
        loop {
            let deadline = pending.map(|(first, last)| {
                (last + self.debounce.quiet).min(first + self.debounce.max_delay)
            });
            let event = tokio::select! {
                biased;
                _ = sleep_until(deadline), if deadline.is_some() => {
                    pending = None;
                    self.commit_in_place();
                    continue;
                }
                event = events.recv() => event,
            };
            let Some(event) = event else {
                if pending.is_some() {
                    self.commit_in_place();
                }
                return;
            };
            let mut synced_now = matches!(event, Event::Synced) && !self.source_synced;
            let mut touched = self.apply(event);
            for _ in 0..DRAIN {
                let Ok(event) = events.try_recv() else { break };
                synced_now |= matches!(event, Event::Synced) && !self.source_synced;
                touched |= self.apply(event);
            }
            if !self.source_synced || !touched {
                continue;
            }
            if synced_now {
                pending = None;
                self.commit_in_place();
                continue;
            }
            let now = Instant::now();
            pending = Some(match pending {
                Some((first, _)) => (first, now),
                None => (now, now),
            });
        }
    }
}

/// Runs CPU work on this worker, letting a multi-threaded runtime move the worker's other
/// tasks elsewhere meanwhile (`block_in_place` panics on a current-thread runtime, which
/// tests use: there the work simply runs).
pub(crate) fn in_place<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
