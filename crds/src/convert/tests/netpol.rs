//! NetworkPolicy semantics and validation.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use palisade_policy::model::{
    Action, LabelSelector, NamespaceMatch, Operator, Peer, PolicyId, PolicyKind, PortMatch,
    Protocol, Rule, Subject,
};

use super::{assert_field_error, cidr, error, labels, policy, requirement};
use crate::convert::network_policy;
use crate::CrdError;

/// A NetworkPolicy `np` in namespace `ns1` with the given spec (a YAML flow mapping).
fn np(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: ns1}}\nspec: {spec}\n"
    )
}

/// The ingress rules of a policy with the given ingress rule list.
fn ingress_rules(rules: &str) -> Vec<Rule> {
    policy(&np(&format!("{{ingress: {rules}}}")))
        .ingress
        .expect("ingress applies")
}

fn one_ingress_rule(rule: &str) -> Rule {
    let mut rules = ingress_rules(&format!("[{rule}]"));
    assert_eq!(rules.len(), 1);
    rules.remove(0)
}

fn ingress_peers(from: &str) -> Vec<Peer> {
    one_ingress_rule(&format!("{{from: {from}}}"))
        .peers
        .expect("peers")
}

fn ingress_ports(ports: &str) -> Vec<PortMatch> {
    one_ingress_rule(&format!("{{ports: {ports}}}"))
        .ports
        .expect("ports")
}

#[test]
fn identity_tier_priority_and_subject() {
    let p = policy(&np("{podSelector: {matchLabels: {run: web}}}"));
    assert_eq!(
        p.id,
        PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some("ns1".into()),
            name: "np".into()
        }
    );
    assert_eq!(p.tier, "networkpolicy");
    assert_eq!(p.priority, 0);
    assert_eq!(p.audit, None);
    assert_eq!(
        p.subject,
        Subject::Namespaced {
            namespace: "ns1".into(),
            pods: labels(&[("run", "web")])
        }
    );
}

#[test]
fn absent_pod_selector_selects_every_pod() {
    let p = policy(&np("{ingress: []}"));
    assert_eq!(
        p.subject,
        Subject::Namespaced {
            namespace: "ns1".into(),
            pods: LabelSelector::everything()
        }
    );
}

#[test]
fn absent_spec_isolates_ingress_of_every_pod() {
    let p = policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1}\n");
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, None);
}

#[test]
fn namespace_is_required() {
    let e = assert_field_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {}\n",
        "metadata.namespace",
    );
    assert_eq!(e.object(), Some("NetworkPolicy np"));
    // The per-object function (the operator's) says the same.
    let obj: NetworkPolicy = serde_yaml::from_str("metadata: {name: np}\nspec: {}\n").unwrap();
    let e = network_policy(&obj).unwrap_err();
    assert_eq!(e.field(), Some("metadata.namespace"));
}

#[test]
fn name_is_required() {
    assert_field_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: ns1}\nspec: {}\n",
        "metadata.name",
    );
}

#[test]
fn policy_types_absent_means_ingress_only_without_egress_rules() {
    let p = policy(&np("{podSelector: {}, ingress: [{}]}"));
    assert_eq!(p.ingress.map(|r| r.len()), Some(1));
    assert_eq!(p.egress, None);
}

#[test]
fn policy_types_absent_adds_egress_when_egress_rules_exist() {
    let p = policy(&np("{egress: [{}]}"));
    // Ingress always, and it has no rules: deny all ingress.
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress.map(|r| r.len()), Some(1));
}

#[test]
fn policy_types_absent_and_empty_egress_list_does_not_isolate_egress() {
    // Upstream defaulting adds Egress only when len(spec.egress) > 0.
    let p = policy(&np("{egress: []}"));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, None);
}

#[test]
fn policy_types_empty_list_is_defaulted_like_absent() {
    let p = policy(&np("{policyTypes: [], egress: [{}]}"));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress.map(|r| r.len()), Some(1));
}

#[test]
fn policy_types_egress_only_ignores_written_ingress_rules() {
    let p = policy(&np("{policyTypes: [Egress], ingress: [{}]}"));
    assert_eq!(p.ingress, None);
    // Egress listed without rules: deny all egress.
    assert_eq!(p.egress, Some(vec![]));
}

#[test]
fn policy_types_both_directions() {
    let p = policy(&np("{policyTypes: [Ingress, Egress]}"));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, Some(vec![]));
}

#[test]
fn policy_types_ingress_only_ignores_egress_rules() {
    let p = policy(&np("{policyTypes: [Ingress], egress: [{}]}"));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, None);
}

#[test]
fn policy_type_other_than_ingress_or_egress_is_an_error() {
    assert_field_error(&np("{policyTypes: [ingress]}"), "spec.policyTypes[0]");
    assert_field_error(&np("{policyTypes: [Ingress, Both]}"), "spec.policyTypes[1]");
}

#[test]
fn more_than_two_policy_types_is_an_error() {
    assert_field_error(
        &np("{policyTypes: [Ingress, Egress, Ingress]}"),
        "spec.policyTypes",
    );
}

#[test]
fn rules_of_a_direction_not_in_effect_are_still_validated() {
    assert_field_error(
        &np("{policyTypes: [Ingress], egress: [{to: [{}]}]}"),
        "spec.egress[0].to[0]",
    );
}

#[test]
fn rules_accept_and_have_no_name() {
    let r = one_ingress_rule("{}");
    assert_eq!(
        r,
        Rule {
            name: None,
            action: Action::Accept,
            peers: None,
            ports: None
        }
    );
}

#[test]
fn absent_or_empty_from_and_ports_match_everything() {
    let rules = ingress_rules("[{}, {from: [], ports: []}]");
    for r in rules {
        assert_eq!(r.peers, None);
        assert_eq!(r.ports, None);
    }
}

#[test]
fn pod_selector_peer_is_in_the_policy_namespace() {
    assert_eq!(
        ingress_peers("[{podSelector: {matchLabels: {app: db}}}]"),
        vec![Peer::Pods {
            namespaces: NamespaceMatch::Named("ns1".into()),
            pods: labels(&[("app", "db")])
        }]
    );
}

#[test]
fn namespace_selector_peer_selects_every_pod_of_the_namespaces() {
    assert_eq!(
        ingress_peers("[{namespaceSelector: {matchLabels: {team: x}}}]"),
        vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(labels(&[("team", "x")])),
            pods: LabelSelector::everything()
        }]
    );
}

#[test]
fn both_selectors_peer_selects_pods_of_the_namespaces() {
    assert_eq!(
        ingress_peers(
            "[{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: db}}}]"
        ),
        vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(labels(&[("team", "x")])),
            pods: labels(&[("app", "db")])
        }]
    );
}

#[test]
fn empty_namespace_selector_selects_every_namespace() {
    assert_eq!(
        ingress_peers("[{namespaceSelector: {}}]"),
        vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(LabelSelector::everything()),
            pods: LabelSelector::everything()
        }]
    );
}

#[test]
fn egress_peers_use_the_to_field() {
    let p = policy(&np(
        "{policyTypes: [Egress], egress: [{to: [{podSelector: {}}]}]}",
    ));
    let rules = p.egress.expect("egress");
    assert_eq!(
        rules[0].peers,
        Some(vec![Peer::Pods {
            namespaces: NamespaceMatch::Named("ns1".into()),
            pods: LabelSelector::everything()
        }])
    );
}

#[test]
fn ip_block_with_except() {
    assert_eq!(
        ingress_peers("[{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.0/24]}}]"),
        vec![Peer::IpBlock {
            cidr: cidr("10.0.0.0/8"),
            except: vec![cidr("10.1.0.0/16"), cidr("10.2.3.0/24")]
        }]
    );
}

#[test]
fn ip_block_ipv6() {
    assert_eq!(
        ingress_peers("[{ipBlock: {cidr: 'fd00::/8', except: ['fd00:1::/32']}}]"),
        vec![Peer::IpBlock {
            cidr: cidr("fd00::/8"),
            except: vec![cidr("fd00:1::/32")]
        }]
    );
}

#[test]
fn ip_block_host_bits_are_cleared() {
    assert_eq!(
        ingress_peers("[{ipBlock: {cidr: 10.0.0.1/24, except: [10.0.0.129/25]}}]"),
        vec![Peer::IpBlock {
            cidr: cidr("10.0.0.0/24"),
            except: vec![cidr("10.0.0.128/25")]
        }]
    );
}

#[test]
fn ip_block_with_a_selector_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}"),
        "spec.ingress[0].from[0]",
    );
    assert_field_error(
        &np("{ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]}"),
        "spec.ingress[0].from[1]",
    );
}

#[test]
fn empty_peer_is_an_error() {
    assert_field_error(&np("{ingress: [{from: [{}]}]}"), "spec.ingress[0].from[0]");
}

#[test]
fn invalid_cidr_is_an_error() {
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "300.0.0.0/8",
        "nonsense",
        "'fd00::/129'",
    ] {
        assert_field_error(
            &np(&format!(
                "{{ingress: [{{from: [{{ipBlock: {{cidr: {bad}}}}}]}}]}}"
            )),
            "spec.ingress[0].from[0].ipBlock.cidr",
        );
    }
}

#[test]
fn empty_cidr_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: ''}}]}]}"),
        "spec.ingress[0].from[0].ipBlock.cidr",
    );
}

#[test]
fn except_outside_cidr_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
    );
}

#[test]
fn except_equal_to_cidr_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/16, 10.0.0.0/8]}}]}]}"),
        "spec.ingress[0].from[0].ipBlock.except[1]",
    );
}

#[test]
fn except_wider_than_cidr_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]}]}"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
    );
}

#[test]
fn except_of_another_family_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: ['::/1']}}]}]}"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
    );
}

#[test]
fn invalid_except_is_an_error() {
    assert_field_error(
        &np("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0]}}]}]}"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
    );
}

#[test]
fn port_protocol_defaults_to_tcp() {
    assert_eq!(
        ingress_ports("[{port: 80}]"),
        vec![PortMatch::Range {
            protocol: Protocol::Tcp,
            start: 80,
            end: 80
        }]
    );
}

#[test]
fn port_protocols_udp_and_sctp() {
    assert_eq!(
        ingress_ports(
            "[{protocol: UDP, port: 53}, {protocol: SCTP, port: 9}, {protocol: TCP, port: 1}]"
        ),
        vec![
            PortMatch::Range {
                protocol: Protocol::Udp,
                start: 53,
                end: 53
            },
            PortMatch::Range {
                protocol: Protocol::Sctp,
                start: 9,
                end: 9
            },
            PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 1,
                end: 1
            },
        ]
    );
}

#[test]
fn unsupported_protocol_is_an_error() {
    for bad in ["ICMP", "tcp", "Udp", "''"] {
        assert_field_error(
            &np(&format!(
                "{{ingress: [{{ports: [{{protocol: {bad}, port: 80}}]}}]}}"
            )),
            "spec.ingress[0].ports[0].protocol",
        );
    }
}

#[test]
fn absent_port_means_every_port_of_the_protocol() {
    assert_eq!(
        ingress_ports("[{protocol: UDP}, {}]"),
        vec![
            PortMatch::AllPorts {
                protocol: Protocol::Udp
            },
            PortMatch::AllPorts {
                protocol: Protocol::Tcp
            }
        ]
    );
}

#[test]
fn end_port_makes_a_range() {
    assert_eq!(
        ingress_ports("[{port: 32000, endPort: 32768}, {port: 7, endPort: 7}]"),
        vec![
            PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 32000,
                end: 32768
            },
            PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 7,
                end: 7
            }
        ]
    );
}

#[test]
fn port_out_of_range_is_an_error() {
    for bad in ["0", "-1", "65536", "100000"] {
        assert_field_error(
            &np(&format!("{{ingress: [{{ports: [{{port: {bad}}}]}}]}}")),
            "spec.ingress[0].ports[0].port",
        );
    }
    assert_eq!(
        ingress_ports("[{port: 65535}]"),
        vec![PortMatch::Range {
            protocol: Protocol::Tcp,
            start: 65535,
            end: 65535
        }]
    );
}

#[test]
fn end_port_below_port_is_an_error() {
    assert_field_error(
        &np("{ingress: [{ports: [{port: 80, endPort: 79}]}]}"),
        "spec.ingress[0].ports[0].endPort",
    );
}

#[test]
fn end_port_above_65535_is_an_error() {
    assert_field_error(
        &np("{ingress: [{ports: [{port: 80, endPort: 65536}]}]}"),
        "spec.ingress[0].ports[0].endPort",
    );
}

#[test]
fn end_port_without_port_is_an_error() {
    assert_field_error(
        &np("{ingress: [{ports: [{endPort: 80}]}]}"),
        "spec.ingress[0].ports[0].endPort",
    );
}

#[test]
fn named_port_keeps_its_protocol() {
    assert_eq!(
        ingress_ports("[{port: http}, {port: dns, protocol: UDP}]"),
        vec![
            PortMatch::Named {
                protocol: Some(Protocol::Tcp),
                name: "http".into()
            },
            PortMatch::Named {
                protocol: Some(Protocol::Udp),
                name: "dns".into()
            }
        ]
    );
}

#[test]
fn end_port_with_named_port_is_an_error() {
    assert_field_error(
        &np("{ingress: [{ports: [{port: http, endPort: 90}]}]}"),
        "spec.ingress[0].ports[0].endPort",
    );
}

#[test]
fn invalid_port_name_is_an_error() {
    // A quoted number is a string, hence a port name, and not a valid one.
    for bad in [
        "'80'",
        "Http",
        "a--b",
        "-http",
        "http-",
        "abcdefghijklmnop",
        "''",
    ] {
        assert_field_error(
            &np(&format!("{{ingress: [{{ports: [{{port: {bad}}}]}}]}}")),
            "spec.ingress[0].ports[0].port",
        );
    }
}

#[test]
fn match_expressions_are_converted() {
    let p = policy(&np(
        "{podSelector: {matchLabels: {a: b}, matchExpressions: [\
         {key: env, operator: In, values: [prod, staging]}, \
         {key: tier, operator: NotIn, values: [db]}, \
         {key: app, operator: Exists}, \
         {key: legacy, operator: DoesNotExist, values: []}]}}",
    ));
    let Subject::Namespaced { pods, .. } = p.subject else {
        panic!("namespaced subject")
    };
    assert_eq!(pods.match_labels, labels(&[("a", "b")]).match_labels);
    assert_eq!(
        pods.match_expressions,
        vec![
            requirement("env", Operator::In, &["prod", "staging"]),
            requirement("tier", Operator::NotIn, &["db"]),
            requirement("app", Operator::Exists, &[]),
            requirement("legacy", Operator::DoesNotExist, &[]),
        ]
    );
}

#[test]
fn unknown_operator_is_an_error_naming_the_field() {
    let e = assert_field_error(
        &np("{ingress: [{from: [{podSelector: {}}, {podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]}]}"),
        "spec.ingress[0].from[1].podSelector.matchExpressions[0].operator",
    );
    assert!(e.to_string().contains("Equals"), "{e}");
    // Operators are case-sensitive.
    assert_field_error(
        &np("{podSelector: {matchExpressions: [{key: a, operator: in, values: [b]}]}}"),
        "spec.podSelector.matchExpressions[0].operator",
    );
}

#[test]
fn in_and_not_in_need_values() {
    for op in ["In", "NotIn"] {
        assert_field_error(
            &np(&format!(
                "{{podSelector: {{matchExpressions: [{{key: a, operator: {op}}}]}}}}"
            )),
            "spec.podSelector.matchExpressions[0].values",
        );
        assert_field_error(
            &np(&format!(
                "{{podSelector: {{matchExpressions: [{{key: a, operator: {op}, values: []}}]}}}}"
            )),
            "spec.podSelector.matchExpressions[0].values",
        );
    }
}

#[test]
fn exists_and_does_not_exist_take_no_values() {
    for op in ["Exists", "DoesNotExist"] {
        assert_field_error(
            &np(&format!(
                "{{ingress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: a, operator: {op}, values: [x]}}]}}}}]}}]}}"
            )),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        );
    }
}

#[test]
fn empty_expression_key_is_an_error() {
    assert_field_error(
        &np("{podSelector: {matchExpressions: [{key: '', operator: Exists}]}}"),
        "spec.podSelector.matchExpressions[0].key",
    );
}

#[test]
fn per_object_function_converts_like_the_manifest() {
    let text = np("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 80}]}]}");
    let obj: NetworkPolicy = serde_yaml::from_str(&text).unwrap();
    assert_eq!(network_policy(&obj).unwrap(), policy(&text));
}

#[test]
fn errors_name_object_and_field() {
    let e = error(&np("{ingress: [{ports: [{port: 0}]}]}"));
    match e.innermost() {
        CrdError::Invalid { object, field, .. } => {
            assert_eq!(object, "NetworkPolicy ns1/np");
            assert_eq!(field, "spec.ingress[0].ports[0].port");
        }
        other => panic!("unexpected {other:?}"),
    }
}
