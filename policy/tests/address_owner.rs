//! One owner per pod address: when two pods claim one address (a Terminating pod
//! keeps `status.podIP` while the CNI gave the address to a new pod), the engine and
//! compile see only the owner with it; the other is as if pending for that family.
//!
//! The reviewer's case: x/b admits `pod=a` pods of x; x/old (`pod=a`) has 10.244.1.12;
//! then y/new (`pod=new`) appears with 10.244.1.12: traffic from that address must be
//! judged as y/new's, so it must not be admitted by x/b.

mod support;

use std::net::IpAddr;

use palisade_policy::compile::compile_node;
use palisade_policy::compiled::{NodeRuleSet, PortRange};
use palisade_policy::engine::Engine;
use palisade_policy::index::ClusterIndex;
use palisade_policy::model::*;
use support::*;

const SHARED: &str = "10.244.1.12";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Namespaces x and y, nodes n1 and n2, x/b on n1 admitting `pod=a` pods of x on
/// TCP 80, and an isolation policy for `pod=a` pods of x (ingress from nothing) so
/// that x/old has policies of its own that y/new must not inherit.
fn base() -> Cluster {
    Cluster {
        namespaces: vec![mk_ns("x", &[]), mk_ns("y", &[])],
        nodes: vec![
            mk_node("n1", &["172.18.0.2"]),
            mk_node("n2", &["172.18.0.3"]),
        ],
        pods: vec![mk_pod("x", "b", "10.244.1.20", "n1", &[("pod", "b")])],
        policies: vec![
            mk_np(
                "x",
                "allow-a",
                sel(&[("pod", "b")]),
                Some(vec![allow(
                    Some(vec![pods_peer(None, "x", sel(&[("pod", "a")]))]),
                    Some(vec![tcp(80)]),
                )]),
                None,
            ),
            mk_np("x", "isolate-a", sel(&[("pod", "a")]), Some(vec![]), None),
        ],
        tiers: Vec::new(),
    }
}

/// x/old (`pod=a`), on n1 like x/b, created at 1000 unless said otherwise.
fn old_pod(terminating: bool, created: Option<i64>) -> Pod {
    let mut p = mk_pod("x", "old", SHARED, "n1", &[("pod", "a")]);
    p.terminating = terminating;
    p.created = created;
    p
}

/// y/new (`pod=new`), also on n1 so that both would be local pods of one node.
fn new_pod(created: Option<i64>) -> Pod {
    let mut p = mk_pod("y", "new", SHARED, "n1", &[("pod", "new")]);
    p.created = created;
    p
}

/// Whether x/b's ingress on TCP 80 admits `from`, judged on the compiled state
/// (the NetworkPolicy tier: allowed when a rule of a policy of x/b matches).
fn x_b_admits(state: &NodeRuleSet, from: IpAddr) -> bool {
    let b = state
        .pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "b")
        .expect("x/b is a local pod of n1");
    let port = PortRange {
        protocol: Protocol::Tcp,
        start: 80,
        end: 80,
    };
    b.ingress
        .iter()
        .flat_map(|g| g.policies.iter())
        .flat_map(|&p| state.policies[p].ingress.iter())
        .flat_map(|r| r.matches.iter())
        .any(|m| {
            let peers = m
                .peers
                .as_ref()
                .is_none_or(|sets| sets.iter().any(|&s| state.sets[s].contains(from)));
            let ports = m.ports.as_ref().is_none_or(|ranges| {
                ranges.iter().any(|r| {
                    r.protocol == port.protocol && r.start <= port.start && port.end <= r.end
                })
            });
            peers && ports
        })
}

/// The local pods of a node that enforce `address`, as `ns/name`.
fn local_with(state: &NodeRuleSet, address: IpAddr) -> Vec<String> {
    state
        .pods
        .iter()
        .filter(|p| p.ips.contains(&address))
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

/// Every node as the index has it equals a compile from scratch of its cluster
/// (the in-place path and the rebuild path agree).
fn assert_fresh(idx: &ClusterIndex) {
    let cluster = idx.cluster().expect("committed").clone();
    let fresh = Engine::new(cluster.clone()).expect("valid");
    for node in &cluster.nodes {
        let mut expected = compile_node(&fresh, &node.name, 0);
        let got = idx.node_state(&node.name).expect("state");
        expected.version = got.version;
        assert_eq!(
            got, &expected,
            "node {} differs from a fresh compile",
            node.name
        );
    }
}

fn index_with(first: Pod) -> ClusterIndex {
    let mut idx = ClusterIndex::new();
    idx.reset(base()).expect("valid");
    idx.apply_pod(first);
    idx.commit().expect("commit");
    idx
}

fn n1(idx: &ClusterIndex) -> &NodeRuleSet {
    idx.node_state("n1").expect("n1 has a state")
}

#[test]
fn the_new_pod_owns_the_address_in_either_order_of_arrival() {
    let shared = ip(SHARED);
    // (old pod, new pod): the new one wins by creation time, by the old one's
    // deletionTimestamp, or both.
    let cases = [
        (
            "newer creationTimestamp",
            old_pod(false, Some(1000)),
            new_pod(Some(2000)),
        ),
        (
            "deletionTimestamp, no creation times",
            old_pod(true, None),
            new_pod(None),
        ),
        // Terminating beats age: the old pod is even the newer one here.
        (
            "deletionTimestamp on the newer",
            old_pod(true, Some(3000)),
            new_pod(Some(2000)),
        ),
    ];
    for (case, old, new) in cases {
        for old_first in [true, false] {
            let (first, second) = if old_first {
                (old.clone(), new.clone())
            } else {
                (new.clone(), old.clone())
            };
            let mut idx = index_with(first);
            idx.apply_pod(second);
            idx.commit().expect("commit");
            let what = format!("{case}, old first: {old_first}");
            assert!(
                !x_b_admits(n1(&idx), shared),
                "{what}: x/b admits y/new's address"
            );
            assert_eq!(local_with(n1(&idx), shared), vec!["y/new"], "{what}");
            // x/old is as if pending: not a local pod (it has no address it owns).
            assert!(
                !n1(&idx).pods.iter().any(|p| p.name == "old"),
                "{what}: x/old still enforced"
            );
            let conflicts = idx.address_conflicts();
            assert_eq!(conflicts.len(), 1, "{what}");
            assert_eq!(conflicts[0].address, shared);
            assert_eq!(conflicts[0].owner, "y/new");
            assert_eq!(conflicts[0].losers, vec!["x/old".to_string()]);
            assert_fresh(&idx);
        }
    }
}

#[test]
fn before_the_new_pod_the_old_one_is_admitted() {
    // The control: the rule the test above relies on does admit x/old.
    let idx = index_with(old_pod(false, Some(1000)));
    assert!(x_b_admits(n1(&idx), ip(SHARED)));
    assert_eq!(local_with(n1(&idx), ip(SHARED)), vec!["x/old"]);
    assert!(idx.address_conflicts().is_empty());
}

#[test]
fn when_the_owner_goes_away_the_other_pod_gets_the_address_back() {
    let shared = ip(SHARED);
    // The owner deleted (a rebuild of the index).
    let mut idx = index_with(old_pod(false, Some(1000)));
    idx.apply_pod(new_pod(Some(2000)));
    idx.commit().expect("commit");
    assert!(
        !x_b_admits(n1(&idx), shared),
        "y/new does not own the address"
    );
    idx.delete_pod("y", "new");
    let changed = idx.commit().expect("commit");
    assert!(changed.iter().any(|s| s.node == "n1"), "n1 not republished");
    assert!(x_b_admits(n1(&idx), shared));
    assert_eq!(local_with(n1(&idx), shared), vec!["x/old"]);
    assert!(idx.address_conflicts().is_empty());
    assert_fresh(&idx);

    // The owner losing its address in place (its new version has no address).
    let mut idx = index_with(old_pod(false, Some(1000)));
    idx.apply_pod(new_pod(Some(2000)));
    idx.commit().expect("commit");
    assert_eq!(local_with(n1(&idx), shared), vec!["y/new"]);
    let mut pending = new_pod(Some(2000));
    pending.ips.clear();
    idx.apply_pod(pending);
    idx.commit().expect("commit");
    assert!(x_b_admits(n1(&idx), shared));
    assert_eq!(local_with(n1(&idx), shared), vec!["x/old"]);
    assert!(idx.address_conflicts().is_empty());
    assert_fresh(&idx);
}

#[test]
fn a_pod_turning_terminating_yields_its_address_in_place() {
    let shared = ip(SHARED);
    // x/old is the newer one: it owns the address until it is being deleted.
    let mut idx = index_with(new_pod(Some(1000)));
    idx.apply_pod(old_pod(false, Some(2000)));
    idx.commit().expect("commit");
    assert_eq!(local_with(n1(&idx), shared), vec!["x/old"]);
    assert!(x_b_admits(n1(&idx), shared));
    idx.apply_pod(old_pod(true, Some(2000)));
    let changed = idx.commit().expect("commit");
    assert!(changed.iter().any(|s| s.node == "n1"), "n1 not republished");
    assert_eq!(local_with(n1(&idx), shared), vec!["y/new"]);
    assert!(!x_b_admits(n1(&idx), shared));
    assert_fresh(&idx);
}

#[test]
fn a_terminating_pod_alone_keeps_its_address_and_policies() {
    let shared = ip(SHARED);
    let idx = index_with(old_pod(true, Some(1000)));
    // Graceful shutdown: still a subject, still a peer.
    assert!(x_b_admits(n1(&idx), shared));
    let old = n1(&idx)
        .pods
        .iter()
        .find(|p| p.name == "old")
        .expect("x/old enforced");
    assert_eq!(old.ips, vec![shared]);
    assert!(!old.ingress.is_empty(), "x/old lost its isolation");
    assert!(idx.address_conflicts().is_empty());
}

#[test]
fn a_conflict_in_one_family_leaves_the_other_family_alone() {
    let (v4, v6) = (ip(SHARED), ip("fd00:10:244:1::12"));
    let mut old = old_pod(false, Some(1000));
    old.ips.push(v6);
    let mut idx = index_with(old);
    idx.apply_pod(new_pod(Some(2000)));
    idx.commit().expect("commit");
    let state = n1(&idx);
    assert_eq!(local_with(state, v4), vec!["y/new"]);
    assert_eq!(local_with(state, v6), vec!["x/old"]);
    let old = state
        .pods
        .iter()
        .find(|p| p.name == "old")
        .expect("x/old still enforced on IPv6");
    assert_eq!(old.ips, vec![v6], "x/old keeps exactly its IPv6 address");
    assert!(!x_b_admits(state, v4));
    assert!(x_b_admits(state, v6), "x/old is still a peer through IPv6");
    let conflicts = idx.address_conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].address, v4);
    assert_fresh(&idx);
}

#[test]
fn a_remaining_tie_goes_to_the_first_by_namespace_then_name() {
    // Same creation time, neither terminating: x/old before y/new, whatever the order.
    for old_first in [true, false] {
        let (old, new) = (old_pod(false, Some(1000)), new_pod(Some(1000)));
        let (first, second) = if old_first { (old, new) } else { (new, old) };
        let mut idx = index_with(first);
        idx.apply_pod(second);
        idx.commit().expect("commit");
        assert_eq!(local_with(n1(&idx), ip(SHARED)), vec!["x/old"]);
        assert_fresh(&idx);
    }
}

#[test]
fn the_conflict_diagnostic_names_the_address_the_owner_and_the_losers() {
    let mut idx = index_with(old_pod(false, Some(1000)));
    let mut third = mk_pod("y", "third", SHARED, "n2", &[]);
    third.terminating = true;
    idx.apply_pod(new_pod(Some(2000)));
    idx.apply_pod(third);
    idx.commit().expect("commit");
    let conflicts = idx.address_conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].owner, "y/new");
    // Losers in precedence order: not terminating first.
    assert_eq!(conflicts[0].losers, vec!["x/old", "y/third"]);
    let text = conflicts[0].to_string();
    for part in [SHARED, "y/new", "x/old", "y/third"] {
        assert!(text.contains(part), "{text:?} lacks {part}");
    }
    // The engine reports it too (explain, reports).
    let engine = idx.engine().expect("engine");
    assert_eq!(engine.address_conflicts(), conflicts);
}

/// Random changes through the index with addresses drawn from a small pool (so
/// pods collide), random deletion marks and creation times: every node stays as
/// a compile from scratch, every node whose state changed is reported, and no
/// address is enforced for two pods anywhere.
fn check_incremental_conflicts(seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut idx = ClusterIndex::new();
    idx.reset(random_cluster(seed)).expect("valid");
    idx.commit().expect("commit");
    for _ in 0..16 {
        let before: Vec<_> = idx
            .cluster()
            .expect("committed")
            .nodes
            .iter()
            .map(|n| idx.node_state(&n.name).cloned())
            .collect();
        let cluster = idx.cluster().expect("committed").clone();
        let mut pod = cluster.pods[rng.below(cluster.pods.len() as u64) as usize].clone();
        match rng.below(7) {
            0 | 1 if !pod.host_network => {
                // Take (or keep) an address of the pool 10.244.1.10..=12 (x's pods have them).
                let taken: IpAddr = format!("10.244.1.{}", 10 + rng.below(3))
                    .parse()
                    .expect("ip");
                pod.ips.retain(|ip| ip.is_ipv6());
                pod.ips.insert(0, taken);
            }
            2 => pod.terminating = !pod.terminating,
            3 => pod.created = Some(rng.below(3) as i64),
            4 => {
                pod.labels = labels(&[("pod", ["a", "b", "c"][rng.below(3) as usize])]);
            }
            5 => pod.ips.clear(),
            _ => {
                idx.delete_pod(&pod.namespace, &pod.name);
                let changed = idx.commit().expect("commit");
                check_round(&idx, &before, &changed, seed);
                continue;
            }
        }
        idx.apply_pod(pod);
        let changed = idx.commit().expect("commit");
        check_round(&idx, &before, &changed, seed);
    }
}

fn check_round(
    idx: &ClusterIndex,
    before: &[Option<NodeRuleSet>],
    changed: &[std::sync::Arc<NodeRuleSet>],
    seed: u64,
) {
    let now = idx.cluster().expect("committed").clone();
    let fresh = Engine::new(now.clone()).expect("valid");
    let mut enforced: std::collections::BTreeMap<IpAddr, String> = Default::default();
    for (i, node) in now.nodes.iter().enumerate() {
        let mut expected = compile_node(&fresh, &node.name, 0);
        let got = idx.node_state(&node.name).cloned().expect("state");
        expected.version = got.version;
        assert_eq!(got, expected, "seed {seed}: node {} differs", node.name);
        let reported = changed.iter().any(|s| s.node == node.name);
        let differs = before[i]
            .as_ref()
            .map(|b| (&b.pods, &b.policies, &b.sets, &b.tiers))
            != Some((&got.pods, &got.policies, &got.sets, &got.tiers));
        assert_eq!(reported, differs, "seed {seed}: node {} report", node.name);
        for p in &got.pods {
            for ip in &p.ips {
                let who = format!("{}/{}", p.namespace, p.name);
                if let Some(other) = enforced.insert(*ip, who.clone()) {
                    panic!("seed {seed}: {ip} enforced for {other} and {who}");
                }
            }
        }
    }
}

#[test]
fn incremental_resolution_matches_compiling_from_scratch() {
    for seed in 1..120 {
        check_incremental_conflicts(seed);
    }
}
