//! The reports' own copy of the cluster, fed by the same events as reconcile (a tee in front of
//! it), so that reports never slow down or lock the task that compiles the enforcers' rules.
//! Objects the index refuses (a NetworkPolicy outside its tier, a Tier at a reserved name) are
//! refused here too: they are reported from the rejections instead.

use std::collections::BTreeMap;

use palisade_crds::{ClusterObject, ObjectKey};
use palisade_policy::model::{Cluster, Namespace, Node, Pod, Policy, PolicyId, Tier};

use crate::source::Event;

#[derive(Debug, Default)]
pub struct Mirror {
    namespaces: BTreeMap<String, Namespace>,
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<PolicyId, Policy>,
    tiers: BTreeMap<String, Tier>,
    synced: bool,
    /// Moves on with every change (the report loop rebuilds its engine when it moved).
    generation: u64,
}

impl Mirror {
    /// Applies one event.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Apply(object) => self.upsert(object),
            Event::Delete(key) => self.delete(key),
            Event::Synced => {
                self.synced = true;
                self.generation += 1;
            }
            // Rejections are read from `Status`, where reconcile records them.
            Event::Reject(_) | Event::ClearRejection(_) => {}
        }
    }

    fn upsert(&mut self, object: ClusterObject) {
        match object {
            ClusterObject::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns);
            }
            ClusterObject::Node(node) => {
                self.nodes.insert(node.name.clone(), node);
            }
            ClusterObject::Pod(pod) => {
                self.pods
                    .insert((pod.namespace.clone(), pod.name.clone()), pod);
            }
            ClusterObject::Policy(policy) => {
                // The index refuses these (and reconcile records the rejection).
                if policy.check_tier().is_err() {
                    return;
                }
                self.policies.insert(policy.id.clone(), policy);
            }
            ClusterObject::Tier(tier) => {
                if tier.validate().is_err() {
                    return;
                }
                self.tiers.insert(tier.name.clone(), tier);
            }
        }
        self.generation += 1;
    }

    fn delete(&mut self, key: ObjectKey) {
        match key {
            ObjectKey::Namespace(name) => {
                self.namespaces.remove(&name);
            }
            ObjectKey::Node(name) => {
                self.nodes.remove(&name);
            }
            ObjectKey::Pod { namespace, name } => {
                self.pods.remove(&(namespace, name));
            }
            ObjectKey::Policy(id) => {
                self.policies.remove(&id);
            }
            ObjectKey::Tier(name) => {
                self.tiers.remove(&name);
            }
        }
        self.generation += 1;
    }

    /// Whether the source has sent everything that existed at start.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The cluster as the engine takes it (in a stable order).
    pub fn cluster(&self) -> Cluster {
        Cluster {
            namespaces: self.namespaces.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            tiers: self.tiers.values().cloned().collect(),
        }
    }
}
