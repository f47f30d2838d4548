//! The compiled form: everything one node's enforcer needs, and nothing else.
//!
//! It is what the operator streams to each enforcer and what the enforcer renders
//! into iptables and ipsets. Peers are address sets (defined once per rule and
//! shared by every local pod the policy selects), ports are resolved ranges, and
//! every local pod lists, per direction, the tiers and policies that apply to it in
//! evaluation order. The size grows with local pods plus policies, not with pods
//! times peers.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{Action, AuditMode, DefaultAction, Family, PolicyId, Protocol};

/// Bumped whenever the shape below changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// One node's compiled rule set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRuleSet {
    /// [`FORMAT_VERSION`] of the producer; consumers refuse other values.
    pub format: u32,
    pub node: String,
    /// Monotonic version of this node's desired state (set by the operator).
    pub version: u64,
    /// This node's own addresses: traffic between them and local pods is always allowed.
    pub node_ips: Vec<IpAddr>,
    /// The tiers referenced by `pods`, in evaluation order.
    pub tiers: Vec<CompiledTier>,
    /// Peer address sets, referenced by index from rule matches.
    pub sets: Vec<AddressSet>,
    /// The policies that select at least one local pod.
    pub policies: Vec<CompiledPolicy>,
    /// Local pods that have their own address (host-network pods never appear).
    pub pods: Vec<LocalPod>,
    /// Which decisions go to the audit log for policies that do not say (the
    /// operator's default); `None`: all. Absent from older states (and left out
    /// when `None`, so the serialised form and digest of a state without audit
    /// settings did not change: no format bump).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_default: Option<AuditMode>,
}

impl NodeRuleSet {
    /// Which decisions of `policy` go to the audit log: its own setting, else the
    /// operator's default, else all.
    pub fn audit_of(&self, policy: &CompiledPolicy) -> AuditMode {
        policy
            .audit
            .or(self.audit_default)
            .unwrap_or(AuditMode::All)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledTier {
    pub name: String,
    /// The standard NetworkPolicy tier: allowed if any rule matches, else denied.
    pub networkpolicy: bool,
    pub default_action: DefaultAction,
}

/// A set of addresses of one family, rendered as one ipset (`hash:net`, with the
/// `except` entries as `nomatch`: the most specific prefix decides).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSet {
    /// Stable name derived from what the set stands for (policy, direction, rule,
    /// peer), so that membership changes update the set in place.
    pub name: String,
    pub family: Family,
    pub entries: Vec<IpNet>,
    pub except: Vec<IpNet>,
}

impl AddressSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // The most specific prefix decides, as in ipset: an address is in the set
        // when its longest matching prefix is an entry rather than an exception.
        let best = |nets: &[IpNet]| {
            nets.iter()
                .filter(|n| n.contains(&ip))
                .map(|n| n.prefix_len())
                .max()
        };
        match (best(&self.entries), best(&self.except)) {
            (Some(e), Some(x)) => e > x,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledPolicy {
    pub id: PolicyId,
    /// Index into [`NodeRuleSet::tiers`].
    pub tier: usize,
    pub ingress: Vec<CompiledRule>,
    pub egress: Vec<CompiledRule>,
    /// The policy's own audit setting (TieredNetworkPolicy `spec.audit`); `None`:
    /// the rule set's [`NodeRuleSet::audit_default`]. See [`NodeRuleSet::audit_of`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditMode>,
}

/// One rule, already made fail-closed: an unenforceable Deny/Pass rule arrives as
/// a Deny of everything, an unenforceable Accept peer matches nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledRule {
    /// The rule's index in its policy's rules for the direction.
    pub index: usize,
    pub name: Option<String>,
    pub action: Action,
    /// The rule matches when any of these matches; empty: it matches nothing.
    pub matches: Vec<RuleMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    /// Remote side: `None` is any address, `Some(sets)` any address in one of
    /// the sets (indices into [`NodeRuleSet::sets`]; an empty list matches nothing).
    pub peers: Option<Vec<usize>>,
    /// `None`: every protocol (ICMP included) and port.
    pub ports: Option<Vec<PortRange>>,
    /// Restricts the local side to the addresses of a set (named ingress ports
    /// resolve to different numbers on different local pods).
    pub local: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// Empty: not isolated in that direction.
    pub ingress: Vec<TierPolicies>,
    pub egress: Vec<TierPolicies>,
}

/// The policies of one tier that apply to a pod in one direction, in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPolicies {
    /// Index into [`NodeRuleSet::tiers`].
    pub tier: usize,
    /// Indices into [`NodeRuleSet::policies`].
    pub policies: Vec<usize>,
}
