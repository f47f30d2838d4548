//! The compiled form's shape: peers are shared sets, its size grows with pods
//! plus policies, and named ports are resolved.

mod support;

use palisade_policy::compile::compile_node;
use palisade_policy::engine::Engine;
use palisade_policy::model::*;
use support::*;

/// `local` pods on n1, `remote` on n2, one policy selecting every pod and
/// allowing ingress from every pod on 80/TCP.
fn cluster(local: usize, remote: usize) -> Cluster {
    let mut c = Cluster {
        namespaces: vec![mk_ns("x", &[])],
        nodes: vec![
            mk_node("n1", &["172.18.0.2"]),
            mk_node("n2", &["172.18.0.3"]),
        ],
        ..Cluster::default()
    };
    for i in 0..local + remote {
        let node = if i < local { "n1" } else { "n2" };
        c.pods.push(mk_pod(
            "x",
            &format!("p{i}"),
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            node,
            &[("app", "a")],
        ));
    }
    c.policies.push(mk_np(
        "x",
        "allow-80",
        LabelSelector::everything(),
        Some(vec![allow(
            Some(vec![pods_peer(None, "x", LabelSelector::everything())]),
            Some(vec![tcp(80)]),
        )]),
        None,
    ));
    c
}

#[test]
fn a_peer_matching_thousands_of_pods_is_one_set() {
    let engine = Engine::new(cluster(100, 4900)).expect("valid");
    let rs = compile_node(&engine, "n1", 7);
    assert_eq!(rs.version, 7);
    assert_eq!(rs.pods.len(), 100);
    assert_eq!(rs.policies.len(), 1);
    assert_eq!(rs.sets.len(), 1);
    assert_eq!(rs.sets[0].entries.len(), 5000);
    let rule = &rs.policies[0].ingress[0];
    assert_eq!(rule.matches.len(), 1);
    assert_eq!(rule.matches[0].peers, Some(vec![0]));
    // Every local pod refers to the one policy; nothing is copied per pod.
    assert!(rs
        .pods
        .iter()
        .all(|p| p.ingress.len() == 1 && p.ingress[0].policies == [0]));
    assert!(rs.pods.iter().all(|p| p.egress.is_empty()));
}

#[test]
fn size_grows_with_pods_plus_policies() {
    let size = |local, remote| {
        let engine = Engine::new(cluster(local, remote)).expect("valid");
        serde_json::to_vec(&compile_node(&engine, "n1", 1))
            .expect("json")
            .len()
    };
    let base = size(10, 1000);
    // Ten times the local pods adds about ten pods' worth, not ten sets.
    let more_local = size(100, 910);
    assert!(more_local < base * 2, "{more_local} vs {base}");
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    let mut c = cluster(2, 1);
    // p0 serves "web" on 8080, p1 on 9090, p2 (remote) on 7070.
    for (i, port) in [8080u16, 9090, 7070].into_iter().enumerate() {
        c.pods[i].ports = vec![ContainerPort {
            name: Some("web".into()),
            port,
            protocol: Protocol::Tcp,
        }];
    }
    let named = PortMatch::Named {
        protocol: Some(Protocol::Tcp),
        name: "web".into(),
    };
    c.policies[0].ingress = Some(vec![allow(None, Some(vec![named.clone()]))]);
    c.policies[0].egress = Some(vec![allow(None, Some(vec![named]))]);
    let engine = Engine::new(c).expect("valid");
    let rs = compile_node(&engine, "n1", 1);
    let policy = &rs.policies[0];
    // Ingress: one match per local port number, restricted to the local pods with it.
    let ingress: Vec<(u16, Vec<String>)> = policy.ingress[0]
        .matches
        .iter()
        .map(|m| {
            let ports = m.ports.as_ref().expect("ports");
            let local = &rs.sets[m.local.expect("local set")];
            (
                ports[0].start,
                local.entries.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        ingress,
        [
            (8080, vec!["10.1.0.1/32".to_string()]),
            (9090, vec!["10.1.0.2/32".to_string()])
        ]
    );
    // Egress: one match per destination port number, peers the pods with it.
    let egress: Vec<(u16, Vec<String>)> = policy.egress[0]
        .matches
        .iter()
        .map(|m| {
            let ports = m.ports.as_ref().expect("ports");
            let peers = m.peers.as_ref().expect("peers");
            (
                ports[0].start,
                rs.sets[peers[0]]
                    .entries
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        egress,
        [
            (7070, vec!["10.1.0.3/32".to_string()]),
            (8080, vec!["10.1.0.1/32".to_string()]),
            (9090, vec!["10.1.0.2/32".to_string()])
        ]
    );
}

#[test]
fn a_policys_audit_setting_is_compiled_and_absent_settings_stay_out_of_the_state() {
    let mut c = cluster(2, 0);
    let mut quiet = c.policies[0].clone();
    quiet.id.name = "quiet".into();
    quiet.audit = Some(AuditMode::None);
    c.policies.push(quiet);
    let engine = Engine::new(c).expect("valid");
    let rs = compile_node(&engine, "n1", 1);
    let audit = |name: &str| {
        rs.policies
            .iter()
            .find(|p| p.id.name == name)
            .map(|p| p.audit)
            .expect("compiled")
    };
    assert_eq!(audit("quiet"), Some(AuditMode::None));
    assert_eq!(audit("allow-80"), None);
    // The operator's default applies to policies without a setting; all when unset.
    let allow = rs
        .policies
        .iter()
        .find(|p| p.id.name == "allow-80")
        .expect("compiled");
    assert_eq!(rs.audit_of(allow), AuditMode::All);
    let mut with_default = rs.clone();
    with_default.audit_default = Some(AuditMode::Deny);
    assert_eq!(with_default.audit_of(allow), AuditMode::Deny);
    let quiet = rs
        .policies
        .iter()
        .find(|p| p.id.name == "quiet")
        .expect("compiled");
    assert_eq!(with_default.audit_of(quiet), AuditMode::None);
    // Unset settings are not serialised (states and digests without audit settings are
    // unchanged) and a state without them parses.
    let json = serde_json::to_string(&rs).expect("serialises");
    assert_eq!(json.matches("\"audit\"").count(), 1, "{json}");
    assert!(!json.contains("audit_default"));
    let back: palisade_policy::compiled::NodeRuleSet = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, rs);
}
