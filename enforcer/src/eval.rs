//! Eval: decides a new connection against a [`NodeRuleSet`] exactly as the rendered
//! rules make the kernel decide it.
//!
//! It mirrors the chain layout of [`mod@crate::render`] step for step (node addresses
//! never reach FORWARD; a pod's traffic to itself is accepted first; egress of
//! every local pod that has the source address, then ingress of every local pod
//! that has the destination address; tiers, policies and rules in order; sets and
//! matches of the packet's family only) and works on the same checked copy of the
//! rule set, so rules made fail-closed are decided alike.
//! Apply uses it to find the established connections a new state denies; tests
//! cross-check it against the kernel. IPv6 neighbour discovery, which the rendered
//! rules let through before any pod chain, opens no connection and is not a flow
//! here.

use std::net::IpAddr;

use palisade_policy::compiled::{CompiledRule, LocalPod, NodeRuleSet, RuleMatch};
use palisade_policy::model::{Action, DefaultAction, Direction, Family, Protocol};
use serde::Serialize;

use crate::check::check;
use crate::error::RenderError;
use crate::names::{rule_id, tier_default_id};

/// Transport of a connection, with its destination port where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum L4 {
    Tcp(u16),
    Udp(u16),
    Sctp(u16),
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
    /// Any other IP protocol (by number): only rules without ports match it.
    Other(u8),
}

/// A connection as FORWARD sees its first packet (after DNAT, before SNAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Accept,
    Deny,
}

/// One side's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideDecision {
    /// `namespace/name` of the local pod.
    pub pod: String,
    pub direction: Direction,
    pub verdict: Verdict,
    /// Short id of the rule or tier default that decided; `None`: no tier did
    /// (accepted after the last tier).
    pub by: Option<String>,
}

/// The decision for a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The sides that were evaluated, egress first; evaluation stops at the first Deny.
    pub sides: Vec<SideDecision>,
}

/// Evaluates connections against one checked rule set.
#[derive(Clone, Debug)]
pub struct Evaluator {
    rs: NodeRuleSet,
}

/// Decides one connection (checks the rule set each call: use [`Evaluator`] for many).
pub fn eval(rs: &NodeRuleSet, flow: &Flow) -> Result<Decision, RenderError> {
    Ok(Evaluator::new(rs)?.eval(flow))
}

enum TierOutcome {
    Decided(Verdict, Option<String>),
    Next,
}

impl Evaluator {
    pub fn new(rs: &NodeRuleSet) -> Result<Self, RenderError> {
        let (rs, _issues) = check(rs)?;
        Ok(Evaluator {
            rs: rs.into_owned(),
        })
    }

    /// An evaluator over a rule set that [`check`] returned.
    pub(crate) fn from_checked(rs: NodeRuleSet) -> Self {
        Evaluator { rs }
    }

    pub fn rule_set(&self) -> &NodeRuleSet {
        &self.rs
    }

    pub fn eval(&self, flow: &Flow) -> Decision {
        let mut sides = Vec::new();
        let family = Family::of(&flow.src);
        // Mixed families cannot be one packet; traffic of this node's own addresses
        // goes through INPUT/OUTPUT, where we install nothing; a pod's traffic to
        // itself (hairpin through a Service) is always allowed (render: the
        // `-s IP -d IP -j RETURN` rules before any pod chain).
        if family != Family::of(&flow.dst)
            || flow.src == flow.dst
            || self.rs.node_ips.contains(&flow.src)
            || self.rs.node_ips.contains(&flow.dst)
        {
            return Decision {
                verdict: Verdict::Accept,
                sides,
            };
        }
        for direction in [Direction::Egress, Direction::Ingress] {
            let local = match direction {
                Direction::Egress => flow.src,
                Direction::Ingress => flow.dst,
            };
            for pod in &self.rs.pods {
                let list = match direction {
                    Direction::Egress => &pod.egress,
                    Direction::Ingress => &pod.ingress,
                };
                if list.is_empty() || !pod.ips.contains(&local) {
                    continue;
                }
                let side = self.side(pod, direction, flow, family);
                let denied = side.verdict == Verdict::Deny;
                sides.push(side);
                if denied {
                    return Decision {
                        verdict: Verdict::Deny,
                        sides,
                    };
                }
            }
        }
        Decision {
            verdict: Verdict::Accept,
            sides,
        }
    }

    fn side(
        &self,
        pod: &LocalPod,
        direction: Direction,
        flow: &Flow,
        family: Family,
    ) -> SideDecision {
        let decided = |verdict, by| SideDecision {
            pod: format!("{}/{}", pod.namespace, pod.name),
            direction,
            verdict,
            by,
        };
        let list = match direction {
            Direction::Egress => &pod.egress,
            Direction::Ingress => &pod.ingress,
        };
        for tp in list {
            match self.tier(tp, direction, flow, family) {
                TierOutcome::Decided(v, by) => return decided(v, by),
                TierOutcome::Next => {}
            }
        }
        decided(Verdict::Accept, None)
    }

    fn tier(
        &self,
        tp: &palisade_policy::compiled::TierPolicies,
        direction: Direction,
        flow: &Flow,
        family: Family,
    ) -> TierOutcome {
        let Some(tier) = self.rs.tiers.get(tp.tier) else {
            return TierOutcome::Next;
        };
        for &p in &tp.policies {
            let Some(policy) = self.rs.policies.get(p) else {
                continue;
            };
            let rules = match direction {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            for rule in rules {
                if self.rule_matches(rule, direction, flow, family) {
                    let by = Some(rule_id(&policy.id, rule.index, direction));
                    match rule.action {
                        Action::Accept => return TierOutcome::Decided(Verdict::Accept, by),
                        Action::Deny => return TierOutcome::Decided(Verdict::Deny, by),
                        Action::Pass => return TierOutcome::Next,
                    }
                }
            }
        }
        if tier.networkpolicy || tier.default_action == DefaultAction::Deny {
            TierOutcome::Decided(Verdict::Deny, Some(tier_default_id(&tier.name, direction)))
        } else {
            TierOutcome::Next
        }
    }

    fn rule_matches(
        &self,
        rule: &CompiledRule,
        direction: Direction,
        flow: &Flow,
        family: Family,
    ) -> bool {
        rule.matches
            .iter()
            .any(|m| self.match_matches(m, direction, flow, family))
    }

    fn in_set(&self, index: usize, ip: IpAddr, family: Family) -> bool {
        self.rs
            .sets
            .get(index)
            .is_some_and(|s| s.family == family && s.contains(ip))
    }

    fn match_matches(
        &self,
        m: &RuleMatch,
        direction: Direction,
        flow: &Flow,
        family: Family,
    ) -> bool {
        let (remote, local) = match direction {
            Direction::Ingress => (flow.src, flow.dst),
            Direction::Egress => (flow.dst, flow.src),
        };
        if let Some(peers) = &m.peers {
            if !peers.iter().any(|&s| self.in_set(s, remote, family)) {
                return false;
            }
        }
        if let Some(l) = m.local {
            if !self.in_set(l, local, family) {
                return false;
            }
        }
        match &m.ports {
            None => true,
            Some(ranges) => ranges.iter().any(|r| match (r.protocol, flow.l4) {
                (Protocol::Tcp, L4::Tcp(p))
                | (Protocol::Udp, L4::Udp(p))
                | (Protocol::Sctp, L4::Sctp(p)) => r.start <= p && p <= r.end,
                (Protocol::Icmp, L4::Icmp) => true,
                _ => false,
            }),
        }
    }
}
