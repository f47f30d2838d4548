//! Engine semantics that scenario files cannot show: the reasons given, and the
//! node and host-network rules.

mod support;

use palisade_policy::engine::{Connection, Decision, Endpoint, Engine, TierOutcome};
use palisade_policy::model::*;
use support::*;

fn cluster() -> Cluster {
    let mut c = Cluster {
        namespaces: vec![mk_ns("default", &[]), mk_ns("kube-system", &[])],
        nodes: vec![
            mk_node("n1", &["172.18.0.2"]),
            mk_node("n2", &["172.18.0.3"]),
        ],
        pods: vec![
            mk_pod(
                "default",
                "testweb",
                "10.244.1.2",
                "n1",
                &[("run", "testweb")],
            ),
            mk_pod(
                "default",
                "testcurl",
                "10.244.2.2",
                "n2",
                &[("run", "testcurl")],
            ),
            mk_pod("default", "other", "10.244.2.3", "n2", &[("run", "other")]),
        ],
        ..Cluster::default()
    };
    let mut agent = mk_pod(
        "kube-system",
        "agent",
        "10.244.9.9",
        "n1",
        &[("run", "testcurl")],
    );
    agent.host_network = true;
    agent.ips.clear();
    c.pods.push(agent);
    c.policies.push(mk_np(
        "default",
        "deny-all-for-testweb",
        sel(&[("run", "testweb")]),
        Some(vec![]),
        None,
    ));
    c.policies.push(mk_np(
        "default",
        "allow-testcurl-for-testweb",
        sel(&[("run", "testweb")]),
        Some(vec![allow(
            Some(vec![pods_peer(
                None,
                "default",
                sel(&[("run", "testcurl")]),
            )]),
            Some(vec![tcp(80)]),
        )]),
        None,
    ));
    c
}

fn conn(src: Endpoint, dst: Endpoint, port: u16) -> Connection {
    Connection {
        src,
        dst,
        family: Family::IPv4,
        protocol: Protocol::Tcp,
        port,
    }
}

#[test]
fn explains_the_rule_that_allowed() {
    let e = Engine::new(cluster()).expect("valid");
    let v = e.explain(&conn(Endpoint::Pod(1), Endpoint::Pod(0), 80));
    assert!(v.allowed);
    assert_eq!(v.egress.decision, Decision::NotSelected);
    match &v.ingress.decision {
        Decision::Rule {
            policy,
            rule_index,
            action,
            tier,
            ..
        } => {
            assert_eq!(policy.name, "allow-testcurl-for-testweb");
            assert_eq!(*rule_index, 0);
            assert_eq!(*action, Action::Accept);
            assert_eq!(tier, "networkpolicy");
        }
        other => panic!("unexpected decision {other:?}"),
    }
    assert_eq!(v.ingress.path.len(), 1);
    assert_eq!(v.ingress.path[0].outcome, TierOutcome::Decided);
}

#[test]
fn explains_isolation_naming_every_isolating_policy() {
    let e = Engine::new(cluster()).expect("valid");
    let v = e.explain(&conn(Endpoint::Pod(2), Endpoint::Pod(0), 80));
    assert!(!v.allowed);
    match &v.ingress.decision {
        Decision::NoRuleMatched { policies, .. } => {
            let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(
                names,
                ["allow-testcurl-for-testweb", "deny-all-for-testweb"]
            );
        }
        other => panic!("unexpected decision {other:?}"),
    }
    // The fast path agrees.
    assert!(!e.allowed(&conn(Endpoint::Pod(2), Endpoint::Pod(0), 80)));
    // The allowed port only: 81 is denied even from testcurl.
    assert!(!e.allowed(&conn(Endpoint::Pod(1), Endpoint::Pod(0), 81)));
}

#[test]
fn a_pod_and_its_own_node_always_talk() {
    let e = Engine::new(cluster()).expect("valid");
    // n1 hosts testweb, which is under deny-all ingress.
    let v = e.explain(&conn(Endpoint::Node(0), Endpoint::Pod(0), 81));
    assert!(v.allowed);
    assert_eq!(v.ingress.decision, Decision::SameNode);
    // The remote node is refused by the same policy.
    assert!(!e.allowed(&conn(Endpoint::Node(1), Endpoint::Pod(0), 81)));
}

#[test]
fn host_network_pods_count_as_their_node_and_match_no_selector() {
    let e = Engine::new(cluster()).expect("valid");
    // The agent carries run=testcurl but is host-network on n1: it is n1, and
    // n1 hosts testweb, so it is let in as the node...
    assert!(e.allowed(&conn(Endpoint::Pod(3), Endpoint::Pod(0), 81)));
    // ...and it is never selected as a subject.
    assert!(e.policies_selecting(3, Direction::Ingress).is_empty());
    // Move testweb to n2: now the agent is a remote node, and the podSelector
    // peer run=testcurl must not match it.
    let mut c = cluster();
    c.pods[0].node = Some("n2".into());
    let e = Engine::new(c).expect("valid");
    assert!(!e.allowed(&conn(Endpoint::Pod(3), Endpoint::Pod(0), 80)));
}

#[test]
fn rejects_policies_outside_their_tier_and_reserved_tiers() {
    let mut c = cluster();
    c.policies[0].tier = "admin".into();
    let err = Engine::new(c).expect_err("NetworkPolicy outside its tier");
    assert!(err.to_string().contains("spec.tier"), "{err}");
    for (name, priority) in [("admin", 5), ("mine", 1000), ("mine", 20001)] {
        let mut c = cluster();
        c.tiers.push(Tier {
            name: name.into(),
            priority,
            default_action: DefaultAction::Pass,
        });
        assert!(
            Engine::new(c).is_err(),
            "tier {name} at {priority} must be refused"
        );
    }
}

#[test]
fn fail_closed_rules_are_reported() {
    let mut c = cluster();
    c.policies.push(Policy {
        id: PolicyId {
            kind: PolicyKind::TieredNetworkPolicy,
            namespace: None,
            name: "typo".into(),
        },
        tier: "securty".into(),
        priority: 1,
        subject: Subject::Namespaces(LabelSelector::everything()),
        ingress: None,
        egress: Some(vec![Rule {
            name: Some("dns".into()),
            action: Action::Pass,
            peers: Some(vec![Peer::Unsupported {
                field: "spec.egress[0].to[0].domainNames".into(),
            }]),
            ports: Some(vec![tcp(53)]),
        }]),
        audit: None,
    });
    let e = Engine::new(c).expect("valid");
    let fields: Vec<&str> = e.diagnostics().iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["spec.tier", "spec.egress[0]"]);
    // The Pass rule with an unsupported peer denies all egress, on every port.
    let v = e.explain(&conn(
        Endpoint::Pod(1),
        Endpoint::External("192.0.2.1".parse().expect("ip")),
        443,
    ));
    assert!(!v.allowed);
    assert!(matches!(
        v.egress.decision,
        Decision::Rule {
            action: Action::Deny,
            ..
        }
    ));
}

#[test]
fn priority_ties_are_reported() {
    let mut c = cluster();
    for (name, priority) in [("one", 5), ("two", 5), ("three", 6)] {
        c.policies.push(Policy {
            id: PolicyId {
                kind: PolicyKind::ClusterNetworkPolicy,
                namespace: None,
                name: name.into(),
            },
            tier: TIER_ADMIN.into(),
            priority,
            subject: Subject::Namespaces(LabelSelector::everything()),
            ingress: Some(vec![allow(None, None)]),
            egress: None,
            audit: None,
        });
    }
    for (name, priority) in [("sec", 50), ("ops", 50)] {
        c.tiers.push(Tier {
            name: name.into(),
            priority,
            default_action: DefaultAction::Pass,
        });
    }
    let e = Engine::new(c).expect("valid");
    let tied: Vec<&str> = e
        .diagnostics()
        .iter()
        .filter(|d| d.field == "spec.priority")
        .map(|d| d.policy.name.as_str())
        .collect();
    assert_eq!(tied, ["one", "two"]);
    assert_eq!(e.tier_ties(), [(50, vec!["ops", "sec"])]);
}
