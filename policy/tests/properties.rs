//! Properties of the engine over random clusters: verdicts do not depend on input
//! order; parsing arbitrary text never panics. (That the compiled rule sets decide
//! exactly as the engine does is checked in the enforcer's tests, against the
//! evaluator the enforcer itself uses.)

mod support;

use palisade_policy::engine::{Connection, Engine};
use palisade_policy::model::{Cluster, Family};
use palisade_policy::scenario::Scenario;
use proptest::prelude::*;

fn verdicts(cluster: &Cluster) -> Vec<(String, String, bool)> {
    let engine = Engine::new(cluster.clone()).expect("valid cluster");
    let eps = support::endpoints(cluster);
    let mut out = Vec::new();
    for (sname, src, _) in &eps {
        for (dname, dst, _) in &eps {
            for (protocol, port) in support::PROBES {
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
