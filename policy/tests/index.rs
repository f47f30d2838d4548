//! The operator's index: versions move only when a node's rules change.

mod support;

use palisade_policy::index::ClusterIndex;
use palisade_policy::model::*;
use support::*;

fn index() -> ClusterIndex {
    let mut idx = ClusterIndex::new();
    idx.reset(antrea_workload(20, 4)).expect("valid");
    idx
}

#[test]
fn first_commit_gives_every_node_version_one_and_a_second_nothing() {
    let mut idx = index();
    let changed = idx.commit().expect("commit");
    assert_eq!(changed.len(), 4);
    assert!(changed.iter().all(|s| s.version == 1));
    assert!(idx.commit().expect("commit").is_empty());
    // Re-applying an identical object changes nothing either.
    let pod = idx.cluster().expect("committed").pods[0].clone();
    idx.apply_pod(pod);
    assert!(idx.commit().expect("commit").is_empty());
}

#[test]
fn a_relabelled_pod_changes_only_the_nodes_whose_rules_it_affects() {
    let mut idx = index();
    idx.commit().expect("commit");
    // pod-0 (node-0, ns-0) moves from app-1 to app-2: ns-0's pods sit on node-0..3,
    // so those nodes whose pods' rules reference ns-0's sets change.
    let mut pod = idx
        .cluster()
        .expect("committed")
        .pods
        .iter()
        .find(|p| p.name == "pod-0")
        .cloned()
        .expect("pod-0");
    pod.labels = labels(&[("app-2", "scale-2")]);
    idx.apply_pod(pod);
    let changed = idx.commit().expect("commit");
    let names: Vec<&str> = changed.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(names, ["node-0", "node-1", "node-2", "node-3"]);
    assert!(changed.iter().all(|s| s.version == 2));
    assert_eq!(idx.node_state("node-0").map(|s| s.version), Some(2));
}

#[test]
fn a_change_in_one_namespace_leaves_unrelated_nodes_alone() {
    let mut idx = ClusterIndex::new();
    let mut c = antrea_workload(4, 8);
    // Pin each namespace's pods to their own pair of nodes.
    for (i, p) in c.pods.iter_mut().enumerate() {
        p.node = Some(format!("node-{}", (i / 4) * 2 + i % 2));
    }
    idx.reset(c).expect("valid");
    idx.commit().expect("commit");
    idx.delete_policy(&np_id("ns-1", "allow-app-1"));
    let changed = idx.commit().expect("commit");
    let names: Vec<&str> = changed.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(names, ["node-2", "node-3"]);
}

#[test]
fn bad_objects_are_refused_one_by_one() {
    let mut idx = index();
    let bad = Tier {
        name: "admin".into(),
        priority: 5,
        default_action: DefaultAction::Pass,
    };
    assert!(idx.apply_tier(bad).is_err());
    let mut np = mk_np("ns-0", "x", LabelSelector::everything(), Some(vec![]), None);
    np.tier = "admin".into();
    assert!(idx.apply_policy(np).is_err());
    // The rest still compiles.
    assert_eq!(idx.commit().expect("commit").len(), 4);
}

#[test]
fn the_audit_default_is_compiled_into_every_state_and_is_no_change_by_itself() {
    let mut idx = ClusterIndex::new().with_audit_default(Some(AuditMode::Deny));
    idx.reset(antrea_workload(20, 4)).expect("valid");
    let changed = idx.commit().expect("commit");
    assert_eq!(changed.len(), 4);
    for state in &changed {
        assert_eq!(state.audit_default, Some(AuditMode::Deny));
        // The published state is the index's own: nothing was copied to set the default.
        let kept = idx.node_state(&state.node).expect("kept");
        assert!(std::ptr::eq(state.as_ref(), kept));
    }
    assert!(idx.commit().expect("commit").is_empty());
    let mut pod = idx.cluster().expect("committed").pods[0].clone();
    pod.labels = labels(&[("app-2", "scale-2")]);
    idx.apply_pod(pod);
    let changed = idx.commit().expect("commit");
    assert!(!changed.is_empty());
    assert!(changed
        .iter()
        .all(|s| s.audit_default == Some(AuditMode::Deny) && s.version == 2));
    // Without the setting the states say nothing (all decisions): their digest is unchanged.
    let mut plain = ClusterIndex::new();
    plain.reset(antrea_workload(20, 4)).expect("valid");
    assert!(plain
        .commit()
        .expect("commit")
        .iter()
        .all(|s| s.audit_default.is_none()));
}

#[test]
fn a_policy_of_another_kind_in_the_networkpolicy_tier_is_refused() {
    let np = mk_np("ns-0", "x", LabelSelector::everything(), Some(vec![]), None);
    assert!(np.check_tier().is_ok());
    let mut other = np.clone();
    other.id.kind = PolicyKind::ClusterNetworkPolicy;
    let err = other.check_tier().expect_err("outside its tier");
    assert!(err.to_string().contains("spec.tier"), "{err}");
    let mut idx = index();
    assert!(idx.apply_policy(other).is_err());
}

/// Random changes applied through the index (pods in place, others by
/// re-indexing) leave every node exactly as compiling from scratch would, and
/// every node whose state differs from before is reported.
fn check_incremental(seed: u64) {
    use palisade_policy::compile::compile_node;
    use palisade_policy::engine::Engine;
    let mut rng = Rng(seed | 1);
    let mut idx = ClusterIndex::new();
    idx.reset(random_cluster(seed)).expect("valid");
    idx.commit().expect("commit");
    for _ in 0..12 {
        let before: Vec<_> = idx
            .cluster()
            .expect("committed")
            .nodes
            .iter()
            .map(|n| idx.node_state(&n.name).cloned())
            .collect();
        let cluster = idx.cluster().expect("committed").clone();
        let mut pod = cluster.pods[rng.below(cluster.pods.len() as u64) as usize].clone();
        match rng.below(6) {
            0 | 1 => {
                pod.labels = labels(&[
                    ("pod", ["a", "b", "c"][rng.below(3) as usize]),
                    ("app", ["a", "b", "x"][rng.below(3) as usize]),
                ]);
            }
            2 => {
                if !pod.host_network {
                    pod.ips = vec![format!("10.250.{}.{}", rng.below(200), rng.below(200) + 1)
                        .parse()
                        .expect("ip")];
                }
            }
            3 => {
                pod.name = format!("new-{}", rng.below(1000));
                pod.ips = if pod.host_network {
                    vec![]
                } else {
                    vec![format!("10.251.{}.{}", rng.below(200), rng.below(200) + 1)
                        .parse()
                        .expect("ip")]
                };
            }
            4 => pod.ips.clear(),
            _ => {
                idx.delete_pod(&pod.namespace, &pod.name);
            }
        }
        // Addresses must stay unique.
        let taken = cluster
            .pods
            .iter()
            .any(|p| p.name != pod.name && pod.ips.iter().any(|ip| p.ips.contains(ip)));
        if !taken {
            idx.apply_pod(pod);
        }
        let changed = idx.commit().expect("commit");
        let now = idx.cluster().expect("committed").clone();
        let fresh = Engine::new(now.clone()).expect("valid");
        for (i, node) in now.nodes.iter().enumerate() {
            let mut expected = compile_node(&fresh, &node.name, 0);
            let got = idx.node_state(&node.name).cloned().expect("state");
            expected.version = got.version;
            assert_eq!(
                got, expected,
                "seed {seed}: node {} differs from a fresh compile",
                node.name
            );
            let reported = changed.iter().any(|s| s.node == node.name);
            let differs = before[i]
                .as_ref()
                .map(|b| (&b.pods, &b.policies, &b.sets, &b.tiers))
                != Some((&got.pods, &got.policies, &got.sets, &got.tiers));
            assert_eq!(
                reported, differs,
                "seed {seed}: node {} change reported {reported}, differs {differs}",
                node.name
            );
        }
    }
}

#[test]
fn incremental_commits_match_compiling_from_scratch() {
    for seed in 1..150 {
        check_incremental(seed);
    }
}
