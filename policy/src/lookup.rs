//! The indexes behind the engine: namespaces, nodes and pods by name, every
//! distinct pod-peer selector resolved to a [`PodSet`], and the inverse maps that
//! let one pod's change be applied without rebuilding anything else (which sets
//! may contain a namespace's pods, which policies may select them, which policies
//! use a set).

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use crate::engine::PreparedPolicy;
use crate::model::*;
use crate::podset::PodSet;

/// A pod-peer selector: the namespaces it looks in and the pods it picks there.
pub(crate) type PeerKey = (NamespaceMatch, LabelSelector);

#[derive(Debug, Default)]
pub(crate) struct Lookup {
    pub ns_index: FxHashMap<String, usize>,
    /// Labels per namespace index; pods of unknown namespaces get an unlabelled one.
    pub ns_labels: Vec<Labels>,
    /// Per namespace, its pods (host-network ones excluded) in ascending order.
    pub ns_pods: Vec<Vec<u32>>,
    pub pod_ns: Vec<usize>,
    pub pod_node: Vec<Option<usize>>,
    pub pod_slots: FxHashMap<(String, String), usize>,
    pub node_index: FxHashMap<String, usize>,
    /// Per node, its pods in ascending order.
    pub node_pods: Vec<Vec<u32>>,
    peer_index: FxHashMap<PeerKey, usize>,
    pub peer_keys: Vec<PeerKey>,
    pub peer_sets: Vec<PodSet>,
    /// Per set, the policies whose rules use it.
    pub peer_users: Vec<Vec<u32>>,
    /// Per namespace, the sets that may contain its pods.
    pub ns_peer_sets: Vec<Vec<usize>>,
    /// Per namespace, the NetworkPolicies whose subject lives there.
    pub ns_policies: Vec<Vec<u32>>,
    /// Policies whose subject selects namespaces (cluster policies).
    pub cluster_policies: Vec<u32>,
    /// Policies with named ports in egress rules: what they compile to depends on
    /// every destination pod's ports and addresses.
    pub named_egress: Vec<u32>,
}

impl Lookup {
    pub fn new(cluster: &Cluster) -> Lookup {
        let mut l = Lookup::default();
        for ns in &cluster.namespaces {
            l.namespace_slot(&ns.name, &ns.labels);
        }
        for (i, n) in cluster.nodes.iter().enumerate() {
            l.node_index.entry(n.name.clone()).or_insert(i);
        }
        l.node_pods = vec![Vec::new(); cluster.nodes.len()];
        for pod in &cluster.pods {
            l.push_pod(pod);
        }
        l
    }

    fn namespace_slot(&mut self, name: &str, labels: &Labels) -> usize {
        if let Some(&i) = self.ns_index.get(name) {
            return i;
        }
        self.ns_labels.push(labels.clone());
        self.ns_pods.push(Vec::new());
        self.ns_index
            .insert(name.to_string(), self.ns_labels.len() - 1);
        self.ns_labels.len() - 1
    }

    /// Registers a pod appended to the cluster (not yet in any set).
    pub fn push_pod(&mut self, pod: &Pod) -> usize {
        let p = self.pod_ns.len();
        let ns = self.namespace_slot(&pod.namespace, &Labels::new());
        self.pod_ns.push(ns);
        if !pod.host_network {
            self.ns_pods[ns].push(p as u32);
        }
        let node = pod
            .node
            .as_ref()
            .and_then(|n| self.node_index.get(n).copied());
        self.pod_node.push(node);
        if let Some(n) = node {
            self.node_pods[n].push(p as u32);
        }
        self.pod_slots
            .insert((pod.namespace.clone(), pod.name.clone()), p);
        p
    }

    pub fn namespaces_matching(&self, sel: &LabelSelector) -> Vec<usize> {
        (0..self.ns_labels.len())
            .filter(|&i| sel.matches(&self.ns_labels[i]))
            .collect()
    }

    pub fn namespace_list(&self, m: &NamespaceMatch) -> Vec<usize> {
        match m {
            NamespaceMatch::Named(name) => self.ns_index.get(name).copied().into_iter().collect(),
            NamespaceMatch::Selector(sel) => self.namespaces_matching(sel),
        }
    }

    /// Pods (never host-network) of the namespaces given whose labels match.
    pub fn pods_in(
        &self,
        cluster: &Cluster,
        namespaces: &[usize],
        pods: &LabelSelector,
    ) -> Vec<u32> {
        let mut out: Vec<u32> = namespaces
            .iter()
            .flat_map(|&ns| self.ns_pods[ns].iter().copied())
            .filter(|&p| pods.matches(&cluster.pods[p as usize].labels))
            .collect();
        out.sort_unstable();
        out
    }

    /// The set for a peer selector, created on first use; `user` is the policy using it.
    pub fn peer_set(&mut self, cluster: &Cluster, key: &PeerKey, user: u32) -> usize {
        let id = match self.peer_index.get(key) {
            Some(&id) => id,
            None => {
                let list = self.pods_in(cluster, &self.namespace_list(&key.0), &key.1);
                self.peer_sets
                    .push(PodSet::from_sorted(list, cluster.pods.len()));
                self.peer_keys.push(key.clone());
                self.peer_users.push(Vec::new());
                let id = self.peer_sets.len() - 1;
                self.peer_index.insert(key.clone(), id);
                id
            }
        };
        if self.peer_users[id].last() != Some(&user) {
            self.peer_users[id].push(user);
        }
        id
    }

    pub fn subject_pods(&self, cluster: &Cluster, subject: &Subject) -> Vec<u32> {
        match subject {
            Subject::Namespaced { namespace, pods } => {
                let ns: Vec<usize> = self.ns_index.get(namespace).copied().into_iter().collect();
                self.pods_in(cluster, &ns, pods)
            }
            Subject::Namespaces(sel) => self.pods_in(
                cluster,
                &self.namespaces_matching(sel),
                &LabelSelector::everything(),
            ),
            Subject::Pods { namespaces, pods } => {
                self.pods_in(cluster, &self.namespaces_matching(namespaces), pods)
            }
        }
    }

    /// Whether a subject selects a pod of namespace `ns` with these labels.
    pub fn subject_selects(&self, subject: &Subject, ns: usize, labels: &Labels) -> bool {
        match subject {
            Subject::Namespaced { namespace, pods } => {
                self.ns_index.get(namespace) == Some(&ns) && pods.matches(labels)
            }
            Subject::Namespaces(sel) => sel.matches(&self.ns_labels[ns]),
            Subject::Pods { namespaces, pods } => {
                namespaces.matches(&self.ns_labels[ns]) && pods.matches(labels)
            }
        }
    }

    /// Builds the inverse maps once every policy is prepared.
    pub fn finish(&mut self, policies: &[PreparedPolicy]) {
        self.ns_peer_sets = vec![Vec::new(); self.ns_labels.len()];
        for (id, key) in self.peer_keys.iter().enumerate() {
            for ns in self.namespace_list(&key.0) {
                self.ns_peer_sets[ns].push(id);
            }
        }
        self.ns_policies = vec![Vec::new(); self.ns_labels.len()];
        for (i, p) in policies.iter().enumerate() {
            match &p.subject {
                Subject::Namespaced { namespace, .. } => {
                    if let Some(&ns) = self.ns_index.get(namespace) {
                        self.ns_policies[ns].push(i as u32);
                    }
                }
                _ => self.cluster_policies.push(i as u32),
            }
            let named_egress = p.egress.iter().flatten().any(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .any(|m| matches!(m, PortMatch::Named { .. }))
            });
            if named_egress {
                self.named_egress.push(i as u32);
            }
        }
    }

    /// The nodes hosting pods a policy selects.
    pub fn policy_nodes(&self, cluster: &Cluster, policy: &PreparedPolicy) -> BTreeSet<usize> {
        self.subject_pods(cluster, &policy.subject)
            .into_iter()
            .filter_map(|p| self.pod_node[p as usize])
            .collect()
    }
}
