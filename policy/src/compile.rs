//! Compile: the engine's index, cut down to what one node enforces.
//!
//! For every local pod with an address, the policies that apply to it per direction
//! (grouped by tier, in evaluation order); for every such policy its rules, with
//! peers as address sets and ports resolved. Named ports become concrete numbers:
//! in egress rules on the destination pods (grouping them by the number the name
//! resolves to), in ingress rules on the local pods (restricting the match to the
//! local pods that resolve it to that number).

use std::collections::BTreeMap;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::compiled::*;
use crate::engine::{Engine, PeerMatch, PreparedRule};
use crate::model::{Direction, Family, PolicyId, PortMatch, Protocol};

/// Compiles the rule set of one node.
pub fn compile_node(engine: &Engine, node: &str, version: u64) -> NodeRuleSet {
    let cluster = engine.cluster();
    let node_ips = cluster
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    let local: Vec<usize> = engine
        .node_index(node)
        .map(|n| engine.lookup.node_pods[n].as_slice())
        .unwrap_or_default()
        .iter()
        .map(|&p| p as usize)
        .filter(|&p| !cluster.pods[p].host_network && engine.pod_has_address(p))
        .collect();
    let mut c = Compiler {
        engine,
        out: NodeRuleSet {
            format: FORMAT_VERSION,
            node: node.to_string(),
            version,
            node_ips,
            ..NodeRuleSet::default()
        },
        tier_map: BTreeMap::new(),
        policy_map: FxHashMap::default(),
    };
    // Which local pods each policy selects, per direction (ingress named ports need it).
    let mut selects: FxHashMap<(u32, Direction), Vec<usize>> = FxHashMap::default();
    for &pod in &local {
        for direction in [Direction::Ingress, Direction::Egress] {
            for &p in engine.selected[dir(direction)][pod].iter() {
                selects.entry((p, direction)).or_default().push(pod);
            }
        }
    }
    let mut pods = Vec::with_capacity(local.len());
    for &pod in &local {
        let p = &cluster.pods[pod];
        let ingress = c.tier_policies(pod, Direction::Ingress, &selects);
        let egress = c.tier_policies(pod, Direction::Egress, &selects);
        pods.push(LocalPod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ips: engine.pod_ips(pod),
            ingress,
            egress,
        });
    }
    c.out.pods = pods;
    c.order_tiers();
    c.out
}

fn dir(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

struct Compiler<'a> {
    engine: &'a Engine,
    out: NodeRuleSet,
    /// Engine tier index → compiled tier index.
    tier_map: BTreeMap<usize, usize>,
    /// Engine policy index → compiled policy index.
    policy_map: FxHashMap<u32, usize>,
}

impl Compiler<'_> {
    fn tier_policies(
        &mut self,
        pod: usize,
        direction: Direction,
        selects: &FxHashMap<(u32, Direction), Vec<usize>>,
    ) -> Vec<TierPolicies> {
        let mut groups: Vec<TierPolicies> = Vec::new();
        for &p in &self.engine.selected[dir(direction)][pod] {
            let policy = self.compiled_policy(p, selects);
            let tier = self.out.policies[policy].tier;
            match groups.last_mut() {
                Some(g) if g.tier == tier => g.policies.push(policy),
                _ => groups.push(TierPolicies {
                    tier,
                    policies: vec![policy],
                }),
            }
        }
        groups
    }

    fn compiled_tier(&mut self, engine_tier: usize) -> usize {
        if let Some(&t) = self.tier_map.get(&engine_tier) {
            return t;
        }
        let info = &self.engine.tiers()[engine_tier];
        let tier = CompiledTier {
            name: info.name.clone(),
            networkpolicy: info.is_networkpolicy(),
            default_action: info.default_action,
        };
        self.out.tiers.push(tier);
        let t = self.out.tiers.len() - 1;
        self.tier_map.insert(engine_tier, t);
        t
    }

    /// Renumbers the tiers into evaluation order (engine tiers are ordered).
    fn order_tiers(&mut self) {
        let order: Vec<usize> = self.tier_map.values().copied().collect();
        let rank: BTreeMap<usize, usize> = order
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new))
            .collect();
        let tiers = std::mem::take(&mut self.out.tiers);
        self.out.tiers = order.iter().map(|&old| tiers[old].clone()).collect();
        for p in &mut self.out.policies {
            p.tier = rank[&p.tier];
        }
        for pod in &mut self.out.pods {
            for g in pod.ingress.iter_mut().chain(pod.egress.iter_mut()) {
                g.tier = rank[&g.tier];
            }
        }
    }

    fn compiled_policy(
        &mut self,
        p: u32,
        selects: &FxHashMap<(u32, Direction), Vec<usize>>,
    ) -> usize {
        if let Some(&i) = self.policy_map.get(&p) {
            return i;
        }
        let prepared = &self.engine.policies[p as usize];
        let tier = self.compiled_tier(prepared.tier);
        let policy_key = SetKey(prepared.set_key);
        let mut rules = |direction: Direction| -> Vec<CompiledRule> {
            let local = selects
                .get(&(p, direction))
                .map(Vec::as_slice)
                .unwrap_or_default();
            prepared
                .rules(direction)
                .unwrap_or_default()
                .iter()
                .map(|r| self.rule(policy_key, direction, r, local))
                .collect()
        };
        let ingress = rules(Direction::Ingress);
        let egress = rules(Direction::Egress);
        let audit = prepared.audit;
        self.out.policies.push(CompiledPolicy {
            id: prepared.id.clone(),
            tier,
            ingress,
            egress,
            audit,
        });
        let i = self.out.policies.len() - 1;
        self.policy_map.insert(p, i);
        i
    }

    fn rule(
        &mut self,
        policy: SetKey,
        direction: Direction,
        rule: &PreparedRule,
        local: &[usize],
    ) -> CompiledRule {
        let mut compiled = CompiledRule {
            index: rule.index,
            name: rule.name.clone(),
            action: rule.action,
            matches: Vec::new(),
        };
        if rule.inert {
            return compiled;
        }
        let key = policy.with(direction as u64).with(rule.index as u64);
        let peers = self.peer_sets(key, &rule.peers);
        let Some(ports) = &rule.ports else {
            compiled.matches.push(RuleMatch {
                peers,
                ports: None,
                local: None,
            });
            return compiled;
        };
        let plain: Vec<PortRange> = ports.iter().filter_map(plain_range).collect();
        if !plain.is_empty() {
            compiled.matches.push(RuleMatch {
                peers: peers.clone(),
                ports: Some(plain),
                local: None,
            });
        }
        for (n, m) in ports.iter().enumerate() {
            let PortMatch::Named { protocol, name } = m else {
                continue;
            };
            let key = key.with(TAG_NAMED).with(n as u64);
            match direction {
                Direction::Ingress => {
                    self.named_ingress(key, &peers, *protocol, name, local, &mut compiled)
                }
                Direction::Egress => {
                    self.named_egress(key, &rule.peers, *protocol, name, &mut compiled)
                }
            }
        }
        compiled
    }

    /// Ingress named port: the local pods that have it, grouped by the number.
    fn named_ingress(
        &mut self,
        key: SetKey,
        peers: &Option<Vec<usize>>,
        protocol: Option<Protocol>,
        name: &str,
        local: &[usize],
        out: &mut CompiledRule,
    ) {
        let groups = self.group_by_named_port(local.iter().copied(), protocol, name);
        for ((proto, port), pods) in groups {
            for family in [Family::IPv4, Family::IPv6] {
                let ips: Vec<IpNet> = pods
                    .iter()
                    .filter_map(|&p| self.pod_net(p, family))
                    .collect();
                if ips.is_empty() {
                    continue;
                }
                let set = self.add_set(
                    key.with(TAG_LOCAL)
                        .with(proto as u64)
                        .with(u64::from(port))
                        .with(family as u64),
                    family,
                    ips,
                    Vec::new(),
                );
                out.matches.push(RuleMatch {
                    peers: peers.clone(),
                    ports: Some(vec![PortRange {
                        protocol: proto,
                        start: port,
                        end: port,
                    }]),
                    local: Some(set),
                });
            }
        }
    }

    /// Egress named port: the destination pods the peers match that have it,
    /// grouped by the number it resolves to on each.
    fn named_egress(
        &mut self,
        key: SetKey,
        peers: &PeerMatch,
        protocol: Option<Protocol>,
        name: &str,
        out: &mut CompiledRule,
    ) {
        let cluster = self.engine.cluster();
        let candidates: Vec<usize> = (0..cluster.pods.len())
            .filter(|&p| !cluster.pods[p].host_network && self.peer_has_pod(peers, p))
            .collect();
        let groups = self.group_by_named_port(candidates.into_iter(), protocol, name);
        for ((proto, port), pods) in groups {
            let mut sets = Vec::new();
            for family in [Family::IPv4, Family::IPv6] {
                let ips: Vec<IpNet> = pods
                    .iter()
                    .filter(|&&p| self.peer_has_pod_in(peers, p, family))
                    .filter_map(|&p| self.pod_net(p, family))
                    .collect();
                if !ips.is_empty() {
                    sets.push(
                        self.add_set(
                            key.with(proto as u64)
                                .with(u64::from(port))
                                .with(family as u64),
                            family,
                            ips,
                            Vec::new(),
                        ),
                    );
                }
            }
            out.matches.push(RuleMatch {
                peers: Some(sets),
                ports: Some(vec![PortRange {
                    protocol: proto,
                    start: port,
                    end: port,
                }]),
                local: None,
            });
        }
    }

    fn group_by_named_port(
        &self,
        pods: impl Iterator<Item = usize>,
        protocol: Option<Protocol>,
        name: &str,
    ) -> BTreeMap<(Protocol, u16), Vec<usize>> {
        let cluster = self.engine.cluster();
        let mut groups: BTreeMap<(Protocol, u16), Vec<usize>> = BTreeMap::new();
        for p in pods {
            let pod = &cluster.pods[p];
            if pod.host_network {
                continue;
            }
            for cp in &pod.ports {
                if cp.name.as_deref() == Some(name) && protocol.is_none_or(|pr| pr == cp.protocol) {
                    groups.entry((cp.protocol, cp.port)).or_default().push(p);
                }
            }
        }
        groups
    }

    /// Whether the peers match a pod by any of its addresses.
    fn peer_has_pod(&self, peers: &PeerMatch, pod: usize) -> bool {
        [Family::IPv4, Family::IPv6]
            .into_iter()
            .any(|f| self.peer_has_pod_in(peers, pod, f))
    }

    /// Whether the peers match a pod's address of one family.
    fn peer_has_pod_in(&self, peers: &PeerMatch, pod: usize, family: Family) -> bool {
        let Some(ip) = self.engine.pod_ip(pod, family) else {
            return false;
        };
        match peers {
            PeerMatch::Any => true,
            PeerMatch::Some { pods, blocks, .. } => {
                pods.iter()
                    .any(|&s| self.engine.lookup.peer_sets[s].contains(pod))
                    || blocks.iter().any(|(cidr, except)| {
                        cidr.contains(&ip) && !except.iter().any(|x| x.contains(&ip))
                    })
            }
        }
    }

    fn pod_net(&self, pod: usize, family: Family) -> Option<IpNet> {
        self.engine.pod_ip(pod, family).map(IpNet::from)
    }

    /// The address sets of a rule's peers: one for the pods and nodes it matches,
    /// per family, and one per ipBlock (its `except` as exceptions).
    fn peer_sets(&mut self, key: SetKey, peers: &PeerMatch) -> Option<Vec<usize>> {
        let PeerMatch::Some {
            pods,
            nodes,
            blocks,
        } = peers
        else {
            return None;
        };
        let cluster = self.engine.cluster();
        let peer_sets = &self.engine.lookup.peer_sets;
        let mut members: Vec<usize> =
            Vec::with_capacity(pods.iter().map(|&set| peer_sets[set].len()).sum());
        for &set in pods {
            members.extend(peer_sets[set].iter());
        }
        if pods.len() > 1 {
            members.sort_unstable();
            members.dedup();
        }
        let mut sets = Vec::new();
        for family in [Family::IPv4, Family::IPv6] {
            let mut ips: Vec<IpNet> = Vec::with_capacity(members.len());
            ips.extend(members.iter().filter_map(|&p| self.pod_net(p, family)));
            ips.extend(
                nodes
                    .iter()
                    .flat_map(|&n| cluster.nodes[n].ips.iter())
                    .filter(|ip| Family::of(ip) == family)
                    .map(|&ip| IpNet::from(ip)),
            );
            if !ips.is_empty() {
                sets.push(self.add_set(
                    key.with(TAG_ADDRS).with(family as u64),
                    family,
                    ips,
                    Vec::new(),
                ));
            }
        }
        for (b, (cidr, except)) in blocks.iter().enumerate() {
            let family = match cidr {
                IpNet::V4(_) => Family::IPv4,
                IpNet::V6(_) => Family::IPv6,
            };
            let except: Vec<IpNet> = except
                .iter()
                .filter(|x| {
                    matches!(
                        (x, cidr),
                        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
                    )
                })
                .copied()
                .collect();
            sets.push(self.add_set(
                key.with(TAG_BLOCK).with(b as u64),
                family,
                vec![*cidr],
                except,
            ));
        }
        Some(sets)
    }

    fn add_set(
        &mut self,
        key: SetKey,
        family: Family,
        mut entries: Vec<IpNet>,
        mut except: Vec<IpNet>,
    ) -> usize {
        entries.sort();
        entries.dedup();
        except.sort();
        except.dedup();
        let name = format!(
            "PAL-{}{:016x}",
            if family == Family::IPv4 { '4' } else { '6' },
            key.0
        );
        self.out.sets.push(AddressSet {
            name,
            family,
            entries,
            except,
        });
        self.out.sets.len() - 1
    }
}

/// A port match that needs no destination pod to resolve.
fn plain_range(m: &PortMatch) -> Option<PortRange> {
    match m {
        PortMatch::AllPorts { protocol } => Some(PortRange {
            protocol: *protocol,
            start: 0,
            end: u16::MAX,
        }),
        PortMatch::Range {
            protocol,
            start,
            end,
        } => Some(PortRange {
            protocol: *protocol,
            start: *start,
            end: *end,
        }),
        PortMatch::Named { .. } => None,
    }
}

/// What a set stands for (policy, direction, rule, peer, ...), hashed with FNV-1a:
/// stable across runs and versions, so a set keeps its name while its members change.
#[derive(Clone, Copy, Debug)]
struct SetKey(u64);

const TAG_NAMED: u64 = 1;
const TAG_LOCAL: u64 = 2;
const TAG_ADDRS: u64 = 3;
const TAG_BLOCK: u64 = 4;

/// The key a policy's sets are named from: its id as text, hashed.
pub(crate) fn policy_set_key(id: &PolicyId) -> u64 {
    fnv1a(0xcbf2_9ce4_8422_2325, id.to_string().as_bytes())
}

impl SetKey {
    fn with(self, n: u64) -> SetKey {
        SetKey(fnv1a(self.0, &n.to_le_bytes()))
    }
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
