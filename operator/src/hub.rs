//! The hub between the reconcile loop and the stream server: the latest compiled
//! state of every node (published after each commit of the index), whether this
//! replica leads, and what each node's enforcer reported it realised.
//!
//! The reconcile side only publishes; the stream side only subscribes and
//! reports. Neither knows where the cluster's objects come from.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use palisade_policy::compiled::NodeRuleSet;
use tokio::sync::watch;

/// What a node's enforcer last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realisation {
    /// The version the enforcer applied.
    pub version: u64,
    /// Per-rule problems it reported (rules it enforced fail-closed), as text.
    pub errors: Vec<String>,
    pub at: SystemTime,
}

/// Per-node desired states, leadership and realisation status.
#[derive(Debug)]
pub struct Hub {
    nodes: Mutex<BTreeMap<String, watch::Sender<Option<Arc<NodeRuleSet>>>>>,
    realised: Mutex<BTreeMap<String, Realisation>>,
    leader: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            nodes: Mutex::new(BTreeMap::new()),
            realised: Mutex::new(BTreeMap::new()),
            leader: watch::channel(false).0,
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Publishes new states (the ones a commit reported as changed).
    pub fn publish<S: Into<Arc<NodeRuleSet>>>(&self, states: impl IntoIterator<Item = S>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for state in states {
            let state: Arc<NodeRuleSet> = state.into();
            let node = state.node.clone();
            let state = Some(state);
            match nodes.get(&node) {
                Some(tx) => {
                    tx.send_replace(state);
                }
                None => {
                    nodes.insert(node, watch::channel(state).0);
                }
            }
        }
    }

    /// Forgets the nodes not in `keep` (they left the cluster): their desired state and what
    /// their enforcer reported. A stream still following such a node keeps its channel (its
    /// enforcer keeps the rules it has and is sent nothing more) until it ends.
    pub fn retain_nodes(&self, keep: &BTreeSet<&str>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|name, tx| keep.contains(name.as_str()) || tx.receiver_count() > 0);
        drop(nodes);
        let mut realised = self.realised.lock().unwrap_or_else(|e| e.into_inner());
        realised.retain(|name, _| keep.contains(name.as_str()));
    }

    /// Follows one node's desired state: `None` until the node is known.
    pub fn subscribe(&self, node: &str) -> watch::Receiver<Option<Arc<NodeRuleSet>>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// The desired state of a node now.
    pub fn desired(&self, node: &str) -> Option<Arc<NodeRuleSet>> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(node).and_then(|tx| tx.borrow().clone())
    }

    /// Desired versions of every known node.
    pub fn desired_versions(&self) -> BTreeMap<String, u64> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .filter_map(|(n, tx)| tx.borrow().as_ref().map(|s| (n.clone(), s.version)))
            .collect()
    }

    /// Records what a node's enforcer reports it realised.
    pub fn report_realised(&self, node: &str, version: u64, errors: Vec<String>) {
        let mut realised = self.realised.lock().unwrap_or_else(|e| e.into_inner());
        realised.insert(
            node.to_string(),
            Realisation {
                version,
                errors,
                at: SystemTime::now(),
            },
        );
    }

    pub fn realisation(&self) -> BTreeMap<String, Realisation> {
        self.realised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Leadership: only the leader serves enforcers and writes.
    pub fn set_leader(&self, leader: bool) {
        self.leader.send_replace(leader);
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(node: &str, version: u64) -> NodeRuleSet {
        NodeRuleSet {
            node: node.into(),
            version,
            ..NodeRuleSet::default()
        }
    }

    #[tokio::test]
    async fn subscribers_see_published_states() {
        let hub = Hub::new();
        let mut rx = hub.subscribe("n1");
        assert!(rx.borrow().is_none());
        hub.publish(vec![state("n1", 1), state("n2", 1)]);
        rx.changed().await.expect("sender alive");
        assert_eq!(rx.borrow().as_ref().map(|s| s.version), Some(1));
        hub.publish(vec![state("n1", 2)]);
        rx.changed().await.expect("sender alive");
        assert_eq!(rx.borrow().as_ref().map(|s| s.version), Some(2));
        assert_eq!(hub.desired_versions().get("n2"), Some(&1));
        hub.report_realised("n1", 2, vec![]);
        assert_eq!(hub.realisation().get("n1").map(|r| r.version), Some(2));
    }

    #[tokio::test]
    async fn nodes_that_left_are_forgotten_unless_followed() {
        let hub = Hub::new();
        hub.publish(vec![state("n1", 1), state("n2", 1), state("n3", 1)]);
        hub.report_realised("n2", 1, vec![]);
        let followed = hub.subscribe("n3");
        hub.retain_nodes(&BTreeSet::from(["n1"]));
        assert_eq!(
            hub.desired_versions().into_keys().collect::<Vec<_>>(),
            ["n1", "n3"],
            "n2 forgotten; n3 kept while its stream follows it"
        );
        assert!(hub.realisation().is_empty());
        drop(followed);
        hub.retain_nodes(&BTreeSet::from(["n1"]));
        assert_eq!(
            hub.desired_versions().into_keys().collect::<Vec<_>>(),
            ["n1"]
        );
    }
}
