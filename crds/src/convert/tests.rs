//! Unit tests of the conversions (one per semantic rule and per error).

use super::*;

#[test]
fn smoke_network_policy() {
    let m = parse_manifests(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: default}\nspec:\n  podSelector: {matchLabels: {run: web}}\n  ingress: []\n",
    )
    .unwrap();
    assert_eq!(m.policies.len(), 1);
    assert_eq!(m.policies[0].ingress, Some(vec![]));
    assert_eq!(m.policies[0].egress, None);
}
