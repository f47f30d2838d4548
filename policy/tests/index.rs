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
    let pod = idx.cluster().pods[0].clone();
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
        .pods
        .into_iter()
        .find(|p| p.name == "pod-0")
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
