//! Attribution: an NFLOG prefix back to the rule it names ([`RuleRef`], from
//! [`crate::Rendered::ids`]), local pod addresses to their pods.
//!
//! Logs lag rule updates (the kernel queues messages, the reader batches them), so
//! after an update the ids of the previous rule set stay known for
//! [`Attribution::keep_previous`]: a packet logged by a rule that was just
//! replaced is still attributed to it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::compiled::LocalPod;
use palisade_policy::model::{Action, Direction};
use palisade_wire::audit::{AuditDirection, Decision, Endpoint, Verdict};

use super::nflog::LogRecord;
use crate::render::RuleRef;

/// Short id → what it stands for.
pub type Ids = Arc<BTreeMap<String, RuleRef>>;

/// Maps log records to decisions.
#[derive(Debug)]
pub struct Attribution {
    node: String,
    current: Ids,
    /// The ids in force before the last update, until the instant they are dropped.
    previous: Option<(Ids, Instant)>,
    pods: HashMap<IpAddr, Endpoint>,
    keep_previous: Duration,
}

/// Why a record has no decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Unattributed {
    /// The prefix names no rule of the current or previous rule set.
    UnknownId(String),
    /// The prefix names a Pass rule (never logged by our rules).
    NotADecision(String),
}

impl Attribution {
    pub fn new(node: &str, keep_previous: Duration) -> Self {
        Attribution {
            node: node.to_string(),
            current: Ids::default(),
            previous: None,
            pods: HashMap::new(),
            keep_previous,
        }
    }

    /// How long the ids of a replaced rule set stay known.
    pub fn keep_previous(&self) -> Duration {
        self.keep_previous
    }

    /// A new rule set is in force.
    pub fn update(&mut self, ids: Ids, pods: &[LocalPod], now: Instant) {
        if !Arc::ptr_eq(&ids, &self.current) {
            let old = std::mem::replace(&mut self.current, ids);
            self.previous = Some((old, now + self.keep_previous));
        }
        self.pods.clear();
        for pod in pods {
            for ip in &pod.ips {
                self.pods.insert(
                    *ip,
                    Endpoint {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                    },
                );
            }
        }
    }

    fn lookup(&self, id: &str, now: Instant) -> Option<&RuleRef> {
        self.current.get(id).or_else(|| match &self.previous {
            Some((ids, until)) if now < *until => ids.get(id),
            _ => None,
        })
    }

    /// The decision a record stands for (count 1, seen at `at_ms`).
    pub fn decision(
        &self,
        record: &LogRecord,
        at_ms: i64,
        now: Instant,
    ) -> Result<Decision, Unattributed> {
        let r = self
            .lookup(&record.prefix, now)
            .ok_or_else(|| Unattributed::UnknownId(record.prefix.clone()))?;
        let verdict = match r.action {
            Action::Accept => Verdict::Allow,
            Action::Deny => Verdict::Deny,
            Action::Pass => return Err(Unattributed::NotADecision(record.prefix.clone())),
        };
        let p = &record.packet;
        // Source ports of connections are ephemeral: identical decisions differ
        // only by them, so they are left out (ICMP keeps its type).
        let src_port = if p.has_ports() { None } else { p.src_port };
        Ok(Decision {
            first_seen_ms: at_ms,
            last_seen_ms: at_ms,
            count: 1,
            node: self.node.clone(),
            direction: match r.direction {
                Direction::Ingress => AuditDirection::Ingress,
                Direction::Egress => AuditDirection::Egress,
            },
            verdict,
            protocol: p.protocol_name(),
            src_ip: p.src,
            src_port,
            dst_ip: p.dst,
            dst_port: p.dst_port,
            src: self.pods.get(&p.src).cloned(),
            dst: self.pods.get(&p.dst).cloned(),
            rule_id: r.id.clone(),
            tier: r.tier.clone(),
            policy: r.policy.as_ref().map(|p| p.to_string()),
            rule_index: r.rule_index.and_then(|i| u32::try_from(i).ok()),
            rule_name: r.rule_name.clone(),
            isolated_by: r.isolated_by.iter().map(|p| p.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::packet::decode;
    use crate::audit::packet::tests::v4_tcp_syn;
    use palisade_policy::model::{PolicyId, PolicyKind};

    fn ids(id: &str, action: Action) -> Ids {
        let mut m = BTreeMap::new();
        m.insert(
            id.to_string(),
            RuleRef {
                id: id.to_string(),
                tier: "networkpolicy".into(),
                policy: Some(PolicyId {
                    kind: PolicyKind::NetworkPolicy,
                    namespace: Some("default".into()),
                    name: "web".into(),
                }),
                direction: Direction::Ingress,
                rule_index: Some(0),
                rule_name: None,
                action,
                isolated_by: Vec::new(),
            },
        );
        Arc::new(m)
    }

    fn record(prefix: &str) -> LogRecord {
        LogRecord {
            prefix: prefix.into(),
            packet: decode(&v4_tcp_syn()).expect("decodes"),
            timestamp_ms: None,
            seq: None,
        }
    }

    #[test]
    fn maps_prefix_and_pods_and_keeps_previous_ids_a_while() {
        let t0 = Instant::now();
        let mut a = Attribution::new("n1", Duration::from_secs(30));
        let pods = vec![LocalPod {
            namespace: "default".into(),
            name: "web".into(),
            ips: vec!["10.0.0.2".parse().expect("ip")],
            ingress: vec![],
            egress: vec![],
        }];
        a.update(ids("PaR0I", Action::Accept), &pods, t0);
        let d = a.decision(&record("PaR0I"), 5, t0).expect("attributed");
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.direction, AuditDirection::Ingress);
        assert_eq!(d.policy.as_deref(), Some("NetworkPolicy default/web"));
        assert_eq!(d.rule_index, Some(0));
        assert_eq!(d.src, None);
        assert_eq!(d.dst.as_ref().map(|e| e.pod.as_str()), Some("web"));
        assert_eq!((d.src_port, d.dst_port), (None, Some(80)));
        // A new rule set: the old id is still known for a while, then not.
        a.update(ids("PbR0I", Action::Deny), &pods, t0);
        assert!(a.decision(&record("PaR0I"), 5, t0).is_ok());
        assert_eq!(
            a.decision(&record("PaR0I"), 5, t0 + Duration::from_secs(31)),
            Err(Unattributed::UnknownId("PaR0I".into()))
        );
        let d = a.decision(&record("PbR0I"), 5, t0).expect("attributed");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            a.decision(&record("nope"), 5, t0),
            Err(Unattributed::UnknownId("nope".into()))
        );
    }
}
