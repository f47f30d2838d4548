//! The engine's model: plain data for the cluster (namespaces, nodes, pods) and for
//! every policy kind Palisade reads, normalised into one shape.
//!
//! Every policy kind (NetworkPolicy, the upstream cluster policies, TieredNetworkPolicy)
//! converts into [`Policy`]; `crds` owns those conversions, this module owns the meaning.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::labels::Labels;

/// A transport protocol as written in ports and probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    /// ICMP (IPv4) or ICMPv6: no ports; only a rule without ports matches it.
    #[serde(rename = "ICMP")]
    Icmp,
}

impl Protocol {
    /// Whether the protocol has ports (and so can match a port rule).
    pub fn has_ports(self) -> bool {
        !matches!(self, Protocol::Icmp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP family.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Family {
    #[default]
    IPv4,
    IPv6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::IPv4,
            IpAddr::V6(_) => Family::IPv6,
        }
    }
}

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry, already validated (In/NotIn have values,
/// Exists/DoesNotExist have none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A Kubernetes label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // NotIn matches objects without the key, as Kubernetes does.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// The node's addresses (`status.addresses` InternalIP/ExternalIP).
    pub ips: Vec<IpAddr>,
}

/// A container port a pod declares; named ports resolve against these.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The pod's own addresses (at most one per family). Empty while pending,
    /// and always empty for host-network pods (they use their node's).
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub host_network: bool,
    pub ports: Vec<ContainerPort>,
    /// Being deleted (`metadata.deletionTimestamp` set): it still runs during its
    /// graceful shutdown, but yields its addresses to a pod that claims them and is not.
    #[serde(default)]
    pub terminating: bool,
    /// `metadata.creationTimestamp` in seconds since the Unix epoch (`None`: unknown,
    /// taken as older than any known time). Of two pods claiming one address, the
    /// newer owns it.
    #[serde(default)]
    pub created: Option<i64>,
}

impl Pod {
    pub fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(ip) == family)
    }

    /// Resolves a named port on this pod. Host-network pods have no named ports
    /// (no dataplane can tell them from their node).
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        if self.host_network {
            return None;
        }
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The kinds of policy Palisade reads. The order is the tie-break order of the
/// tiers contract: ClusterNetworkPolicy, then (Baseline)AdminNetworkPolicy, then
/// TieredNetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    NetworkPolicy,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    TieredNetworkPolicy,
}

impl PolicyKind {
    /// Rank among policies of equal priority inside one tier.
    pub fn tie_rank(self) -> u8 {
        match self {
            PolicyKind::NetworkPolicy => 0,
            PolicyKind::ClusterNetworkPolicy => 1,
            PolicyKind::AdminNetworkPolicy | PolicyKind::BaselineAdminNetworkPolicy => 2,
            PolicyKind::TieredNetworkPolicy => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            PolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            PolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            PolicyKind::TieredNetworkPolicy => "TieredNetworkPolicy",
        }
    }
}

/// Identifies a policy object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.as_str(), ns, self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// The pods a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// NetworkPolicy: the pods of one namespace that match the selector.
    Namespaced {
        namespace: String,
        pods: LabelSelector,
    },
    /// Cluster policies: every pod of the matching namespaces.
    Namespaces(LabelSelector),
    /// Cluster policies: matching pods of matching namespaces.
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

/// Which namespaces a pod peer looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamespaceMatch {
    /// One namespace by name (a NetworkPolicy peer with only `podSelector`).
    Named(String),
    Selector(LabelSelector),
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// Pods (with their own addresses, never host-network) in some namespaces.
    Pods {
        namespaces: NamespaceMatch,
        pods: LabelSelector,
    },
    /// Any address inside `cidr` but not inside any of `except` (pods included).
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
    /// The addresses of the selected nodes.
    Nodes(LabelSelector),
    /// A peer Palisade cannot enforce (`domainNames`, an unknown field): fail-closed.
    Unsupported { field: String },
}

/// A destination-port match of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortMatch {
    /// Every port of one protocol.
    AllPorts { protocol: Protocol },
    /// An inclusive range (a single port has `start == end`).
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// A named container port of the destination pod. `protocol: None` (upstream
    /// `destinationNamedPort`) takes the protocol the container port declares.
    Named {
        protocol: Option<Protocol>,
        name: String,
    },
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: Option<String>,
    pub action: Action,
    /// `None`: every peer (a NetworkPolicy rule without `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every protocol and port, ICMP included.
    pub ports: Option<Vec<PortMatch>>,
}

/// Which decisions of a policy go to the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditMode {
    All,
    Deny,
    None,
}

/// A policy of any kind, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: PolicyId,
    /// The tier's name: `networkpolicy` for NetworkPolicies, `admin`, `baseline`
    /// or a user Tier for the others.
    pub tier: String,
    /// Lower is evaluated first inside a tier. NetworkPolicies have 0.
    pub priority: i32,
    pub subject: Subject,
    /// `Some` when the policy applies to the direction (possibly with no rules:
    /// deny all); `None` when it does not.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    pub audit: Option<AuditMode>,
}

impl Policy {
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Refuses a NetworkPolicy outside the networkpolicy tier, and any other kind inside it
    /// (the tier's semantics, allow-if-any-rule-matches, are NetworkPolicy's alone).
    pub fn check_tier(&self) -> Result<(), crate::PolicyError> {
        let np = self.id.kind == PolicyKind::NetworkPolicy;
        if np != (self.tier == TIER_NETWORKPOLICY) {
            return Err(crate::PolicyError::invalid(
                self.id.to_string(),
                "spec.tier",
                "only NetworkPolicies belong to the networkpolicy tier",
            ));
        }
        Ok(())
    }
}

/// What a tier does when its policies apply to a pod and none of their rules matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DefaultAction {
    #[default]
    Pass,
    Deny,
}

/// A tier of policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub name: String,
    pub priority: i32,
    pub default_action: DefaultAction,
}

pub const TIER_ADMIN: &str = "admin";
pub const TIER_NETWORKPOLICY: &str = "networkpolicy";
pub const TIER_BASELINE: &str = "baseline";

impl Tier {
    /// The tiers that always exist.
    pub fn builtin() -> Vec<Tier> {
        [
            (TIER_ADMIN, 100),
            (TIER_NETWORKPOLICY, 1000),
            (TIER_BASELINE, 10000),
        ]
        .into_iter()
        .map(|(name, priority)| Tier {
            name: name.to_string(),
            priority,
            default_action: DefaultAction::Pass,
        })
        .collect()
    }

    pub fn is_builtin_name(name: &str) -> bool {
        matches!(name, TIER_ADMIN | TIER_NETWORKPOLICY | TIER_BASELINE)
    }

    pub fn is_reserved_priority(priority: i32) -> bool {
        matches!(priority, 100 | 1000 | 10000)
    }

    /// A user tier may not take a built-in name or priority (contract: tiers.md).
    pub fn validate(&self) -> Result<(), crate::PolicyError> {
        let object = format!("Tier {}", self.name);
        if Tier::is_builtin_name(&self.name) {
            return Err(crate::PolicyError::invalid(
                object,
                "metadata.name",
                "reserved tier name",
            ));
        }
        if Tier::is_reserved_priority(self.priority) || !(0..=20000).contains(&self.priority) {
            return Err(crate::PolicyError::invalid(
                object,
                "spec.priority",
                format!("{} is reserved or outside 0..=20000", self.priority),
            ));
        }
        Ok(())
    }
}

/// A traffic direction, seen from the pod a policy selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Everything the engine needs to answer questions about a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
    /// User tiers; the built-in ones are always added by the engine.
    pub tiers: Vec<Tier>,
}
