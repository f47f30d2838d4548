//! The scenario contract: "Pod IPs are unique". A scenario is a settled cluster, so
//! two pods with one address is a mistake in the file (the engine would pick one
//! owner, see `address_owner.rs`, and the file would test something else than it says).

use palisade_policy::scenario::{Scenario, ScenarioError};

fn scenario(pods: &str) -> String {
    format!(
        "name: dup\nnamespaces:\n  x: {{kubernetes.io/metadata.name: x}}\n  \"y\": {{kubernetes.io/metadata.name: \"y\"}}\n\
         nodes: [n1]\npods:\n{pods}ports:\n  - {{port: 80, protocol: TCP}}\nprobes:\n  - {{port: 80, protocol: TCP}}\n"
    )
}

#[track_caller]
fn refused(pods: &str) -> String {
    match Scenario::parse(&scenario(pods)) {
        Err(e @ ScenarioError::Invalid { .. }) => e.to_string(),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a scenario with a duplicate pod address was accepted"),
    }
}

#[test]
fn distinct_addresses_are_accepted() {
    let text = scenario(
        "  - {ns: x, name: old, ip: 10.244.1.12, node: n1}\n  - {ns: \"y\", name: new, ip: 10.244.1.13, node: n1}\n",
    );
    Scenario::parse(&text).expect("valid scenario");
}

#[test]
fn two_pods_with_one_ipv4_address_are_refused_naming_both() {
    let e = refused(
        "  - {ns: x, name: old, ip: 10.244.1.12, node: n1}\n  - {ns: \"y\", name: new, ip: 10.244.1.12, node: n1}\n",
    );
    for part in ["10.244.1.12", "x/old", "y/new"] {
        assert!(e.contains(part), "{e:?} lacks {part}");
    }
}

#[test]
fn two_pods_with_one_ipv6_address_are_refused() {
    let e = refused(
        "  - {ns: x, name: old, ips: [10.244.1.12, \"fd00::12\"], node: n1}\n  - {ns: \"y\", name: new, ips: [10.244.1.13, \"fd00::12\"], node: n1}\n",
    );
    assert!(e.contains("fd00::12"), "{e:?}");
}
