//! Evaluation: is a connection allowed, and why.
//!
//! [`Engine::new`] indexes a [`Cluster`] once: every policy's subject is resolved to
//! the pods it selects (so each pod knows, per direction, its policies in evaluation
//! order), and every pod peer to a [`PodSet`]. A verdict is then a walk over the few
//! policies of two pods, with set lookups for peers: no label matching per query.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::*;
use crate::podset::PodSet;
use crate::PolicyError;

/// One side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Index into the cluster's pods. A host-network pod counts as its node.
    Pod(usize),
    /// Index into the cluster's nodes.
    Node(usize),
    /// An address that is neither a pod nor a node.
    External(IpAddr),
}

/// A connection to judge: the first packet of a flow from `src` to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub family: Family,
    pub protocol: Protocol,
    /// Destination port (ignored for ICMP).
    pub port: u16,
}

/// A tier as the engine orders it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TierInfo {
    pub name: String,
    pub priority: i32,
    pub default_action: DefaultAction,
    /// The tier is named by a policy but defined nowhere: fail-closed.
    pub missing: bool,
}

impl TierInfo {
    pub fn is_networkpolicy(&self) -> bool {
        self.name == TIER_NETWORKPOLICY
    }
}

/// What a rule's peers resolve to.
#[derive(Clone, Debug)]
pub(crate) enum PeerMatch {
    Any,
    Some {
        pods: Vec<std::sync::Arc<PodSet>>,
        /// Indices into the cluster's nodes.
        nodes: Vec<usize>,
        blocks: Vec<(IpNet, Vec<IpNet>)>,
    },
}

/// A rule ready for evaluation, with fail-closed already applied.
#[derive(Clone, Debug)]
pub(crate) struct PreparedRule {
    pub index: usize,
    pub name: Option<String>,
    pub action: Action,
    pub peers: PeerMatch,
    pub ports: Option<Vec<PortMatch>>,
    /// Matches nothing (an Accept or Pass rule of a policy whose tier is missing).
    pub inert: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct PreparedPolicy {
    pub id: PolicyId,
    pub tier: usize,
    pub ingress: Option<Vec<PreparedRule>>,
    pub egress: Option<Vec<PreparedRule>>,
}

impl PreparedPolicy {
    pub fn rules(&self, direction: Direction) -> Option<&[PreparedRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Something worth telling a user about the input (reported, never fatal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub policy: PolicyId,
    pub field: String,
    pub message: String,
}

/// The indexed cluster.
#[derive(Debug)]
pub struct Engine {
    pub(crate) cluster: Cluster,
    pub(crate) tiers: Vec<TierInfo>,
    /// Sorted by evaluation order: tier, priority, kind, namespace, name.
    pub(crate) policies: Vec<PreparedPolicy>,
    /// Per direction (0 ingress, 1 egress), per pod: policy indices in order.
    pub(crate) selected: [Vec<Vec<u32>>; 2],
    pub(crate) pod_node: Vec<Option<usize>>,
    diagnostics: Vec<Diagnostic>,
}

fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Why one side decided as it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Decision {
    /// The side is not a pod (a node or an external address): judged on the pod side only.
    NotAPod,
    /// A pod and the node it runs on: always allowed.
    SameNode,
    /// A pod's traffic to itself (for instance through a Service that load-balances
    /// back to it, "hairpin"): always allowed, whatever the policies say. The
    /// Kubernetes documentation: "a pod cannot block access to itself".
    SamePod,
    /// No policy selects the pod for this direction.
    NotSelected,
    /// A rule matched.
    #[serde(rename_all = "camelCase")]
    Rule {
        tier: String,
        policy: PolicyId,
        rule_index: usize,
        rule_name: Option<String>,
        action: Action,
    },
    /// NetworkPolicies isolate the pod and none of their rules matched.
    #[serde(rename_all = "camelCase")]
    NoRuleMatched {
        tier: String,
        policies: Vec<PolicyId>,
    },
    /// A tier with `defaultAction: Deny` applied and none of its rules matched.
    #[serde(rename_all = "camelCase")]
    TierDefault {
        tier: String,
        policies: Vec<PolicyId>,
    },
    /// Policies applied but every tier passed: the default is to allow.
    NoTierDecided,
}

/// One tier visited while deciding a side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierVisit {
    pub tier: String,
    /// The policies of this tier that apply to the pod in this direction.
    pub policies: Vec<PolicyId>,
    pub outcome: TierOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TierOutcome {
    /// A rule decided (see the side's decision).
    Decided,
    /// A Pass rule sent evaluation on to the next tier.
    #[serde(rename_all = "camelCase")]
    Passed {
        policy: PolicyId,
        rule_index: usize,
        rule_name: Option<String>,
    },
    /// No rule matched and the tier's default is to pass.
    NoMatch,
    /// No rule matched and the tier denied (NetworkPolicy isolation or `defaultAction: Deny`).
    DefaultDeny,
}

/// The verdict of one side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideVerdict {
    pub allowed: bool,
    pub decision: Decision,
    pub path: Vec<TierVisit>,
}

/// The verdict on a connection, with its reasons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
}

/// Where an endpoint sits, for evaluation.
#[derive(Clone, Copy, Debug)]
enum Side {
    /// A pod with its own addresses.
    Pod(usize),
    Node(usize),
    External(IpAddr),
}

impl Engine {
    /// Indexes a cluster. Fails on objects that break the contracts (duplicate
    /// names, a NetworkPolicy outside its tier, a Tier at a reserved name or priority).
    pub fn new(cluster: Cluster) -> Result<Engine, PolicyError> {
        let tiers = order_tiers(&cluster)?;
        check_unique_policies(&cluster.policies)?;
        let mut builder = Builder::new(&cluster);
        let mut diagnostics = Vec::new();
        let mut policies: Vec<PreparedPolicy> = Vec::with_capacity(cluster.policies.len());
        let mut order: Vec<(usize, &Policy)> = cluster
            .policies
            .iter()
            .map(|p| tier_index(&tiers, &p.tier).map(|t| (t, p)))
            .collect::<Result<_, _>>()?;
        order.sort_by(|(ta, a), (tb, b)| {
            (
                ta,
                a.priority,
                a.id.kind.tie_rank(),
                &a.id.namespace,
                &a.id.name,
            )
                .cmp(&(
                    tb,
                    b.priority,
                    b.id.kind.tie_rank(),
                    &b.id.namespace,
                    &b.id.name,
                ))
        });
        for (tier, policy) in order {
            let missing = tiers[tier].missing;
            if missing {
                diagnostics.push(Diagnostic {
                    policy: policy.id.clone(),
                    field: "spec.tier".into(),
                    message: format!(
                        "tier {:?} does not exist: enforced fail-closed (Deny rules only)",
                        policy.tier
                    ),
                });
            }
            policies.push(builder.prepare(policy, tier, missing, &mut diagnostics));
        }
        let by_id: HashMap<&PolicyId, &Policy> =
            cluster.policies.iter().map(|p| (&p.id, p)).collect();
        let selected = builder.select(&policies, &by_id);
        let pod_node = builder.pod_node;
        Ok(Engine {
            cluster,
            tiers,
            policies,
            selected,
            pod_node,
            diagnostics,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The tiers in evaluation order (built-in, user and missing ones).
    pub fn tiers(&self) -> &[TierInfo] {
        &self.tiers
    }

    /// Fail-closed and other notices about the input.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.cluster
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.cluster.nodes.iter().position(|n| n.name == name)
    }

    /// The policies that select a pod for a direction, in evaluation order.
    pub fn policies_selecting(&self, pod: usize, direction: Direction) -> Vec<&PolicyId> {
        self.selected[dir_index(direction)]
            .get(pod)
            .map(|list| {
                list.iter()
                    .map(|&p| &self.policies[p as usize].id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the connection is allowed (the fast path: no explanation kept).
    pub fn allowed(&self, conn: &Connection) -> bool {
        let (src, dst) = (self.side(conn.src), self.side(conn.dst));
        if self.same_pod(src, dst) || self.same_node(src, dst) {
            return true;
        }
        let egress = match src {
            Side::Pod(p) => self.decide(p, Direction::Egress, dst, conn, None),
            _ => true,
        };
        egress
            && match dst {
                Side::Pod(p) => self.decide(p, Direction::Ingress, src, conn, None),
                _ => true,
            }
    }

    /// The verdict with the whole path of the decision on both sides.
    pub fn explain(&self, conn: &Connection) -> Verdict {
        let (src, dst) = (self.side(conn.src), self.side(conn.dst));
        let side = |local: Side, remote: Side, direction: Direction| {
            if self.same_pod(src, dst) {
                return SideVerdict {
                    allowed: true,
                    decision: Decision::SamePod,
                    path: Vec::new(),
                };
            }
            if self.same_node(src, dst) {
                return SideVerdict {
                    allowed: true,
                    decision: Decision::SameNode,
                    path: Vec::new(),
                };
            }
            match local {
                Side::Pod(p) => {
                    let mut trace = Trace::default();
                    let allowed = self.decide(p, direction, remote, conn, Some(&mut trace));
                    SideVerdict {
                        allowed,
                        decision: trace.decision.unwrap_or(Decision::NotSelected),
                        path: trace.path,
                    }
                }
                _ => SideVerdict {
                    allowed: true,
                    decision: Decision::NotAPod,
                    path: Vec::new(),
                },
            }
        };
        let egress = side(src, dst, Direction::Egress);
        let ingress = side(dst, src, Direction::Ingress);
        Verdict {
            allowed: egress.allowed && ingress.allowed,
            egress,
            ingress,
        }
    }

    fn side(&self, endpoint: Endpoint) -> Side {
        match endpoint {
            Endpoint::Pod(p) => match self.cluster.pods.get(p) {
                Some(pod) if pod.host_network => match self.pod_node.get(p).copied().flatten() {
                    Some(n) => Side::Node(n),
                    // A host-network pod on no known node: nothing to match it by.
                    None => Side::External(IpAddr::from([0, 0, 0, 0])),
                },
                _ => Side::Pod(p),
            },
            Endpoint::Node(n) => Side::Node(n),
            Endpoint::External(ip) => Side::External(ip),
        }
    }

    /// Both sides are the same pod (with its own addresses; a host-network pod is
    /// its node, and a node's traffic to itself never concerns a policy).
    fn same_pod(&self, a: Side, b: Side) -> bool {
        matches!((a, b), (Side::Pod(x), Side::Pod(y)) if x == y)
    }

    fn same_node(&self, a: Side, b: Side) -> bool {
        let pod_on = |p: usize, n: usize| self.pod_node.get(p).copied().flatten() == Some(n);
        match (a, b) {
            (Side::Pod(p), Side::Node(n)) | (Side::Node(n), Side::Pod(p)) => pod_on(p, n),
            _ => false,
        }
    }

    fn address(&self, side: Side, family: Family) -> Option<IpAddr> {
        let of = |ips: &[IpAddr]| ips.iter().copied().find(|ip| Family::of(ip) == family);
        match side {
            Side::Pod(p) => of(&self.cluster.pods[p].ips),
            Side::Node(n) => of(&self.cluster.nodes[n].ips),
            Side::External(ip) => (Family::of(&ip) == family).then_some(ip),
        }
    }

    /// Decides one pod's side: the tiers contract's pseudo-code, literally.
    fn decide(
        &self,
        pod: usize,
        direction: Direction,
        remote: Side,
        conn: &Connection,
        mut trace: Option<&mut Trace>,
    ) -> bool {
        let list = &self.selected[dir_index(direction)][pod];
        if list.is_empty() {
            return true;
        }
        let dst = match direction {
            Direction::Ingress => Side::Pod(pod),
            Direction::Egress => remote,
        };
        let remote_ip = self.address(remote, conn.family);
        let mut start = 0;
        while start < list.len() {
            let tier_index = self.policies[list[start] as usize].tier;
            let end = start
                + list[start..]
                    .iter()
                    .take_while(|&&p| self.policies[p as usize].tier == tier_index)
                    .count();
            let group = &list[start..end];
            start = end;
            let tier = &self.tiers[tier_index];
            let outcome = self.decide_tier(tier, group, direction, remote, remote_ip, dst, conn);
            if let Some(t) = trace.as_deref_mut() {
                t.visit(self, tier, group, &outcome);
            }
            match outcome {
                TierResult::Decided { action, .. } => return action == Action::Accept,
                TierResult::DefaultDeny => return false,
                TierResult::Passed { .. } | TierResult::NoMatch => {}
            }
        }
        if let Some(t) = trace {
            t.decision = Some(Decision::NoTierDecided);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_tier(
        &self,
        tier: &TierInfo,
        group: &[u32],
        direction: Direction,
        remote: Side,
        remote_ip: Option<IpAddr>,
        dst: Side,
        conn: &Connection,
    ) -> TierResult {
        for &p in group {
            let policy = &self.policies[p as usize];
            for rule in policy.rules(direction).unwrap_or_default() {
                if !self.rule_matches(rule, remote, remote_ip, dst, conn) {
                    continue;
                }
                return match rule.action {
                    Action::Pass => TierResult::Passed {
                        policy: p,
                        rule: rule.index,
                    },
                    action => TierResult::Decided {
                        action,
                        policy: p,
                        rule: rule.index,
                    },
                };
            }
        }
        if tier.is_networkpolicy() || tier.default_action == DefaultAction::Deny {
            TierResult::DefaultDeny
        } else {
            TierResult::NoMatch
        }
    }

    fn rule_matches(
        &self,
        rule: &PreparedRule,
        remote: Side,
        remote_ip: Option<IpAddr>,
        dst: Side,
        conn: &Connection,
    ) -> bool {
        !rule.inert
            && self.ports_match(rule.ports.as_deref(), dst, conn)
            && match &rule.peers {
                PeerMatch::Any => true,
                PeerMatch::Some {
                    pods,
                    nodes,
                    blocks,
                } => {
                    (match remote {
                        Side::Pod(p) => pods.iter().any(|s| s.contains(p)),
                        Side::Node(n) => nodes.contains(&n),
                        Side::External(_) => false,
                    }) || remote_ip.is_some_and(|ip| {
                        blocks.iter().any(|(cidr, except)| {
                            cidr.contains(&ip) && !except.iter().any(|x| x.contains(&ip))
                        })
                    })
                }
            }
    }

    fn ports_match(&self, ports: Option<&[PortMatch]>, dst: Side, conn: &Connection) -> bool {
        let Some(ports) = ports else { return true };
        if !conn.protocol.has_ports() {
            return false;
        }
        let dst_pod = match dst {
            Side::Pod(p) => Some(&self.cluster.pods[p]),
            _ => None,
        };
        ports.iter().any(|m| match m {
            PortMatch::AllPorts { protocol } => *protocol == conn.protocol,
            PortMatch::Range {
                protocol,
                start,
                end,
            } => *protocol == conn.protocol && (*start..=*end).contains(&conn.port),
            PortMatch::Named { protocol, name } => {
                protocol.is_none_or(|p| p == conn.protocol)
                    && dst_pod
                        .is_some_and(|pod| pod.named_port(name, conn.protocol) == Some(conn.port))
            }
        })
    }
}

enum TierResult {
    Decided {
        action: Action,
        policy: u32,
        rule: usize,
    },
    Passed {
        policy: u32,
        rule: usize,
    },
    NoMatch,
    DefaultDeny,
}

#[derive(Default)]
struct Trace {
    decision: Option<Decision>,
    path: Vec<TierVisit>,
}

impl Trace {
    fn visit(&mut self, engine: &Engine, tier: &TierInfo, group: &[u32], result: &TierResult) {
        let policies: Vec<PolicyId> = group
            .iter()
            .map(|&p| engine.policies[p as usize].id.clone())
            .collect();
        let rule_name = |p: u32, r: usize| engine.rule_name(p, r);
        let outcome = match result {
            TierResult::Decided {
                action,
                policy,
                rule,
            } => {
                self.decision = Some(Decision::Rule {
                    tier: tier.name.clone(),
                    policy: engine.policies[*policy as usize].id.clone(),
                    rule_index: *rule,
                    rule_name: rule_name(*policy, *rule),
                    action: *action,
                });
                TierOutcome::Decided
            }
            TierResult::Passed { policy, rule } => TierOutcome::Passed {
                policy: engine.policies[*policy as usize].id.clone(),
                rule_index: *rule,
                rule_name: rule_name(*policy, *rule),
            },
            TierResult::NoMatch => TierOutcome::NoMatch,
            TierResult::DefaultDeny => {
                self.decision = Some(if tier.is_networkpolicy() {
                    Decision::NoRuleMatched {
                        tier: tier.name.clone(),
                        policies: policies.clone(),
                    }
                } else {
                    Decision::TierDefault {
                        tier: tier.name.clone(),
                        policies: policies.clone(),
                    }
                });
                TierOutcome::DefaultDeny
            }
        };
        self.path.push(TierVisit {
            tier: tier.name.clone(),
            policies,
            outcome,
        });
    }
}

impl Engine {
    fn rule_name(&self, policy: u32, rule: usize) -> Option<String> {
        let p = &self.policies[policy as usize];
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter_map(|d| p.rules(d))
            .flatten()
            .find(|r| r.index == rule)
            .and_then(|r| r.name.clone())
    }
}

/// Orders the tiers: built-in, user-defined, and those named by policies but
/// defined nowhere (priority 0, fail-closed).
fn order_tiers(cluster: &Cluster) -> Result<Vec<TierInfo>, PolicyError> {
    let mut tiers: BTreeMap<String, TierInfo> = Tier::builtin()
        .into_iter()
        .map(|t| {
            (
                t.name.clone(),
                TierInfo {
                    name: t.name,
                    priority: t.priority,
                    default_action: t.default_action,
                    missing: false,
                },
            )
        })
        .collect();
    for t in &cluster.tiers {
        t.validate()?;
        let info = TierInfo {
            name: t.name.clone(),
            priority: t.priority,
            default_action: t.default_action,
            missing: false,
        };
        if tiers.insert(t.name.clone(), info).is_some() {
            return Err(PolicyError::invalid(
                format!("Tier {}", t.name),
                "metadata.name",
                "duplicate tier",
            ));
        }
    }
    for p in &cluster.policies {
        let np = p.id.kind == PolicyKind::NetworkPolicy;
        if np != (p.tier == TIER_NETWORKPOLICY) {
            return Err(PolicyError::invalid(
                p.id.to_string(),
                "spec.tier",
                "only NetworkPolicies belong to the networkpolicy tier",
            ));
        }
        tiers.entry(p.tier.clone()).or_insert_with(|| TierInfo {
            name: p.tier.clone(),
            priority: 0,
            default_action: DefaultAction::Pass,
            missing: true,
        });
    }
    let mut tiers: Vec<TierInfo> = tiers.into_values().collect();
    tiers.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    Ok(tiers)
}

fn tier_index(tiers: &[TierInfo], name: &str) -> Result<usize, PolicyError> {
    tiers
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| PolicyError::invalid(format!("tier {name}"), "name", "unknown tier"))
}

fn check_unique_policies(policies: &[Policy]) -> Result<(), PolicyError> {
    let mut seen = std::collections::HashSet::new();
    for p in policies {
        if !seen.insert(&p.id) {
            return Err(PolicyError::invalid(
                p.id.to_string(),
                "metadata.name",
                "duplicate policy",
            ));
        }
    }
    Ok(())
}

/// Resolves selectors against the cluster, caching each distinct one.
struct Builder<'a> {
    cluster: &'a Cluster,
    /// Namespace name → index; pods of unknown namespaces get an unlabelled one.
    ns_index: HashMap<&'a str, usize>,
    ns_labels: Vec<Labels>,
    /// Per namespace, its pods (host-network ones excluded) in ascending order.
    ns_pods: Vec<Vec<u32>>,
    pod_node: Vec<Option<usize>>,
    peer_cache: HashMap<(NamespaceMatch, LabelSelector), std::sync::Arc<PodSet>>,
}

impl<'a> Builder<'a> {
    fn new(cluster: &'a Cluster) -> Self {
        let mut ns_index: HashMap<&str, usize> = HashMap::new();
        let mut ns_labels = Vec::new();
        for ns in &cluster.namespaces {
            ns_index.entry(&ns.name).or_insert_with(|| {
                ns_labels.push(ns.labels.clone());
                ns_labels.len() - 1
            });
        }
        let mut pod_ns = Vec::with_capacity(cluster.pods.len());
        for pod in &cluster.pods {
            let i = *ns_index.entry(&pod.namespace).or_insert_with(|| {
                ns_labels.push(Labels::new());
                ns_labels.len() - 1
            });
            pod_ns.push(i);
        }
        let mut ns_pods = vec![Vec::new(); ns_labels.len()];
        for (i, pod) in cluster.pods.iter().enumerate() {
            if !pod.host_network {
                ns_pods[pod_ns[i]].push(i as u32);
            }
        }
        let node_index: HashMap<&str, usize> = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let pod_node = cluster
            .pods
            .iter()
            .map(|p| p.node.as_deref().and_then(|n| node_index.get(n).copied()))
            .collect();
        Builder {
            cluster,
            ns_index,
            ns_labels,
            ns_pods,
            pod_node,
            peer_cache: HashMap::new(),
        }
    }

    fn namespaces_matching(&self, sel: &LabelSelector) -> impl Iterator<Item = usize> + '_ {
        let sel = sel.clone();
        (0..self.ns_labels.len()).filter(move |&i| sel.matches(&self.ns_labels[i]))
    }

    /// Pods (never host-network) of the namespaces that match, whose labels match.
    fn pods_in(&self, namespaces: &[usize], pods: &LabelSelector) -> Vec<u32> {
        let mut out: Vec<u32> = namespaces
            .iter()
            .flat_map(|&ns| self.ns_pods[ns].iter().copied())
            .filter(|&p| pods.matches(&self.cluster.pods[p as usize].labels))
            .collect();
        out.sort_unstable();
        out
    }

    fn namespace_list(&self, m: &NamespaceMatch) -> Vec<usize> {
        match m {
            NamespaceMatch::Named(name) => self
                .ns_index
                .get(name.as_str())
                .copied()
                .into_iter()
                .collect(),
            NamespaceMatch::Selector(sel) => self.namespaces_matching(sel).collect(),
        }
    }

    fn peer_pods(
        &mut self,
        namespaces: &NamespaceMatch,
        pods: &LabelSelector,
    ) -> std::sync::Arc<PodSet> {
        let key = (namespaces.clone(), pods.clone());
        if let Some(set) = self.peer_cache.get(&key) {
            return set.clone();
        }
        let list = self.pods_in(&self.namespace_list(namespaces), pods);
        let set = std::sync::Arc::new(PodSet::from_sorted(list, self.cluster.pods.len()));
        self.peer_cache.insert(key, set.clone());
        set
    }

    fn prepare(
        &mut self,
        policy: &Policy,
        tier: usize,
        tier_missing: bool,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> PreparedPolicy {
        let mut prepare_dir = |direction: Direction| {
            policy.rules(direction).map(|rules| {
                rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        self.prepare_rule(policy, direction, i, r, tier_missing, diagnostics)
                    })
                    .collect()
            })
        };
        let ingress = prepare_dir(Direction::Ingress);
        let egress = prepare_dir(Direction::Egress);
        PreparedPolicy {
            id: policy.id.clone(),
            tier,
            ingress,
            egress,
        }
    }

    fn prepare_rule(
        &mut self,
        policy: &Policy,
        direction: Direction,
        index: usize,
        rule: &Rule,
        tier_missing: bool,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> PreparedRule {
        let unsupported: Vec<&str> = rule
            .peers
            .iter()
            .flatten()
            .filter_map(|p| match p {
                Peer::Unsupported { field } => Some(field.as_str()),
                _ => None,
            })
            .collect();
        let mut prepared = PreparedRule {
            index,
            name: rule.name.clone(),
            action: rule.action,
            peers: PeerMatch::Any,
            ports: rule.ports.clone(),
            inert: false,
        };
        let field = format!("spec.{}[{index}]", direction.as_str());
        if !unsupported.is_empty() {
            diagnostics.push(Diagnostic {
                policy: policy.id.clone(),
                field: field.clone(),
                message: format!(
                    "unsupported peer ({}): {}",
                    unsupported.join(", "),
                    if rule.action == Action::Accept {
                        "the peer matches nothing (fail-closed)"
                    } else {
                        "the rule denies all traffic in its direction (fail-closed)"
                    }
                ),
            });
            if rule.action != Action::Accept {
                // Upstream: a Deny or Pass rule with a peer that cannot be enforced
                // denies everything in its direction, whatever its ports say.
                prepared.action = Action::Deny;
                prepared.ports = None;
                return prepared;
            }
        }
        if tier_missing && prepared.action != Action::Deny {
            prepared.inert = true;
        }
        if let Some(peers) = &rule.peers {
            prepared.peers = self.prepare_peers(peers);
        }
        prepared
    }

    fn prepare_peers(&mut self, peers: &[Peer]) -> PeerMatch {
        let mut pods = Vec::new();
        let mut nodes = Vec::new();
        let mut blocks = Vec::new();
        for peer in peers {
            match peer {
                Peer::Pods {
                    namespaces,
                    pods: sel,
                } => pods.push(self.peer_pods(namespaces, sel)),
                Peer::IpBlock { cidr, except } => blocks.push((*cidr, except.clone())),
                Peer::Nodes(sel) => nodes.extend(
                    self.cluster
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| sel.matches(&n.labels))
                        .map(|(i, _)| i),
                ),
                // Fail-closed: matches nothing.
                Peer::Unsupported { .. } => {}
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        PeerMatch::Some {
            pods,
            nodes,
            blocks,
        }
    }

    /// For every pod and direction, the policies that select it, in order.
    fn select(
        &mut self,
        policies: &[PreparedPolicy],
        by_id: &HashMap<&PolicyId, &Policy>,
    ) -> [Vec<Vec<u32>>; 2] {
        let mut selected = [
            vec![Vec::new(); self.cluster.pods.len()],
            vec![Vec::new(); self.cluster.pods.len()],
        ];
        for (i, prepared) in policies.iter().enumerate() {
            let Some(policy) = by_id.get(&prepared.id) else {
                continue;
            };
            let subjects = self.subject_pods(&policy.subject);
            for (d, direction) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                if prepared.rules(direction).is_some() {
                    for &p in &subjects {
                        selected[d][p as usize].push(i as u32);
                    }
                }
            }
        }
        selected
    }

    fn subject_pods(&self, subject: &Subject) -> Vec<u32> {
        match subject {
            Subject::Namespaced { namespace, pods } => self.pods_in(
                &self.namespace_list(&NamespaceMatch::Named(namespace.clone())),
                pods,
            ),
            Subject::Namespaces(sel) => {
                let ns: Vec<usize> = self.namespaces_matching(sel).collect();
                self.pods_in(&ns, &LabelSelector::everything())
            }
            Subject::Pods { namespaces, pods } => {
                let ns: Vec<usize> = self.namespaces_matching(namespaces).collect();
                self.pods_in(&ns, pods)
            }
        }
    }
}
