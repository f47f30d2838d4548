//! Cluster policies (upstream ClusterNetworkPolicy, AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy, Palisade's TieredNetworkPolicy) and Tiers → the model.
//!
//! Each kind is first seen through the same small views (subject, rule, peer, port), so that
//! one piece of code gives every kind the same semantics and the same checks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use palisade_policy::model::{
    Action, AuditMode, DefaultAction, Direction, LabelSelector, NamespaceMatch, Peer, Policy,
    PolicyId, PolicyKind, PortMatch, Protocol, Rule, Subject, Tier, TIER_ADMIN, TIER_BASELINE,
    TIER_NETWORKPOLICY,
};

use super::{
    cidr, is_dns_label, object_name, port_number, port_range, protocol, selector, Ctx, Mode,
};
use crate::palisade::{
    self, TierDefaultAction, TieredNetworkPolicy, TieredNetworkPolicyAudit,
    TieredNetworkPolicyEgressPeer, TieredNetworkPolicyIngressPeer, TieredNetworkPolicyProtocol,
};
use crate::upstream::v1alpha1::{
    self, AdminNetworkPolicy, AdminNetworkPolicyEgressPeer, AdminNetworkPolicyIngressPeer,
    AdminNetworkPolicyPort, AdminNetworkPolicyRuleAction, BaselineAdminNetworkPolicy,
    BaselineAdminNetworkPolicyEgressPeer, BaselineAdminNetworkPolicyRuleAction,
};
use crate::upstream::v1alpha2::{
    self, ClusterNetworkPolicy, ClusterNetworkPolicyEgressPeer, ClusterNetworkPolicyIngressPeer,
    ClusterNetworkPolicyProtocol, ClusterNetworkPolicyRuleAction, ClusterNetworkPolicySubject,
    ClusterNetworkPolicyTier, ProtocolPort, UnknownFields,
};
use crate::CrdError;

/// Upstream v1alpha2 allows at most 25 rules per direction.
const CNP_MAX_RULES: usize = 25;
/// v1alpha1 and TieredNetworkPolicy allow at most 100 rules per direction.
const MAX_RULES: usize = 100;
/// Upstream limit on a rule name's length.
const MAX_RULE_NAME: usize = 100;

/// Converts an upstream ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): tier
/// `admin` or `baseline` per `spec.tier`. See [`crate::convert`] for the shared semantics.
pub fn cluster_network_policy(cnp: &ClusterNetworkPolicy) -> Result<Policy, CrdError> {
    convert_cnp(cnp, Mode::Cluster)
}

/// Converts an upstream AdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`): tier
/// `admin`, `Allow` is `Accept`.
pub fn admin_network_policy(anp: &AdminNetworkPolicy) -> Result<Policy, CrdError> {
    convert_anp(anp, Mode::Cluster)
}

/// Converts the upstream BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`):
/// tier `baseline`, priority 0, and its name must be `default`.
pub fn baseline_admin_network_policy(
    banp: &BaselineAdminNetworkPolicy,
) -> Result<Policy, CrdError> {
    convert_banp(banp, Mode::Cluster)
}

/// Converts a TieredNetworkPolicy (`palisade.dev/v1alpha1`): tier `spec.tier` (any DNS label
/// but `networkpolicy`; whether the tier exists is the engine's question, not this one's).
pub fn tiered_network_policy(tnp: &TieredNetworkPolicy) -> Result<Policy, CrdError> {
    convert_tnp(tnp, Mode::Cluster)
}

/// Converts a Tier (`palisade.dev/v1alpha1`), checking what its CRD's schema checks: a DNS-label
/// name that is not a built-in tier's, a priority in 0..=20000 that is not 100, 1000 or 10000.
pub fn tier(tier: &palisade::Tier) -> Result<Tier, CrdError> {
    convert_tier(tier, Mode::Cluster)
}

pub(crate) fn convert_tier(tier: &palisade::Tier, mode: Mode) -> Result<Tier, CrdError> {
    let name = object_name("Tier", &tier.metadata)?;
    let ctx = Ctx::new(format!("Tier {name}"), mode);
    if Tier::is_builtin_name(name) {
        return Err(ctx.invalid(
            "metadata.name",
            format!("{name} is a built-in tier and cannot be redefined"),
        ));
    }
    if !is_dns_label(name) {
        return Err(ctx.invalid(
            "metadata.name",
            "must be a DNS label (lower-case letters, digits and '-', at most 63 characters), \
             since TieredNetworkPolicy spec.tier refers to it",
        ));
    }
    let priority = tier.spec.priority;
    if !(0..=20000).contains(&priority) {
        return Err(ctx.invalid("spec.priority", format!("{priority} is not in 0..=20000")));
    }
    if Tier::is_reserved_priority(priority) {
        return Err(ctx.invalid(
            "spec.priority",
            format!(
                "{priority} belongs to a built-in tier (admin 100, networkpolicy 1000, \
                 baseline 10000)"
            ),
        ));
    }
    Ok(Tier {
        name: name.to_string(),
        priority,
        default_action: match tier.spec.default_action {
            TierDefaultAction::Pass => DefaultAction::Pass,
            TierDefaultAction::Deny => DefaultAction::Deny,
        },
    })
}

pub(crate) fn convert_cnp(cnp: &ClusterNetworkPolicy, mode: Mode) -> Result<Policy, CrdError> {
    let name = object_name("ClusterNetworkPolicy", &cnp.metadata)?;
    let spec = &cnp.spec;
    let tier = match spec.tier {
        ClusterNetworkPolicyTier::Admin => TIER_ADMIN,
        ClusterNetworkPolicyTier::Baseline => TIER_BASELINE,
    };
    build(
        PolicyView {
            kind: PolicyKind::ClusterNetworkPolicy,
            name,
            tier: tier.to_string(),
            priority: Some(spec.priority),
            subject: cnp_subject(&spec.subject),
            ingress: rule_views(&spec.ingress, |r| {
                rule_view(&r.name, cnp_action(r.action), &r.from, &r.protocols)
            }),
            egress: rule_views(&spec.egress, |r| {
                rule_view(&r.name, cnp_action(r.action), &r.to, &r.protocols)
            }),
            max_rules: CNP_MAX_RULES,
            audit: None,
        },
        mode,
    )
}

pub(crate) fn convert_tnp(tnp: &TieredNetworkPolicy, mode: Mode) -> Result<Policy, CrdError> {
    let name = object_name("TieredNetworkPolicy", &tnp.metadata)?;
    let spec = &tnp.spec;
    let ctx = Ctx::new(format!("TieredNetworkPolicy {name}"), mode);
    if spec.tier == TIER_NETWORKPOLICY {
        return Err(ctx.invalid(
            "spec.tier",
            "the networkpolicy tier holds only standard NetworkPolicies",
        ));
    }
    if !is_dns_label(&spec.tier) {
        return Err(ctx.invalid(
            "spec.tier",
            format!(
                "{:?} is not a tier name (a DNS label: lower-case letters, digits and '-')",
                spec.tier
            ),
        ));
    }
    build(
        PolicyView {
            kind: PolicyKind::TieredNetworkPolicy,
            name,
            tier: spec.tier.clone(),
            priority: Some(spec.priority),
            subject: cnp_subject(&spec.subject),
            ingress: rule_views(&spec.ingress, |r| {
                rule_view(&r.name, cnp_action(r.action), &r.from, &r.protocols)
            }),
            egress: rule_views(&spec.egress, |r| {
                rule_view(&r.name, cnp_action(r.action), &r.to, &r.protocols)
            }),
            max_rules: MAX_RULES,
            audit: spec.audit.map(|a| match a {
                TieredNetworkPolicyAudit::All => AuditMode::All,
                TieredNetworkPolicyAudit::Deny => AuditMode::Deny,
                TieredNetworkPolicyAudit::None => AuditMode::None,
            }),
        },
        mode,
    )
}

pub(crate) fn convert_anp(anp: &AdminNetworkPolicy, mode: Mode) -> Result<Policy, CrdError> {
    let name = object_name("AdminNetworkPolicy", &anp.metadata)?;
    let spec = &anp.spec;
    build(
        PolicyView {
            kind: PolicyKind::AdminNetworkPolicy,
            name,
            tier: TIER_ADMIN.to_string(),
            priority: Some(spec.priority),
            subject: anp_subject(&spec.subject),
            ingress: rule_views(&spec.ingress, |r| {
                rule_view(&r.name, anp_action(r.action), &r.from, &r.ports)
            }),
            egress: rule_views(&spec.egress, |r| {
                rule_view(&r.name, anp_action(r.action), &r.to, &r.ports)
            }),
            max_rules: MAX_RULES,
            audit: None,
        },
        mode,
    )
}

pub(crate) fn convert_banp(
    banp: &BaselineAdminNetworkPolicy,
    mode: Mode,
) -> Result<Policy, CrdError> {
    let name = object_name("BaselineAdminNetworkPolicy", &banp.metadata)?;
    if name != "default" {
        return Err(CrdError::invalid(
            format!("BaselineAdminNetworkPolicy {name}"),
            "metadata.name",
            "must be default: the BaselineAdminNetworkPolicy is a singleton",
        ));
    }
    let spec = &banp.spec;
    build(
        PolicyView {
            kind: PolicyKind::BaselineAdminNetworkPolicy,
            name,
            tier: TIER_BASELINE.to_string(),
            priority: None,
            subject: anp_subject(&spec.subject),
            ingress: rule_views(&spec.ingress, |r| {
                rule_view(&r.name, banp_action(r.action), &r.from, &r.ports)
            }),
            egress: rule_views(&spec.egress, |r| {
                rule_view(&r.name, banp_action(r.action), &r.to, &r.ports)
            }),
            max_rules: MAX_RULES,
            audit: None,
        },
        mode,
    )
}

/// A direction's rules (`spec.ingress` or `spec.egress`) of any kind, each seen through `view`.
fn rule_views<'a, R>(
    rules: &'a Option<Vec<R>>,
    view: impl Fn(&'a R) -> RuleView<'a>,
) -> Option<Vec<RuleView<'a>>> {
    rules.as_ref().map(|rules| rules.iter().map(view).collect())
}

/// One rule of any kind: every kind's rules have a name, an action, peers (`from` or `to`) and
/// optional ports; only the upstream types of the action, peers and ports differ.
fn rule_view<'a, P: UpstreamPeer, Q: UpstreamPort>(
    name: &'a Option<String>,
    action: Action,
    peers: &'a [P],
    ports: &'a Option<Vec<Q>>,
) -> RuleView<'a> {
    RuleView {
        name: name.as_deref(),
        action,
        peers: peers.iter().map(UpstreamPeer::view).collect(),
        ports_field: Q::FIELD,
        ports: ports
            .as_ref()
            .map(|ps| ps.iter().map(UpstreamPort::view).collect()),
    }
}

/// v1alpha2's and TieredNetworkPolicy's action (`Accept`, `Deny`, `Pass`).
fn cnp_action(a: ClusterNetworkPolicyRuleAction) -> Action {
    match a {
        ClusterNetworkPolicyRuleAction::Accept => Action::Accept,
        ClusterNetworkPolicyRuleAction::Deny => Action::Deny,
        ClusterNetworkPolicyRuleAction::Pass => Action::Pass,
    }
}

/// AdminNetworkPolicy's action: `Allow` is `Accept`.
fn anp_action(a: AdminNetworkPolicyRuleAction) -> Action {
    match a {
        AdminNetworkPolicyRuleAction::Allow => Action::Accept,
        AdminNetworkPolicyRuleAction::Deny => Action::Deny,
        AdminNetworkPolicyRuleAction::Pass => Action::Pass,
    }
}

/// BaselineAdminNetworkPolicy's action: `Allow` is `Accept`, and there is no `Pass`.
fn banp_action(a: BaselineAdminNetworkPolicyRuleAction) -> Action {
    match a {
        BaselineAdminNetworkPolicyRuleAction::Allow => Action::Accept,
        BaselineAdminNetworkPolicyRuleAction::Deny => Action::Deny,
    }
}

fn cnp_subject(s: &ClusterNetworkPolicySubject) -> SubjectView<'_> {
    SubjectView {
        namespaces: s.namespaces.as_ref(),
        pods: s.pods.as_ref().map(PodSelectors::selectors),
    }
}

fn anp_subject(s: &v1alpha1::AdminNetworkPolicySubject) -> SubjectView<'_> {
    SubjectView {
        namespaces: s.namespaces.as_ref(),
        pods: s.pods.as_ref().map(PodSelectors::selectors),
    }
}

/// `pods: {namespaceSelector, podSelector}`, which v1alpha1 and v1alpha2 (and so
/// TieredNetworkPolicy) each define as their own `NamespacedPod`.
trait PodSelectors {
    /// `(namespaceSelector, podSelector)`.
    fn selectors(&self) -> (&K8sSelector, &K8sSelector);
}

impl PodSelectors for v1alpha1::NamespacedPod {
    fn selectors(&self) -> (&K8sSelector, &K8sSelector) {
        (&self.namespace_selector, &self.pod_selector)
    }
}

impl PodSelectors for v1alpha2::NamespacedPod {
    fn selectors(&self) -> (&K8sSelector, &K8sSelector) {
        (&self.namespace_selector, &self.pod_selector)
    }
}

/// An upstream peer type, seen as a [`PeerView`].
trait UpstreamPeer {
    fn view(&self) -> PeerView<'_>;
}

/// v1alpha1 and v1alpha2 define the same ingress peer (`namespaces`, `pods`, unknown fields
/// kept) as two types: one body serves both.
macro_rules! upstream_ingress_peer {
    ($($peer:ty),+) => {$(
        impl UpstreamPeer for $peer {
            fn view(&self) -> PeerView<'_> {
                PeerView {
                    namespaces: self.namespaces.as_ref(),
                    pods: self.pods.as_ref().map(PodSelectors::selectors),
                    unknown: unknown_keys(&self.unknown_fields),
                    ..PeerView::default()
                }
            }
        }
    )+};
}

/// Likewise the egress peer of the ClusterNetworkPolicy and the AdminNetworkPolicy (`nodes`,
/// `networks` and `domainNames` besides); the BaselineAdminNetworkPolicy's differs (below).
macro_rules! upstream_egress_peer {
    ($($peer:ty),+) => {$(
        impl UpstreamPeer for $peer {
            fn view(&self) -> PeerView<'_> {
                PeerView {
                    namespaces: self.namespaces.as_ref(),
                    pods: self.pods.as_ref().map(PodSelectors::selectors),
                    nodes: self.nodes.as_ref(),
                    networks: strs(&self.networks),
                    domain_names: strs(&self.domain_names),
                    unknown: unknown_keys(&self.unknown_fields),
                }
            }
        }
    )+};
}

upstream_ingress_peer!(
    ClusterNetworkPolicyIngressPeer,
    AdminNetworkPolicyIngressPeer
);
upstream_egress_peer!(ClusterNetworkPolicyEgressPeer, AdminNetworkPolicyEgressPeer);

/// TieredNetworkPolicy's peers keep no unknown fields, so they have none to report.
impl UpstreamPeer for TieredNetworkPolicyIngressPeer {
    fn view(&self) -> PeerView<'_> {
        PeerView {
            namespaces: self.namespaces.as_ref(),
            pods: self.pods.as_ref().map(PodSelectors::selectors),
            networks: cidrs(&self.networks),
            ..PeerView::default()
        }
    }
}

impl UpstreamPeer for TieredNetworkPolicyEgressPeer {
    fn view(&self) -> PeerView<'_> {
        PeerView {
            namespaces: self.namespaces.as_ref(),
            pods: self.pods.as_ref().map(PodSelectors::selectors),
            nodes: self.nodes.as_ref(),
            networks: cidrs(&self.networks),
            domain_names: self
                .domain_names
                .as_ref()
                .map(|ds| ds.iter().map(|d| d.0.as_str()).collect()),
            unknown: Vec::new(),
        }
    }
}

/// The BaselineAdminNetworkPolicy's egress peer has no `domainNames`.
impl UpstreamPeer for BaselineAdminNetworkPolicyEgressPeer {
    fn view(&self) -> PeerView<'_> {
        PeerView {
            namespaces: self.namespaces.as_ref(),
            pods: self.pods.as_ref().map(PodSelectors::selectors),
            nodes: self.nodes.as_ref(),
            networks: strs(&self.networks),
            domain_names: None,
            unknown: unknown_keys(&self.unknown_fields),
        }
    }
}

/// An upstream port type, seen as a [`PortView`].
trait UpstreamPort {
    /// The rule's field that holds the list: `protocols` (v1alpha2, TieredNetworkPolicy) or
    /// `ports` (v1alpha1).
    const FIELD: &'static str;
    fn view(&self) -> PortView<'_>;
}

impl UpstreamPort for ClusterNetworkPolicyProtocol {
    const FIELD: &'static str = "protocols";
    fn view(&self) -> PortView<'_> {
        PortView::Protocol {
            tcp: self.tcp.as_ref(),
            udp: self.udp.as_ref(),
            sctp: self.sctp.as_ref(),
            named: self.destination_named_port.as_deref(),
            unknown: unknown_keys(&self.unknown_fields),
        }
    }
}

impl UpstreamPort for TieredNetworkPolicyProtocol {
    const FIELD: &'static str = "protocols";
    fn view(&self) -> PortView<'_> {
        PortView::Protocol {
            tcp: self.tcp.as_ref(),
            udp: self.udp.as_ref(),
            sctp: self.sctp.as_ref(),
            named: self.destination_named_port.as_deref(),
            unknown: Vec::new(),
        }
    }
}

impl UpstreamPort for AdminNetworkPolicyPort {
    const FIELD: &'static str = "ports";
    fn view(&self) -> PortView<'_> {
        PortView::Anp(self)
    }
}

fn strs(texts: &Option<Vec<String>>) -> Option<Vec<&str>> {
    texts
        .as_ref()
        .map(|ts| ts.iter().map(String::as_str).collect())
}

fn cidrs(networks: &Option<Vec<palisade::Cidr>>) -> Option<Vec<&str>> {
    networks
        .as_ref()
        .map(|ns| ns.iter().map(|c| c.0.as_str()).collect())
}

fn unknown_keys(fields: &UnknownFields) -> Vec<&str> {
    fields.keys().map(String::as_str).collect()
}

/// A cluster policy of any kind, seen the same way.
struct PolicyView<'a> {
    kind: PolicyKind,
    name: &'a str,
    tier: String,
    /// `None` for the BaselineAdminNetworkPolicy, which has no priority (counts as 0).
    priority: Option<i32>,
    subject: SubjectView<'a>,
    ingress: Option<Vec<RuleView<'a>>>,
    egress: Option<Vec<RuleView<'a>>>,
    max_rules: usize,
    audit: Option<AuditMode>,
}

struct SubjectView<'a> {
    namespaces: Option<&'a K8sSelector>,
    /// `(namespaceSelector, podSelector)`.
    pods: Option<(&'a K8sSelector, &'a K8sSelector)>,
}

struct RuleView<'a> {
    name: Option<&'a str>,
    action: Action,
    /// `from` (ingress) or `to` (egress), as [`peers_field`] names them.
    peers: Vec<PeerView<'a>>,
    /// `protocols` (v1alpha2) or `ports` (v1alpha1).
    ports_field: &'static str,
    ports: Option<Vec<PortView<'a>>>,
}

#[derive(Default)]
struct PeerView<'a> {
    namespaces: Option<&'a K8sSelector>,
    /// `(namespaceSelector, podSelector)`.
    pods: Option<(&'a K8sSelector, &'a K8sSelector)>,
    nodes: Option<&'a K8sSelector>,
    networks: Option<Vec<&'a str>>,
    domain_names: Option<Vec<&'a str>>,
    /// Fields this version does not know.
    unknown: Vec<&'a str>,
}

enum PortView<'a> {
    /// A v1alpha2 protocol entry.
    Protocol {
        tcp: Option<&'a ProtocolPort>,
        udp: Option<&'a ProtocolPort>,
        sctp: Option<&'a ProtocolPort>,
        named: Option<&'a str>,
        unknown: Vec<&'a str>,
    },
    /// A v1alpha1 port entry.
    Anp(&'a AdminNetworkPolicyPort),
}

/// A port entry converted: a match, or (from the API server) a field this version cannot
/// understand, which makes the whole rule fail closed.
enum PortOutcome {
    Match(PortMatch),
    FailClosed(String),
}

fn build(view: PolicyView<'_>, mode: Mode) -> Result<Policy, CrdError> {
    let id = PolicyId {
        kind: view.kind,
        namespace: None,
        name: view.name.to_string(),
    };
    let ctx = Ctx::new(id.to_string(), mode);
    let priority = match view.priority {
        Some(p) if !(0..=1000).contains(&p) => {
            return Err(ctx.invalid("spec.priority", format!("{p} is not in 0..=1000")))
        }
        Some(p) => p,
        None => 0,
    };
    let subject = subject(&ctx, &view.subject)?;
    let ingress = direction(&ctx, Direction::Ingress, view.ingress, view.max_rules)?;
    let egress = direction(&ctx, Direction::Egress, view.egress, view.max_rules)?;
    Ok(Policy {
        id,
        tier: view.tier,
        priority,
        subject,
        ingress,
        egress,
        audit: view.audit,
    })
}

fn subject(ctx: &Ctx, s: &SubjectView<'_>) -> Result<Subject, CrdError> {
    match (s.namespaces, s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(selector(
            ctx,
            "spec.subject.namespaces",
            ns,
        )?)),
        (None, Some((ns, pods))) => Ok(Subject::Pods {
            namespaces: selector(ctx, "spec.subject.pods.namespaceSelector", ns)?,
            pods: selector(ctx, "spec.subject.pods.podSelector", pods)?,
        }),
        _ => Err(ctx.invalid(
            "spec.subject",
            "exactly one of namespaces or pods must be set",
        )),
    }
}

/// A direction applies (`Some`) only when the policy has at least one rule for it.
fn direction(
    ctx: &Ctx,
    direction: Direction,
    rules: Option<Vec<RuleView<'_>>>,
    max_rules: usize,
) -> Result<Option<Vec<Rule>>, CrdError> {
    let dir = direction.as_str();
    let rules = match rules {
        Some(rules) if !rules.is_empty() => rules,
        _ => return Ok(None),
    };
    if rules.len() > max_rules {
        return Err(ctx.invalid(
            format!("spec.{dir}"),
            format!("{} rules; at most {max_rules} are allowed", rules.len()),
        ));
    }
    rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(ctx, direction, &format!("spec.{dir}[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn rule(ctx: &Ctx, direction: Direction, path: &str, r: RuleView<'_>) -> Result<Rule, CrdError> {
    let name = match r.name {
        Some(name) if name.chars().count() > MAX_RULE_NAME => {
            return Err(ctx.invalid(
                format!("{path}.name"),
                format!("at most {MAX_RULE_NAME} characters"),
            ))
        }
        Some("") | None => None,
        Some(name) => Some(name.to_string()),
    };
    let peers_field = peers_field(direction);
    if r.peers.is_empty() {
        return Err(ctx.invalid(
            format!("{path}.{peers_field}"),
            "must contain at least one peer",
        ));
    }
    let mut peers = Vec::new();
    let mut addresses_only = false;
    for (j, p) in r.peers.iter().enumerate() {
        let at = format!("{path}.{peers_field}[{j}]");
        addresses_only |= p.nodes.is_some() || p.networks.is_some() || p.domain_names.is_some();
        peers.extend(peer(ctx, &at, p)?);
    }

    let ports_path = format!("{path}.{}", r.ports_field);
    let mut fail_closed = None;
    let ports = match r.ports {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ctx.invalid(
                ports_path,
                "must contain at least one entry when present (omit it to match every port)",
            ))
        }
        Some(list) => {
            let mut matches = Vec::new();
            for (k, p) in list.iter().enumerate() {
                match port(ctx, &format!("{ports_path}[{k}]"), p)? {
                    PortOutcome::Match(m) => matches.push(m),
                    PortOutcome::FailClosed(field) => {
                        fail_closed.get_or_insert(field);
                    }
                }
            }
            Some(matches)
        }
    };
    if direction == Direction::Egress
        && addresses_only
        && ports
            .iter()
            .flatten()
            .any(|m| matches!(m, PortMatch::Named { .. }))
    {
        return Err(ctx.invalid(
            path,
            "networks, nodes and domainNames peers cannot be combined with a named port: \
             they have no named ports",
        ));
    }
    if let Some(field) = fail_closed {
        // A port entry this version cannot read: the rule as a whole fails closed (an Accept
        // rule matches nothing, a Deny or Pass rule denies all traffic in its direction).
        return Ok(Rule {
            name,
            action: r.action,
            peers: Some(vec![Peer::Unsupported { field }]),
            ports: None,
        });
    }
    Ok(Rule {
        name,
        action: r.action,
        peers: Some(peers),
        ports,
    })
}

/// Every kind names a rule's peers `from` in ingress and `to` in egress.
fn peers_field(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// One peer: `networks` gives one `IpBlock` per CIDR, so a peer can give several.
fn peer(ctx: &Ctx, path: &str, p: &PeerView<'_>) -> Result<Vec<Peer>, CrdError> {
    if let Some(key) = p.unknown.first() {
        let field = format!("{path}.{key}");
        return match ctx.mode {
            Mode::Manifest => Err(ctx.unknown_field(field)),
            Mode::Cluster => Ok(vec![Peer::Unsupported { field }]),
        };
    }
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if set == 0 && ctx.mode == Mode::Cluster {
        // Upstream: a peer with no known field set comes from a newer CRD; fail closed.
        return Ok(vec![Peer::Unsupported {
            field: path.to_string(),
        }]);
    }
    if set != 1 {
        return Err(ctx.invalid(
            path,
            "exactly one of namespaces, pods, nodes, networks or domainNames must be set \
             (as the kind allows)",
        ));
    }
    if let Some(ns) = p.namespaces {
        return Ok(vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(selector(ctx, &format!("{path}.namespaces"), ns)?),
            pods: LabelSelector::everything(),
        }]);
    }
    if let Some((ns, pods)) = p.pods {
        return Ok(vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(selector(
                ctx,
                &format!("{path}.pods.namespaceSelector"),
                ns,
            )?),
            pods: selector(ctx, &format!("{path}.pods.podSelector"), pods)?,
        }]);
    }
    if let Some(nodes) = p.nodes {
        return Ok(vec![Peer::Nodes(selector(
            ctx,
            &format!("{path}.nodes"),
            nodes,
        )?)]);
    }
    if let Some(networks) = &p.networks {
        if networks.is_empty() {
            return Err(ctx.invalid(format!("{path}.networks"), "must contain at least one CIDR"));
        }
        return networks
            .iter()
            .enumerate()
            .map(|(k, text)| {
                Ok(Peer::IpBlock {
                    cidr: cidr(ctx, &format!("{path}.networks[{k}]"), text)?,
                    except: Vec::new(),
                })
            })
            .collect();
    }
    // domainNames: checked as upstream's CRD does, but Palisade cannot enforce it: fail closed.
    let names = p.domain_names.as_deref().unwrap_or_default();
    if names.is_empty() {
        return Err(ctx.invalid(
            format!("{path}.domainNames"),
            "must contain at least one domain name",
        ));
    }
    for (k, name) in names.iter().enumerate() {
        if !is_domain_name(name) {
            return Err(ctx.invalid(
                format!("{path}.domainNames[{k}]"),
                format!("{name:?} is not a domain name (such as example.com or *.example.com)"),
            ));
        }
    }
    Ok(vec![Peer::Unsupported {
        field: format!("{path}.domainNames"),
    }])
}

/// Upstream's `DomainName` pattern,
/// `^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`:
/// an optional `*.` prefix, then at least two labels, with an optional trailing dot.
fn is_domain_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    first.is_ascii_alphanumeric()
                        && last.is_ascii_alphanumeric()
                        && bytes
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                }
                _ => false,
            }
        })
}

fn port(ctx: &Ctx, path: &str, p: &PortView<'_>) -> Result<PortOutcome, CrdError> {
    let unknown = match p {
        PortView::Protocol { unknown, .. } => unknown.first().copied(),
        PortView::Anp(a) => a.unknown_fields.keys().next().map(String::as_str),
    };
    if let Some(key) = unknown {
        let field = format!("{path}.{key}");
        return match ctx.mode {
            Mode::Manifest => Err(ctx.unknown_field(field)),
            Mode::Cluster => Ok(PortOutcome::FailClosed(field)),
        };
    }
    match p {
        PortView::Protocol {
            tcp,
            udp,
            sctp,
            named,
            ..
        } => {
            let entries = [
                tcp.map(|pp| ("tcp", Protocol::Tcp, pp)),
                udp.map(|pp| ("udp", Protocol::Udp, pp)),
                sctp.map(|pp| ("sctp", Protocol::Sctp, pp)),
            ];
            let set = entries.iter().flatten().count() + usize::from(named.is_some());
            if set == 0 && ctx.mode == Mode::Cluster {
                return Ok(PortOutcome::FailClosed(path.to_string()));
            }
            if set != 1 {
                return Err(ctx.invalid(
                    path,
                    "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
                ));
            }
            if let Some(name) = named {
                return named_port(ctx, &format!("{path}.destinationNamedPort"), name);
            }
            match entries.into_iter().flatten().next() {
                Some((field, protocol, pp)) => {
                    protocol_port(ctx, &format!("{path}.{field}"), protocol, pp)
                }
                None => Err(ctx.invalid(path, "no protocol set")),
            }
        }
        PortView::Anp(a) => {
            let set = usize::from(a.port_number.is_some())
                + usize::from(a.named_port.is_some())
                + usize::from(a.port_range.is_some());
            if set == 0 && ctx.mode == Mode::Cluster {
                return Ok(PortOutcome::FailClosed(path.to_string()));
            }
            if set != 1 {
                return Err(ctx.invalid(
                    path,
                    "exactly one of portNumber, namedPort or portRange must be set",
                ));
            }
            if let Some(pn) = &a.port_number {
                let protocol = anp_protocol(ctx, &format!("{path}.portNumber"), &pn.protocol)?;
                let n = port_number(ctx, &format!("{path}.portNumber.port"), pn.port)?;
                return Ok(PortOutcome::Match(PortMatch::Range {
                    protocol,
                    start: n,
                    end: n,
                }));
            }
            if let Some(pr) = &a.port_range {
                let at = format!("{path}.portRange");
                let protocol = anp_protocol(ctx, &at, &pr.protocol)?;
                return port_range(ctx, &at, protocol, pr.start, pr.end).map(PortOutcome::Match);
            }
            match &a.named_port {
                Some(name) => named_port(ctx, &format!("{path}.namedPort"), name),
                None => Err(ctx.invalid(path, "no port set")),
            }
        }
    }
}

/// v1alpha1 `protocol`: absent means TCP (the CRD's default).
fn anp_protocol(ctx: &Ctx, path: &str, p: &Option<String>) -> Result<Protocol, CrdError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(text) => protocol(ctx, &format!("{path}.protocol"), text),
    }
}

fn named_port(ctx: &Ctx, path: &str, name: &str) -> Result<PortOutcome, CrdError> {
    if name.is_empty() {
        return Err(ctx.invalid(path, "must not be empty"));
    }
    Ok(PortOutcome::Match(PortMatch::Named {
        protocol: None,
        name: name.to_string(),
    }))
}

/// `tcp|udp|sctp: {destinationPort: {number: N} | {range: {start, end}}}`.
fn protocol_port(
    ctx: &Ctx,
    path: &str,
    protocol: Protocol,
    pp: &ProtocolPort,
) -> Result<PortOutcome, CrdError> {
    let at = format!("{path}.destinationPort");
    let Some(dp) = &pp.destination_port else {
        return Err(ctx.invalid(at, "required"));
    };
    match (dp.number, &dp.range) {
        (Some(n), None) => {
            let n = port_number(ctx, &format!("{at}.number"), n)?;
            Ok(PortOutcome::Match(PortMatch::Range {
                protocol,
                start: n,
                end: n,
            }))
        }
        (None, Some(r)) => port_range(ctx, &format!("{at}.range"), protocol, r.start, r.end)
            .map(PortOutcome::Match),
        _ => Err(ctx.invalid(at, "exactly one of number or range must be set")),
    }
}
