//! The compiled rule sets decide every connection exactly as the engine does,
//! judged by the evaluator the enforcer itself uses (which the kernel tests
//! check against real packets): engine == compiled form == kernel.

#[path = "../../policy/tests/support/mod.rs"]
mod support;

use palisade_enforcer::{Evaluator, Flow, Verdict, L4};
use palisade_policy::compile::compile_node;
use palisade_policy::engine::{Connection, Engine};
use palisade_policy::model::{Family, Protocol};
use proptest::prelude::*;

fn l4(protocol: Protocol, port: u16) -> L4 {
    match protocol {
        Protocol::Tcp => L4::Tcp(port),
        Protocol::Udp => L4::Udp(port),
        Protocol::Sctp => L4::Sctp(port),
        Protocol::Icmp => L4::Icmp,
    }
}

fn check(seed: u64) -> Result<(), TestCaseError> {
    let cluster = support::random_cluster(seed);
    let engine = Engine::new(cluster.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let evaluators: Vec<Evaluator> = cluster
        .nodes
        .iter()
        .map(|n| Evaluator::new(&compile_node(&engine, &n.name, 1)))
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let eps = support::endpoints(&cluster);
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
                for (protocol, port) in support::PROBES {
                    let conn = Connection {
                        src: *src,
                        dst: *dst,
                        family,
                        protocol,
                        port,
                    };
                    let expected = engine.allowed(&conn);
                    let flow = Flow {
                        src: *sip,
                        dst: *dip,
                        l4: l4(protocol, port),
                    };
                    let compiled = evaluators
                        .iter()
                        .all(|e| e.eval(&flow).verdict == Verdict::Accept);
                    prop_assert_eq!(
                        compiled,
                        expected,
                        "seed {} {}->{} {:?} {}/{}",
                        seed,
                        sname,
                        dname,
                        family,
                        protocol,
                        port
                    );
                    prop_assert_eq!(engine.explain(&conn).allowed, expected);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn compiled_rule_sets_decide_as_the_engine(seed in any::<u64>()) {
        check(seed)?;
    }
}
