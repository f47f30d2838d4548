//! Dataplane semantics without a kernel: the engine, the compiled form of a node
//! (`compile_node`), the rendered rules and the enforcer's evaluator, for
//! host-network pods, a pod's traffic to itself, and dual-stack pods whose
//! policies name one family only.

#[path = "../../policy/tests/support/mod.rs"]
mod support;

use std::net::IpAddr;

use palisade_enforcer::{render, Evaluator, Flow, RenderOptions, Verdict, L4};
use palisade_policy::compile::compile_node;
use palisade_policy::compiled::NodeRuleSet;
use palisade_policy::engine::{Connection, Decision, Endpoint, Engine};
use palisade_policy::model::{
    Cluster, ContainerPort, Direction, Family, Node, Peer, Pod, PortMatch, Protocol,
};
use support::{allow, labels, mk_np, mk_ns, pods_peer, sel, tcp};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn pod(ns: &str, name: &str, ips: &[&str], node: &str, l: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(l),
        ips: ips.iter().map(|s| ip(s)).collect(),
        node: Some(node.into()),
        terminating: false,
        created: None,
        host_network: false,
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
        }],
    }
}

fn node(name: &str, ips: &[&str]) -> Node {
    Node {
        name: name.into(),
        labels: labels(&[("kubernetes.io/hostname", name)]),
        ips: ips.iter().map(|s| ip(s)).collect(),
    }
}

const N1: [&str; 2] = ["172.18.0.2", "fc00:18::2"];
const N2: [&str; 2] = ["172.18.0.3", "fc00:18::3"];

/// Host-network pods on both nodes carrying the labels every selector below
/// looks for, with the node's addresses as the API reports them in
/// `status.podIPs` (`with_ips`) or with none (the scenario convention).
fn hostnet_cluster(with_ips: bool) -> Cluster {
    let mut agent1 = pod("kube-system", "agent-1", &N1, "n1", &[("app", "agent")]);
    let mut agent2 = pod("kube-system", "agent-2", &N2, "n2", &[("app", "agent")]);
    for a in [&mut agent1, &mut agent2] {
        a.host_network = true;
        if !with_ips {
            a.ips.clear();
        }
    }
    let agents = || {
        vec![
            pods_peer(
                Some(sel(&[("ns", "kube-system")])),
                "x",
                sel(&[("app", "agent")]),
            ),
            pods_peer(Some(sel(&[])), "x", sel(&[])),
        ]
    };
    Cluster {
        namespaces: vec![
            mk_ns("x", &[("ns", "x")]),
            mk_ns("kube-system", &[("ns", "kube-system")]),
        ],
        nodes: vec![node("n1", &N1), node("n2", &N2)],
        pods: vec![
            pod(
                "x",
                "a",
                &["10.244.1.10", "fd00:10:244:1::10"],
                "n1",
                &[("app", "a")],
            ),
            pod(
                "x",
                "b",
                &["10.244.2.11", "fd00:10:244:2::11"],
                "n2",
                &[("app", "b")],
            ),
            pod(
                "kube-system",
                "dns",
                &["10.244.1.53", "fd00:10:244:1::53"],
                "n1",
                &[("app", "agent")],
            ),
            agent1,
            agent2,
        ],
        policies: vec![
            // Subjects: every agent-labelled pod, every pod of kube-system.
            mk_np(
                "kube-system",
                "agents",
                sel(&[("app", "agent")]),
                Some(vec![]),
                Some(vec![]),
            ),
            mk_np(
                "kube-system",
                "all",
                sel(&[]),
                Some(vec![allow(Some(agents()), None)]),
                None,
            ),
            // Peers: agents by pod and namespace selectors, everything by
            // selectors, and named ports in both directions.
            mk_np(
                "x",
                "a",
                sel(&[("app", "a")]),
                Some(vec![
                    allow(Some(agents()), None),
                    allow(
                        Some(agents()),
                        Some(vec![PortMatch::Named {
                            protocol: Some(Protocol::Tcp),
                            name: "http".into(),
                        }]),
                    ),
                ]),
                Some(vec![
                    allow(
                        Some(agents()),
                        Some(vec![PortMatch::Named {
                            protocol: None,
                            name: "http".into(),
                        }]),
                    ),
                    allow(Some(agents()), Some(vec![tcp(53)])),
                ]),
            ),
        ],
        tiers: Vec::new(),
    }
}

fn every_address(rs: &NodeRuleSet) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = rs.pods.iter().flat_map(|p| p.ips.clone()).collect();
    for set in &rs.sets {
        for net in set.entries.iter().chain(&set.except) {
            out.push(net.addr());
        }
    }
    out
}

#[test]
fn compiled_state_never_holds_a_host_network_pods_address() {
    for with_ips in [false, true] {
        let cluster = hostnet_cluster(with_ips);
        let engine = Engine::new(cluster.clone()).expect("valid");
        let node_ips: Vec<IpAddr> = N1.iter().chain(N2.iter()).map(|s| ip(s)).collect();
        for n in ["n1", "n2"] {
            let rs = compile_node(&engine, n, 1);
            // The agents are never local pods (never subjects)...
            assert!(
                rs.pods.iter().all(|p| !p.name.starts_with("agent")),
                "{n}: {:?}",
                rs.pods.iter().map(|p| &p.name).collect::<Vec<_>>()
            );
            // ...and their addresses (the nodes') are in no set: selectors never
            // match them, named ports never resolve on them.
            let all = every_address(&rs);
            for a in &node_ips {
                assert!(
                    !all.contains(a),
                    "{n} (with_ips {with_ips}): {a} in {all:?}"
                );
            }
            // The ordinary pod with the same labels is there: the selectors work
            // (n1 holds x/a, whose policy has the agent selectors as peers).
            if n == "n1" {
                assert!(all.contains(&ip("10.244.1.53")));
                assert!(all.contains(&ip("fd00:10:244:1::53")));
            }
        }
        // Never the subject of a policy, whatever its labels.
        for agent in ["agent-1", "agent-2"] {
            let i = engine.pod_index("kube-system", agent).expect("agent");
            for d in [Direction::Ingress, Direction::Egress] {
                assert!(engine.policies_selecting(i, d).is_empty(), "{agent} {d:?}");
            }
        }
        // Its traffic is its node's: allowed with the pods of its node, refused
        // by x/a's selectors from the other node, like the node itself.
        let a = Endpoint::Pod(engine.pod_index("x", "a").expect("a"));
        let agent1 = Endpoint::Pod(engine.pod_index("kube-system", "agent-1").expect("a1"));
        let agent2 = Endpoint::Pod(engine.pod_index("kube-system", "agent-2").expect("a2"));
        for family in [Family::IPv4, Family::IPv6] {
            let conn = |src, dst| Connection {
                src,
                dst,
                family,
                protocol: Protocol::Tcp,
                port: 80,
            };
            let v = engine.explain(&conn(agent1, a));
            assert!(v.allowed);
            assert_eq!(v.ingress.decision, Decision::SameNode);
            assert!(!engine.allowed(&conn(agent2, a)), "{family:?}");
            assert!(!engine.allowed(&conn(Endpoint::Node(1), a)), "{family:?}");
            assert!(!engine.allowed(&conn(a, agent2)), "{family:?}");
            assert!(engine.allowed(&conn(a, agent1)), "{family:?}");
        }
    }
}

/// x/a is under deny-all ingress and egress, dual-stack.
fn deny_all_cluster() -> Cluster {
    Cluster {
        namespaces: vec![mk_ns("x", &[])],
        nodes: vec![node("n1", &N1)],
        pods: vec![
            pod(
                "x",
                "a",
                &["10.244.1.10", "fd00:10:244:1::10"],
                "n1",
                &[("app", "a")],
            ),
            pod(
                "x",
                "b",
                &["10.244.1.11", "fd00:10:244:1::11"],
                "n1",
                &[("app", "b")],
            ),
        ],
        policies: vec![mk_np(
            "x",
            "deny",
            sel(&[("app", "a")]),
            Some(vec![]),
            Some(vec![]),
        )],
        tiers: Vec::new(),
    }
}

#[test]
fn a_pods_traffic_to_itself_is_always_allowed() {
    let engine = Engine::new(deny_all_cluster()).expect("valid");
    let a = Endpoint::Pod(engine.pod_index("x", "a").expect("a"));
    let b = Endpoint::Pod(engine.pod_index("x", "b").expect("b"));
    let rs = compile_node(&engine, "n1", 1);
    let eval = Evaluator::new(&rs).expect("checks");
    let rendered = render(&rs, &RenderOptions::default()).expect("renders");
    for (family, me, other, host) in [
        (Family::IPv4, "10.244.1.10", "10.244.1.11", "10.244.1.10/32"),
        (
            Family::IPv6,
            "fd00:10:244:1::10",
            "fd00:10:244:1::11",
            "fd00:10:244:1::10/128",
        ),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            let conn = |src, dst| Connection {
                src,
                dst,
                family,
                protocol,
                port: 80,
            };
            let v = engine.explain(&conn(a, a));
            assert!(v.allowed, "{family:?} {protocol:?}");
            assert_eq!(v.egress.decision, Decision::SamePod);
            assert_eq!(v.ingress.decision, Decision::SamePod);
            assert!(engine.allowed(&conn(a, a)));
            assert!(!engine.allowed(&conn(a, b)) && !engine.allowed(&conn(b, a)));
            let l4 = match protocol {
                Protocol::Tcp => L4::Tcp(80),
                Protocol::Udp => L4::Udp(80),
                _ => L4::Icmp,
            };
            let flow = |s: &str, d: &str| Flow {
                src: ip(s),
                dst: ip(d),
                l4,
            };
            assert_eq!(eval.eval(&flow(me, me)).verdict, Verdict::Accept);
            assert_eq!(eval.eval(&flow(me, other)).verdict, Verdict::Deny);
            assert_eq!(eval.eval(&flow(other, me)).verdict, Verdict::Deny);
        }
        // Rendered: RETURN for src == dst before any dispatch to a pod chain.
        let forward = &rendered.family(family).chains["PALISADE-FORWARD"];
        let hairpin = forward
            .iter()
            .position(|l| l.contains(&format!("-s {host} -d {host} ")) && l.ends_with("-j RETURN"))
            .unwrap_or_else(|| panic!("no hairpin rule in {forward:#?}"));
        let first_dispatch = forward
            .iter()
            .position(|l| l.contains("--comment \"egress ") || l.contains("--comment \"ingress "))
            .expect("dispatch");
        assert!(hairpin < first_dispatch, "{forward:#?}");
    }
}

/// A dual-stack pod isolated by a policy whose only peer is an ipBlock of one
/// family is isolated in the other family too: default deny there, never open.
#[test]
fn a_one_family_ipblock_leaves_the_other_family_denied() {
    for (cidr, open, closed) in [
        ("0.0.0.0/0", Family::IPv4, Family::IPv6),
        ("::/0", Family::IPv6, Family::IPv4),
    ] {
        let mut c = deny_all_cluster();
        c.policies = vec![mk_np(
            "x",
            "one-family",
            sel(&[("app", "a")]),
            Some(vec![allow(
                Some(vec![Peer::IpBlock {
                    cidr: cidr.parse().expect("cidr"),
                    except: Vec::new(),
                }]),
                None,
            )]),
            None,
        )];
        let engine = Engine::new(c).expect("valid");
        let rs = compile_node(&engine, "n1", 1);
        let eval = Evaluator::new(&rs).expect("checks");
        let rendered = render(&rs, &RenderOptions::default()).expect("renders");
        let (a, b) = (
            Endpoint::Pod(engine.pod_index("x", "a").expect("a")),
            Endpoint::Pod(engine.pod_index("x", "b").expect("b")),
        );
        for (family, from, to) in [
            (Family::IPv4, "10.244.1.11", "10.244.1.10"),
            (Family::IPv6, "fd00:10:244:1::11", "fd00:10:244:1::10"),
        ] {
            let want = family == open;
            let conn = Connection {
                src: b,
                dst: a,
                family,
                protocol: Protocol::Tcp,
                port: 80,
            };
            assert_eq!(engine.allowed(&conn), want, "engine {cidr} {family:?}");
            let flow = Flow {
                src: ip(from),
                dst: ip(to),
                l4: L4::Tcp(80),
            };
            assert_eq!(
                eval.eval(&flow).verdict == Verdict::Accept,
                want,
                "eval {cidr} {family:?}"
            );
            // Both families dispatch x/a's address to a chain that ends in DENY.
            let fam = rendered.family(family);
            let forward = &fam.chains["PALISADE-FORWARD"];
            assert!(
                forward
                    .iter()
                    .any(|l| l.contains(&format!("-d {to}/")) && l.contains("ingress x/a")),
                "{family:?}: x/a not dispatched: {forward:#?}"
            );
            let denies = fam
                .chains
                .values()
                .flatten()
                // The denial itself, not the log rule before it.
                .filter(|l| l.contains(":default:ingress:Deny") && !l.contains("NFLOG"))
                .count();
            assert_eq!(denies, 1, "{family:?}");
            // The policy chain of the closed family has no rule at all; the open
            // family's matches its one set, of its own family.
            let policy_rules: Vec<&String> = fam
                .chains
                .iter()
                .filter(|(name, _)| name.starts_with("PALISADE-PI-"))
                .flat_map(|(_, lines)| lines)
                .collect();
            if family == closed {
                assert!(policy_rules.is_empty(), "{policy_rules:#?}");
                assert!(fam.sets.is_empty());
            } else {
                assert_eq!(policy_rules.len(), 1, "{policy_rules:#?}");
                assert_eq!(fam.sets.len(), 1);
            }
        }
    }
}
