//! `policy.networking.k8s.io/v1alpha1`: the upstream `AdminNetworkPolicy` and
//! `BaselineAdminNetworkPolicy` (kubernetes-sigs/network-policy-api v0.1.x,
//! `apis/v1alpha1/adminnetworkpolicy_types.go`, `baselineadminnetworkpolicy_types.go`,
//! `shared_types.go`).
//!
//! Palisade reads these objects; it never installs their CRDs. Field names and shapes follow the
//! upstream Go types exactly (including the experimental channel's `nodes`, `networks`,
//! `namedPort` and, for AdminNetworkPolicy egress, `domainNames`). Peers and ports keep unknown
//! fields in `unknown_fields`, so that they fail closed instead of being dropped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::v1alpha2::UnknownFields;

/// Spec of the upstream `AdminNetworkPolicy`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "AdminNetworkPolicy",
    plural = "adminnetworkpolicies",
    shortname = "anp",
    status = "AdminNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "AdminNetworkPolicy is a cluster level resource of the AdminNetworkPolicy API (upstream, read only)."
)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    /// 0..=1000, lower first.
    pub priority: i32,
    pub subject: AdminNetworkPolicySubject,
    /// At most 100 rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<AdminNetworkPolicyIngressRule>>,
    /// At most 100 rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<AdminNetworkPolicyEgressRule>>,
}

/// Status of an AdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdminNetworkPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// Spec of the upstream `BaselineAdminNetworkPolicy` (a singleton named `default`).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "BaselineAdminNetworkPolicy",
    plural = "baselineadminnetworkpolicies",
    shortname = "banp",
    status = "BaselineAdminNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "BaselineAdminNetworkPolicy is the cluster's singleton baseline policy (upstream, read only)."
)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicySpec {
    pub subject: AdminNetworkPolicySubject,
    /// At most 100 rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<BaselineAdminNetworkPolicyIngressRule>>,
    /// At most 100 rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<BaselineAdminNetworkPolicyEgressRule>>,
}

/// Status of a BaselineAdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaselineAdminNetworkPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// The pods a policy applies to: exactly one of `namespaces` or `pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods selected by namespace AND pod labels (both required in v1alpha1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    pub namespace_selector: LabelSelector,
    pub pod_selector: LabelSelector,
}

/// `Allow`, `Deny` or `Pass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AdminNetworkPolicyRuleAction {
    Allow,
    Deny,
    Pass,
}

/// `Allow` or `Deny` (a baseline cannot pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BaselineAdminNetworkPolicyRuleAction {
    Allow,
    Deny,
}

/// An ingress rule of an AdminNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: AdminNetworkPolicyRuleAction,
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An egress rule of an AdminNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: AdminNetworkPolicyRuleAction,
    pub to: Vec<AdminNetworkPolicyEgressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An ingress rule of the BaselineAdminNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: BaselineAdminNetworkPolicyRuleAction,
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An egress rule of the BaselineAdminNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: BaselineAdminNetworkPolicyRuleAction,
    pub to: Vec<BaselineAdminNetworkPolicyEgressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An ingress peer (ANP and BANP): exactly one of `namespaces` or `pods`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyIngressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Fields this version does not know: the peer fails closed.
    #[serde(flatten, default, skip_serializing_if = "UnknownFields::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// An AdminNetworkPolicy egress peer: exactly one of `namespaces`, `pods`, `nodes`,
/// `networks` or `domainNames`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyEgressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Not enforceable by Palisade: converted to a fail-closed peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
    /// Fields this version does not know: the peer fails closed.
    #[serde(flatten, default, skip_serializing_if = "UnknownFields::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// A BaselineAdminNetworkPolicy egress peer: exactly one of `namespaces`, `pods`, `nodes` or
/// `networks` (no `domainNames` upstream).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicyEgressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Fields this version does not know: the peer fails closed.
    #[serde(flatten, default, skip_serializing_if = "UnknownFields::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// One port match: exactly one of `portNumber`, `namedPort` or `portRange`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<PortNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
    /// Fields this version does not know: the rule fails closed.
    #[serde(flatten, default, skip_serializing_if = "UnknownFields::is_empty")]
    pub unknown_fields: UnknownFields,
}

/// Upstream `Port`: one port of one protocol. `protocol` defaults to `TCP` (CRD default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortNumber {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: i32,
}

/// Upstream `PortRange`: an inclusive range of one protocol. `protocol` defaults to `TCP`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub start: i32,
    pub end: i32,
}
