//! Attribution: an NFLOG prefix back to the rule it names ([`RuleRef`], from
//! [`crate::Rendered::ids`]), local pod addresses to the pods that had them when the
//! packet was seen ([`AddressBook`]: a lagging log of a pod just deleted, whose
//! address a new pod may have already, still names the deleted pod).
//!
//! Logs lag rule updates (the kernel queues messages, the reader batches them), so
//! the ids of a replaced rule set stay known for the keep time given to
//! [`Attribution::new`] after they were replaced: a packet logged by a rule that
//! was just replaced is still attributed to it, whichever of the last few sets it
//! came from. The enforcer publishes a new set before it changes the kernel
//! ([`crate::Enforcer::apply_attributed`]), so the new rules are known from
//! their first packet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::compiled::LocalPod;
use palisade_policy::model::{Action, Direction};
use palisade_wire::audit::{AuditDirection, Decision, Endpoint, Verdict};
use palisade_wire::owners::AddressBook;

use super::nflog::LogRecord;
use crate::render::RuleRef;

/// Short id → what it stands for.
pub type Ids = Arc<BTreeMap<String, RuleRef>>;

/// At most this many replaced rule sets stay known (each can hold tens of
/// thousands of ids; under churn faster than the keep time, the oldest go first).
const MAX_RETIRED: usize = 8;

/// At most this many replaced address owners stay known.
const MAX_PAST_OWNERS: usize = 65_536;

/// Maps log records to decisions.
#[derive(Debug)]
pub struct Attribution {
    node: String,
    current: Ids,
    /// Replaced rule sets, oldest first, each with the instant it stops being known.
    retired: VecDeque<(Ids, Instant)>,
    pods: AddressBook,
    keep: Duration,
}

/// Why a record has no decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Unattributed {
    /// The prefix names no logging rule of the rule set in force or of one replaced
    /// less than the keep time ago (a Pass rule has an id but never logs: a
    /// record under its id did not come from our rules either).
    UnknownId(String),
}

impl Attribution {
    /// `keep`: how long the ids of a replaced rule set stay known.
    pub fn new(node: &str, keep: Duration) -> Self {
        Attribution {
            node: node.to_string(),
            current: Ids::default(),
            retired: VecDeque::new(),
            pods: AddressBook::new(
                i64::try_from(keep.as_millis()).unwrap_or(i64::MAX),
                MAX_PAST_OWNERS,
            ),
            keep,
        }
    }

    /// `ids` (and `pods`) are in force from `now` (`now_ms` on the clock of the
    /// packets' timestamps). The same map again (the same `Arc`: an apply that changed
    /// no rule) changes nothing; a new one retires the current one for the keep time.
    /// A map that comes back (a failed apply undone) leaves the retired list.
    pub fn update(&mut self, ids: Ids, pods: &[LocalPod], now: Instant, now_ms: i64) {
        self.retired.retain(|(_, until)| now < *until);
        if !Arc::ptr_eq(&ids, &self.current) {
            self.retired.retain(|(old, _)| !Arc::ptr_eq(old, &ids));
            let old = std::mem::replace(&mut self.current, ids);
            if !old.is_empty() {
                self.retired.push_back((old, now + self.keep));
            }
            while self.retired.len() > MAX_RETIRED {
                self.retired.pop_front();
            }
        }
        let mut owners = HashMap::new();
        for pod in pods {
            for ip in &pod.ips {
                owners.insert(
                    *ip,
                    Endpoint {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                    },
                );
            }
        }
        self.pods.replace(owners, now_ms);
    }

    /// The rule `id` names and its verdict: in the set in force, else in the newest
    /// replaced set still kept that has it. Pass rules decide nothing and never
    /// log, so their ids name no decision.
    fn lookup(&self, id: &str, now: Instant) -> Option<(&RuleRef, Verdict)> {
        std::iter::once(&self.current)
            .chain(
                self.retired
                    .iter()
                    .rev()
                    .filter(|(_, until)| now < *until)
                    .map(|(ids, _)| ids),
            )
            .find_map(|ids| ids.get(id))
            .and_then(|r| match r.action {
                Action::Accept => Some((r, Verdict::Allow)),
                Action::Deny => Some((r, Verdict::Deny)),
                Action::Pass => None,
            })
    }

    /// The decision a record stands for (count 1, seen at `at_ms`).
    pub fn decision(
        &self,
        record: &LogRecord,
        at_ms: i64,
        now: Instant,
    ) -> Result<Decision, Unattributed> {
        let (r, verdict) = self
            .lookup(&record.prefix, now)
            .ok_or_else(|| Unattributed::UnknownId(record.prefix.clone()))?;
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
            src: self.pods.owner(&p.src, at_ms).cloned(),
            dst: self.pods.owner(&p.dst, at_ms).cloned(),
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
        a.update(ids("PaR0I", Action::Accept), &pods, t0, 0);
        let d = a.decision(&record("PaR0I"), 5, t0).expect("attributed");
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.direction, AuditDirection::Ingress);
        assert_eq!(d.policy.as_deref(), Some("NetworkPolicy default/web"));
        assert_eq!(d.rule_index, Some(0));
        assert_eq!(d.src, None);
        assert_eq!(d.dst.as_ref().map(|e| e.pod.as_str()), Some("web"));
        assert_eq!((d.src_port, d.dst_port), (None, Some(80)));
        // A new rule set: the old id is still known for a while, then not.
        a.update(ids("PbR0I", Action::Deny), &pods, t0, 0);
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

    /// A pod deleted and its address given to another: a log of the old pod read
    /// after the update still names the old pod (by the packet's time).
    #[test]
    fn a_lagging_log_names_the_pod_that_had_the_address_then() {
        let t0 = Instant::now();
        let mut a = Attribution::new("n1", Duration::from_secs(30));
        let pod = |ns: &str, name: &str| LocalPod {
            namespace: ns.into(),
            name: name.into(),
            ips: vec!["10.0.0.2".parse().expect("ip")],
            ingress: vec![],
            egress: vec![],
        };
        let rules = ids("PaR0I", Action::Accept);
        a.update(Arc::clone(&rules), &[pod("a", "old")], t0, 1_000);
        a.update(Arc::clone(&rules), &[pod("b", "new")], t0, 2_000);
        let dst = |at_ms| {
            a.decision(&record("PaR0I"), at_ms, t0)
                .expect("attributed")
                .dst
                .map(|e| format!("{}/{}", e.namespace, e.pod))
        };
        assert_eq!(dst(1_500).as_deref(), Some("a/old"));
        assert_eq!(dst(2_000).as_deref(), Some("b/new"));
    }

    #[test]
    fn every_set_replaced_within_the_keep_time_stays_known() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut a = Attribution::new("n1", s(30));
        a.update(ids("PaR0I", Action::Accept), &[], t0, 0);
        a.update(ids("PbR0I", Action::Accept), &[], t0 + s(1), 0);
        a.update(ids("PcR0I", Action::Accept), &[], t0 + s(2), 0);
        // A lagging log of the set before the last (retired at t0 + 1 s).
        assert!(a.decision(&record("PaR0I"), 5, t0 + s(2)).is_ok());
        assert!(a.decision(&record("PbR0I"), 5, t0 + s(2)).is_ok());
        // Each set stays known for the keep time after its own retirement.
        let later = t0 + s(31) + Duration::from_millis(500);
        assert_eq!(
            a.decision(&record("PaR0I"), 5, later),
            Err(Unattributed::UnknownId("PaR0I".into()))
        );
        assert!(a.decision(&record("PbR0I"), 5, later).is_ok());
        assert!(a.decision(&record("PcR0I"), 5, t0 + s(3600)).is_ok());
    }

    #[test]
    fn the_same_map_again_retires_nothing_and_a_returning_map_is_current() {
        let t0 = Instant::now();
        let mut a = Attribution::new("n1", Duration::from_secs(30));
        let first = ids("PaR0I", Action::Accept);
        let second = ids("PbR0I", Action::Deny);
        a.update(Arc::clone(&first), &[], t0, 0);
        a.update(Arc::clone(&second), &[], t0, 0);
        a.update(Arc::clone(&second), &[], t0, 0);
        assert_eq!(a.retired.len(), 1, "an unchanged map is not retired");
        // A failed apply undone: the first map is current again, not also retired.
        a.update(Arc::clone(&first), &[], t0, 0);
        assert_eq!(a.retired.len(), 1);
        assert!(Arc::ptr_eq(&a.retired[0].0, &second));
        assert!(a
            .decision(&record("PaR0I"), 5, t0 + Duration::from_secs(3600))
            .is_ok());
    }

    #[test]
    fn keeps_a_bounded_number_of_replaced_sets() {
        let t0 = Instant::now();
        let mut a = Attribution::new("n1", Duration::from_secs(30));
        for i in 0..=MAX_RETIRED + 2 {
            a.update(ids(&format!("P{i}R0I"), Action::Accept), &[], t0, 0);
        }
        assert_eq!(a.retired.len(), MAX_RETIRED);
        // The oldest went first.
        assert!(a.decision(&record("P0R0I"), 5, t0).is_err());
        assert!(a.decision(&record("P1R0I"), 5, t0).is_err());
        assert!(a.decision(&record("P2R0I"), 5, t0).is_ok());
    }

    #[test]
    fn a_pass_rule_id_is_no_decision() {
        let t0 = Instant::now();
        let mut a = Attribution::new("n1", Duration::from_secs(30));
        a.update(ids("PaR0I", Action::Pass), &[], t0, 0);
        assert_eq!(
            a.decision(&record("PaR0I"), 5, t0),
            Err(Unattributed::UnknownId("PaR0I".into()))
        );
    }
}
