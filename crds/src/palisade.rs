//! Palisade's own CRDs, `palisade.dev/v1alpha1`, both cluster-scoped:
//!
//! - [`Tier`]: a user-defined tier of policies (`spec.priority`, `spec.defaultAction`).
//! - [`TieredNetworkPolicy`] (short name `tnp`): the spec of the upstream v1alpha2
//!   ClusterNetworkPolicy, with `spec.tier` naming any tier but `networkpolicy`, `networks`
//!   allowed in ingress peers too, at most 100 rules per direction and `spec.audit`.
//!
//! The schema carries every rule the API server can check: bounds and enums as OpenAPI, and
//! each "exactly one of", port range, CIDR and reserved name or priority as a CEL
//! `x-kubernetes-validations` rule. `isCIDR()` needs Kubernetes 1.31 or later (as upstream's
//! ClusterNetworkPolicy CRD does). The conversion in [`crate::convert`] checks the same rules
//! again, so a scenario file gets the errors the API server would give.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::upstream::v1alpha2::{
    ClusterNetworkPolicyRuleAction, ClusterNetworkPolicySubject, NamespacedPod, ProtocolPort,
};

/// The API group of Palisade's CRDs.
pub const GROUP: &str = "palisade.dev";
/// The version of Palisade's CRDs.
pub const VERSION: &str = "v1alpha1";

/// Spec of a `Tier`: where its policies are evaluated and what happens when none of their rules
/// matched.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "Tier",
    plural = "tiers",
    status = "TierStatus",
    derive = "PartialEq",
    doc = "Tier adds a tier of TieredNetworkPolicies, evaluated in priority order with the built-in tiers admin (100), networkpolicy (1000) and baseline (10000).",
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Default-Action",
        type_ = "string",
        json_path = ".spec.defaultAction"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!(self.metadata.name in ['admin', 'networkpolicy', 'baseline'])")
        .message("admin, networkpolicy and baseline are built-in tiers and cannot be redefined"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a Tier's name must be a DNS label (TieredNetworkPolicy spec.tier refers to it)")
)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// 0..=20000, lower is evaluated first; 100, 1000 and 10000 belong to the built-in tiers.
    #[schemars(range(min = 0, max = 20000))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!(self in [100, 1000, 10000])",
        "message": "priorities 100, 1000 and 10000 belong to the built-in tiers admin, networkpolicy and baseline"
    }]))]
    pub priority: i32,
    /// What happens when a policy of this tier applies to a pod in a direction and none of the
    /// tier's rules matched: `Pass` (default) goes on to the next tier, `Deny` drops.
    #[serde(default)]
    pub default_action: TierDefaultAction,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `spec.defaultAction` of a Tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TierDefaultAction {
    #[default]
    Pass,
    Deny,
}

/// Status of a Tier, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TierStatus {
    /// E.g. a priority shared with another tier (the tie is broken by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// Spec of a `TieredNetworkPolicy`: the upstream v1alpha2 ClusterNetworkPolicy spec, in any
/// tier but `networkpolicy`.
///
/// `kubectl get tnp` shows the number of ingress and egress rules from `status.ingressRules` and
/// `status.egressRules` (written by the operator), because a printer column's JSONPath cannot
/// take the length of `spec.ingress`.
// Several printer columns repeat `type_ = "integer"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "TieredNetworkPolicy",
    plural = "tierednetworkpolicies",
    shortname = "tnp",
    status = "TieredNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "TieredNetworkPolicy is a ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) in a tier of your choice.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Ingress",
        type_ = "integer",
        description = "Number of ingress rules (status.ingressRules, written by the operator)",
        json_path = ".status.ingressRules"
    ),
    printcolumn(
        name = "Egress",
        type_ = "integer",
        description = "Number of egress rules (status.egressRules, written by the operator)",
        json_path = ".status.egressRules"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TieredNetworkPolicySpec {
    /// The name of a tier: a user Tier, `admin` or `baseline` (a DNS label; never
    /// `networkpolicy`, which holds only standard NetworkPolicies).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self != 'networkpolicy'",
        "message": "the networkpolicy tier holds only standard NetworkPolicies"
    }]))]
    pub tier: String,
    /// 0..=1000, lower is evaluated first inside the tier.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    pub subject: ClusterNetworkPolicySubject,
    /// At most 100 rules, evaluated in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub ingress: Option<Vec<TieredNetworkPolicyIngressRule>>,
    /// At most 100 rules, evaluated in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub egress: Option<Vec<TieredNetworkPolicyEgressRule>>,
    /// Which decisions made by this policy's rules go to the audit log; absent: the operator's
    /// setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<TieredNetworkPolicyAudit>,
}

/// `spec.audit` of a TieredNetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TieredNetworkPolicyAudit {
    All,
    Deny,
    None,
}

/// Status of a TieredNetworkPolicy, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TieredNetworkPolicyStatus {
    /// E.g. `Accepted`, or a failure such as a tier that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The number of ingress rules (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rules: Option<i32>,
    /// The number of egress rules (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rules: Option<i32>,
}

/// An ingress rule of a TieredNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TieredNetworkPolicyIngressRule {
    /// At most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    pub action: ClusterNetworkPolicyRuleAction,
    /// 1..=25 peers; the rule matches traffic from any of them.
    #[schemars(length(min = 1, max = 25))]
    pub from: Vec<TieredNetworkPolicyIngressPeer>,
    /// 1..=25 entries; absent: every protocol and port, ICMP included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<TieredNetworkPolicyProtocol>>,
}

/// An egress rule of a TieredNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) && self.protocols.exists(p, has(p.destinationNamedPort)))",
    "message": "networks/nodes/domainNames peers cannot be used with destinationNamedPort: they have no named ports"
}]))]
pub struct TieredNetworkPolicyEgressRule {
    /// At most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    pub action: ClusterNetworkPolicyRuleAction,
    /// 1..=25 peers; the rule matches traffic to any of them.
    #[schemars(length(min = 1, max = 25))]
    pub to: Vec<TieredNetworkPolicyEgressPeer>,
    /// 1..=25 entries; absent: every protocol and port, ICMP included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<TieredNetworkPolicyProtocol>>,
}

/// An ingress peer: exactly one of `namespaces`, `pods` or `networks` (Palisade's extension:
/// upstream has `networks` in egress only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.namespaces) ? 1 : 0) + (has(self.pods) ? 1 : 0) + (has(self.networks) ? 1 : 0) == 1",
    "message": "exactly one of namespaces, pods or networks must be set"
}]))]
pub struct TieredNetworkPolicyIngressPeer {
    /// Every pod of the selected namespaces (never host-network pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The selected pods of the selected namespaces (never host-network pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// 1..=25 CIDRs; they match any address, pod addresses included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub networks: Option<Vec<Cidr>>,
}

/// An egress peer: exactly one of `namespaces`, `pods`, `nodes`, `networks` or `domainNames`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.namespaces) ? 1 : 0) + (has(self.pods) ? 1 : 0) + (has(self.nodes) ? 1 : 0) + (has(self.networks) ? 1 : 0) + (has(self.domainNames) ? 1 : 0) == 1",
    "message": "exactly one of namespaces, pods, nodes, networks or domainNames must be set"
}]))]
pub struct TieredNetworkPolicyEgressPeer {
    /// Every pod of the selected namespaces (never host-network pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The selected pods of the selected namespaces (never host-network pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The addresses in the selected Nodes' `status.addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// 1..=25 CIDRs; they match any address, pod addresses included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub networks: Option<Vec<Cidr>>,
    /// Accepted for compatibility with upstream, but Palisade cannot enforce domain names: such
    /// a peer fails closed (an Accept rule matches nothing from it, a Deny or Pass rule denies
    /// all egress) and is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub domain_names: Option<Vec<DomainName>>,
}

/// One protocol match: exactly one of `tcp`, `udp`, `sctp` or `destinationNamedPort`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.tcp) ? 1 : 0) + (has(self.udp) ? 1 : 0) + (has(self.sctp) ? 1 : 0) + (has(self.destinationNamedPort) ? 1 : 0) == 1",
    "message": "exactly one of tcp, udp, sctp or destinationNamedPort must be set"
}]))]
pub struct TieredNetworkPolicyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    /// A container port name of the destination pod; the protocol is the one the container port
    /// declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// An IPv4 or IPv6 CIDR such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "isCIDR(self)",
    "message": "must be a CIDR such as 10.0.0.0/8 or fd00::/8"
}]))]
pub struct Cidr(#[schemars(length(max = 43))] pub String);

/// A domain name, optionally with a leading `*.` wildcard (as upstream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DomainName(
    #[schemars(regex(
        pattern = r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$"
    ))]
    pub String,
);
