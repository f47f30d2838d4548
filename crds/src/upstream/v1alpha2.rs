//! `policy.networking.k8s.io/v1alpha2`: the upstream `ClusterNetworkPolicy`
//! (kubernetes-sigs/network-policy-api v0.2+, `apis/v1alpha2/clusternetworkpolicy_types.go`).
//!
//! Palisade reads these objects; it never installs their CRD. Field names and shapes follow the
//! upstream Go types exactly. The "exactly one of" unions that upstream tells implementations to
//! fail closed on (peers, protocols) keep any field this version does not know in
//! `unknown_fields`, so that a newer upstream CRD never makes Palisade drop a field silently.
//!
//! [`NamespacedPod`], [`ProtocolPort`], [`Port`] and [`PortRange`] are shared with Palisade's own
//! `TieredNetworkPolicy`, whose spec is the v1alpha2 one; the schema attributes on them (bounds,
//! CEL rules) are what that CRD is generated with.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The fields of an object that this version of Palisade does not know, by name.
pub type UnknownFields = BTreeMap<String, serde_json::Value>;

/// Spec of the upstream `ClusterNetworkPolicy`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    shortname = "cnp",
    status = "ClusterNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "ClusterNetworkPolicy is a cluster-wide network policy resource (upstream, read only)."
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    pub tier: ClusterNetworkPolicyTier,
    /// 0..=1000, lower first inside the tier.
    pub priority: i32,
    pub subject: ClusterNetworkPolicySubject,
    /// At most 25 rules upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<ClusterNetworkPolicyIngressRule>>,
    /// At most 25 rules upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<ClusterNetworkPolicyEgressRule>>,
}

/// `spec.tier` of a ClusterNetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClusterNetworkPolicyTier {
    Admin,
    Baseline,
}

/// Status of a ClusterNetworkPolicy, written by implementations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterNetworkPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// The pods a policy applies to: exactly one of `namespaces` or `pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.namespaces) ? 1 : 0) + (has(self.pods) ? 1 : 0) == 1",
    "message": "exactly one of namespaces or pods must be set"
}]))]
pub struct ClusterNetworkPolicySubject {
    /// Every pod of the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The selected pods of the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods selected by namespace AND pod labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Optional in v1alpha2; empty (or absent) selects every namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Empty selects every pod.
    pub pod_selector: LabelSelector,
}

/// `Accept`, `Deny` or `Pass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClusterNetworkPolicyRuleAction {
    Accept,
    Deny,
    Pass,
}

/// An ingress rule of a ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: ClusterNetworkPolicyRuleAction,
    /// At least one peer.
    pub from: Vec<ClusterNetworkPolicyIngressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// An egress rule of a ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: ClusterNetworkPolicyRuleAction,
    /// At least one peer.
    pub to: Vec<ClusterNetworkPolicyEgressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// An ingress peer: exactly one of `namespaces` or `pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyIngressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Fields this version does not know: the peer fails closed.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// An egress peer: exactly one of `namespaces`, `pods`, `nodes`, `networks` or `domainNames`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyEgressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The addresses in the selected Nodes' `status.addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (IPv4 or IPv6), pod addresses included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Not enforceable by Palisade: converted to a fail-closed peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
    /// Fields this version does not know: the peer fails closed.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// One protocol match: exactly one of `tcp`, `udp`, `sctp` or `destinationNamedPort`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    /// A container port name of the destination pod (any protocol the port declares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
    /// Fields this version does not know: the rule fails closed.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// The attributes of a `tcp`, `udp` or `sctp` match. Upstream requires at least one property,
/// so `destinationPort` is required in practice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct ProtocolPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A destination port: exactly one of `number` or `range`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.number) != has(self.range)",
    "message": "exactly one of number or range must be set"
}]))]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// An inclusive port range. Upstream's CEL requires `start < end`; Palisade's own CRD allows
/// `start <= end` (a one-port range), and the conversion accepts that for every kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.start <= self.end",
    "message": "start must be less than or equal to end"
}]))]
pub struct PortRange {
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}
