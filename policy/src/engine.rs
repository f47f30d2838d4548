//! Evaluation: is a connection allowed, and why.
//!
//! [`Engine::new`] indexes a [`Cluster`] once: every policy's subject is resolved to
//! the pods it selects (so each pod knows, per direction, its policies in evaluation
//! order), and every pod peer to a [`PodSet`](crate::podset::PodSet). A verdict is then a walk over the few
//! policies of two pods, with set lookups for peers: no label matching per query.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::address::{AddressBook, AddressConflict};
use crate::lookup::Lookup;
use crate::model::*;
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
        /// Indices into the engine's peer sets.
        pods: Vec<usize>,
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
    pub subject: Subject,
    pub tier: usize,
    pub ingress: Option<Vec<PreparedRule>>,
    pub egress: Option<Vec<PreparedRule>>,
    /// The policy's own audit setting (`None`: the operator's default).
    pub audit: Option<AuditMode>,
    /// Hash of the id that names the policy's sets (computed once, not per node).
    pub set_key: u64,
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
    pub(crate) lookup: Lookup,
    /// One owner per pod address (the others are as if pending for it).
    pub(crate) addresses: AddressBook,
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
        let mut lookup = Lookup::new(&cluster);
        let addresses = AddressBook::new(&cluster.pods);
        let mut diagnostics = Vec::new();
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
        let mut policies: Vec<PreparedPolicy> = Vec::with_capacity(order.len());
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
            let mut prepare = Prepare {
                cluster: &cluster,
                lookup: &mut lookup,
                user: policies.len() as u32,
            };
            policies.push(prepare.policy(policy, tier, missing, &mut diagnostics));
        }
        lookup.finish(&policies);
        report_priority_ties(&policies, &tiers, &cluster, &mut diagnostics);
        let mut selected = [
            vec![Vec::new(); cluster.pods.len()],
            vec![Vec::new(); cluster.pods.len()],
        ];
        for (i, policy) in policies.iter().enumerate() {
            let subjects = lookup.subject_pods(&cluster, &policy.subject);
            for (d, direction) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                if policy.rules(direction).is_some() {
                    for &p in &subjects {
                        selected[d][p as usize].push(i as u32);
                    }
                }
            }
        }
        Ok(Engine {
            cluster,
            tiers,
            policies,
            selected,
            lookup,
            addresses,
            diagnostics,
        })
    }

    /// Adds or changes one pod in place, when that can be done without a rebuild:
    /// its namespace and node are known and its node, namespace, host-network flag
    /// and container ports are unchanged. Returns the indices of the nodes whose
    /// compiled rules may have changed, or `None` (and changes nothing) when the
    /// cluster must be re-indexed instead.
    pub(crate) fn upsert_pod(&mut self, pod: Pod) -> Option<BTreeSet<usize>> {
        let ns = *self.lookup.ns_index.get(&pod.namespace)?;
        if let Some(node) = &pod.node {
            self.lookup.node_index.get(node)?;
        }
        let slot = self
            .lookup
            .pod_slots
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .copied();
        let (p, labels_changed, claim_changed) = match slot {
            Some(p) => {
                let old = &self.cluster.pods[p];
                if old.node != pod.node
                    || old.host_network != pod.host_network
                    || old.ports != pod.ports
                {
                    return None;
                }
                let claim_changed = old.ips != pod.ips
                    || old.terminating != pod.terminating
                    || old.created != pod.created;
                (p, old.labels != pod.labels, claim_changed)
            }
            None => {
                // Appended as a pod with no labels, sets, selections or addresses yet.
                let p = self.lookup.push_pod(&pod);
                self.addresses.push_pod();
                self.cluster.pods.push(Pod {
                    ips: Vec::new(),
                    ..pod.clone()
                });
                self.selected[0].push(Vec::new());
                self.selected[1].push(Vec::new());
                (p, true, true)
            }
        };
        let mut nodes = BTreeSet::new();
        if !labels_changed && !claim_changed {
            return Some(nodes);
        }
        let old_ips = std::mem::replace(&mut self.cluster.pods[p], pod).ips;
        // Addresses first: whether the pod (and others claiming its addresses) own them.
        let moved = if claim_changed {
            self.addresses.update(&self.cluster.pods, p, &old_ips)
        } else {
            Vec::new()
        };
        let ips_changed = moved.contains(&(p as u32));
        let pod = &self.cluster.pods[p];
        let node = self.lookup.pod_node[p];
        // The sets that hold (or now hold) the pod change their members or addresses.
        let mut changed_sets = Vec::new();
        if !pod.host_network {
            for &s in &self.lookup.ns_peer_sets[ns] {
                let member = self.lookup.peer_keys[s].1.matches(&pod.labels);
                let was = slot.is_some() && self.lookup.peer_sets[s].contains(p);
                if member != was {
                    self.lookup.peer_sets[s].set(p, member);
                }
                if member != was || (member && ips_changed) {
                    changed_sets.push(s);
                }
            }
        }
        // The pod's own policies, per direction, in evaluation order.
        let mut candidates: Vec<u32> = self.lookup.ns_policies[ns]
            .iter()
            .chain(&self.lookup.cluster_policies)
            .copied()
            .collect();
        candidates.sort_unstable();
        for (d, direction) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let list: Vec<u32> = if pod.host_network {
                Vec::new()
            } else {
                candidates
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let policy = &self.policies[i as usize];
                        policy.rules(direction).is_some()
                            && self
                                .lookup
                                .subject_selects(&policy.subject, ns, &pod.labels)
                    })
                    .collect()
            };
            if self.selected[d][p] != list {
                self.selected[d][p] = list;
                nodes.extend(node);
            }
        }
        if ips_changed {
            nodes.extend(node);
        }
        // Pods that won or lost an address to this one: their node enforces them
        // differently and the sets holding them change addresses.
        for &q in moved.iter().filter(|&&q| q as usize != p) {
            let q = q as usize;
            nodes.extend(self.lookup.pod_node[q]);
            let q_ns = self.lookup.pod_ns[q];
            changed_sets.extend(
                self.lookup.ns_peer_sets[q_ns]
                    .iter()
                    .copied()
                    .filter(|&s| self.lookup.peer_sets[s].contains(q)),
            );
        }
        let mut touched: BTreeSet<u32> = changed_sets
            .iter()
            .flat_map(|&s| self.lookup.peer_users[s].iter().copied())
            .collect();
        if !moved.is_empty() || labels_changed {
            touched.extend(self.lookup.named_egress.iter().copied());
        }
        for policy in touched {
            nodes.extend(
                self.lookup
                    .policy_nodes(&self.cluster, &self.policies[policy as usize]),
            );
        }
        Some(nodes)
    }

    /// Gives the cluster back (to rebuild after changes the index cannot apply in place).
    pub fn into_cluster(self) -> Cluster {
        self.cluster
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

    /// A pod's address of a family, unless another pod claiming it owns it (see
    /// [`crate::address`]): what the dataplane enforces for that pod.
    pub fn pod_ip(&self, pod: usize, family: Family) -> Option<IpAddr> {
        self.addresses.ip_of(&self.cluster.pods, pod, family)
    }

    /// Whether a pod owns an address of either family (a pod without one compiles to nothing).
    pub fn pod_has_address(&self, pod: usize) -> bool {
        self.addresses.has_address(&self.cluster.pods, pod)
    }

    /// The addresses a pod owns (its claimed ones minus those another pod owns).
    pub fn pod_ips(&self, pod: usize) -> Vec<IpAddr> {
        self.addresses.ips_of(&self.cluster.pods, pod)
    }

    /// Every owned pod address with its pod (host-network pods have none).
    pub fn owned_addresses(&self) -> impl Iterator<Item = (IpAddr, &Pod)> + '_ {
        self.cluster
            .pods
            .iter()
            .enumerate()
            .flat_map(move |(p, pod)| {
                pod.ips
                    .iter()
                    .filter(move |ip| self.addresses.owns(p, ip))
                    .map(move |ip| (*ip, pod))
            })
    }

    /// Addresses claimed by several pods, with the owner and the losers of each
    /// (a conflict to report loudly: it means a pod the watch has not seen go yet).
    pub fn address_conflicts(&self) -> Vec<AddressConflict> {
        self.addresses.conflicts(&self.cluster.pods)
    }

    /// Tiers that share a priority (ordered by name; the contract wants it reported).
    pub fn tier_ties(&self) -> Vec<(i32, Vec<&str>)> {
        let mut ties: Vec<(i32, Vec<&str>)> = Vec::new();
        for t in &self.tiers {
            match ties.last_mut() {
                Some((p, names)) if *p == t.priority => names.push(&t.name),
                _ => ties.push((t.priority, vec![&t.name])),
            }
        }
        ties.retain(|(_, names)| names.len() > 1);
        ties
    }

    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.lookup
            .pod_slots
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.lookup.node_index.get(name).copied()
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
                Some(pod) if pod.host_network => {
                    match self.lookup.pod_node.get(p).copied().flatten() {
                        Some(n) => Side::Node(n),
                        // A host-network pod on no known node: nothing to match it by.
                        None => Side::External(IpAddr::from([0, 0, 0, 0])),
                    }
                }
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
        let pod_on = |p: usize, n: usize| self.lookup.pod_node.get(p).copied().flatten() == Some(n);
        match (a, b) {
            (Side::Pod(p), Side::Node(n)) | (Side::Node(n), Side::Pod(p)) => pod_on(p, n),
            _ => false,
        }
    }

    fn address(&self, side: Side, family: Family) -> Option<IpAddr> {
        let of = |ips: &[IpAddr]| ips.iter().copied().find(|ip| Family::of(ip) == family);
        match side {
            Side::Pod(p) => self.addresses.ip_of(&self.cluster.pods, p, family),
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
                        Side::Pod(p) => pods.iter().any(|&s| self.lookup.peer_sets[s].contains(p)),
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
        p.check_tier()?;
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

/// Policies of one cluster tier with equal priority are ordered by kind, then
/// name: deterministic, but upstream leaves it undefined, so it is reported.
fn report_priority_ties(
    policies: &[PreparedPolicy],
    tiers: &[TierInfo],
    cluster: &Cluster,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let priority: HashMap<&PolicyId, i32> = cluster
        .policies
        .iter()
        .map(|p| (&p.id, p.priority))
        .collect();
    let key = |p: &PreparedPolicy| (p.tier, priority.get(&p.id).copied().unwrap_or_default());
    for group in policies.chunk_by(|a, b| key(a) == key(b)) {
        if group.len() < 2 || tiers[group[0].tier].is_networkpolicy() {
            continue;
        }
        for p in group {
            let others: Vec<String> = group
                .iter()
                .filter(|o| o.id != p.id)
                .map(|o| o.id.to_string())
                .collect();
            diagnostics.push(Diagnostic {
                policy: p.id.clone(),
                field: "spec.priority".into(),
                message: format!(
                    "priority {} in tier {} is shared with {}: ordered by kind, then name",
                    key(p).1,
                    tiers[p.tier].name,
                    others.join(", ")
                ),
            });
        }
    }
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

/// Prepares policies: fail-closed applied, peers resolved to sets.
struct Prepare<'a> {
    cluster: &'a Cluster,
    lookup: &'a mut Lookup,
    /// The index the policy being prepared will have.
    user: u32,
}

impl Prepare<'_> {
    fn policy(
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
            subject: policy.subject.clone(),
            tier,
            ingress,
            egress,
            audit: policy.audit,
            set_key: crate::compile::policy_set_key(&policy.id),
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
                } => pods.push(self.lookup.peer_set(
                    self.cluster,
                    &(namespaces.clone(), sel.clone()),
                    self.user,
                )),
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
}
