//! The cluster index the operator keeps: objects applied and deleted one at a
//! time (from a watch or a manifest directory alike), and per-node compiled
//! states with versions that move only when a node's rules change.
//!
//! ```text
//!   apply_* / delete_* ──► pending changes ──commit()──► changed NodeRuleSets (versioned)
//! ```
//!
//! A commit applies pod changes to the engine in place and recompiles only the
//! nodes they affect; any other change (a policy, a namespace, a node, a tier, a
//! deleted pod) re-indexes the cluster and recompiles every node, keeping only the
//! states that really changed. The engine owns the one copy of the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::compile::compile_node;
use crate::compiled::NodeRuleSet;
use crate::engine::Engine;
use crate::model::{AuditMode, Cluster, Namespace, Node, Pod, Policy, PolicyId, Tier};
use crate::PolicyError;

/// One change waiting for the next commit.
#[derive(Debug)]
enum Change {
    Reset(Cluster),
    Namespace(Namespace),
    DeleteNamespace(String),
    Node(Node),
    DeleteNode(String),
    Pod(Pod),
    DeletePod(String, String),
    Policy(Policy),
    DeletePolicy(PolicyId),
    Tier(Tier),
    DeleteTier(String),
}

/// Everything known about the cluster, and each node's last compiled state.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    engine: Option<Engine>,
    pending: Vec<Change>,
    /// Shared with what commits return, so a published state is never copied.
    states: BTreeMap<String, Arc<NodeRuleSet>>,
    /// Written into every compiled state (see [`NodeRuleSet::audit_default`]).
    audit_default: Option<AuditMode>,
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets which decisions every compiled state audits for policies that do not say
    /// (`None`: all). Set once before the first commit: the states are compiled with it, so
    /// a commit never copies a published state to change it.
    pub fn with_audit_default(mut self, mode: Option<AuditMode>) -> Self {
        self.audit_default = mode;
        self
    }

    /// Replaces everything (a full resync), keeping node versions monotonic.
    pub fn reset(&mut self, cluster: Cluster) -> Result<(), PolicyError> {
        for t in &cluster.tiers {
            t.validate()?;
        }
        for p in &cluster.policies {
            p.check_tier()?;
        }
        self.pending.clear();
        self.pending.push(Change::Reset(cluster));
        Ok(())
    }

    pub fn apply_namespace(&mut self, ns: Namespace) {
        self.pending.push(Change::Namespace(ns));
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.pending.push(Change::DeleteNamespace(name.to_string()));
    }

    pub fn apply_node(&mut self, node: Node) {
        self.pending.push(Change::Node(node));
    }

    pub fn delete_node(&mut self, name: &str) {
        self.pending.push(Change::DeleteNode(name.to_string()));
    }

    pub fn apply_pod(&mut self, pod: Pod) {
        self.pending.push(Change::Pod(pod));
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.pending
            .push(Change::DeletePod(namespace.to_string(), name.to_string()));
    }

    /// Adds or replaces a policy. A NetworkPolicy outside its tier (or another
    /// kind inside it) is refused, so one bad object never stops the others.
    pub fn apply_policy(&mut self, policy: Policy) -> Result<(), PolicyError> {
        policy.check_tier()?;
        self.pending.push(Change::Policy(policy));
        Ok(())
    }

    pub fn delete_policy(&mut self, id: &PolicyId) {
        self.pending.push(Change::DeletePolicy(id.clone()));
    }

    /// Adds or replaces a user tier; reserved names and priorities are refused.
    pub fn apply_tier(&mut self, tier: Tier) -> Result<(), PolicyError> {
        tier.validate()?;
        self.pending.push(Change::Tier(tier));
        Ok(())
    }

    pub fn delete_tier(&mut self, name: &str) {
        self.pending.push(Change::DeleteTier(name.to_string()));
    }

    /// The cluster as of the last commit.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.engine.as_ref().map(Engine::cluster)
    }

    /// Applies the pending changes and brings every node's state up to date.
    /// Returns the states of the nodes whose rules changed, each with its
    /// version moved on.
    pub fn commit(&mut self) -> Result<Vec<Arc<NodeRuleSet>>, PolicyError> {
        let changes = std::mem::take(&mut self.pending);
        if changes.is_empty() && self.engine.is_some() {
            return Ok(Vec::new());
        }
        let mut rest = changes.into_iter().peekable();
        // Pod changes go into the engine in place while they can.
        let mut affected: Option<BTreeSet<usize>> = self.engine.as_ref().map(|_| BTreeSet::new());
        if let (Some(engine), Some(nodes)) = (self.engine.as_mut(), affected.as_mut()) {
            while let Some(Change::Pod(pod)) = rest.peek() {
                match engine.upsert_pod(pod.clone()) {
                    Some(touched) => nodes.extend(touched),
                    None => break,
                }
                rest.next();
            }
        }
        let remaining: Vec<Change> = rest.collect();
        if !remaining.is_empty() || self.engine.is_none() {
            let mut cluster = self
                .engine
                .take()
                .map(Engine::into_cluster)
                .unwrap_or_default();
            apply_changes(&mut cluster, remaining);
            self.engine = Some(Engine::new(cluster)?);
            affected = None;
        }
        let Some(engine) = self.engine.as_ref() else {
            return Ok(Vec::new());
        };
        let nodes: Vec<&str> = match &affected {
            Some(set) => set
                .iter()
                .map(|&n| engine.cluster().nodes[n].name.as_str())
                .collect(),
            None => engine
                .cluster()
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect(),
        };
        let states = &self.states;
        let changed: Vec<Arc<NodeRuleSet>> =
            compile_changed(engine, &nodes, states, self.audit_default)
                .into_iter()
                .map(Arc::new)
                .collect();
        for state in &changed {
            self.states.insert(state.node.clone(), Arc::clone(state));
        }
        // States of deleted nodes go: a node that rejoins starts a fresh enforcer.
        if affected.is_none() {
            let names: BTreeSet<&str> = engine
                .cluster()
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect();
            self.states.retain(|name, _| names.contains(name.as_str()));
        }
        Ok(changed)
    }

    /// The nodes that have a state (after the last commit).
    pub fn node_names(&self) -> BTreeSet<&str> {
        self.states.keys().map(String::as_str).collect()
    }

    /// A node's current state (after the last commit).
    pub fn node_state(&self, node: &str) -> Option<&NodeRuleSet> {
        self.states.get(node).map(|s| s.as_ref())
    }

    /// The engine of the last commit (for explain, reports and audit attribution).
    pub fn engine(&self) -> Option<&Engine> {
        self.engine.as_ref()
    }

    /// Addresses several pods claim as of the last commit, each with its owner and
    /// the pods treated as without it (see [`crate::address`]).
    pub fn address_conflicts(&self) -> Vec<crate::address::AddressConflict> {
        self.engine
            .as_ref()
            .map_or_else(Vec::new, Engine::address_conflicts)
    }

    /// Notices about the input (fail-closed rules, missing tiers) of the last commit.
    pub fn diagnostics(&self) -> &[crate::engine::Diagnostic] {
        self.engine.as_ref().map_or(&[], |e| e.diagnostics())
    }
}

/// Compiles the nodes (on every core: nodes are independent) and keeps those
/// whose state differs from the previous one, with their version moved on.
fn compile_changed(
    engine: &Engine,
    nodes: &[&str],
    previous: &BTreeMap<String, Arc<NodeRuleSet>>,
    audit_default: Option<AuditMode>,
) -> Vec<NodeRuleSet> {
    let compile = |name: &str| {
        let mut state = compile_node(engine, name, 0);
        state.audit_default = audit_default;
        let before = previous.get(name).map(|s| s.as_ref());
        let version = before.map_or(0, |p| p.version);
        state.version = version;
        (before != Some(&state)).then(|| {
            state.version = version + 1;
            state
        })
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(nodes.len());
    if workers <= 1 {
        return nodes.iter().filter_map(|n| compile(n)).collect();
    }
    let chunk = nodes.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().filter_map(|n| compile(n)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Upserts into or removes from a list keyed by `key`.
fn upsert<T, K: Eq + std::hash::Hash>(
    list: &mut Vec<T>,
    item: Option<T>,
    wanted: &K,
    key: impl Fn(&T) -> K,
) {
    match (list.iter().position(|x| &key(x) == wanted), item) {
        (Some(i), Some(item)) => list[i] = item,
        (None, Some(item)) => list.push(item),
        (Some(i), None) => {
            list.swap_remove(i);
        }
        (None, None) => {}
    }
}

/// Applies changes to a cluster that is about to be re-indexed.
fn apply_changes(cluster: &mut Cluster, changes: Vec<Change>) {
    // Pods and policies are many: find them by key, not by scanning.
    let pods_by_key = |c: &Cluster| -> FxHashMap<(String, String), usize> {
        c.pods
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.namespace.clone(), p.name.clone()), i))
            .collect()
    };
    let policies_by_id = |c: &Cluster| -> FxHashMap<PolicyId, usize> {
        c.policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect()
    };
    let mut pod_at = pods_by_key(cluster);
    let mut policy_at = policies_by_id(cluster);
    for change in changes {
        match change {
            Change::Reset(c) => {
                *cluster = c;
                pod_at = pods_by_key(cluster);
                policy_at = policies_by_id(cluster);
            }
            Change::Namespace(ns) => {
                let name = ns.name.clone();
                upsert(&mut cluster.namespaces, Some(ns), &name, |n| n.name.clone())
            }
            Change::DeleteNamespace(name) => {
                upsert(&mut cluster.namespaces, None, &name, |n| n.name.clone())
            }
            Change::Node(node) => {
                let name = node.name.clone();
                upsert(&mut cluster.nodes, Some(node), &name, |n| n.name.clone())
            }
            Change::DeleteNode(name) => upsert(&mut cluster.nodes, None, &name, |n| n.name.clone()),
            Change::Tier(tier) => {
                let name = tier.name.clone();
                upsert(&mut cluster.tiers, Some(tier), &name, |t| t.name.clone())
            }
            Change::DeleteTier(name) => upsert(&mut cluster.tiers, None, &name, |t| t.name.clone()),
            Change::Pod(pod) => {
                let key = (pod.namespace.clone(), pod.name.clone());
                match pod_at.get(&key) {
                    Some(&i) => cluster.pods[i] = pod,
                    None => {
                        pod_at.insert(key, cluster.pods.len());
                        cluster.pods.push(pod);
                    }
                }
            }
            Change::DeletePod(ns, name) => {
                if let Some(i) = pod_at.remove(&(ns, name)) {
                    cluster.pods.swap_remove(i);
                    if let Some(moved) = cluster.pods.get(i) {
                        pod_at.insert((moved.namespace.clone(), moved.name.clone()), i);
                    }
                }
            }
            Change::Policy(policy) => match policy_at.get(&policy.id) {
                Some(&i) => cluster.policies[i] = policy,
                None => {
                    policy_at.insert(policy.id.clone(), cluster.policies.len());
                    cluster.policies.push(policy);
                }
            },
            Change::DeletePolicy(id) => {
                if let Some(i) = policy_at.remove(&id) {
                    cluster.policies.swap_remove(i);
                    if let Some(moved) = cluster.policies.get(i) {
                        policy_at.insert(moved.id.clone(), i);
                    }
                }
            }
        }
    }
}
