//! A policy whose rules all accept gets one `hash:net,port` set for its small port-and-peer
//! matches (render.rs, `policy_chain`): what merges, what does not, and that real packets
//! get the verdicts of the rules, pair by pair (a peer of one rule never gets another
//! rule's port).

mod common;

use common::*;
use palisade_enforcer::names::{log_chain, merged_log_chain, merged_set_key, rule_id, set_name};
use palisade_enforcer::{render, NodeRuleSet, RenderOptions, Rendered};
use palisade_policy::model::{Action, Direction, Family, PolicyKind, Protocol};

const A: &str = "198.18.7.10";
const B: &str = "198.18.7.11";
const WEB: &str = "198.18.7.12";

/// web accepts A on 7001 (rule 0) and B on 7002 (rule 1), plus `extra` rules.
fn state(extra: Vec<palisade_policy::compiled::CompiledRule>, action: Action) -> NodeRuleSet {
    let sets = vec![
        mk_set("a", Family::IPv4, &[&format!("{A}/32")], &[]),
        mk_set("b", Family::IPv4, &[&format!("{B}/32")], &[]),
        mk_set(
            "block",
            Family::IPv4,
            &["198.18.0.0/15"],
            &[&format!("{A}/32")],
        ),
    ];
    let mut ingress = vec![
        mk_rule(
            0,
            action,
            vec![mk_match(Some(vec![0]), Some(vec![tcp(7001)]), None)],
        ),
        mk_rule(
            1,
            Action::Accept,
            vec![mk_match(Some(vec![1]), Some(vec![tcp(7002)]), None)],
        ),
    ];
    ingress.extend(extra);
    let policy = mk_policy(
        PolicyKind::NetworkPolicy,
        Some("ns"),
        "web",
        0,
        ingress,
        vec![],
    );
    let pods = vec![mk_pod("ns", "web", &[WEB], vec![tp(0, &[0])], vec![])];
    mk_rule_set(1, &[LAB_NODE_IP], vec![np_tier()], sets, vec![policy], pods)
}

fn web_id() -> palisade_policy::model::PolicyId {
    palisade_policy::model::PolicyId {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some("ns".into()),
        name: "web".into(),
    }
}

fn merged_set(r: &Rendered) -> Option<Vec<String>> {
    let name = set_name(&merged_set_key(&web_id(), Direction::Ingress), Family::IPv4);
    r.ipv4
        .sets
        .get(&name)
        .map(|s| s.members.keys().map(|m| m.to_string()).collect())
}

#[test]
fn an_all_accept_policy_is_one_set_of_peer_port_pairs() {
    let r = render(&state(vec![], Action::Accept), &RenderOptions::default()).expect("renders");
    assert_eq!(
        merged_set(&r).expect("merged"),
        [format!("{A}/32,tcp:7001"), format!("{B}/32,tcp:7002")]
    );
    assert_eq!(
        r.ipv4.sets.len(),
        1,
        "the rules' own sets are not created: {:?}",
        r.ipv4.sets
    );
    // The logged form: the port picks the rule's log chain (its id in the NFLOG prefix).
    let lm = merged_log_chain(&merged_set_key(&web_id(), Direction::Ingress));
    let lines = &r.ipv4.chains[&lm];
    for (index, port) in [(0, 7001), (1, 7002)] {
        let log = log_chain(&rule_id(&web_id(), index, Direction::Ingress));
        let want = format!("-A {lm} -p tcp -m tcp --dport {port} -g {log}");
        assert!(lines.contains(&want), "{want} not in {lines:?}");
    }
    // Without the audit log: straight to the ACCEPT mark.
    let quiet = RenderOptions {
        audit: None,
        ..RenderOptions::default()
    };
    let r = render(&state(vec![], Action::Accept), &quiet).expect("renders");
    let chain = palisade_enforcer::names::policy_chain(&web_id(), Direction::Ingress);
    assert!(
        r.ipv4.chains[&chain][0].ends_with("-g PALISADE-ACCEPT"),
        "{:?}",
        r.ipv4.chains[&chain]
    );
}

#[test]
fn what_does_not_merge() {
    let opts = RenderOptions::default();
    // A policy with a Deny rule: its order matters, nothing merges.
    let r = render(&state(vec![], Action::Deny), &opts).expect("renders");
    assert_eq!(merged_set(&r), None);
    assert_eq!(r.ipv4.sets.len(), 2);
    // Another rule on a port rule 0 has: its port could not tell the two apart in the
    // log, so it keeps a set of its own; so do a peer set with an exception, a match
    // on every port, one restricted to some local pods, and a range of many ports.
    let extra = vec![
        mk_rule(
            2,
            Action::Accept,
            vec![mk_match(Some(vec![1]), Some(vec![tcp(7001)]), None)],
        ),
        mk_rule(
            3,
            Action::Accept,
            vec![mk_match(Some(vec![2]), Some(vec![tcp(7003)]), None)],
        ),
        mk_rule(4, Action::Accept, vec![mk_match(Some(vec![0]), None, None)]),
        mk_rule(
            5,
            Action::Accept,
            vec![mk_match(Some(vec![0]), Some(vec![tcp(7004)]), Some(1))],
        ),
        mk_rule(
            6,
            Action::Accept,
            vec![mk_match(
                Some(vec![1]),
                Some(vec![many_ports(7100, 7200)]),
                None,
            )],
        ),
    ];
    let r = render(&state(extra, Action::Accept), &opts).expect("renders");
    assert_eq!(
        merged_set(&r).expect("rules 0 and 1 merged"),
        [format!("{A}/32,tcp:7001"), format!("{B}/32,tcp:7002")]
    );
    // Sets a (rules 4, 5), b (rules 2, 5's local, 6) and block (rule 3) stay.
    assert_eq!(r.ipv4.sets.len(), 4, "{:?}", r.ipv4.sets.keys());
}

/// A match that cannot be merged closes the merge: later matches keep their own lines,
/// so a packet is still logged under the first rule that matches it. Logged, the merged
/// set's rule calls the port dispatch and returns only when it accepted: a packet it
/// does not take goes on with the rules after.
#[test]
fn merging_stops_at_the_first_match_not_merged_and_falls_through() {
    let opts = RenderOptions::default();
    // Rule 0 restricted to some local pods (not mergeable), then rules 1 and 2.
    let mut rs = state(vec![], Action::Accept);
    rs.policies[0].ingress.insert(
        0,
        mk_rule(
            9,
            Action::Accept,
            vec![mk_match(Some(vec![0]), Some(vec![tcp(7001)]), Some(1))],
        ),
    );
    let r = render(&rs, &opts).expect("renders");
    assert_eq!(
        merged_set(&r),
        None,
        "nothing merged after a match that is not"
    );
    // All mergeable: the merged rule first, then its RETURN once accepted.
    let r = render(&state(vec![], Action::Accept), &opts).expect("renders");
    let chain = palisade_enforcer::names::policy_chain(&web_id(), Direction::Ingress);
    let lines = &r.ipv4.chains[&chain];
    let lm = merged_log_chain(&merged_set_key(&web_id(), Direction::Ingress));
    assert!(lines[0].ends_with(&format!("-j {lm}")), "{lines:?}");
    assert_eq!(
        lines[1],
        format!("-A {chain} -m mark ! --mark 0x0/0x6000000 -j RETURN")
    );
}

fn many_ports(start: u16, end: u16) -> palisade_policy::compiled::PortRange {
    range(Protocol::Tcp, start, end)
}

/// Real packets through the merged set: each peer gets its own rule's port only.
#[test]
fn each_peer_gets_its_own_rules_port_only() {
    if !can_netns("merged_sets") {
        return;
    }
    let lab = Lab::new(&[A, B, WEB]);
    lab.serve(&[7001, 7002]);
    let mut enforcer = nft_enforcer(true, true);
    lab.node.run(|| {
        enforcer
            .apply(&state(vec![], Action::Accept))
            .expect("apply")
    });
    let saved = lab.node.exec("ipset list -n");
    assert!(
        saved.contains(&set_name(
            &merged_set_key(&web_id(), Direction::Ingress),
            Family::IPv4
        )),
        "{saved}"
    );
    let allowed = |from: usize, port: u16| lab.connect(from, 2, port).is_ok();
    assert!(allowed(0, 7001), "A on rule 0's port");
    assert!(allowed(1, 7002), "B on rule 1's port");
    assert!(!allowed(0, 7002), "A never gets rule 1's port");
    assert!(!allowed(1, 7001), "B never gets rule 0's port");
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
}
