//! The cluster index the operator keeps: objects applied and deleted one at a
//! time (from a watch or a manifest directory alike), and per-node compiled
//! states with versions that move only when a node's rules change.
//!
//! ```text
//!   apply_* / delete_* ──► ClusterIndex ──commit()──► changed NodeRuleSets (versioned)
//! ```

use std::collections::BTreeMap;

use crate::compile::compile_node;
use crate::compiled::NodeRuleSet;
use crate::engine::Engine;
use crate::model::{Cluster, Namespace, Node, Pod, Policy, PolicyId, Tier};
use crate::PolicyError;

/// Everything known about the cluster, and each node's last compiled state.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    namespaces: BTreeMap<String, Namespace>,
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<PolicyId, Policy>,
    tiers: BTreeMap<String, Tier>,
    engine: Option<Engine>,
    states: BTreeMap<String, NodeRuleSet>,
    dirty: bool,
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces everything (a full resync), keeping node versions monotonic.
    pub fn reset(&mut self, cluster: Cluster) -> Result<(), PolicyError> {
        for t in &cluster.tiers {
            t.validate()?;
        }
        self.namespaces = cluster
            .namespaces
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        self.nodes = cluster
            .nodes
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        self.pods = cluster
            .pods
            .into_iter()
            .map(|p| ((p.namespace.clone(), p.name.clone()), p))
            .collect();
        self.policies = cluster
            .policies
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        self.tiers = cluster
            .tiers
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        self.dirty = true;
        Ok(())
    }

    pub fn apply_namespace(&mut self, ns: Namespace) {
        self.dirty |= self.namespaces.get(&ns.name) != Some(&ns);
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.dirty |= self.namespaces.remove(name).is_some();
    }

    pub fn apply_node(&mut self, node: Node) {
        self.dirty |= self.nodes.get(&node.name) != Some(&node);
        self.nodes.insert(node.name.clone(), node);
    }

    pub fn delete_node(&mut self, name: &str) {
        self.dirty |= self.nodes.remove(name).is_some();
    }

    pub fn apply_pod(&mut self, pod: Pod) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.dirty |= self.pods.get(&key) != Some(&pod);
        self.pods.insert(key, pod);
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.dirty |= self
            .pods
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some();
    }

    /// Adds or replaces a policy. A NetworkPolicy outside its tier (or another
    /// kind inside it) is refused, so one bad object never stops the others.
    pub fn apply_policy(&mut self, policy: Policy) -> Result<(), PolicyError> {
        let np = policy.id.kind == crate::model::PolicyKind::NetworkPolicy;
        if np != (policy.tier == crate::model::TIER_NETWORKPOLICY) {
            return Err(PolicyError::invalid(
                policy.id.to_string(),
                "spec.tier",
                "only NetworkPolicies belong to the networkpolicy tier",
            ));
        }
        self.dirty |= self.policies.get(&policy.id) != Some(&policy);
        self.policies.insert(policy.id.clone(), policy);
        Ok(())
    }

    pub fn delete_policy(&mut self, id: &PolicyId) {
        self.dirty |= self.policies.remove(id).is_some();
    }

    /// Adds or replaces a user tier; reserved names and priorities are refused.
    pub fn apply_tier(&mut self, tier: Tier) -> Result<(), PolicyError> {
        tier.validate()?;
        self.dirty |= self.tiers.get(&tier.name) != Some(&tier);
        self.tiers.insert(tier.name.clone(), tier);
        Ok(())
    }

    pub fn delete_tier(&mut self, name: &str) {
        self.dirty |= self.tiers.remove(name).is_some();
    }

    /// The cluster as currently known.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            namespaces: self.namespaces.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            tiers: self.tiers.values().cloned().collect(),
        }
    }

    /// Brings the engine and every node's state up to date. Returns the states
    /// of the nodes whose rules changed, each with its version moved on.
    pub fn commit(&mut self) -> Result<Vec<NodeRuleSet>, PolicyError> {
        if !self.dirty && self.engine.is_some() {
            return Ok(Vec::new());
        }
        let engine = Engine::new(self.cluster())?;
        let mut changed = Vec::new();
        for name in self.nodes.keys() {
            let mut state = compile_node(&engine, name, 0);
            let previous = self.states.get(name);
            let version = previous.map_or(0, |p| p.version);
            state.version = version;
            if previous != Some(&state) {
                state.version = version + 1;
                changed.push(state);
            }
        }
        for state in &changed {
            self.states.insert(state.node.clone(), state.clone());
        }
        // States of deleted nodes go; their versions would restart from scratch,
        // which is right for a node that rejoins with a fresh enforcer.
        self.states.retain(|name, _| self.nodes.contains_key(name));
        self.engine = Some(engine);
        self.dirty = false;
        Ok(changed)
    }

    /// A node's current state (after the last commit).
    pub fn node_state(&self, node: &str) -> Option<&NodeRuleSet> {
        self.states.get(node)
    }

    /// The engine of the last commit (for explain, reports and audit attribution).
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    /// Notices about the input (fail-closed rules, missing tiers) of the last commit.
    pub fn diagnostics(&self) -> &[crate::engine::Diagnostic] {
        self.engine.as_ref().map_or(&[], |e| e.diagnostics())
    }
}
