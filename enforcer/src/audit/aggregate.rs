//! Aggregation: identical decisions inside one window become one [`Decision`]
//! with a count and the first and last time seen.
//!
//! Identical means: same rule id (so same tier, policy, rule, verdict and
//! direction), same protocol, addresses and destination port (ICMP: type and
//! code), and the same pods at the ends (an address given to a new pod inside a
//! window starts a decision of its own). Windows are tumbling: the pipeline takes
//! everything every window.

use std::collections::HashMap;
use std::net::IpAddr;

use palisade_wire::audit::{AuditDirection, Decision, Endpoint, Verdict};

type Key = (
    AuditDirection,
    Verdict,
    String,
    IpAddr,
    Option<u16>,
    IpAddr,
    Option<u16>,
    String,
    Option<Endpoint>,
    Option<Endpoint>,
);

/// The decisions of the window in progress.
#[derive(Debug, Default)]
pub struct Aggregator {
    open: HashMap<Key, Decision>,
    /// Insertion order, so a window's decisions come out in the order first seen.
    order: Vec<Key>,
}

impl Aggregator {
    pub fn add(&mut self, d: Decision) {
        let key: Key = (
            d.direction,
            d.verdict,
            d.protocol.clone(),
            d.src_ip,
            d.src_port,
            d.dst_ip,
            d.dst_port,
            d.rule_id.clone(),
            d.src.clone(),
            d.dst.clone(),
        );
        match self.open.get_mut(&key) {
            Some(a) => {
                a.count += d.count;
                a.first_seen_ms = a.first_seen_ms.min(d.first_seen_ms);
                a.last_seen_ms = a.last_seen_ms.max(d.last_seen_ms);
            }
            None => {
                self.order.push(key.clone());
                self.open.insert(key, d);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Ends the window: its decisions, in the order first seen.
    pub fn take(&mut self) -> Vec<Decision> {
        let mut open = std::mem::take(&mut self.open);
        std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|k| open.remove(&k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(dst_port: u16, rule: &str, at: i64) -> Decision {
        Decision {
            first_seen_ms: at,
            last_seen_ms: at,
            count: 1,
            node: "n1".into(),
            direction: AuditDirection::Ingress,
            verdict: Verdict::Allow,
            protocol: "tcp".into(),
            src_ip: "10.0.0.1".parse().expect("ip"),
            src_port: None,
            dst_ip: "10.0.0.2".parse().expect("ip"),
            dst_port: Some(dst_port),
            src: None,
            dst: None,
            rule_id: rule.into(),
            tier: "networkpolicy".into(),
            policy: None,
            rule_index: None,
            rule_name: None,
            isolated_by: vec![],
        }
    }

    #[test]
    fn identical_decisions_merge_with_count_and_times() {
        let mut a = Aggregator::default();
        a.add(decision(80, "P1R0I", 30));
        a.add(decision(443, "P1R0I", 20));
        a.add(decision(80, "P1R0I", 10));
        a.add(decision(80, "P1R0I", 50));
        a.add(decision(80, "P2R0I", 40));
        let out = a.take();
        assert!(a.is_empty());
        assert_eq!(out.len(), 3);
        assert_eq!(
            (
                out[0].dst_port,
                out[0].count,
                out[0].first_seen_ms,
                out[0].last_seen_ms
            ),
            (Some(80), 3, 10, 50)
        );
        assert_eq!((out[1].dst_port, out[1].count), (Some(443), 1));
        assert_eq!((out[2].rule_id.as_str(), out[2].count), ("P2R0I", 1));
        // A new window starts empty.
        a.add(decision(80, "P1R0I", 60));
        assert_eq!(a.take()[0].count, 1);
    }

    /// The address of a deleted pod given to a new one inside a window: two
    /// decisions, each under its own pod.
    #[test]
    fn another_pod_at_an_address_is_another_decision() {
        let mut a = Aggregator::default();
        let at = |pod: &str, t| {
            let mut d = decision(80, "P1R0I", t);
            d.dst = Some(Endpoint {
                namespace: "ns".into(),
                pod: pod.into(),
            });
            d
        };
        a.add(at("old", 10));
        a.add(at("old", 20));
        a.add(at("new", 30));
        let out = a.take();
        let pods: Vec<(&str, u64)> = out
            .iter()
            .map(|d| (d.dst.as_ref().map_or("", |e| e.pod.as_str()), d.count))
            .collect();
        assert_eq!(pods, [("old", 2), ("new", 1)]);
    }
}
