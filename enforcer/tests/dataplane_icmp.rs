//! ICMP, ICMPv6 and other IP protocols for isolated pods, with real packets through
//! a dual-stack node namespace; states built as a cluster, decided by the engine,
//! compiled by `compile_node` and applied by the enforcer in process.
//!
//! What an isolated pod gets (the README's "Other protocols"):
//! - a rule without `ports` allows every protocol: ICMP echo, ICMPv6 echo, a raw
//!   IP protocol (253, reserved for experiments) all pass;
//! - a rule with `ports` allows only the protocols it names: ICMP and protocol 253
//!   are denied where TCP to the named port passes;
//! - ICMP errors that belong to an allowed connection (conntrack RELATED: a port
//!   unreachable for a UDP datagram the policies let out) reach a pod under
//!   deny-all ingress, while a new ICMP echo from the same peer does not;
//! - traffic between a pod and its own node, ICMP included, is always allowed;
//! - IPv6 neighbour discovery keeps working under deny-all: on a routed node it
//!   never crosses FORWARD (it is link-local, between a pod and its node), so
//!   neighbour entries flushed on every side come back and allowed IPv6 traffic
//!   keeps flowing; on a bridged node (pods on-link with each other, bridged
//!   packets through FORWARD) pods resolve each other through the bridge, the
//!   isolated ones included.

#[path = "../../policy/tests/support/mod.rs"]
mod support;

mod common;
mod dataplane_common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::{can_netns, Netns};
use dataplane_common::*;
use palisade_enforcer::{ApplyOptions, Backend, Enforcer, Evaluator, Flow, Verdict, L4};
use palisade_policy::compile::compile_node;
use palisade_policy::engine::{Connection, Endpoint, Engine};
use palisade_policy::model::{Cluster, Family, Pod, PortMatch, Protocol};
use support::{allow, labels, mk_node, mk_np, mk_ns, pods_peer, sel, tcp};

const PORT: u16 = 8080;
/// Nothing listens there: a datagram to it draws an ICMP port unreachable.
const CLOSED_UDP: u16 = 9999;
/// IP protocol reserved for experimentation (RFC 3692): no ports.
const EXPERIMENTAL: i32 = 253;

const PODS: [PodAddrs; 4] = [
    ("a", Some("198.18.3.10"), Some("2001:2::3:10")),
    ("b", Some("198.18.3.20"), Some("2001:2::3:20")),
    ("c", Some("198.18.3.30"), Some("2001:2::3:30")),
    ("d", Some("198.18.3.40"), Some("2001:2::3:40")),
];

fn udp(port: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Udp,
        start: port,
        end: port,
    }
}

/// a: deny-all ingress; egress only to b (TCP 8080, UDP 9999) and to c (no ports).
/// b: admits a on TCP 8080 and UDP 9999. c: admits a, no ports. d: not isolated.
fn cluster() -> Cluster {
    let pods: Vec<Pod> = PODS
        .iter()
        .map(|(name, v4, v6)| Pod {
            namespace: "p".into(),
            name: name.to_string(),
            labels: labels(&[("app", name)]),
            ips: [v4, v6]
                .into_iter()
                .flatten()
                .map(|s| s.parse().expect("ip"))
                .collect(),
            node: Some("n1".into()),
            terminating: false,
            created: None,
            host_network: false,
            ports: Vec::new(),
        })
        .collect();
    let peer = |app: &str| pods_peer(None, "p", sel(&[("app", app)]));
    Cluster {
        namespaces: vec![mk_ns("p", &[])],
        nodes: vec![mk_node("n1", &[NODE_V4, NODE_V6])],
        pods,
        policies: vec![
            mk_np("p", "a-in", sel(&[("app", "a")]), Some(vec![]), None),
            mk_np(
                "p",
                "a-out",
                sel(&[("app", "a")]),
                None,
                Some(vec![
                    allow(
                        Some(vec![peer("b")]),
                        Some(vec![tcp(PORT), udp(CLOSED_UDP)]),
                    ),
                    allow(Some(vec![peer("c")]), None),
                ]),
            ),
            mk_np(
                "p",
                "b-in",
                sel(&[("app", "b")]),
                Some(vec![allow(
                    Some(vec![peer("a")]),
                    Some(vec![tcp(PORT), udp(CLOSED_UDP)]),
                )]),
                None,
            ),
            mk_np(
                "p",
                "c-in",
                sel(&[("app", "c")]),
                Some(vec![allow(Some(vec![peer("a")]), None)]),
                None,
            ),
        ],
        tiers: Vec::new(),
    }
}

fn setup(neigh: Neigh) -> (DsLab, Enforcer, Engine, Evaluator) {
    programmed(DsLab::new(&PODS, neigh))
}

/// `lab` with name servers on [`PORT`], ping sockets, and [`cluster`]'s policies applied.
fn programmed(lab: DsLab) -> (DsLab, Enforcer, Engine, Evaluator) {
    lab.serve_names(PORT);
    for ns in std::iter::once(&lab.node).chain(lab.pods.iter().map(|p| &p.ns)) {
        allow_ping_sockets(ns);
    }
    let engine = Engine::new(cluster()).expect("valid cluster");
    let rs = compile_node(&engine, "n1", 1);
    let evaluator = Evaluator::new(&rs).expect("checks");
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    let r = lab.node.run(|| enforcer.apply(&rs).expect("apply"));
    assert!(r.errors.is_empty() && r.issues.is_empty(), "{r:?}");
    (lab, enforcer, engine, evaluator)
}

fn engine_icmp(e: &Engine, from: Endpoint, to: Endpoint, family: Family) -> bool {
    e.allowed(&Connection {
        src: from,
        dst: to,
        family,
        protocol: Protocol::Icmp,
        port: 0,
    })
}

const WAIT: Duration = Duration::from_millis(300);

#[test]
fn icmp_and_other_protocols_follow_the_ports_of_the_rules() {
    if !can_netns("icmp and other protocols") {
        return;
    }
    let (lab, mut enforcer, engine, evaluator) = setup(Neigh::Static);
    let idx = |name: &str| Endpoint::Pod(engine.pod_index("p", name).expect("pod"));
    let node = Endpoint::Node(0);
    let ns = |name: &str| &lab.pod(name).ns;
    for (v6, family) in [(false, Family::IPv4), (true, Family::IPv6)] {
        let ip = |name: &str| lab.pod(name).ip(v6);
        let node_ip: IpAddr = if v6 { NODE_V6 } else { NODE_V4 }.parse().expect("ip");
        // (from, to, allowed): echo requests; the engine, the compiled form and
        // the kernel must all agree.
        let cases = [
            ("a", "b", false), // b's rule names TCP and UDP only
            ("a", "c", true),  // c's rule has no ports: every protocol
            ("a", "d", false), // a's egress: b and c only
            ("d", "a", false), // a: deny-all ingress
            ("b", "a", false),
            ("d", "c", false), // c admits only a
            ("b", "d", true),  // neither isolated that way
        ];
        for (from, to, want) in cases {
            assert_eq!(
                engine_icmp(&engine, idx(from), idx(to), family),
                want,
                "engine {family:?} ICMP {from}->{to}"
            );
            let flow = Flow {
                src: ip(from),
                dst: ip(to),
                l4: L4::Icmp,
            };
            assert_eq!(
                evaluator.eval(&flow).verdict == Verdict::Accept,
                want,
                "compiled {flow:?}"
            );
            assert_eq!(
                ping(ns(from), ip(to), 2, WAIT),
                want,
                "kernel {family:?} ping {from}->{to}"
            );
        }
        // A pod and its own node: always, both ways, even for deny-all a.
        assert!(engine_icmp(&engine, node, idx("a"), family));
        assert!(engine_icmp(&engine, idx("a"), node, family));
        assert!(ping(&lab.node, ip("a"), 2, WAIT), "node -> a {family:?}");
        assert!(ping(ns("a"), node_ip, 2, WAIT), "a -> node {family:?}");

        // TCP on the named port passes where ICMP does not.
        assert!(tcp_probe(ns("a"), sa(ip("b"), PORT), Duration::from_secs(1)).allowed());
        assert!(tcp_probe(ns("a"), sa(ip("c"), PORT), Duration::from_secs(1)).allowed());

        // Another IP protocol: only the rule without ports lets it through.
        for (to, want) in [("c", true), ("b", false)] {
            let flow = Flow {
                src: ip("a"),
                dst: ip(to),
                l4: L4::Other(EXPERIMENTAL as u8),
            };
            assert_eq!(evaluator.eval(&flow).verdict == Verdict::Accept, want);
            assert_eq!(
                raw_ip_delivered(ns("a"), ns(to), ip(to), EXPERIMENTAL, WAIT),
                want,
                "kernel {family:?} protocol {EXPERIMENTAL} a->{to}"
            );
        }
    }
    lab.node.run(|| enforcer.cleanup().expect("cleanup"));
}

/// A UDP datagram from `from` to a closed port: whether the ICMP port unreachable
/// that the destination's kernel answers came back (the socket reports it as
/// ECONNREFUSED), within a few tries.
fn port_unreachable_seen(from: &Netns, to: SocketAddr) -> bool {
    from.run(|| {
        let bind: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(bind).expect("bind");
        s.connect(to).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            if let Err(e) = s.send(b"x") {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return true;
                }
                continue;
            }
            match s.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
                _ => {}
            }
        }
        false
    })
}

#[test]
fn icmp_errors_of_allowed_connections_pass_deny_all() {
    if !can_netns("icmp related") {
        return;
    }
    let (lab, mut enforcer, engine, _) = setup(Neigh::Static);
    let (a, b, d) = (lab.pod("a"), lab.pod("b"), lab.pod("d"));
    for (v6, family) in [(false, Family::IPv4), (true, Family::IPv6)] {
        // a is under deny-all ingress: a new ICMP message from b is refused...
        assert!(!engine_icmp(
            &engine,
            Endpoint::Pod(engine.pod_index("p", "b").expect("b")),
            Endpoint::Pod(engine.pod_index("p", "a").expect("a")),
            family
        ));
        assert!(!ping(&b.ns, a.ip(v6), 2, WAIT), "{family:?} b -> a echo");
        // ...but the port unreachable b's kernel sends back for a's allowed
        // datagram is RELATED to it and reaches a.
        assert!(
            port_unreachable_seen(&a.ns, sa(b.ip(v6), CLOSED_UDP)),
            "{family:?}: the ICMP error of an allowed UDP flow did not reach a"
        );
        // The control: d is not isolated, and its datagrams to a closed port of a
        // (a's ingress denies them) draw nothing back: no error leaks the port.
        assert!(
            !port_unreachable_seen(&d.ns, sa(a.ip(v6), CLOSED_UDP)),
            "{family:?}: a denied datagram drew an ICMP error"
        );
    }
    lab.node.run(|| enforcer.cleanup().expect("cleanup"));
}

fn neighbours(ns: &Netns) -> String {
    ns.exec("ip -6 neigh show")
}

#[test]
fn neighbour_discovery_keeps_working_under_deny_all() {
    if !can_netns("ndp") {
        return;
    }
    let (lab, mut enforcer, _, _) = setup(Neigh::Ndp);
    let (a, b, c) = (lab.pod("a"), lab.pod("b"), lab.pod("c"));
    for round in 0..3 {
        // Forget every neighbour, on the node and in the pods.
        lab.node.exec("ip -6 neigh flush all");
        for p in &lab.pods {
            p.ns.exec("ip -6 neigh flush all");
        }
        // a (deny-all ingress, egress only to b and c) reaches b on TCP and c
        // with ICMPv6: a resolves its gateway, the node resolves b and c.
        assert!(
            tcp_probe(&a.ns, sa(b.ip(true), PORT), Duration::from_secs(2)).allowed(),
            "round {round}: a -> b over IPv6 after a neighbour flush"
        );
        assert!(ping(&a.ns, c.ip(true), 3, Duration::from_millis(500)));
        // The node reaches a, under deny-all ingress, and a its node.
        assert!(ping(&lab.node, a.ip(true), 3, Duration::from_millis(500)));
        assert!(ping(
            &a.ns,
            NODE_V6.parse().expect("ip"),
            3,
            Duration::from_millis(500)
        ));
        // And the entries were learnt by neighbour discovery, not kept.
        let node_neigh = neighbours(&lab.node);
        if round == 0 {
            eprintln!("node neighbours after a flush:\n{node_neigh}");
        }
        for p in [a, b, c] {
            let ip = p.ip(true).to_string();
            assert!(
                node_neigh
                    .lines()
                    .any(|l| l.starts_with(&format!("{ip} ")) && !l.contains("FAILED")),
                "round {round}: the node did not resolve {ip}:\n{node_neigh}"
            );
        }
        let pod_neigh = neighbours(&a.ns);
        assert!(
            pod_neigh
                .lines()
                .any(|l| l.starts_with("fe80::1 ") && !l.contains("FAILED")),
            "round {round}: a did not resolve its gateway:\n{pod_neigh}"
        );
        // Still isolated: the peers that may not reach a do not.
        assert!(!ping(&b.ns, a.ip(true), 1, WAIT));
    }
    lab.node.run(|| enforcer.cleanup().expect("cleanup"));
}

/// On a bridged node the pods resolve each other by neighbour discovery through
/// the bridge, and with `bridge-nf-call-ip6tables` those packets cross FORWARD,
/// untracked by conntrack. a is isolated for ingress (deny-all) and egress: b's
/// advertisement answering a's solicitation is addressed to a, so without the
/// neighbour discovery rules of PALISADE-FORWARD a's ingress chain dropped it and a
/// could not reach b over IPv6 although every policy allows it.
#[test]
fn neighbour_discovery_between_pods_on_a_bridge() {
    if !can_netns("ndp on a bridge") {
        return;
    }
    let (lab, mut enforcer, engine, _) = programmed(DsLab::bridged(&PODS));
    let (a, b, c, d) = (lab.pod("a"), lab.pod("b"), lab.pod("c"), lab.pod("d"));
    let idx = |name: &str| Endpoint::Pod(engine.pod_index("p", name).expect("pod"));
    let tcp6 = Connection {
        src: idx("a"),
        dst: idx("b"),
        family: Family::IPv6,
        protocol: Protocol::Tcp,
        port: PORT,
    };
    assert!(
        engine.allowed(&tcp6),
        "the engine allows a -> b on TCP {PORT}"
    );
    for round in 0..2 {
        for p in &lab.pods {
            p.ns.exec("ip -6 neigh flush all; ip -4 neigh flush all");
        }
        for v6 in [true, false] {
            assert!(
                tcp_probe(&a.ns, sa(b.ip(v6), PORT), Duration::from_secs(2)).allowed(),
                "round {round}: a -> b (v6: {v6}) on a bridge"
            );
        }
        assert!(ping(&a.ns, c.ip(true), 3, Duration::from_millis(500)));
        let neigh = neighbours(&a.ns);
        assert!(
            neigh
                .lines()
                .any(|l| l.starts_with(&format!("{} ", b.ip(true)))
                    && !l.contains("FAILED")
                    && !l.contains("INCOMPLETE")),
            "round {round}: a did not resolve b:\n{neigh}"
        );
        // Neighbour discovery passes, connections are still judged.
        assert!(
            !ping(&b.ns, a.ip(true), 1, WAIT),
            "b -> a: a is deny-all ingress"
        );
        assert!(
            !tcp_probe(&d.ns, sa(a.ip(true), PORT), WAIT).allowed(),
            "d -> a: a is deny-all ingress"
        );
        assert!(!ping(&a.ns, d.ip(true), 1, WAIT), "a -> d: a's egress");
    }
    lab.node.run(|| enforcer.cleanup().expect("cleanup"));
}
