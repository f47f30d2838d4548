//! Golden render tests: each rule set built by hand renders to the text in
//! `tests/golden/<case>.txt`. Regenerate with `PALISADE_UPDATE_GOLDEN=1 cargo test`.

mod common;

use common::*;
use palisade_enforcer::{
    eval, parse_comment, render, Flow, NodeRuleSet, RenderOptions, Verdict, L4,
};
use palisade_policy::model::{Action, Family, PolicyKind, Protocol};

fn golden(case: &str, rs: &NodeRuleSet, opts: RenderOptions) {
    let rendered = render(rs, &opts).expect("renders");
    let text = rendered.scripts();
    let path = format!("{}/tests/golden/{case}.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("PALISADE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run with PALISADE_UPDATE_GOLDEN=1)"));
    assert_eq!(text, want, "{case}: rendered text differs from {path}");
    for fam in [&rendered.ipv4, &rendered.ipv6] {
        for (chain, lines) in &fam.chains {
            assert!(chain.len() <= 28, "{chain} too long");
            for line in lines {
                assert!(line.starts_with(&format!("-A {chain} ")), "{line}");
                if let Some(at) = line.find("--comment \"P") {
                    let comment = &line[at + 11..];
                    let end = comment[1..].find('"').expect("closing quote") + 2;
                    let parsed = parse_comment(&comment[..end]).expect("comment parses");
                    assert!(rendered.lookup(&parsed.short_id).is_some(), "{line}");
                }
            }
        }
        for set in fam.sets.keys() {
            assert!(set.len() <= 31);
        }
    }
}

fn flow(src: &str, dst: &str, l4: L4) -> Flow {
    Flow {
        src: src.parse().expect("ip"),
        dst: dst.parse().expect("ip"),
        l4,
    }
}

fn verdict(rs: &NodeRuleSet, src: &str, dst: &str, l4: L4) -> Verdict {
    eval(rs, &flow(src, dst, l4)).expect("evaluates").verdict
}

/// One pod isolated for ingress by a NetworkPolicy without rules.
pub fn default_deny() -> NodeRuleSet {
    mk_rule_set(
        1,
        &["192.0.2.1"],
        vec![np_tier()],
        vec![],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("shop"),
            "deny-all",
            0,
            vec![],
            vec![],
        )],
        vec![
            mk_pod("shop", "web-0", &["10.1.0.2"], vec![tp(0, &[0])], vec![]),
            mk_pod("shop", "free", &["10.1.0.3"], vec![], vec![]),
        ],
    )
}

/// Ingress from a set of pods on TCP 80, egress to DNS; peers in sets.
pub fn accept_with_sets() -> NodeRuleSet {
    mk_rule_set(
        2,
        &["192.0.2.1"],
        vec![np_tier()],
        vec![
            mk_set(
                "np/shop/allow-front/ingress/0/0",
                Family::IPv4,
                &["10.1.0.4/32", "10.2.0.9/32", "10.3.0.0/24"],
                &[],
            ),
            mk_set(
                "np/shop/allow-front/egress/0/0",
                Family::IPv4,
                &["10.96.0.10/32"],
                &[],
            ),
        ],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("shop"),
            "allow-front",
            0,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![0]), Some(vec![tcp(80)]), None)],
            )],
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![1]), Some(vec![udp(53), tcp(53)]), None)],
            )],
        )],
        vec![
            mk_pod(
                "shop",
                "web-0",
                &["10.1.0.2"],
                vec![tp(0, &[0])],
                vec![tp(0, &[0])],
            ),
            mk_pod(
                "shop",
                "web-1",
                &["10.1.0.5"],
                vec![tp(0, &[0])],
                vec![tp(0, &[0])],
            ),
        ],
    )
}

/// Port ranges: merged, multiport, chunks of 15, SCTP, ICMP, all ports of a set.
pub fn port_ranges() -> NodeRuleSet {
    let mut many: Vec<_> = (0..18).map(|i| tcp(9000 + 2 * i)).collect();
    many.push(range(Protocol::Tcp, 8000, 8080));
    many.push(range(Protocol::Tcp, 8081, 8090));
    many.push(range(Protocol::Udp, 5000, 5100));
    many.push(range(Protocol::Udp, 6000, 6000));
    many.push(range(Protocol::Sctp, 3868, 3868));
    many.push(range(Protocol::Icmp, 0, 0));
    mk_rule_set(
        3,
        &[],
        vec![np_tier()],
        vec![mk_set(
            "peers",
            Family::IPv4,
            &["10.9.0.0/16"],
            &["10.9.9.0/24"],
        )],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "ports",
            0,
            vec![
                mk_rule(0, Action::Accept, vec![mk_match(None, Some(many), None)]),
                mk_rule(1, Action::Accept, vec![mk_match(Some(vec![0]), None, None)]),
                // A rule whose peers match nothing renders nothing.
                mk_rule(2, Action::Accept, vec![mk_match(Some(vec![]), None, None)]),
                // Empty port list: matches nothing.
                mk_rule(3, Action::Accept, vec![mk_match(None, Some(vec![]), None)]),
            ],
            vec![],
        )],
        vec![mk_pod("ns", "p", &["10.1.0.2"], vec![tp(0, &[0])], vec![])],
    )
}

/// A named port resolves to different numbers on different local pods: the rule
/// restricts the local side with a set per resolved number.
pub fn named_port_local() -> NodeRuleSet {
    mk_rule_set(
        4,
        &[],
        vec![np_tier()],
        vec![
            mk_set("local/http=8080", Family::IPv4, &["10.1.0.2/32"], &[]),
            mk_set("local/http=9090", Family::IPv4, &["10.1.0.3/32"], &[]),
        ],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "named",
            0,
            vec![mk_named_rule(
                0,
                "http",
                Action::Accept,
                vec![
                    mk_match(None, Some(vec![tcp(8080)]), Some(0)),
                    mk_match(None, Some(vec![tcp(9090)]), Some(1)),
                ],
            )],
            vec![],
        )],
        vec![
            mk_pod("ns", "a", &["10.1.0.2"], vec![tp(0, &[0])], vec![]),
            mk_pod("ns", "b", &["10.1.0.3"], vec![tp(0, &[0])], vec![]),
        ],
    )
}

/// Tiers: admin with Deny and Pass, a user tier with defaultAction Deny, the
/// NetworkPolicy tier and baseline.
pub fn tiers() -> NodeRuleSet {
    mk_rule_set(
        5,
        &["192.0.2.1"],
        security_tiers(),
        vec![
            mk_set("blocked", Family::IPv4, &["10.66.0.0/16"], &[]),
            mk_set("monitoring", Family::IPv4, &["10.7.0.0/24"], &[]),
            mk_set("trusted", Family::IPv4, &["10.5.0.0/16"], &[]),
            mk_set("frontend", Family::IPv4, &["10.1.0.0/24"], &[]),
        ],
        vec![
            block_bad(),
            trusted_only(),
            shop_front(vec![3], vec![tcp(80)]),
            mk_policy(
                PolicyKind::BaselineAdminNetworkPolicy,
                None,
                "default",
                3,
                vec![],
                vec![mk_rule(0, Action::Deny, vec![any()])],
            ),
        ],
        shop_pods(&["10.1.0.2"]),
    )
}

/// Dual stack: IPv6 sets, an ipBlock of ::/0 with exceptions, v4-only and v6-only rules.
pub fn ipv6() -> NodeRuleSet {
    mk_rule_set(
        6,
        &["192.0.2.1", "2001:db8::1"],
        vec![np_tier()],
        vec![
            mk_set("world6", Family::IPv6, &["::/0"], &["fd00::/8"]),
            mk_set("world4", Family::IPv4, &["0.0.0.0/0"], &["10.0.0.0/8"]),
            mk_set("pods6", Family::IPv6, &["fd00:1::5/128"], &[]),
        ],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "dual",
            0,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![2]), None, None)],
            )],
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![0, 1]), Some(vec![tcp(443)]), None)],
            )],
        )],
        vec![mk_pod(
            "ns",
            "dual",
            &["10.1.0.2", "fd00:1::2"],
            vec![tp(0, &[0])],
            vec![tp(0, &[0])],
        )],
    )
}

#[test]
fn golden_default_deny() {
    golden("default_deny", &default_deny(), RenderOptions::default());
    golden(
        "default_deny_reject",
        &default_deny(),
        RenderOptions {
            reject: true,
            ..RenderOptions::default()
        },
    );
    let rs = default_deny();
    assert_eq!(
        verdict(&rs, "10.9.0.1", "10.1.0.2", L4::Tcp(80)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "10.9.0.1", "10.1.0.3", L4::Tcp(80)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.1.0.2", "10.9.0.1", L4::Tcp(80)),
        Verdict::Accept
    );
    // Node traffic is always allowed.
    assert_eq!(
        verdict(&rs, "192.0.2.1", "10.1.0.2", L4::Tcp(80)),
        Verdict::Accept
    );
}

#[test]
fn golden_accept_with_sets() {
    golden(
        "accept_with_sets",
        &accept_with_sets(),
        RenderOptions::default(),
    );
    let rs = accept_with_sets();
    assert_eq!(
        verdict(&rs, "10.3.0.7", "10.1.0.2", L4::Tcp(80)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.3.0.7", "10.1.0.2", L4::Tcp(81)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "10.4.0.7", "10.1.0.2", L4::Tcp(80)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "10.1.0.2", "10.96.0.10", L4::Udp(53)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.1.0.2", "10.96.0.11", L4::Udp(53)),
        Verdict::Deny
    );
    // Local to local: egress of web-0 to web-1 is denied by web-0's egress.
    assert_eq!(
        verdict(&rs, "10.1.0.2", "10.1.0.5", L4::Tcp(80)),
        Verdict::Deny
    );
}

#[test]
fn golden_port_ranges() {
    golden("port_ranges", &port_ranges(), RenderOptions::default());
    let rs = port_ranges();
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Tcp(8085)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Tcp(9001)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Tcp(9034)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Icmp),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Sctp(3868)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.9.0.1", "10.1.0.2", L4::Other(47)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.9.9.1", "10.1.0.2", L4::Other(47)),
        Verdict::Deny
    );
}

#[test]
fn golden_named_port_local() {
    golden(
        "named_port_local",
        &named_port_local(),
        RenderOptions::default(),
    );
    let rs = named_port_local();
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Tcp(8080)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.2", L4::Tcp(9090)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.3", L4::Tcp(9090)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.8.0.1", "10.1.0.3", L4::Tcp(8080)),
        Verdict::Deny
    );
}

#[test]
fn golden_tiers() {
    golden("tiers", &tiers(), RenderOptions::default());
    let rs = tiers();
    // admin Deny wins over everything.
    assert_eq!(
        verdict(&rs, "10.66.0.1", "10.1.0.2", L4::Tcp(80)),
        Verdict::Deny
    );
    // Pass skips the security tier (default Deny) and lands in networkpolicy.
    assert_eq!(
        verdict(&rs, "10.7.0.9", "10.1.0.2", L4::Tcp(80)),
        Verdict::Deny
    );
    // security tier accepts trusted (networkpolicy never consulted).
    assert_eq!(
        verdict(&rs, "10.5.0.9", "10.1.0.2", L4::Tcp(22)),
        Verdict::Accept
    );
    // Not trusted, no match in security: its default Deny.
    assert_eq!(
        verdict(&rs, "10.1.0.9", "10.1.0.2", L4::Tcp(80)),
        Verdict::Deny
    );
    // web-1 has no security tier: networkpolicy decides.
    assert_eq!(
        verdict(&rs, "10.1.0.9", "10.1.0.3", L4::Tcp(80)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.1.0.9", "10.1.0.3", L4::Tcp(81)),
        Verdict::Deny
    );
    // Baseline denies egress of both pods.
    assert_eq!(
        verdict(&rs, "10.1.0.3", "10.9.0.1", L4::Tcp(80)),
        Verdict::Deny
    );
}

#[test]
fn golden_ipv6() {
    golden("ipv6", &ipv6(), RenderOptions::default());
    let rs = ipv6();
    assert_eq!(
        verdict(&rs, "fd00:1::2", "2001:db8:5::1", L4::Tcp(443)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "fd00:1::2", "fd00:2::1", L4::Tcp(443)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "10.1.0.2", "8.8.8.8", L4::Tcp(443)),
        Verdict::Accept
    );
    assert_eq!(
        verdict(&rs, "10.1.0.2", "10.8.8.8", L4::Tcp(443)),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&rs, "fd00:1::5", "fd00:1::2", L4::Tcp(1)),
        Verdict::Accept
    );
    // No IPv4 peer set for ingress: every IPv4 connection to the pod is denied.
    assert_eq!(
        verdict(&rs, "10.9.0.1", "10.1.0.2", L4::Tcp(1)),
        Verdict::Deny
    );
}

#[test]
fn faulty_rules_fail_closed() {
    let mut rs = accept_with_sets();
    rs.policies[0].ingress[0].matches[0].peers = Some(vec![99]);
    let rendered = render(&rs, &RenderOptions::default()).expect("renders");
    assert_eq!(rendered.issues.len(), 1);
    assert_eq!(
        verdict(&rs, "10.3.0.7", "10.1.0.2", L4::Tcp(80)),
        Verdict::Deny
    );
    let mut rs = tiers();
    rs.policies[0].ingress[1].matches[0].ports = Some(vec![range(Protocol::Tcp, 9, 1)]);
    // The Pass rule became a Deny of everything.
    assert_eq!(
        verdict(&rs, "10.5.0.9", "10.1.0.2", L4::Tcp(22)),
        Verdict::Deny
    );
    let mut rs = tiers();
    rs.format = 99;
    assert!(render(&rs, &RenderOptions::default()).is_err());
    let mut rs = tiers();
    rs.pods[0].ingress[0].policies = vec![1];
    assert!(
        render(&rs, &RenderOptions::default()).is_err(),
        "policy in the wrong tier"
    );
}

/// Every golden state is accepted by the real tools (both families, DROP and
/// REJECT), in a throwaway namespace.
#[test]
fn golden_states_apply_for_real() {
    if !can_netns("golden_states_apply_for_real") {
        return;
    }
    use palisade_enforcer::{ApplyOptions, Backend, Enforcer};
    let ns = Netns::new("golden");
    for reject in [false, true] {
        let opts = ApplyOptions {
            reject,
            revoke: true,
            ..ApplyOptions::default()
        };
        let mut enforcer = Enforcer::with_backend(Backend::Nft, opts);
        for state in [
            default_deny(),
            accept_with_sets(),
            port_ranges(),
            named_port_local(),
            tiers(),
            ipv6(),
        ] {
            let report = ns.run(|| enforcer.apply(&state)).expect("applies");
            assert!(
                report.issues.is_empty() && report.errors.is_empty(),
                "{report:?}"
            );
        }
    }
    let saved = ns.exec("ip6tables-save -t filter");
    assert!(saved.contains("-s fd00:1::2/128"), "{saved}");
    ns.run(palisade_enforcer::cleanup).expect("cleanup");
}
