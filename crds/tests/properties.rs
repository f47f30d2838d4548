//! Policy text of any shape is an error or a policy, never a panic.

use palisade_crds::parse_manifests;
use proptest::prelude::*;

const SEED: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {}
    ports: [{port: 80, endPort: 90}, {port: serve-80-udp, protocol: UDP}]
  egress: [{}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: c}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{networks: [0.0.0.0/0]}, {domainNames: [example.com]}]
    protocols: [{tcp: {destinationPort: {range: {start: 1, end: 1024}}}}]
";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = parse_manifests(&text);
    }

    #[test]
    fn mutated_policies_never_panic(cut in 0usize..2000, len in 0usize..8, insert in "[ :\\-\\[\\]{}a-zA-Z0-9/.\n]{0,10}") {
        let chars: Vec<char> = SEED.chars().collect();
        let at = cut % chars.len();
        let end = (at + len).min(chars.len());
        let text: String = chars[..at].iter().collect::<String>() + &insert + &chars[end..].iter().collect::<String>();
        let _ = parse_manifests(&text);
    }
}

#[test]
fn the_seed_is_valid() {
    let m = parse_manifests(SEED).expect("the seed parses");
    assert_eq!(m.policies.len(), 2);
}
