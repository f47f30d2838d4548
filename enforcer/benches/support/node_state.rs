//! The node the enforcer benchmarks program: 100 local pods and 1,000 policy rules
//! (200 NetworkPolicies x 5 ingress rules, each rule's peers one set of 5
//! addresses per family: 5,000 peer addresses per family), plus a baseline egress
//! policy with one set of all 5,000 addresses per family. IPv4 only, or dual-stack
//! (every pod and peer with an IPv4 and an IPv6 address, every set in both
//! families). Used by `program` and `podstart` (`#[path]`-included next to the
//! tests' `common` module).

use crate::common::*;
use palisade_policy::compiled::{CompiledPolicy, LocalPod};
use palisade_policy::model::{Action, Family, PolicyKind};

pub fn peer4(i: usize) -> String {
    format!("10.128.{}.{}", i / 250, 1 + i % 250)
}

pub fn peer6(i: usize) -> String {
    format!("2001:2:0:80::{:x}", i + 1)
}

pub fn pod4(i: usize) -> String {
    format!("10.64.{}.{}", i / 250, 1 + i % 250)
}

pub fn pod6(i: usize) -> String {
    format!("2001:2:0:64::{:x}", i + 1)
}

/// The state, and the index of one small IPv4 set (to grow by one address).
pub fn node_state(version: u64, dual: bool) -> (palisade_enforcer::NodeRuleSet, usize) {
    let mut sets = Vec::new();
    let mut policies: Vec<CompiledPolicy> = Vec::new();
    let mut grow = 0;
    for p in 0..200 {
        let mut ingress = Vec::new();
        for r in 0..5 {
            let rule = p * 5 + r;
            let members = |f: fn(usize) -> String, len: u8| -> Vec<String> {
                (0..5)
                    .map(|k| format!("{}/{len}", f(rule * 5 + k)))
                    .collect()
            };
            let v4 = members(peer4, 32);
            let refs: Vec<&str> = v4.iter().map(String::as_str).collect();
            let key = format!("np/ns{}/p{p}/in/{r}", p % 10);
            let mut peers = vec![sets.len()];
            if rule == 17 {
                grow = sets.len();
            }
            sets.push(mk_set(&key, Family::IPv4, &refs, &[]));
            if dual {
                let v6 = members(peer6, 128);
                let refs: Vec<&str> = v6.iter().map(String::as_str).collect();
                peers.push(sets.len());
                sets.push(mk_set(&format!("{key}/v6"), Family::IPv6, &refs, &[]));
            }
            ingress.push(mk_rule(
                r,
                Action::Accept,
                vec![mk_match(
                    Some(peers),
                    Some(vec![tcp(8000 + r as u16)]),
                    None,
                )],
            ));
        }
        policies.push(mk_policy(
            PolicyKind::NetworkPolicy,
            Some(&format!("ns{}", p % 10)),
            &format!("p{p}"),
            0,
            ingress,
            vec![],
        ));
    }
    let mut big = Vec::new();
    let all: Vec<String> = (0..5000).map(|i| format!("{}/32", peer4(i))).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    big.push(sets.len());
    sets.push(mk_set("baseline/all-peers", Family::IPv4, &refs, &[]));
    if dual {
        let all: Vec<String> = (0..5000).map(|i| format!("{}/128", peer6(i))).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        big.push(sets.len());
        sets.push(mk_set("baseline/all-peers/v6", Family::IPv6, &refs, &[]));
    }
    policies.push(mk_policy(
        PolicyKind::BaselineAdminNetworkPolicy,
        None,
        "default",
        1,
        vec![],
        vec![mk_rule(0, Action::Accept, vec![from_sets(&big)])],
    ));
    let pods = (0..100)
        .map(|i| local_pod(i, dual, policies.len() - 1))
        .collect();
    (
        mk_rule_set(
            version,
            &["192.0.2.1"],
            vec![np_tier(), baseline()],
            sets,
            policies,
            pods,
        ),
        grow,
    )
}

/// Local pod `i`: selected by 4 of the 200 policies for ingress, by the baseline
/// policy for egress.
pub fn local_pod(i: usize, dual: bool, baseline_policy: usize) -> LocalPod {
    let mut selected: Vec<usize> = (0..4)
        .map(|k| (i + 100 * (k % 2) + k / 2 * 7) % 200)
        .collect();
    selected.sort_unstable();
    selected.dedup();
    let (v4, v6) = (pod4(i), pod6(i));
    let ips: Vec<&str> = if dual {
        vec![v4.as_str(), v6.as_str()]
    } else {
        vec![v4.as_str()]
    };
    mk_pod(
        &format!("ns{}", i % 10),
        &format!("pod{i}"),
        &ips,
        vec![tp(0, &selected)],
        vec![tp(1, &[baseline_policy])],
    )
}
