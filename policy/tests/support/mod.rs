//! Builders for engine tests and benchmarks (`mk_*`, as in linkerd's policy controller).
#![allow(dead_code)]

use std::net::IpAddr;

use palisade_policy::engine::Endpoint;
use palisade_policy::model::*;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

pub fn mk_ns(name: &str, extra: &[(&str, &str)]) -> Namespace {
    let mut l = labels(extra);
    l.insert("kubernetes.io/metadata.name".into(), name.into());
    Namespace {
        name: name.into(),
        labels: l,
    }
}

pub fn standard_ports() -> Vec<ContainerPort> {
    let mut ports = Vec::new();
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        for port in [80, 81] {
            ports.push(ContainerPort {
                name: Some(format!("serve-{port}-{}", proto.as_str().to_lowercase())),
                port,
                protocol: proto,
            });
        }
    }
    ports
}

pub fn mk_pod(ns: &str, name: &str, ip: &str, node: &str, l: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(l),
        ips: vec![ip.parse::<IpAddr>().expect("test address")],
        node: Some(node.into()),
        terminating: false,
        created: None,
        host_network: false,
        ports: standard_ports(),
    }
}

pub fn mk_node(name: &str, ips: &[&str]) -> Node {
    Node {
        name: name.into(),
        labels: labels(&[("kubernetes.io/hostname", name)]),
        ips: ips
            .iter()
            .map(|i| i.parse().expect("test address"))
            .collect(),
    }
}

pub fn np_id(ns: &str, name: &str) -> PolicyId {
    PolicyId {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(ns.into()),
        name: name.into(),
    }
}

/// A NetworkPolicy: `ingress`/`egress` `Some` when the direction is in policyTypes.
pub fn mk_np(
    ns: &str,
    name: &str,
    pods: LabelSelector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> Policy {
    Policy {
        id: np_id(ns, name),
        tier: TIER_NETWORKPOLICY.into(),
        priority: 0,
        subject: Subject::Namespaced {
            namespace: ns.into(),
            pods,
        },
        ingress,
        egress,
        audit: None,
    }
}

pub fn allow(peers: Option<Vec<Peer>>, ports: Option<Vec<PortMatch>>) -> Rule {
    Rule {
        name: None,
        action: Action::Accept,
        peers,
        ports,
    }
}

pub fn pods_peer(ns: Option<LabelSelector>, own_ns: &str, pods: LabelSelector) -> Peer {
    Peer::Pods {
        namespaces: match ns {
            Some(s) => NamespaceMatch::Selector(s),
            None => NamespaceMatch::Named(own_ns.into()),
        },
        pods,
    }
}

pub fn tcp(port: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Tcp,
        start: port,
        end: port,
    }
}

/// A deterministic pseudo-random generator (xorshift), so fixtures need no crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A large cluster: `pods` pods over `namespaces` namespaces and `nodes` nodes,
/// `policies` NetworkPolicies spread over the namespaces, mixing every peer and
/// port kind.
pub fn large_cluster(
    namespaces: usize,
    pods: usize,
    policies: usize,
    nodes: usize,
    seed: u64,
) -> Cluster {
    let mut rng = Rng(seed | 1);
    let apps = [
        "web", "api", "db", "cache", "worker", "auth", "search", "queue",
    ];
    let mut cluster = Cluster::default();
    for n in 0..nodes {
        cluster.nodes.push(mk_node(
            &format!("node-{n}"),
            &[&format!("172.18.{}.{}", n / 250, n % 250 + 1)],
        ));
    }
    for n in 0..namespaces {
        let team = format!("team-{}", n % 10);
        let env = if n % 3 == 0 { "prod" } else { "dev" };
        cluster
            .namespaces
            .push(mk_ns(&format!("ns-{n}"), &[("team", &team), ("env", env)]));
    }
    for p in 0..pods {
        let ns = format!("ns-{}", p % namespaces);
        let app = apps[rng.below(apps.len() as u64) as usize];
        let tier = ["frontend", "backend"][rng.below(2) as usize];
        let ip = format!("10.{}.{}.{}", 1 + p / 65536, (p / 256) % 256, p % 256);
        let node = format!("node-{}", p % nodes);
        cluster.pods.push(mk_pod(
            &ns,
            &format!("pod-{p}"),
            &ip,
            &node,
            &[("app", app), ("tier", tier)],
        ));
    }
    for i in 0..policies {
        let ns_name = format!("ns-{}", i % namespaces);
        let ns = ns_name.as_str();
        let app = apps[rng.below(apps.len() as u64) as usize];
        let other = apps[rng.below(apps.len() as u64) as usize];
        let subject = sel(&[("app", app)]);
        let rule = match rng.below(6) {
            0 => allow(
                Some(vec![pods_peer(None, ns, sel(&[("app", other)]))]),
                Some(vec![tcp(80)]),
            ),
            1 => allow(
                Some(vec![pods_peer(
                    Some(sel(&[("team", "team-3")])),
                    ns,
                    LabelSelector::everything(),
                )]),
                Some(vec![PortMatch::Named {
                    protocol: Some(Protocol::Tcp),
                    name: "serve-80-tcp".into(),
                }]),
            ),
            2 => allow(
                Some(vec![Peer::IpBlock {
                    cidr: "10.1.0.0/16".parse().expect("cidr"),
                    except: vec!["10.1.2.0/24".parse().expect("cidr")],
                }]),
                None,
            ),
            3 => allow(
                Some(vec![pods_peer(
                    Some(sel(&[("env", "prod")])),
                    ns,
                    sel(&[("tier", "frontend")]),
                )]),
                Some(vec![PortMatch::Range {
                    protocol: Protocol::Tcp,
                    start: 80,
                    end: 90,
                }]),
            ),
            4 => allow(None, Some(vec![tcp(81)])),
            _ => allow(
                Some(vec![pods_peer(None, ns, sel(&[("tier", "backend")]))]),
                None,
            ),
        };
        let egress = (rng.below(4) == 0).then(|| {
            vec![allow(
                Some(vec![pods_peer(
                    Some(LabelSelector::everything()),
                    ns,
                    sel(&[("app", other)]),
                )]),
                None,
            )]
        });
        cluster.policies.push(mk_np(
            ns,
            &format!("policy-{i}"),
            subject,
            Some(vec![rule]),
            egress,
        ));
    }
    cluster
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn random_selector(rng: &mut Rng, keys: &[&str], values: &[&str]) -> LabelSelector {
    let mut s = LabelSelector::default();
    for _ in 0..rng.below(3) {
        if rng.below(2) == 0 {
            s.match_labels
                .insert(pick(rng, keys).into(), pick(rng, values).into());
        } else {
            let operator = [
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ][rng.below(4) as usize];
            let values = match operator {
                Operator::In | Operator::NotIn => (0..1 + rng.below(2))
                    .map(|_| pick(rng, values).to_string())
                    .collect(),
                _ => Vec::new(),
            };
            s.match_expressions.push(Requirement {
                key: pick(rng, keys).into(),
                operator,
                values,
            });
        }
    }
    s
}

fn random_ports(rng: &mut Rng) -> Option<Vec<PortMatch>> {
    if rng.below(3) == 0 {
        return None;
    }
    let protos = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
    Some(
        (0..1 + rng.below(2))
            .map(|_| {
                let protocol = protos[rng.below(3) as usize];
                match rng.below(4) {
                    0 => PortMatch::AllPorts { protocol },
                    1 => {
                        let start = 79 + rng.below(3) as u16;
                        PortMatch::Range {
                            protocol,
                            start,
                            end: start + rng.below(2) as u16,
                        }
                    }
                    2 => PortMatch::Named {
                        protocol: (rng.below(2) == 0).then_some(protocol),
                        name: format!(
                            "serve-{}-{}",
                            80 + rng.below(2),
                            protocol.as_str().to_lowercase()
                        ),
                    },
                    _ => PortMatch::Named {
                        protocol: Some(protocol),
                        name: "serve-80-tcp".into(),
                    },
                }
            })
            .collect(),
    )
}

fn random_peers(rng: &mut Rng, own_ns: Option<&str>, cluster_policy: bool) -> Option<Vec<Peer>> {
    if !cluster_policy && rng.below(4) == 0 {
        return None;
    }
    let keys = ["pod", "app", "ns"];
    let values = ["a", "b", "c", "x", "y"];
    Some(
        (0..1 + rng.below(2))
            .map(|_| match rng.below(if cluster_policy { 6 } else { 5 }) {
                0 if own_ns.is_some() => pods_peer(
                    None,
                    own_ns.unwrap_or_default(),
                    random_selector(rng, &keys, &values),
                ),
                0 | 1 => Peer::Pods {
                    namespaces: NamespaceMatch::Selector(random_selector(rng, &keys, &values)),
                    pods: random_selector(rng, &keys, &values),
                },
                2 => Peer::IpBlock {
                    cidr: pick(
                        rng,
                        &[
                            "10.0.0.0/8",
                            "10.244.1.0/24",
                            "192.0.2.0/24",
                            "0.0.0.0/0",
                            "fd00::/8",
                            "2001:db8::/32",
                        ],
                    )
                    .parse()
                    .expect("cidr"),
                    except: match rng.below(3) {
                        0 => vec!["10.244.1.10/32".parse().expect("cidr")],
                        1 => vec![
                            "10.244.2.0/25".parse().expect("cidr"),
                            "fd00:10:244:2::/64".parse().expect("cidr"),
                        ],
                        _ => Vec::new(),
                    },
                },
                3 => Peer::Nodes(random_selector(
                    rng,
                    &["kubernetes.io/hostname"],
                    &["n1", "n2"],
                )),
                4 => Peer::Pods {
                    namespaces: NamespaceMatch::Selector(LabelSelector::everything()),
                    pods: random_selector(rng, &keys, &values),
                },
                _ => Peer::Unsupported {
                    field: "to[0].domainNames".into(),
                },
            })
            .collect(),
    )
}

/// A small random cluster using every kind of selector, peer, port and tier:
/// namespaces x, y, z; pods a, b, c in each (dual-stack on n1, IPv4 on n2, one
/// host-network pod); NetworkPolicies and cluster policies in built-in and user
/// tiers (one missing), with Accept, Deny and Pass rules.
pub fn random_cluster(seed: u64) -> Cluster {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut c = Cluster {
        nodes: vec![
            mk_node("n1", &["172.18.0.2", "fd00:18::2"]),
            mk_node("n2", &["172.18.0.3"]),
        ],
        ..Cluster::default()
    };
    let mut i = 10;
    for ns in ["x", "y", "z"] {
        c.namespaces.push(mk_ns(ns, &[("ns", ns)]));
        for (k, pod) in ["a", "b", "c"].into_iter().enumerate() {
            let node = if k == 1 { "n2" } else { "n1" };
            let mut p = mk_pod(
                ns,
                pod,
                &format!("10.244.{}.{i}", if node == "n1" { 1 } else { 2 }),
                node,
                &[("pod", pod), ("app", pick(&mut rng, &["a", "b", "x"]))],
            );
            if node == "n1" {
                p.ips
                    .push(format!("fd00:10:244:1::{i}").parse().expect("ip"));
            }
            c.pods.push(p);
            i += 1;
        }
    }
    let mut host = mk_pod("z", "host", "10.255.0.1", "n1", &[("pod", "a")]);
    host.host_network = true;
    host.ips.clear();
    c.pods.push(host);
    c.tiers.push(Tier {
        name: "security".into(),
        priority: 50,
        default_action: if rng.below(2) == 0 {
            DefaultAction::Deny
        } else {
            DefaultAction::Pass
        },
    });
    c.tiers.push(Tier {
        name: "platform".into(),
        priority: 5000,
        default_action: DefaultAction::Deny,
    });
    for n in 0..rng.below(6) {
        let ns = pick(&mut rng, &["x", "y", "z"]);
        let pods = random_selector(&mut rng, &["pod", "app"], &["a", "b", "c", "x"]);
        let rules = |rng: &mut Rng| {
            (rng.below(3) > 0).then(|| {
                (0..rng.below(3))
                    .map(|_| allow(random_peers(rng, Some(ns), false), random_ports(rng)))
                    .collect()
            })
        };
        let ingress = rules(&mut rng);
        let egress = rules(&mut rng);
        c.policies
            .push(mk_np(ns, &format!("np{n}"), pods, ingress, egress));
    }
    let kinds = [
        (PolicyKind::ClusterNetworkPolicy, "admin"),
        (PolicyKind::ClusterNetworkPolicy, "baseline"),
        (PolicyKind::AdminNetworkPolicy, "admin"),
        (PolicyKind::TieredNetworkPolicy, "security"),
        (PolicyKind::TieredNetworkPolicy, "platform"),
        (PolicyKind::TieredNetworkPolicy, "missing"),
    ];
    for n in 0..rng.below(5) {
        let (kind, tier) = kinds[rng.below(kinds.len() as u64) as usize];
        let subject = if rng.below(2) == 0 {
            Subject::Namespaces(random_selector(&mut rng, &["ns"], &["x", "y", "z"]))
        } else {
            Subject::Pods {
                namespaces: random_selector(&mut rng, &["ns"], &["x", "y"]),
                pods: random_selector(&mut rng, &["pod", "app"], &["a", "b", "x"]),
            }
        };
        let rules = |rng: &mut Rng| {
            let list: Vec<Rule> = (0..rng.below(3))
                .map(|r| Rule {
                    name: Some(format!("r{r}")),
                    action: [Action::Accept, Action::Deny, Action::Pass][rng.below(3) as usize],
                    peers: random_peers(rng, None, true),
                    ports: random_ports(rng),
                })
                .collect();
            (!list.is_empty()).then_some(list)
        };
        let ingress = rules(&mut rng);
        let egress = rules(&mut rng);
        c.policies.push(Policy {
            id: PolicyId {
                kind,
                namespace: None,
                name: format!("cp{n}"),
            },
            tier: tier.into(),
            priority: rng.below(3) as i32,
            subject,
            ingress,
            egress,
            audit: None,
        });
    }
    c
}

/// Every endpoint of a cluster with its addresses, plus externals of both families.
pub fn endpoints(c: &Cluster) -> Vec<(String, Endpoint, Vec<IpAddr>)> {
    let mut out = Vec::new();
    for (i, p) in c.pods.iter().enumerate() {
        let ips = if p.host_network {
            c.nodes
                .iter()
                .find(|n| Some(&n.name) == p.node.as_ref())
                .map(|n| n.ips.clone())
                .unwrap_or_default()
        } else {
            p.ips.clone()
        };
        out.push((format!("{}/{}", p.namespace, p.name), Endpoint::Pod(i), ips));
    }
    for (i, n) in c.nodes.iter().enumerate() {
        out.push((format!("node:{}", n.name), Endpoint::Node(i), n.ips.clone()));
    }
    for ip in ["192.0.2.10", "198.51.100.1", "2001:db8::10"] {
        let ip: IpAddr = ip.parse().expect("ip");
        out.push((format!("ext:{ip}"), Endpoint::External(ip), vec![ip]));
    }
    out
}

pub const PROBES: [(Protocol, u16); 6] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Sctp, 81),
    (Protocol::Tcp, 8080),
    (Protocol::Icmp, 0),
];

/// Antrea's controller benchmark workload: `namespaces` namespaces, each with 4
/// pods (two `app-1: scale-1`, two `app-2: scale-2`) and 3 NetworkPolicies
/// (`default-deny-all`, and per label one selecting its pods and allowing ingress
/// from pods with the same label), pods spread over `nodes` nodes.
pub fn antrea_workload(namespaces: usize, nodes: usize) -> Cluster {
    let mut c = Cluster::default();
    for n in 0..nodes {
        c.nodes.push(mk_node(
            &format!("node-{n}"),
            &[&format!("172.18.{}.{}", n / 250, n % 250 + 1)],
        ));
    }
    let mut p = 0usize;
    for i in 0..namespaces {
        let ns = format!("ns-{i}");
        c.namespaces.push(mk_ns(&ns, &[]));
        for (k, v) in [
            ("app-1", "scale-1"),
            ("app-1", "scale-1"),
            ("app-2", "scale-2"),
            ("app-2", "scale-2"),
        ] {
            let ip = format!("10.{}.{}.{}", 1 + p / 65536, (p / 256) % 256, p % 256);
            c.pods.push(mk_pod(
                &ns,
                &format!("pod-{p}"),
                &ip,
                &format!("node-{}", p % nodes),
                &[(k, v)],
            ));
            p += 1;
        }
        c.policies.push(mk_np(
            &ns,
            "default-deny-all",
            LabelSelector::everything(),
            Some(vec![]),
            Some(vec![]),
        ));
        for (name, k, v) in [
            ("allow-app-1", "app-1", "scale-1"),
            ("allow-app-2", "app-2", "scale-2"),
        ] {
            c.policies.push(mk_np(
                &ns,
                name,
                sel(&[(k, v)]),
                Some(vec![allow(
                    Some(vec![pods_peer(None, &ns, sel(&[(k, v)]))]),
                    None,
                )]),
                None,
            ));
        }
    }
    c
}

/// Adds tiers to a cluster made by [`large_cluster`] (namespaces labelled `team` and `env`,
/// pods `app` and `tier`): `tiers` user Tiers at priorities before, between and after the
/// built-in ones (every fourth with `defaultAction: Deny`), and `policies` cluster policies:
/// ClusterNetworkPolicies in admin and baseline, AdminNetworkPolicies, the
/// BaselineAdminNetworkPolicy, and TieredNetworkPolicies in the user tiers; namespaces and pods
/// subjects, Accept / Deny / Pass rules, namespaces, pods, networks and nodes peers, numbered,
/// ranged and named ports.
pub fn add_tiers(cluster: &mut Cluster, tiers: usize, policies: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let apps = [
        "web", "api", "db", "cache", "worker", "auth", "search", "queue",
    ];
    let priorities = [
        10, 20, 30, 50, 60, 150, 200, 300, 500, 700, 900, 1500, 2000, 3000, 5000, 8000, 12000,
        14000, 16000, 20000,
    ];
    for t in 0..tiers {
        cluster.tiers.push(Tier {
            name: format!("tier-{t:02}"),
            priority: priorities[t % priorities.len()] + (t / priorities.len()) as i32,
            default_action: if t % 4 == 3 {
                DefaultAction::Deny
            } else {
                DefaultAction::Pass
            },
        });
    }
    let team = |rng: &mut Rng| sel(&[("team", &format!("team-{}", rng.below(10)))]);
    let env = |rng: &mut Rng| sel(&[("env", ["prod", "dev"][rng.below(2) as usize])]);
    let app = |rng: &mut Rng| sel(&[("app", apps[rng.below(apps.len() as u64) as usize])]);
    // `addresses`: networks peers allowed (egress, and TieredNetworkPolicy ingress).
    let peer = |rng: &mut Rng, direction: Direction, addresses: bool| match rng.below(8) {
        0..=2 => Peer::Pods {
            namespaces: NamespaceMatch::Selector(team(rng)),
            pods: LabelSelector::everything(),
        },
        3..=4 => Peer::Pods {
            namespaces: NamespaceMatch::Selector(env(rng)),
            pods: app(rng),
        },
        5 if addresses => Peer::IpBlock {
            cidr: format!("10.1.{}.0/24", rng.below(8)).parse().expect("cidr"),
            except: Vec::new(),
        },
        6 if addresses => Peer::IpBlock {
            cidr: ["192.0.2.0/24", "10.0.0.0/8", "fd00::/8"][rng.below(3) as usize]
                .parse()
                .expect("cidr"),
            except: Vec::new(),
        },
        _ if direction == Direction::Egress => Peer::Nodes(sel(&[(
            "kubernetes.io/hostname",
            &format!("node-{}", rng.below(20)),
        )])),
        _ => Peer::Pods {
            namespaces: NamespaceMatch::Selector(LabelSelector::everything()),
            pods: app(rng),
        },
    };
    let ports = |rng: &mut Rng| match rng.below(5) {
        0 | 1 => None,
        2 => Some(vec![tcp(80)]),
        3 => Some(vec![PortMatch::Range {
            protocol: Protocol::Tcp,
            start: 80,
            end: 90,
        }]),
        _ => Some(vec![PortMatch::Named {
            protocol: None,
            name: "serve-80-tcp".into(),
        }]),
    };
    for i in 0..policies {
        // 2 in 10 CNP admin, 1 CNP baseline, 2 ANP, 5 TNP (the last one the BANP singleton).
        let (kind, tier, name) = match i % 10 {
            _ if i + 1 == policies => (
                PolicyKind::BaselineAdminNetworkPolicy,
                TIER_BASELINE.to_string(),
                "default".to_string(),
            ),
            0 | 1 => (
                PolicyKind::ClusterNetworkPolicy,
                TIER_ADMIN.to_string(),
                format!("cnp-{i}"),
            ),
            2 => (
                PolicyKind::ClusterNetworkPolicy,
                TIER_BASELINE.to_string(),
                format!("cnp-{i}"),
            ),
            3 | 4 => (
                PolicyKind::AdminNetworkPolicy,
                TIER_ADMIN.to_string(),
                format!("anp-{i}"),
            ),
            _ => (
                PolicyKind::TieredNetworkPolicy,
                format!("tier-{:02}", rng.below(tiers.max(1) as u64)),
                format!("tnp-{i}"),
            ),
        };
        let subject = if rng.below(2) == 0 {
            Subject::Namespaces(team(&mut rng))
        } else {
            Subject::Pods {
                namespaces: env(&mut rng),
                pods: app(&mut rng),
            }
        };
        let addresses = |direction: Direction| {
            direction == Direction::Egress || kind == PolicyKind::TieredNetworkPolicy
        };
        let rules = |rng: &mut Rng, direction: Direction| {
            (0..1 + rng.below(3))
                .map(|r| {
                    let action = match rng.below(10) {
                        0..=3 => Action::Accept,
                        4..=6 => Action::Deny,
                        _ if kind == PolicyKind::BaselineAdminNetworkPolicy => Action::Deny,
                        _ => Action::Pass,
                    };
                    Rule {
                        name: Some(format!("r{r}")),
                        action,
                        peers: Some(
                            (0..1 + rng.below(2))
                                .map(|_| peer(rng, direction, addresses(direction)))
                                .collect(),
                        ),
                        ports: ports(rng),
                    }
                })
                .collect::<Vec<_>>()
        };
        let (ingress, egress) = match rng.below(4) {
            0 => (None, Some(rules(&mut rng, Direction::Egress))),
            1 => (
                Some(rules(&mut rng, Direction::Ingress)),
                Some(rules(&mut rng, Direction::Egress)),
            ),
            _ => (Some(rules(&mut rng, Direction::Ingress)), None),
        };
        cluster.policies.push(Policy {
            id: PolicyId {
                kind,
                namespace: None,
                name,
            },
            tier,
            priority: match kind {
                PolicyKind::BaselineAdminNetworkPolicy => 0,
                _ => rng.below(1001) as i32,
            },
            subject,
            ingress,
            egress,
            audit: None,
        });
    }
}
