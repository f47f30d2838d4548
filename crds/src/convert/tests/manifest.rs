//! Multi-document manifests: kinds, strictness, document numbers and lines.

use palisade_policy::model::PolicyKind;

use super::{assert_field_error, error, policy};
use crate::convert::manifest::{document_starts, first_unknown_field};
use crate::convert::parse_manifests;
use crate::CrdError;

const NP: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: ns1}
spec: {podSelector: {}}
";

const EVERY_KIND: &str = "# every kind Palisade reads
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: ns1}
spec: {podSelector: {}}
---
---
# an empty document above, a comment-only one below
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: cnp}
spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: anp}
spec: {priority: 1, subject: {namespaces: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec: {subject: {namespaces: {}}}
---
apiVersion: palisade.dev/v1alpha1
kind: Tier
metadata: {name: gold}
spec: {priority: 50}
---
apiVersion: palisade.dev/v1alpha1
kind: TieredNetworkPolicy
metadata: {name: tnp}
spec: {tier: gold, priority: 1, subject: {namespaces: {}}}
";

#[test]
fn every_kind_is_read_and_empty_documents_are_skipped() {
    let m = parse_manifests(EVERY_KIND).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<PolicyKind> = m.policies.iter().map(|p| p.id.kind).collect();
    assert_eq!(
        kinds,
        vec![
            PolicyKind::NetworkPolicy,
            PolicyKind::ClusterNetworkPolicy,
            PolicyKind::AdminNetworkPolicy,
            PolicyKind::BaselineAdminNetworkPolicy,
            PolicyKind::TieredNetworkPolicy,
        ]
    );
    assert_eq!(m.tiers.len(), 1);
    assert_eq!(m.tiers[0].name, "gold");
}

#[test]
fn empty_input_is_no_objects() {
    for text in ["", "\n", "---\n", "# nothing\n", "---\n---\n"] {
        assert_eq!(
            parse_manifests(text).unwrap(),
            Default::default(),
            "{text:?}"
        );
    }
}

#[test]
fn unsupported_kind_is_an_error_with_the_document_number() {
    let text = format!("{NP}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n");
    let e = error(&text);
    assert_eq!(e.document(), Some(2));
    // No field to point at: the line the document starts at.
    assert_eq!(e.line(), Some(6));
    assert!(
        matches!(e.innermost(), CrdError::UnsupportedKind { kind, .. } if kind == "ConfigMap"),
        "{e}"
    );
}

#[test]
fn unsupported_version_of_a_known_kind_is_an_error() {
    for (api_version, kind) in [
        ("policy.networking.k8s.io/v1alpha1", "ClusterNetworkPolicy"),
        ("policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy"),
        ("policy.networking.k8s.io/v1alpha2", "AdminNetworkPolicy"),
        ("networking.k8s.io/v1beta1", "NetworkPolicy"),
        ("palisade.dev/v1", "Tier"),
    ] {
        let e = error(&format!(
            "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n"
        ));
        assert!(
            matches!(e.innermost(), CrdError::UnsupportedKind { .. }),
            "{api_version} {kind}: {e}"
        );
    }
}

#[test]
fn missing_api_version_or_kind_is_an_error() {
    assert_field_error("kind: NetworkPolicy\nmetadata: {name: x}\n", "apiVersion");
    assert_field_error(
        "apiVersion: networking.k8s.io/v1\nmetadata: {name: x}\n",
        "kind",
    );
}

#[test]
fn a_document_that_is_not_a_mapping_is_an_error() {
    let e = error("- a\n- b\n");
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
    assert_eq!(e.document(), Some(1));
}

#[test]
fn unknown_field_is_an_error_naming_its_path() {
    // A typo that would otherwise select every pod.
    let e = assert_field_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1}\nspec:\n  podSelecter: {matchLabels: {app: web}}\n",
        "spec.podSelecter",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
    assert_eq!(e.object(), Some("NetworkPolicy ns1/np"));
}

#[test]
fn unknown_fields_deep_inside_are_errors() {
    assert_field_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1}\nspec: {ingress: [{from: [{podSelector: {matchLabel: {a: b}}}]}]}\n",
        "spec.ingress[0].from[0].podSelector.matchLabel",
    );
    assert_field_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1, label: {a: b}}\nspec: {}\n",
        "metadata.label",
    );
    assert_field_error(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingres: []}\n",
        "spec.ingres",
    );
    assert_field_error(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tier\nmetadata: {name: gold}\nspec: {priority: 1, default: Deny}\n",
        "spec.default",
    );
    assert_field_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1}\nspec: {}\nextra: 1\n",
        "extra",
    );
}

#[test]
fn null_values_are_absent_values() {
    let p = policy(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1, labels: null}\nspec: {podSelector: {}, egress: null, policyTypes: null}\n",
    );
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, None);
}

#[test]
fn kubectl_output_fields_are_accepted() {
    let p = policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: np
  namespace: ns1
  uid: 0b9e0f0e-1a0c-4c77-9a47-6b0d1b1c0a11
  resourceVersion: '123'
  generation: 2
  creationTimestamp: '2024-01-02T03:04:05Z'
  labels: {a: b}
  annotations: {note: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
    );
    assert_eq!(p.id.name, "np");
}

#[test]
fn duplicate_key_is_an_error_with_its_line() {
    let e = error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1}\nspec:\n  ingress: [{}]\n  ingress: []\n",
    );
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
    // serde_yaml reports the line where the mapping holding the duplicate starts.
    assert_eq!(e.line(), Some(5));
}

#[test]
fn wrong_type_is_an_error_with_its_line() {
    let text = format!(
        "{NP}---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: cnp}}\nspec:\n  tier: Admin\n  priority: high\n  subject: {{namespaces: {{}}}}\n"
    );
    let e = error(&text);
    assert_eq!(e.document(), Some(2));
    assert_eq!(e.line(), Some(11));
    assert_eq!(e.object(), Some("ClusterNetworkPolicy cnp"));
    assert!(e.to_string().contains("priority"), "{e}");
}

#[test]
fn invalid_yaml_is_an_error_with_its_line() {
    let e = error("apiVersion: networking.k8s.io/v1\nkind: [NetworkPolicy\n");
    assert_eq!(e.document(), Some(1));
    assert!(e.line().is_some(), "{e}");
}

#[test]
fn semantic_errors_carry_the_document_number_and_start_line() {
    let second = NP.replace("name: np", "name: np2");
    let text = format!(
        "{NP}---\n{second}---\n# third\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: ns1}}\nspec: {{policyTypes: [Sideways]}}\n"
    );
    let e = error(&text);
    assert_eq!(e.document(), Some(3));
    // The line of policyTypes, the one key of the field at fault.
    assert_eq!(e.line(), Some(15));
    assert_eq!(
        e.to_string(),
        "document 3 (line 15): NetworkPolicy ns1/bad: field spec.policyTypes[0]: unsupported \
         policy type \"Sideways\" (must be Ingress or Egress)"
    );
}

#[test]
fn the_same_object_twice_is_an_error() {
    let e = error(&format!("{NP}---\n{NP}"));
    assert_eq!(e.document(), Some(2));
    assert!(
        matches!(e.innermost(), CrdError::Duplicate { first: 1, .. }),
        "{e}"
    );
    // Same name in another namespace, or another kind, is another object.
    let other_ns = NP.replace("ns1", "ns2");
    assert_eq!(
        parse_manifests(&format!("{NP}---\n{other_ns}"))
            .unwrap()
            .policies
            .len(),
        2
    );
    let tiers = "apiVersion: palisade.dev/v1alpha1\nkind: Tier\nmetadata: {name: gold}\nspec: {priority: 5}\n";
    let e = error(&format!("{tiers}---\n{tiers}"));
    assert!(matches!(e.innermost(), CrdError::Duplicate { .. }), "{e}");
}

#[test]
fn documents_are_numbered_from_one_including_empty_ones() {
    let text = format!(
        "---\n---\n{}",
        NP.replace("namespace: ns1", "namespace: ''")
    );
    let e = error(&text);
    assert_eq!(e.document(), Some(2));
    assert_eq!(e.field(), Some("metadata.namespace"));
}

#[test]
fn first_unknown_field_compares_recursively() {
    use serde_json::json;
    let original = json!({"a": {"b": [1, {"c": 1, "d": null}]}, "e": 1});
    let same = json!({"a": {"b": [1, {"c": 1}]}, "e": 1, "added": 2});
    assert_eq!(first_unknown_field(&original, &same, ""), None);
    let missing = json!({"a": {"b": [1, {}]}, "e": 1});
    assert_eq!(
        first_unknown_field(&original, &missing, ""),
        Some("a.b[1].c".to_string())
    );
    let top = json!({"a": {"b": [1, {"c": 1}]}});
    assert_eq!(
        first_unknown_field(&original, &top, ""),
        Some("e".to_string())
    );
}

#[test]
fn document_starts_follow_separators() {
    assert_eq!(
        document_starts("a: 1\n---\nb: 2\n", 2),
        vec![Some(1), Some(3)]
    );
    assert_eq!(
        document_starts("---\na: 1\n--- \nb: 2\n", 2),
        vec![Some(2), Some(4)]
    );
    // Counts that do not add up give no line rather than a wrong one.
    assert_eq!(document_starts("a: 1\n", 3), vec![None, None, None]);
}

#[test]
fn many_documents_are_read() {
    // Valid manifests are parsed once (not once per document): 2000 documents stay fast.
    let docs: Vec<String> = (0..2000)
        .map(|i| NP.replace("name: np", &format!("name: np{i}")))
        .collect();
    let m = parse_manifests(&docs.join("---\n")).unwrap();
    assert_eq!(m.policies.len(), 2000);
    assert_eq!(m.policies[1999].id.name, "np1999");
}

#[test]
fn errors_point_at_the_line_of_a_field_whose_key_is_unique() {
    let text = format!(
        "{NP}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: x, namespace: ns1}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - podSelecter: {{}}\n"
    );
    let e = error(&text);
    assert_eq!(e.field(), Some("spec.ingress[0].from[0].podSelecter"));
    assert_eq!(e.line(), Some(13));
    // A key that occurs twice in the document: the document's first line instead.
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: ns1}\nspec:\n  ingress:\n  - ports: [{port: 80}]\n  - ports: [{port: 0}]\n";
    let e = error(text);
    assert_eq!(e.field(), Some("spec.ingress[1].ports[0].port"));
    assert_eq!(e.line(), Some(1));
}
