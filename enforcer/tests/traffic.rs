//! Real traffic through a node namespace: pod namespaces behind veths with /32
//! routes, as the lab builds them. Every address lives in namespaces this test
//! creates (198.18.0.0/15, the benchmarking range); every loop is bounded.
//!
//! - revocation: an established connection the new state denies stops within a
//!   second, another one that stays allowed keeps working; with revocation off
//!   both keep working;
//! - eval ≡ kernel: random rule sets, every TCP flow between the endpoints decided
//!   by `eval` and by the kernel (with `--reject`, so denials are immediate).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use palisade_enforcer::{Evaluator, Flow, NodeRuleSet, Verdict, L4};
use palisade_policy::compiled::{CompiledPolicy, CompiledRule, LocalPod};
use palisade_policy::model::{Action, DefaultAction, Family, PolicyKind, Protocol};

fn echoes(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let mut b = [0u8; 1];
    s.write_all(b"x").is_ok() && matches!(s.read(&mut b), Ok(1))
}

#[test]
fn revocation_cuts_only_newly_denied_connections() {
    if !can_netns("revocation") {
        return;
    }
    let lab = Lab::new(&["198.18.0.10", "198.18.0.11"]);
    let (a, b) = (lab.endpoints[0].1.clone(), lab.endpoints[1].1.clone());
    lab.serve(&[7001, 7002]);
    let both = b_accepts_a(1, &a, &b, vec![tcp(7001), tcp(7002)]);
    let only_7002 = b_accepts_a(2, &a, &b, vec![tcp(7002)]);

    for revoke in [true, false] {
        let mut enforcer = nft_enforcer(false, revoke);
        lab.node.run(|| enforcer.apply(&both).expect("apply both"));
        let mut c1 = lab.connect(0, 1, 7001).expect("7001 allowed");
        let mut c2 = lab.connect(0, 1, 7002).expect("7002 allowed");
        assert!(echoes(&mut c1) && echoes(&mut c2));

        let report = lab
            .node
            .run(|| enforcer.apply(&only_7002).expect("apply only 7002"));
        assert!(
            echoes(&mut c2),
            "a connection that stays allowed is never touched"
        );
        if revoke {
            assert!(report.revoked >= 1, "{report:?}");
            assert!(
                !echoes(&mut c1),
                "revoked connection must stop within a second"
            );
            assert!(
                lab.connect(0, 1, 7001).is_err(),
                "new connections are denied"
            );
        } else {
            assert_eq!(report.revoked, 0);
            assert!(echoes(&mut c1), "--no-revoke keeps established connections");
        }
        lab.node
            .run(|| palisade_enforcer::cleanup().expect("cleanup"));
        lab.node.exec("conntrack -F 2>/dev/null || true");
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const PORTS: [u16; 3] = [80, 443, 8080];

fn random_state(rng: &mut Rng, version: u64, ips: &[String], local: usize) -> NodeRuleSet {
    let tiers = vec![
        admin(),
        mk_tier(
            "user",
            false,
            if rng.chance(50) {
                DefaultAction::Deny
            } else {
                DefaultAction::Pass
            },
        ),
        np_tier(),
        baseline(),
    ];
    let mut sets = Vec::new();
    for s in 0..6 {
        let mut entries: Vec<String> = ips
            .iter()
            .filter(|_| rng.chance(40))
            .map(|i| format!("{i}/32"))
            .collect();
        let mut except = Vec::new();
        if rng.chance(30) {
            entries.push(["198.18.0.0/24", "198.18.0.0/15", "0.0.0.0/0"][rng.below(3)].to_string());
            except = ips
                .iter()
                .filter(|_| rng.chance(25))
                .map(|i| format!("{i}/32"))
                .collect();
        }
        let e: Vec<&str> = entries.iter().map(String::as_str).collect();
        let x: Vec<&str> = except.iter().map(String::as_str).collect();
        sets.push(mk_set(&format!("s{s}"), Family::IPv4, &e, &x));
    }
    let port_choices = [
        range(Protocol::Tcp, 80, 80),
        range(Protocol::Tcp, 443, 443),
        range(Protocol::Tcp, 8080, 8080),
        range(Protocol::Tcp, 80, 443),
        range(Protocol::Udp, 80, 80),
        range(Protocol::Icmp, 0, 0),
    ];
    let rules = |rng: &mut Rng, np: bool| -> Vec<CompiledRule> {
        (0..rng.below(4))
            .map(|index| {
                let action = if np {
                    Action::Accept
                } else {
                    [Action::Accept, Action::Deny, Action::Pass][rng.below(3)]
                };
                let matches = (0..1 + rng.below(2))
                    .map(|_| {
                        let peers = if rng.chance(25) {
                            None
                        } else if rng.chance(5) {
                            Some(vec![])
                        } else {
                            Some((0..1 + rng.below(2)).map(|_| rng.below(6)).collect())
                        };
                        let ports = if rng.chance(35) {
                            None
                        } else {
                            Some(
                                (0..1 + rng.below(3))
                                    .map(|_| port_choices[rng.below(port_choices.len())])
                                    .collect(),
                            )
                        };
                        let local = rng.chance(15).then(|| rng.below(6));
                        mk_match(peers, ports, local)
                    })
                    .collect();
                mk_rule(index, action, matches)
            })
            .collect()
    };
    let mut policies: Vec<CompiledPolicy> = Vec::new();
    for p in 0..8 {
        let tier = rng.below(4);
        let np = tier == 2;
        let ingress = rules(rng, np);
        let egress = rules(rng, np);
        let (kind, ns) = if np {
            (PolicyKind::NetworkPolicy, Some("ns"))
        } else {
            (PolicyKind::TieredNetworkPolicy, None)
        };
        policies.push(mk_policy(kind, ns, &format!("p{p}"), tier, ingress, egress));
    }
    let mut pods: Vec<LocalPod> = Vec::new();
    for (i, ip) in ips.iter().take(local).enumerate() {
        let mut lists = Vec::new();
        for _dir in 0..2 {
            let mut list = Vec::new();
            if rng.chance(75) {
                for tier in 0..4 {
                    let chosen: Vec<usize> = (0..policies.len())
                        .filter(|&p| policies[p].tier == tier && rng.chance(60))
                        .collect();
                    if !chosen.is_empty() {
                        list.push(tp(tier, &chosen));
                    }
                }
            }
            lists.push(list);
        }
        let egress = lists.pop().unwrap_or_default();
        let ingress = lists.pop().unwrap_or_default();
        pods.push(mk_pod("ns", &format!("pod{i}"), &[ip], ingress, egress));
    }
    mk_rule_set(version, &[LAB_NODE_IP], tiers, sets, policies, pods)
}

#[test]
fn eval_matches_the_kernel() {
    if !can_netns("eval_matches_the_kernel") {
        return;
    }
    // Three local pods and two outside hosts (a remote pod, a remote node...).
    let ips = [
        "198.18.0.10",
        "198.18.0.11",
        "198.18.0.12",
        "198.18.1.1",
        "198.18.1.2",
    ];
    let local = 3;
    let lab = Lab::new(&ips);
    lab.serve(&PORTS);
    let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut enforcer = nft_enforcer(true, true);
    let rounds = 24;
    let mut denied = 0;
    let mut checked = 0;
    for round in 0..rounds {
        let state = random_state(&mut rng, round + 1, &ips, local);
        lab.node.run(|| enforcer.apply(&state).expect("apply"));
        let evaluator = Evaluator::new(&state).expect("evaluator");
        for from in 0..ips.len() {
            for to in 0..ips.len() {
                if from == to || (from >= local && to >= local) {
                    continue; // same host, or outside ↔ outside (never crosses the node)
                }
                for port in PORTS {
                    let flow = Flow {
                        src: ips[from].parse::<IpAddr>().expect("ip"),
                        dst: ips[to].parse::<IpAddr>().expect("ip"),
                        l4: L4::Tcp(port),
                    };
                    let want = evaluator.eval(&flow);
                    let got = match lab.connect(from, to, port) {
                        Ok(_) => Verdict::Accept,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            Verdict::Deny
                        }
                        Err(e) => panic!("{flow:?}: unexpected {e}"),
                    };
                    assert_eq!(
                        got,
                        want.verdict,
                        "round {round} {flow:?}: kernel {got:?}, eval {want:?}\nstate: {}",
                        serde_json::to_string(&state).unwrap_or_default()
                    );
                    checked += 1;
                    if got == Verdict::Deny {
                        denied += 1;
                    }
                }
            }
        }
    }
    eprintln!("eval ≡ kernel on {checked} flows over {rounds} random states ({denied} denied)");
    assert!(
        denied > 0 && denied < checked,
        "the random states exercise both verdicts"
    );
}

#[test]
fn traffic_with_the_own_node_is_always_allowed() {
    if !can_netns("node_traffic") {
        return;
    }
    let lab = Lab::new(&["198.18.0.20", "198.18.0.21"]);
    lab.serve(&[7100]);
    let node_listener = lab
        .node
        .run(|| TcpListener::bind((LAB_NODE_IP, 7100)).expect("bind on the node"));
    std::thread::spawn(move || for _s in node_listener.incoming().flatten() {});
    let a = lab.endpoints[0].1.clone();
    // Pod a: isolated in both directions, nothing allowed.
    let state = mk_rule_set(
        1,
        &[LAB_NODE_IP],
        vec![np_tier()],
        vec![],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "deny-all",
            0,
            vec![],
            vec![],
        )],
        vec![mk_pod(
            "ns",
            "a",
            &[&a],
            vec![tp(0, &[0])],
            vec![tp(0, &[0])],
        )],
    );
    let mut enforcer = nft_enforcer(true, true);
    lab.node.run(|| enforcer.apply(&state).expect("apply"));
    let to_node = SocketAddr::new(LAB_NODE_IP.parse().expect("ip"), 7100);
    lab.endpoints[0]
        .0
        .run(|| TcpStream::connect_timeout(&to_node, Duration::from_secs(2)))
        .expect("pod → its node is allowed");
    let to_pod = SocketAddr::new(a.parse().expect("ip"), 7100);
    lab.node
        .run(|| TcpStream::connect_timeout(&to_pod, Duration::from_secs(2)))
        .expect("node → its pod is allowed");
    let err = lab
        .connect(0, 1, 7100)
        .expect_err("pod → other pod is denied");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = lab
        .connect(1, 0, 7100)
        .expect_err("other pod → pod is denied");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
