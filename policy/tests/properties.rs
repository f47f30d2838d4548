//! Properties of the engine over random clusters: the compiled rule sets decide
//! exactly as the engine does; verdicts do not depend on input order; parsing
//! arbitrary text never panics.

mod support;

use std::net::IpAddr;

use palisade_policy::compile::{allows, compile_node};
use palisade_policy::engine::{Connection, Endpoint, Engine};
use palisade_policy::model::{Cluster, Family, Protocol};
use palisade_policy::scenario::Scenario;
use proptest::prelude::*;

/// Every endpoint of a cluster with its addresses, plus externals of both families.
fn endpoints(c: &Cluster) -> Vec<(String, Endpoint, Vec<IpAddr>)> {
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

const PROBES: [(Protocol, u16); 6] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Sctp, 81),
    (Protocol::Tcp, 8080),
    (Protocol::Icmp, 0),
];

fn check_compiled_agrees(seed: u64) -> Result<(), TestCaseError> {
    let cluster = support::random_cluster(seed);
    let engine = Engine::new(cluster.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let rule_sets: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| compile_node(&engine, &n.name, 1))
        .collect();
    let eps = endpoints(&cluster);
    for family in [Family::IPv4, Family::IPv6] {
        for (sname, src, sips) in &eps {
            for (dname, dst, dips) in &eps {
                let (Some(sip), Some(dip)) = (
                    sips.iter().find(|i| Family::of(i) == family),
                    dips.iter().find(|i| Family::of(i) == family),
                ) else {
                    continue;
                };
                if sip == dip {
                    continue;
                }
                for (protocol, port) in PROBES {
                    let conn = Connection {
                        src: *src,
                        dst: *dst,
                        family,
                        protocol,
                        port,
                    };
                    let expected = engine.allowed(&conn);
                    let compiled = rule_sets
                        .iter()
                        .all(|rs| allows(rs, *sip, *dip, protocol, port));
                    prop_assert_eq!(
                        compiled,
                        expected,
                        "seed {} {}->{} {:?} {}/{}: engine {} compiled {}",
                        seed,
                        sname,
                        dname,
                        family,
                        protocol,
                        port,
                        expected,
                        compiled
                    );
                    prop_assert_eq!(engine.explain(&conn).allowed, expected);
                }
            }
        }
    }
    Ok(())
}

fn verdicts(cluster: &Cluster) -> Vec<(String, String, bool)> {
    let engine = Engine::new(cluster.clone()).expect("valid cluster");
    let eps = endpoints(cluster);
    let mut out = Vec::new();
    for (sname, src, _) in &eps {
        for (dname, dst, _) in &eps {
            for (protocol, port) in PROBES {
                let conn = Connection {
                    src: *src,
                    dst: *dst,
                    family: Family::IPv4,
                    protocol,
                    port,
                };
                out.push((
                    format!("{sname}->{dname}"),
                    format!("{protocol}/{port}"),
                    engine.allowed(&conn),
                ));
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn compiled_rule_sets_decide_as_the_engine(seed in any::<u64>()) {
        check_compiled_agrees(seed)?;
    }

    #[test]
    fn verdicts_do_not_depend_on_order(seed in any::<u64>(), rotate_pods in 0usize..10, rotate_policies in 0usize..10) {
        let cluster = support::random_cluster(seed);
        let mut shuffled = cluster.clone();
        let n = shuffled.pods.len();
        shuffled.pods.rotate_left(rotate_pods % n);
        shuffled.pods.reverse();
        if !shuffled.policies.is_empty() {
            let m = shuffled.policies.len();
            shuffled.policies.rotate_left(rotate_policies % m);
        }
        shuffled.policies.reverse();
        shuffled.namespaces.reverse();
        shuffled.tiers.reverse();
        prop_assert_eq!(verdicts(&cluster), verdicts(&shuffled));
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = Scenario::parse(&text);
    }

    #[test]
    fn parsing_mutated_scenarios_never_panics(cut in 0usize..2000, insert in "[ :\\-\\[\\]{}a-z0-9\n]{0,12}") {
        let base = include_str!("../../e2e/scenarios/walkthrough-3-allow-testcurl-for-testweb.yaml");
        let cut = base.char_indices().map(|(i, _)| i).nth(cut % base.chars().count()).unwrap_or(0);
        let text = format!("{}{insert}{}", &base[..cut], &base[cut..]);
        let _ = Scenario::parse(&text);
    }
}
