//! ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy,
//! TieredNetworkPolicy and Tier semantics and validation.

use palisade_policy::model::{
    Action, AuditMode, DefaultAction, LabelSelector, NamespaceMatch, Peer, PolicyId, PolicyKind,
    PortMatch, Protocol, Rule, Subject, Tier,
};

use super::{assert_field_error, cidr, error, labels, policy};
use crate::convert::{
    admin_network_policy, baseline_admin_network_policy, cluster_network_policy, parse_manifests,
    tier, tiered_network_policy,
};
use crate::palisade;
use crate::upstream::v1alpha1::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use crate::upstream::v1alpha2::ClusterNetworkPolicy;
use crate::CrdError;

fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: cnp}}\nspec: {spec}\n"
    )
}

/// A CNP in tier Admin, priority 10, subject every namespace, with the given rules.
fn cnp_rules(rules: &str) -> String {
    cnp(&format!(
        "{{tier: Admin, priority: 10, subject: {{namespaces: {{}}}}, {rules}}}"
    ))
}

fn anp(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: anp}}\nspec: {spec}\n"
    )
}

fn anp_rules(rules: &str) -> String {
    anp(&format!(
        "{{priority: 5, subject: {{namespaces: {{}}}}, {rules}}}"
    ))
}

fn banp(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {{subject: {{namespaces: {{}}}}, {rules}}}\n"
    )
}

fn tnp(spec: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: TieredNetworkPolicy\nmetadata: {{name: tnp}}\nspec: {spec}\n"
    )
}

fn tnp_rules(rules: &str) -> String {
    tnp(&format!(
        "{{tier: gold, priority: 3, subject: {{namespaces: {{}}}}, {rules}}}"
    ))
}

fn tier_doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn only_ingress(yaml: &str) -> Vec<Rule> {
    let p = policy(yaml);
    assert_eq!(p.egress, None);
    p.ingress.expect("ingress rules")
}

fn only_egress(yaml: &str) -> Vec<Rule> {
    let p = policy(yaml);
    assert_eq!(p.ingress, None);
    p.egress.expect("egress rules")
}

fn egress_peers(to: &str) -> Vec<Peer> {
    let rules = only_egress(&cnp_rules(&format!(
        "egress: [{{action: Accept, to: {to}}}]"
    )));
    rules[0].peers.clone().expect("peers")
}

fn cnp_ports(protocols: &str) -> Vec<PortMatch> {
    let rules = only_ingress(&cnp_rules(&format!(
        "ingress: [{{action: Accept, from: [{{namespaces: {{}}}}], protocols: {protocols}}}]"
    )));
    rules[0].ports.clone().expect("ports")
}

fn anp_ports(ports: &str) -> Vec<PortMatch> {
    let rules = only_ingress(&anp_rules(&format!(
        "ingress: [{{action: Allow, from: [{{namespaces: {{}}}}], ports: {ports}}}]"
    )));
    rules[0].ports.clone().expect("ports")
}

fn every_namespace() -> Peer {
    Peer::Pods {
        namespaces: NamespaceMatch::Selector(LabelSelector::everything()),
        pods: LabelSelector::everything(),
    }
}

// ---------------------------------------------------------------- ClusterNetworkPolicy

#[test]
fn cnp_admin_tier_identity_and_priority() {
    let p = policy(&cnp_rules(
        "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
    ));
    assert_eq!(
        p.id,
        PolicyId {
            kind: PolicyKind::ClusterNetworkPolicy,
            namespace: None,
            name: "cnp".into()
        }
    );
    assert_eq!(p.tier, "admin");
    assert_eq!(p.priority, 10);
    assert_eq!(p.audit, None);
}

#[test]
fn cnp_baseline_tier() {
    let p = policy(&cnp(
        "{tier: Baseline, priority: 0, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}]}]}",
    ));
    assert_eq!(p.tier, "baseline");
    assert_eq!(p.priority, 0);
}

#[test]
fn cnp_tier_is_an_enum() {
    let e = error(&cnp(
        "{tier: admin, priority: 1, subject: {namespaces: {}}}",
    ));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn cnp_priority_out_of_range_is_an_error() {
    for bad in ["-1", "1001"] {
        assert_field_error(
            &cnp(&format!(
                "{{tier: Admin, priority: {bad}, subject: {{namespaces: {{}}}}}}"
            )),
            "spec.priority",
        );
    }
    assert_eq!(
        policy(&cnp(
            "{tier: Admin, priority: 1000, subject: {namespaces: {}}}"
        ))
        .priority,
        1000
    );
}

#[test]
fn cnp_subject_namespaces() {
    let p = policy(&cnp(
        "{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {env: prod}}}}",
    ));
    assert_eq!(p.subject, Subject::Namespaces(labels(&[("env", "prod")])));
}

#[test]
fn cnp_subject_pods() {
    let p = policy(&cnp(
        "{tier: Admin, priority: 1, subject: {pods: {namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {app: web}}}}}",
    ));
    assert_eq!(
        p.subject,
        Subject::Pods {
            namespaces: labels(&[("env", "prod")]),
            pods: labels(&[("app", "web")])
        }
    );
}

#[test]
fn cnp_subject_pods_without_namespace_selector_selects_every_namespace() {
    // v1alpha2 made namespaceSelector optional.
    let p = policy(&cnp(
        "{tier: Admin, priority: 1, subject: {pods: {podSelector: {matchLabels: {app: web}}}}}",
    ));
    assert_eq!(
        p.subject,
        Subject::Pods {
            namespaces: LabelSelector::everything(),
            pods: labels(&[("app", "web")])
        }
    );
}

#[test]
fn cnp_subject_needs_exactly_one_field() {
    assert_field_error(
        &cnp("{tier: Admin, priority: 1, subject: {}}"),
        "spec.subject",
    );
    assert_field_error(
        &cnp("{tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}"),
        "spec.subject",
    );
}

#[test]
fn cnp_subject_selector_is_validated() {
    assert_field_error(
        &cnp("{tier: Admin, priority: 1, subject: {pods: {namespaceSelector: {}, podSelector: {matchExpressions: [{key: a, operator: Has}]}}}}"),
        "spec.subject.pods.podSelector.matchExpressions[0].operator",
    );
}

#[test]
fn cnp_directions_apply_only_with_rules() {
    let p = policy(&cnp(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}}",
    ));
    assert_eq!((p.ingress, p.egress), (None, None));
    let p = policy(&cnp(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [], egress: []}",
    ));
    assert_eq!((p.ingress, p.egress), (None, None));
    let p = policy(&cnp_rules(
        "ingress: [{action: Pass, from: [{namespaces: {}}]}], egress: [{action: Pass, to: [{namespaces: {}}]}]",
    ));
    assert_eq!(p.ingress.map(|r| r.len()), Some(1));
    assert_eq!(p.egress.map(|r| r.len()), Some(1));
}

#[test]
fn cnp_actions() {
    let rules = only_ingress(&cnp_rules(
        "ingress: [{action: Accept, from: [{namespaces: {}}]}, {action: Deny, from: [{namespaces: {}}]}, {action: Pass, from: [{namespaces: {}}]}]",
    ));
    let actions: Vec<Action> = rules.iter().map(|r| r.action).collect();
    assert_eq!(actions, vec![Action::Accept, Action::Deny, Action::Pass]);
    // v1alpha1's Allow is not a v1alpha2 action.
    let e = error(&cnp_rules(
        "ingress: [{action: Allow, from: [{namespaces: {}}]}]",
    ));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn cnp_rule_names_are_kept_and_empty_names_dropped() {
    let rules = only_ingress(&cnp_rules(
        "ingress: [{name: allow-monitoring, action: Accept, from: [{namespaces: {}}]}, {name: '', action: Deny, from: [{namespaces: {}}]}, {action: Deny, from: [{namespaces: {}}]}]",
    ));
    let names: Vec<Option<String>> = rules.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, vec![Some("allow-monitoring".into()), None, None]);
}

#[test]
fn cnp_rule_name_longer_than_100_is_an_error() {
    let long = "a".repeat(101);
    assert_field_error(
        &cnp_rules(&format!(
            "ingress: [{{name: {long}, action: Deny, from: [{{namespaces: {{}}}}]}}]"
        )),
        "spec.ingress[0].name",
    );
}

#[test]
fn cnp_namespaces_peer_selects_every_pod_of_the_namespaces() {
    assert_eq!(
        egress_peers("[{namespaces: {matchLabels: {team: x}}}]"),
        vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(labels(&[("team", "x")])),
            pods: LabelSelector::everything()
        }]
    );
}

#[test]
fn cnp_pods_peer() {
    assert_eq!(
        egress_peers("[{pods: {namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: db}}}}]"),
        vec![Peer::Pods {
            namespaces: NamespaceMatch::Selector(labels(&[("team", "x")])),
            pods: labels(&[("app", "db")])
        }]
    );
}

#[test]
fn cnp_networks_peer_is_one_ip_block_per_cidr() {
    assert_eq!(
        egress_peers("[{networks: [10.0.0.0/8, 'fd00::/8', 192.168.1.7/24]}]"),
        vec![
            Peer::IpBlock {
                cidr: cidr("10.0.0.0/8"),
                except: vec![]
            },
            Peer::IpBlock {
                cidr: cidr("fd00::/8"),
                except: vec![]
            },
            Peer::IpBlock {
                cidr: cidr("192.168.1.0/24"),
                except: vec![]
            },
        ]
    );
}

#[test]
fn cnp_invalid_network_is_an_error() {
    assert_field_error(
        &cnp_rules("egress: [{action: Deny, to: [{namespaces: {}}, {networks: [10.0.0.0/8, 10.0.0.300/8]}]}]"),
        "spec.egress[0].to[1].networks[1]",
    );
}

#[test]
fn cnp_empty_networks_is_an_error() {
    assert_field_error(
        &cnp_rules("egress: [{action: Deny, to: [{networks: []}]}]"),
        "spec.egress[0].to[0].networks",
    );
}

#[test]
fn cnp_nodes_peer() {
    assert_eq!(
        egress_peers("[{nodes: {matchLabels: {role: control-plane}}}]"),
        vec![Peer::Nodes(labels(&[("role", "control-plane")]))]
    );
}

#[test]
fn cnp_domain_names_peer_fails_closed() {
    assert_eq!(
        egress_peers("[{namespaces: {}}, {domainNames: [example.com, '*.example.org']}]"),
        vec![
            every_namespace(),
            Peer::Unsupported {
                field: "spec.egress[0].to[1].domainNames".into()
            }
        ]
    );
}

#[test]
fn cnp_peer_with_two_fields_is_an_error() {
    assert_field_error(
        &cnp_rules("egress: [{action: Deny, to: [{namespaces: {}, nodes: {}}]}]"),
        "spec.egress[0].to[0]",
    );
}

#[test]
fn cnp_peer_with_no_field_is_an_error_in_a_manifest() {
    assert_field_error(
        &cnp_rules("ingress: [{action: Deny, from: [{}]}]"),
        "spec.ingress[0].from[0]",
    );
}

#[test]
fn cnp_ingress_networks_is_an_unknown_field_in_a_manifest() {
    // Upstream has networks in egress only (TieredNetworkPolicy extends ingress).
    let e = assert_field_error(
        &cnp_rules("ingress: [{action: Accept, from: [{networks: [10.0.0.0/8]}]}]"),
        "spec.ingress[0].from[0].networks",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
}

#[test]
fn cnp_empty_from_is_an_error() {
    assert_field_error(
        &cnp_rules("ingress: [{action: Accept, from: []}]"),
        "spec.ingress[0].from",
    );
    assert_field_error(
        &cnp_rules("egress: [{action: Accept, to: []}]"),
        "spec.egress[0].to",
    );
}

#[test]
fn cnp_more_than_25_rules_is_an_error() {
    let rule = "{action: Deny, from: [{namespaces: {}}]}";
    let ok = vec![rule; 25].join(", ");
    assert_eq!(
        only_ingress(&cnp_rules(&format!("ingress: [{ok}]"))).len(),
        25
    );
    let too_many = vec![rule; 26].join(", ");
    assert_field_error(
        &cnp_rules(&format!("ingress: [{too_many}]")),
        "spec.ingress",
    );
}

#[test]
fn cnp_absent_protocols_match_every_port() {
    let rules = only_ingress(&cnp_rules(
        "ingress: [{action: Accept, from: [{namespaces: {}}]}]",
    ));
    assert_eq!(rules[0].ports, None);
}

#[test]
fn cnp_empty_protocols_is_an_error() {
    assert_field_error(
        &cnp_rules("ingress: [{action: Accept, from: [{namespaces: {}}], protocols: []}]"),
        "spec.ingress[0].protocols",
    );
}

#[test]
fn cnp_protocol_numbers_ranges_and_named_ports() {
    assert_eq!(
        cnp_ports(
            "[{tcp: {destinationPort: {number: 443}}}, {udp: {destinationPort: {range: {start: 1000, end: 2000}}}}, {sctp: {destinationPort: {number: 9}}}, {destinationNamedPort: http}]"
        ),
        vec![
            PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 443,
                end: 443
            },
            PortMatch::Range {
                protocol: Protocol::Udp,
                start: 1000,
                end: 2000
            },
            PortMatch::Range {
                protocol: Protocol::Sctp,
                start: 9,
                end: 9
            },
            PortMatch::Named {
                protocol: None,
                name: "http".into()
            },
        ]
    );
}

#[test]
fn cnp_protocol_entry_needs_exactly_one_field() {
    let yaml = |entry: &str| {
        cnp_rules(&format!(
            "ingress: [{{action: Accept, from: [{{namespaces: {{}}}}], protocols: [{entry}]}}]"
        ))
    };
    assert_field_error(
        &yaml("{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}"),
        "spec.ingress[0].protocols[0]",
    );
    assert_field_error(
        &yaml("{tcp: {destinationPort: {number: 1}}, destinationNamedPort: http}"),
        "spec.ingress[0].protocols[0]",
    );
    assert_field_error(&yaml("{}"), "spec.ingress[0].protocols[0]");
}

#[test]
fn cnp_destination_port_needs_exactly_one_of_number_or_range() {
    let yaml = |entry: &str| {
        cnp_rules(&format!(
            "ingress: [{{action: Accept, from: [{{namespaces: {{}}}}], protocols: [{entry}]}}]"
        ))
    };
    assert_field_error(
        &yaml("{tcp: {}}"),
        "spec.ingress[0].protocols[0].tcp.destinationPort",
    );
    assert_field_error(
        &yaml("{tcp: {destinationPort: {}}}"),
        "spec.ingress[0].protocols[0].tcp.destinationPort",
    );
    assert_field_error(
        &yaml("{udp: {destinationPort: {number: 5, range: {start: 1, end: 9}}}}"),
        "spec.ingress[0].protocols[0].udp.destinationPort",
    );
}

#[test]
fn cnp_port_bounds_are_checked() {
    let yaml = |entry: &str| {
        cnp_rules(&format!(
            "egress: [{{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {entry}}}}}]}}]"
        ))
    };
    assert_field_error(
        &yaml("{number: 0}"),
        "spec.egress[0].protocols[0].tcp.destinationPort.number",
    );
    assert_field_error(
        &yaml("{number: 65536}"),
        "spec.egress[0].protocols[0].tcp.destinationPort.number",
    );
    assert_field_error(
        &yaml("{range: {start: 0, end: 10}}"),
        "spec.egress[0].protocols[0].tcp.destinationPort.range.start",
    );
    assert_field_error(
        &yaml("{range: {start: 10, end: 70000}}"),
        "spec.egress[0].protocols[0].tcp.destinationPort.range.end",
    );
    assert_field_error(
        &yaml("{range: {start: 10, end: 9}}"),
        "spec.egress[0].protocols[0].tcp.destinationPort.range.end",
    );
}

#[test]
fn cnp_one_port_range_is_accepted() {
    assert_eq!(
        cnp_ports("[{tcp: {destinationPort: {range: {start: 80, end: 80}}}}]"),
        vec![PortMatch::Range {
            protocol: Protocol::Tcp,
            start: 80,
            end: 80
        }]
    );
}

#[test]
fn cnp_empty_named_port_is_an_error() {
    assert_field_error(
        &cnp_rules("ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: ''}]}]"),
        "spec.ingress[0].protocols[0].destinationNamedPort",
    );
}

#[test]
fn cnp_named_port_with_address_peers_in_egress_is_an_error() {
    for peer in [
        "{networks: [10.0.0.0/8]}",
        "{nodes: {}}",
        "{domainNames: [a.example]}",
    ] {
        assert_field_error(
            &cnp_rules(&format!(
                "egress: [{{action: Accept, to: [{{namespaces: {{}}}}, {peer}], protocols: [{{destinationNamedPort: http}}]}}]"
            )),
            "spec.egress[0]",
        );
    }
    // With pod peers only, a named port is fine.
    let rules = only_egress(&cnp_rules(
        "egress: [{action: Accept, to: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}]",
    ));
    assert_eq!(
        rules[0].ports,
        Some(vec![PortMatch::Named {
            protocol: None,
            name: "http".into()
        }])
    );
}

#[test]
fn cnp_unknown_protocol_field_is_an_error_in_a_manifest() {
    let e = assert_field_error(
        &cnp_rules(
            "ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{icmp: {type: 8}}]}]",
        ),
        "spec.ingress[0].protocols[0].icmp",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
}

// ------------------------------------------ objects from the API server (fail closed)

fn cnp_object(spec: &str) -> ClusterNetworkPolicy {
    serde_yaml::from_str(&cnp(spec)).expect("a ClusterNetworkPolicy")
}

#[test]
fn cluster_cnp_unknown_peer_field_fails_closed_for_that_peer() {
    let obj = cnp_object(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{namespaces: {}}, {serviceAccounts: {name: x}}]}]}",
    );
    let p = cluster_network_policy(&obj).unwrap();
    assert_eq!(
        p.egress.unwrap()[0].peers,
        Some(vec![
            every_namespace(),
            Peer::Unsupported {
                field: "spec.egress[0].to[1].serviceAccounts".into()
            }
        ])
    );
}

#[test]
fn cluster_cnp_peer_with_no_field_fails_closed() {
    // Upstream: a peer with no known field comes from an incompatible CRD version.
    let obj = cnp_object(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{}]}]}",
    );
    let p = cluster_network_policy(&obj).unwrap();
    assert_eq!(
        p.ingress.unwrap()[0].peers,
        Some(vec![Peer::Unsupported {
            field: "spec.ingress[0].from[0]".into()
        }])
    );
}

#[test]
fn cluster_cnp_unknown_protocol_field_fails_the_rule_closed() {
    let obj = cnp_object(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{name: r, action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}}, {icmp: {type: 8}}]}]}",
    );
    let p = cluster_network_policy(&obj).unwrap();
    assert_eq!(
        p.ingress.unwrap(),
        vec![Rule {
            name: Some("r".into()),
            action: Action::Deny,
            peers: Some(vec![Peer::Unsupported {
                field: "spec.ingress[0].protocols[1].icmp".into()
            }]),
            ports: None
        }]
    );
}

#[test]
fn cluster_cnp_still_rejects_invalid_values() {
    let obj = cnp_object(
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [not-a-cidr]}]}]}",
    );
    let e = cluster_network_policy(&obj).unwrap_err();
    assert_eq!(e.field(), Some("spec.egress[0].to[0].networks[0]"));
}

#[test]
fn cluster_cnp_converts_like_the_manifest() {
    let text = cnp_rules(
        "ingress: [{name: a, action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {x: y}}}}], protocols: [{udp: {destinationPort: {number: 53}}}]}]",
    );
    let obj: ClusterNetworkPolicy = serde_yaml::from_str(&text).unwrap();
    assert_eq!(cluster_network_policy(&obj).unwrap(), policy(&text));
}

// ---------------------------------------------------------------- AdminNetworkPolicy

#[test]
fn anp_is_in_the_admin_tier_and_allow_means_accept() {
    let p = policy(&anp_rules(
        "ingress: [{action: Allow, from: [{namespaces: {}}]}, {action: Deny, from: [{namespaces: {}}]}, {action: Pass, from: [{namespaces: {}}]}]",
    ));
    assert_eq!(p.id.kind, PolicyKind::AdminNetworkPolicy);
    assert_eq!(p.id.namespace, None);
    assert_eq!(p.tier, "admin");
    assert_eq!(p.priority, 5);
    let actions: Vec<Action> = p.ingress.unwrap().iter().map(|r| r.action).collect();
    assert_eq!(actions, vec![Action::Accept, Action::Deny, Action::Pass]);
    // v1alpha2's Accept is not a v1alpha1 action.
    let e = error(&anp_rules(
        "ingress: [{action: Accept, from: [{namespaces: {}}]}]",
    ));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn anp_priority_out_of_range_is_an_error() {
    assert_field_error(
        &anp("{priority: 1001, subject: {namespaces: {}}}"),
        "spec.priority",
    );
}

#[test]
fn anp_port_number_protocol_defaults_to_tcp() {
    assert_eq!(
        anp_ports("[{portNumber: {port: 80}}, {portNumber: {protocol: UDP, port: 53}}]"),
        vec![
            PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 80,
                end: 80
            },
            PortMatch::Range {
                protocol: Protocol::Udp,
                start: 53,
                end: 53
            }
        ]
    );
}

#[test]
fn anp_port_range_and_named_port() {
    assert_eq!(
        anp_ports("[{portRange: {start: 8000, end: 9000}}, {portRange: {protocol: SCTP, start: 1, end: 2}}, {namedPort: metrics}]"),
        vec![
            PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 8000,
                end: 9000
            },
            PortMatch::Range {
                protocol: Protocol::Sctp,
                start: 1,
                end: 2
            },
            PortMatch::Named {
                protocol: None,
                name: "metrics".into()
            }
        ]
    );
}

#[test]
fn anp_port_errors() {
    let yaml = |ports: &str| {
        anp_rules(&format!(
            "ingress: [{{action: Allow, from: [{{namespaces: {{}}}}], ports: {ports}}}]"
        ))
    };
    assert_field_error(
        &yaml("[{portNumber: {port: 80}, namedPort: http}]"),
        "spec.ingress[0].ports[0]",
    );
    assert_field_error(&yaml("[{}]"), "spec.ingress[0].ports[0]");
    assert_field_error(
        &yaml("[{portNumber: {protocol: ICMP, port: 1}}]"),
        "spec.ingress[0].ports[0].portNumber.protocol",
    );
    assert_field_error(
        &yaml("[{portNumber: {port: 0}}]"),
        "spec.ingress[0].ports[0].portNumber.port",
    );
    assert_field_error(
        &yaml("[{portRange: {start: 9, end: 8}}]"),
        "spec.ingress[0].ports[0].portRange.end",
    );
    assert_field_error(
        &yaml("[{portRange: {protocol: tcp, start: 8, end: 9}}]"),
        "spec.ingress[0].ports[0].portRange.protocol",
    );
    assert_field_error(&yaml("[]"), "spec.ingress[0].ports");
    // v1alpha2's protocols is not a v1alpha1 field.
    let e = assert_field_error(
        &anp_rules("ingress: [{action: Allow, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}}]}]"),
        "spec.ingress[0].protocols",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
}

#[test]
fn anp_egress_peers() {
    let rules = only_egress(&anp_rules(
        "egress: [{action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {a: b}}}}, {nodes: {}}, {networks: [172.16.0.0/12]}, {domainNames: [x.example]}]}]",
    ));
    assert_eq!(
        rules[0].peers,
        Some(vec![
            Peer::Pods {
                namespaces: NamespaceMatch::Selector(LabelSelector::everything()),
                pods: labels(&[("a", "b")])
            },
            Peer::Nodes(LabelSelector::everything()),
            Peer::IpBlock {
                cidr: cidr("172.16.0.0/12"),
                except: vec![]
            },
            Peer::Unsupported {
                field: "spec.egress[0].to[3].domainNames".into()
            },
        ])
    );
}

#[test]
fn anp_pods_peer_needs_a_namespace_selector() {
    // Required in v1alpha1 (optional only from v1alpha2 on).
    let e = error(&anp_rules(
        "ingress: [{action: Allow, from: [{pods: {podSelector: {}}}]}]",
    ));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn anp_allows_100_rules_per_direction() {
    let rule = "{action: Deny, to: [{namespaces: {}}]}";
    let ok = vec![rule; 100].join(", ");
    assert_eq!(
        only_egress(&anp_rules(&format!("egress: [{ok}]"))).len(),
        100
    );
    let too_many = vec![rule; 101].join(", ");
    assert_field_error(&anp_rules(&format!("egress: [{too_many}]")), "spec.egress");
}

#[test]
fn cluster_anp_unknown_port_field_fails_the_rule_closed() {
    let obj: AdminNetworkPolicy = serde_yaml::from_str(&anp_rules(
        "ingress: [{action: Allow, from: [{namespaces: {}}], ports: [{portSet: {}}]}]",
    ))
    .unwrap();
    let p = admin_network_policy(&obj).unwrap();
    assert_eq!(
        p.ingress.unwrap()[0].peers,
        Some(vec![Peer::Unsupported {
            field: "spec.ingress[0].ports[0].portSet".into()
        }])
    );
}

// ---------------------------------------------------------- BaselineAdminNetworkPolicy

#[test]
fn banp_is_the_baseline_tier_at_priority_0() {
    let p = policy(&banp(
        "default",
        "ingress: [{action: Allow, from: [{namespaces: {}}]}], egress: [{action: Deny, to: [{networks: ['::/0']}]}]",
    ));
    assert_eq!(
        p.id,
        PolicyId {
            kind: PolicyKind::BaselineAdminNetworkPolicy,
            namespace: None,
            name: "default".into()
        }
    );
    assert_eq!(p.tier, "baseline");
    assert_eq!(p.priority, 0);
    assert_eq!(p.ingress.unwrap()[0].action, Action::Accept);
    assert_eq!(p.egress.unwrap()[0].action, Action::Deny);
}

#[test]
fn banp_must_be_named_default() {
    assert_field_error(&banp("other", "ingress: []"), "metadata.name");
    let obj: BaselineAdminNetworkPolicy =
        serde_yaml::from_str(&banp("other", "ingress: []")).unwrap();
    assert_eq!(
        baseline_admin_network_policy(&obj).unwrap_err().field(),
        Some("metadata.name")
    );
}

#[test]
fn banp_cannot_pass() {
    let e = error(&banp(
        "default",
        "ingress: [{action: Pass, from: [{namespaces: {}}]}]",
    ));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn banp_has_no_priority_and_no_domain_names() {
    let e = assert_field_error(
        &banp(
            "default",
            "egress: [{action: Allow, to: [{domainNames: [a.example]}]}]",
        ),
        "spec.egress[0].to[0].domainNames",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
    let e = assert_field_error(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {priority: 3, subject: {namespaces: {}}}\n",
        "spec.priority",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
}

// ------------------------------------------------------------------ TieredNetworkPolicy

#[test]
fn tnp_tier_priority_and_audit() {
    let p = policy(&tnp(
        "{tier: gold, priority: 7, audit: Deny, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}",
    ));
    assert_eq!(
        p.id,
        PolicyId {
            kind: PolicyKind::TieredNetworkPolicy,
            namespace: None,
            name: "tnp".into()
        }
    );
    assert_eq!(p.tier, "gold");
    assert_eq!(p.priority, 7);
    assert_eq!(p.audit, Some(AuditMode::Deny));
    for (text, mode) in [("All", AuditMode::All), ("None", AuditMode::None)] {
        let p = policy(&tnp(&format!(
            "{{tier: admin, priority: 0, audit: {text}, subject: {{namespaces: {{}}}}}}"
        )));
        assert_eq!(p.audit, Some(mode));
        assert_eq!(p.tier, "admin");
    }
    let p = policy(&tnp(
        "{tier: baseline, priority: 0, subject: {namespaces: {}}}",
    ));
    assert_eq!(p.audit, None);
}

#[test]
fn tnp_cannot_be_in_the_networkpolicy_tier() {
    assert_field_error(
        &tnp("{tier: networkpolicy, priority: 0, subject: {namespaces: {}}}"),
        "spec.tier",
    );
}

#[test]
fn tnp_tier_must_be_a_dns_label() {
    for bad in ["Admin", "gold.tier", "''", "-gold", "a_b"] {
        assert_field_error(
            &tnp(&format!(
                "{{tier: {bad}, priority: 0, subject: {{namespaces: {{}}}}}}"
            )),
            "spec.tier",
        );
    }
}

#[test]
fn tnp_priority_out_of_range_is_an_error() {
    assert_field_error(
        &tnp("{tier: gold, priority: 1001, subject: {namespaces: {}}}"),
        "spec.priority",
    );
}

#[test]
fn tnp_ingress_may_use_networks() {
    let rules = only_ingress(&tnp_rules(
        "ingress: [{action: Accept, from: [{networks: [192.0.2.0/24]}], protocols: [{destinationNamedPort: http}]}]",
    ));
    assert_eq!(
        rules[0].peers,
        Some(vec![Peer::IpBlock {
            cidr: cidr("192.0.2.0/24"),
            except: vec![]
        }])
    );
    // A named port is the subject pod's, so it is fine with networks in ingress.
    assert_eq!(
        rules[0].ports,
        Some(vec![PortMatch::Named {
            protocol: None,
            name: "http".into()
        }])
    );
}

#[test]
fn tnp_ingress_cannot_use_nodes() {
    let e = assert_field_error(
        &tnp_rules("ingress: [{action: Accept, from: [{nodes: {}}]}]"),
        "spec.ingress[0].from[0].nodes",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
}

#[test]
fn tnp_egress_peers_and_protocols() {
    let rules = only_egress(&tnp_rules(
        "egress: [{action: Pass, to: [{nodes: {matchLabels: {a: b}}}, {domainNames: [x.example]}], protocols: [{tcp: {destinationPort: {number: 22}}}]}]",
    ));
    assert_eq!(
        rules[0],
        Rule {
            name: None,
            action: Action::Pass,
            peers: Some(vec![
                Peer::Nodes(labels(&[("a", "b")])),
                Peer::Unsupported {
                    field: "spec.egress[0].to[1].domainNames".into()
                }
            ]),
            ports: Some(vec![PortMatch::Range {
                protocol: Protocol::Tcp,
                start: 22,
                end: 22
            }])
        }
    );
}

#[test]
fn tnp_allows_100_rules_per_direction() {
    let rule = "{action: Deny, from: [{namespaces: {}}]}";
    let ok = vec![rule; 100].join(", ");
    assert_eq!(
        only_ingress(&tnp_rules(&format!("ingress: [{ok}]"))).len(),
        100
    );
    let too_many = vec![rule; 101].join(", ");
    assert_field_error(
        &tnp_rules(&format!("ingress: [{too_many}]")),
        "spec.ingress",
    );
}

#[test]
fn tnp_has_protocols_never_ports() {
    let e = assert_field_error(
        &tnp_rules("ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 80}}]}]"),
        "spec.ingress[0].ports",
    );
    assert!(
        matches!(e.innermost(), CrdError::UnknownField { .. }),
        "{e}"
    );
}

#[test]
fn tnp_invalid_network_is_an_error() {
    assert_field_error(
        &tnp_rules("ingress: [{action: Deny, from: [{networks: [10/8]}]}]"),
        "spec.ingress[0].from[0].networks[0]",
    );
}

#[test]
fn tnp_per_object_function_converts_like_the_manifest() {
    let text = tnp_rules(
        "egress: [{name: e, action: Deny, to: [{networks: [10.0.0.0/8]}], protocols: [{udp: {destinationPort: {range: {start: 1, end: 1024}}}}]}]",
    );
    let obj: palisade::TieredNetworkPolicy = serde_yaml::from_str(&text).unwrap();
    assert_eq!(tiered_network_policy(&obj).unwrap(), policy(&text));
}

// ---------------------------------------------------------------------------- Tier

fn only_tier(yaml: &str) -> Tier {
    let m = parse_manifests(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.policies.is_empty());
    assert_eq!(m.tiers.len(), 1);
    m.tiers.into_iter().next().expect("a tier")
}

#[test]
fn tier_converts_with_default_action_pass() {
    assert_eq!(
        only_tier(&tier_doc("gold", "{priority: 50}")),
        Tier {
            name: "gold".into(),
            priority: 50,
            default_action: DefaultAction::Pass
        }
    );
    assert_eq!(
        only_tier(&tier_doc(
            "silver",
            "{priority: 20000, defaultAction: Deny, description: strict}"
        )),
        Tier {
            name: "silver".into(),
            priority: 20000,
            default_action: DefaultAction::Deny
        }
    );
}

#[test]
fn tier_default_action_is_an_enum() {
    let e = error(&tier_doc("gold", "{priority: 50, defaultAction: Accept}"));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn tier_cannot_redefine_a_builtin_tier() {
    for name in ["admin", "networkpolicy", "baseline"] {
        assert_field_error(&tier_doc(name, "{priority: 50}"), "metadata.name");
    }
}

#[test]
fn tier_name_must_be_a_dns_label() {
    for name in ["gold.tier", "Gold", "'-gold'"] {
        assert_field_error(&tier_doc(name, "{priority: 50}"), "metadata.name");
    }
}

#[test]
fn tier_reserved_priorities_are_errors() {
    for priority in [100, 1000, 10000] {
        assert_field_error(
            &tier_doc("gold", &format!("{{priority: {priority}}}")),
            "spec.priority",
        );
    }
}

#[test]
fn tier_priority_out_of_range_is_an_error() {
    for priority in [-1, 20001] {
        assert_field_error(
            &tier_doc("gold", &format!("{{priority: {priority}}}")),
            "spec.priority",
        );
    }
    assert_eq!(only_tier(&tier_doc("gold", "{priority: 0}")).priority, 0);
}

#[test]
fn tier_priority_is_required() {
    let e = error(&tier_doc("gold", "{defaultAction: Deny}"));
    assert!(matches!(e.innermost(), CrdError::Syntax { .. }), "{e}");
}

#[test]
fn tier_per_object_function() {
    let obj: palisade::Tier =
        serde_yaml::from_str(&tier_doc("bronze", "{priority: 9999, defaultAction: Deny}")).unwrap();
    assert_eq!(
        tier(&obj).unwrap(),
        Tier {
            name: "bronze".into(),
            priority: 9999,
            default_action: DefaultAction::Deny
        }
    );
    let obj: palisade::Tier = serde_yaml::from_str(&tier_doc("admin", "{priority: 5}")).unwrap();
    assert_eq!(tier(&obj).unwrap_err().field(), Some("metadata.name"));
}

// ---------------------------------------------------------------------- domainNames

#[test]
fn domain_names_are_checked_as_upstream() {
    for ok in [
        "example.com",
        "*.example.com",
        "a.b",
        "x_y.example.org.",
        "1.2.3.4",
    ] {
        assert_eq!(
            egress_peers(&format!("[{{domainNames: ['{ok}']}}]")),
            vec![Peer::Unsupported {
                field: "spec.egress[0].to[0].domainNames".into()
            }],
            "{ok}"
        );
    }
    for bad in [
        "com",
        "*.com",
        "bad domain.com",
        "-a.example",
        "a..example",
        "a.*.example",
        "*",
    ] {
        assert_field_error(
            &cnp_rules(&format!(
                "egress: [{{action: Deny, to: [{{domainNames: [a.example, '{bad}']}}]}}]"
            )),
            "spec.egress[0].to[0].domainNames[1]",
        );
    }
    assert_field_error(
        &cnp_rules("egress: [{action: Deny, to: [{domainNames: []}]}]"),
        "spec.egress[0].to[0].domainNames",
    );
}
