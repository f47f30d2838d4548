//! Which pod has an address: the operator's view, published by reconcile on each commit
//! that changed pods, read by the audit ingest to name the ends of decisions the enforcer
//! could not (pods on other nodes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use palisade_policy::model::Pod;
use palisade_wire::audit::Endpoint;

/// Address → pod. Host-network pods have no address of their own (they use their
/// node's), so they are never in it: their traffic is attributed to no pod.
#[derive(Clone, Debug, Default)]
pub struct PodIps {
    map: Arc<RwLock<Arc<HashMap<IpAddr, Endpoint>>>>,
}

impl PodIps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the map with the addresses of `pods`.
    pub fn publish<'a>(&self, pods: impl IntoIterator<Item = &'a Pod>) {
        self.publish_addresses(
            pods.into_iter()
                .filter(|pod| !pod.host_network)
                .flat_map(|pod| pod.ips.iter().map(move |ip| (*ip, pod))),
        );
    }

    /// Replaces the map with these addresses and their pods (the engine's owners,
    /// `Engine::owned_addresses`: one pod per address even while two claim it).
    pub fn publish_addresses<'a>(&self, addresses: impl IntoIterator<Item = (IpAddr, &'a Pod)>) {
        let mut map = HashMap::new();
        for (ip, pod) in addresses {
            if pod.host_network {
                continue;
            }
            map.insert(
                ip,
                Endpoint {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                },
            );
        }
        let mut slot = self.map.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(map);
    }

    /// The map now (cheap: one shared pointer), for looking up a whole batch.
    pub fn snapshot(&self) -> Arc<HashMap<IpAddr, Endpoint>> {
        Arc::clone(&self.map.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Fills the ends the enforcer left empty from `map`; an address no pod has stays
/// `None` ("external").
pub fn attribute(batch: &mut palisade_wire::audit::DecisionBatch, map: &HashMap<IpAddr, Endpoint>) {
    for d in &mut batch.decisions {
        if d.src.is_none() {
            d.src = map.get(&d.src_ip).cloned();
        }
        if d.dst.is_none() {
            d.dst = map.get(&d.dst_ip).cloned();
        }
    }
}
