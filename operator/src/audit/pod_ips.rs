//! Which pod has an address: the operator's view, published by reconcile on each commit
//! that changed pods, read by the audit ingest to name the ends of decisions the enforcer
//! could not (pods on other nodes). The ends are named by who had the address when the
//! decision was first seen, not at ingest ([`AddressBook`]): batches arrive seconds late,
//! or an outage late from an enforcer's spool, and an address may have a new pod by then.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use palisade_policy::model::Pod;
use palisade_wire::audit::{DecisionBatch, Endpoint};
use palisade_wire::owners::{changes, AddressBook};

/// How long a replaced owner stays known: decisions older than this (an enforcer's spool
/// after a longer outage) are named by the earliest owner still known for the address.
pub const KEEP_PAST_OWNERS_MS: i64 = 3_600_000;

/// At most this many replaced owners stay known (a churn of 55 pods a second for the
/// whole keep time; a few tens of MB at most).
pub const MAX_PAST_OWNERS: usize = 200_000;

/// Address → pod, now and for the keep time before. Host-network pods have no address of
/// their own (they use their node's), so they are never in it: their traffic is attributed
/// to no pod.
#[derive(Clone, Debug)]
pub struct PodIps {
    book: Arc<RwLock<AddressBook>>,
}

impl Default for PodIps {
    fn default() -> Self {
        PodIps {
            book: Arc::new(RwLock::new(AddressBook::new(
                KEEP_PAST_OWNERS_MS,
                MAX_PAST_OWNERS,
            ))),
        }
    }
}

impl PodIps {
    pub fn new() -> Self {
        Self::default()
    }

    /// The addresses of `pods` are theirs from now on.
    pub fn publish<'a>(&self, pods: impl IntoIterator<Item = &'a Pod>) {
        self.publish_addresses(
            pods.into_iter()
                .flat_map(|pod| pod.ips.iter().map(move |ip| (*ip, pod))),
        );
    }

    /// These addresses are their pods' from now on (the engine's owners,
    /// `Engine::owned_addresses`: one pod per address even while two claim it).
    pub fn publish_addresses<'a>(&self, addresses: impl IntoIterator<Item = (IpAddr, &'a Pod)>) {
        self.publish_at(addresses, palisade_audit::now_ms());
    }

    fn publish_at<'a>(&self, addresses: impl IntoIterator<Item = (IpAddr, &'a Pod)>, now_ms: i64) {
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
        // The comparison with the old map, O(addresses), is done outside the lock; the
        // ingest waits only for the changes to be recorded.
        let old = Arc::clone(self.read().current());
        let new = Arc::new(map);
        let diff = changes(&old, &new);
        let mut book = self.write();
        if Arc::ptr_eq(book.current(), &old) {
            book.commit(new, diff, now_ms);
        } else {
            // Another publish came in between (reconcile publishes from one task, so
            // this does not happen; correct anyway).
            let diff = changes(book.current(), &new);
            book.commit(new, diff, now_ms);
        }
        drop(book);
        // `old` is the last reference to the replaced map: freed here, unlocked.
        drop(old);
    }

    /// Fills the ends the enforcer left empty: the pod that had the address when the
    /// decision was first seen; an address no pod had stays `None` ("external").
    pub fn attribute(&self, batch: &mut DecisionBatch) {
        let book = self.read();
        for d in &mut batch.decisions {
            if d.src.is_none() {
                d.src = book.owner(&d.src_ip, d.first_seen_ms).cloned();
            }
            if d.dst.is_none() {
                d.dst = book.owner(&d.dst_ip, d.first_seen_ms).cloned();
            }
        }
    }

    /// The pod that has `ip` now.
    pub fn owner_now(&self, ip: &IpAddr) -> Option<Endpoint> {
        self.read().current().get(ip).cloned()
    }

    // A holder that panicked left a whole book behind: the poison is ignored.
    fn read(&self) -> RwLockReadGuard<'_, AddressBook> {
        self.book.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AddressBook> {
        self.book.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_wire::audit::{AuditDirection, Decision, Verdict};

    fn pod(ns: &str, name: &str, ip: &str, host_network: bool) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: Default::default(),
            ips: vec![ip.parse().expect("ip")],
            node: Some("n2".into()),
            terminating: false,
            created: None,
            host_network,
            ports: Vec::new(),
        }
    }

    fn decision(src: &str, dst: &str, first_seen_ms: i64) -> Decision {
        Decision {
            first_seen_ms,
            last_seen_ms: first_seen_ms,
            count: 1,
            node: "n1".into(),
            direction: AuditDirection::Egress,
            verdict: Verdict::Allow,
            protocol: "TCP".into(),
            src_ip: src.parse().expect("ip"),
            src_port: None,
            dst_ip: dst.parse().expect("ip"),
            dst_port: Some(80),
            src: Some(Endpoint {
                namespace: "local".into(),
                pod: "client".into(),
            }),
            dst: None,
            rule_id: "PaR0E".into(),
            tier: "networkpolicy".into(),
            policy: None,
            rule_index: None,
            rule_name: None,
            isolated_by: Vec::new(),
        }
    }

    /// A remote pod deleted and its address given to another pod while a batch waited:
    /// the decision names the pod that had the address when it was seen.
    #[test]
    fn late_batches_name_the_pod_that_had_the_address_then() {
        let ips = PodIps::new();
        let old = pod("a", "old", "10.1.0.9", false);
        let new = pod("b", "new", "10.1.0.9", false);
        ips.publish_at([(old.ips[0], &old)], 1_000);
        ips.publish_at(std::iter::empty(), 2_000);
        ips.publish_at([(new.ips[0], &new)], 3_000);
        let mut batch = DecisionBatch {
            source: "n1/x".into(),
            seq: 1,
            decisions: vec![
                decision("10.0.0.2", "10.1.0.9", 1_500),
                decision("10.0.0.2", "10.1.0.9", 2_500),
                decision("10.0.0.2", "10.1.0.9", 3_500),
            ],
            gaps: Vec::new(),
        };
        ips.attribute(&mut batch);
        let dst: Vec<Option<String>> = batch
            .decisions
            .iter()
            .map(|d| d.dst.as_ref().map(|e| format!("{}/{}", e.namespace, e.pod)))
            .collect();
        assert_eq!(
            dst,
            [Some("a/old".to_string()), None, Some("b/new".to_string())]
        );
        // What the enforcer named stays.
        assert!(batch
            .decisions
            .iter()
            .all(|d| d.src.as_ref().is_some_and(|e| e.pod == "client")));
    }

    #[test]
    fn host_network_pods_have_no_address_of_their_own() {
        let ips = PodIps::new();
        let host = pod("kube-system", "proxy", "172.18.0.2", true);
        ips.publish([&host]);
        assert_eq!(ips.owner_now(&host.ips[0]), None);
    }
}
