//! The audit capture on real packets: the enforcer's rules and the NFLOG reader in
//! a node namespace this test creates, traffic between endpoint namespaces, and
//! the decisions that reach the spool. Also what the rules log for each audit
//! setting (rendered text, no root needed).

mod common;
mod dataplane_common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use palisade_enforcer::audit::{AuditConfig, Capture, Ids, Spool};
use palisade_enforcer::names::rule_id;
use palisade_enforcer::{render, ApplyOptions, Backend, Enforcer, NodeRuleSet, RenderOptions};
use palisade_policy::model::{Action, AuditMode, DefaultAction, Direction, PolicyKind, Protocol};
use palisade_wire::audit::{Decision, Verdict};

fn pid(kind: PolicyKind, ns: Option<&str>, name: &str) -> palisade_policy::model::PolicyId {
    palisade_policy::model::PolicyId {
        kind,
        namespace: ns.map(str::to_string),
        name: name.to_string(),
    }
}

/// Pod b (ns/b) is isolated for ingress: the admin tier denies c on TCP 7002, the
/// NetworkPolicy tier accepts a on TCP 7001; everything else to b is denied by
/// default (isolated by NetworkPolicy ns/b-from-a).
fn state(a: &str, b: &str, c: &str) -> NodeRuleSet {
    mk_rule_set(
        1,
        &[LAB_NODE_IP],
        vec![admin(), np_tier()],
        vec![
            mk_set(
                "a",
                palisade_policy::model::Family::IPv4,
                &[&format!("{a}/32")],
                &[],
            ),
            mk_set(
                "c",
                palisade_policy::model::Family::IPv4,
                &[&format!("{c}/32")],
                &[],
            ),
        ],
        vec![
            mk_policy(
                PolicyKind::ClusterNetworkPolicy,
                None,
                "block-c",
                0,
                vec![mk_rule(
                    0,
                    Action::Deny,
                    vec![mk_match(Some(vec![1]), Some(vec![tcp(7002)]), None)],
                )],
                vec![],
            ),
            mk_policy(
                PolicyKind::NetworkPolicy,
                Some("ns"),
                "b-from-a",
                1,
                vec![mk_rule(
                    0,
                    Action::Accept,
                    vec![mk_match(Some(vec![0]), Some(vec![tcp(7001)]), None)],
                )],
                vec![],
            ),
        ],
        vec![mk_pod(
            "ns",
            "b",
            &[b],
            vec![tp(0, &[0]), tp(1, &[1])],
            vec![],
        )],
    )
}

fn spool_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pal-audit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The agent's NFLOG capture in `node` (group 100, spool `spool_dir(tag)`, windows of
/// `window_ms`), with `rs` applied through its attribution. Returns the spool's folder too.
fn capture_applied(
    node: &Netns,
    tag: &str,
    window_ms: u64,
    rs: &NodeRuleSet,
) -> (Capture, std::path::PathBuf) {
    let dir = spool_dir(tag);
    let config = AuditConfig {
        group: 100,
        window: Duration::from_millis(window_ms),
        spool_dir: dir.clone(),
        spool_max_bytes: 1 << 20,
        keep_previous: Duration::from_secs(30),
    };
    let emit: palisade_enforcer::stream::Emit = Arc::new(|_| {});
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    let capture = node.run(|| {
        let capture = Capture::start(&config, "node-a", emit).expect("capture starts");
        enforcer
            .apply_attributed(rs, &capture.attribution)
            .expect("apply");
        capture
    });
    (capture, dir)
}

/// Every decision in the spool, summed per (rule id, source, destination, port).
fn spooled(spool: &Spool) -> BTreeMap<(String, String, String, Option<u16>), Decision> {
    let mut out: BTreeMap<_, Decision> = BTreeMap::new();
    let mut seq = 0;
    for _ in 0..10_000 {
        let Some(batch) = spool.next_after(seq).expect("spool reads") else {
            break;
        };
        seq = batch.seq;
        assert!(batch.gaps.is_empty(), "unexpected gaps: {:?}", batch.gaps);
        for d in batch.decisions {
            let key = (
                d.rule_id.clone(),
                d.src_ip.to_string(),
                d.dst_ip.to_string(),
                d.dst_port,
            );
            match out.get_mut(&key) {
                Some(e) => e.count += d.count,
                None => {
                    out.insert(key, d);
                }
            }
        }
    }
    out
}

#[test]
fn real_traffic_produces_attributed_decisions() {
    if !can_netns("audit capture") {
        return;
    }
    let lab = Lab::new(&["198.18.7.10", "198.18.7.11", "198.18.7.12"]);
    let (a, b, c) = (
        lab.ip(0).to_string(),
        lab.ip(1).to_string(),
        lab.ip(2).to_string(),
    );
    lab.serve(&[7001, 7002]);
    lab.serve_udp(&[7003]);
    let rs = state(&a, &b, &c);
    let (capture, dir) = capture_applied(&lab.node, "traffic", 300, &rs);

    // Allowed: three connections a → b:7001.
    for _ in 0..3 {
        let s = lab.connect(0, 1, 7001).expect("a → b:7001 is allowed");
        drop(s);
    }
    // Denied by the admin rule: c → b:7002 (one SYN inside the timeout).
    assert!(lab
        .connect_timeout(2, 1, 7002, Duration::from_millis(300))
        .is_err());
    // Denied by default (b is isolated): a → b:7002.
    assert!(lab
        .connect_timeout(0, 1, 7002, Duration::from_millis(300))
        .is_err());
    // A flood of denied datagrams from c: logged at most burst + rate × time.
    let flood_start = Instant::now();
    let target = lab.addr(1, 7003);
    lab.endpoints[2].0.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..2000 {
            let _ = s.send_to(b"x", target);
        }
    });
    let flood_secs = flood_start.elapsed().as_secs_f64();
    // Until the reader has seen nothing new for half a second (the kernel flushes its
    // queue after 50 ms; a loaded machine may delay it), at most 10 s; then the stop
    // spools the window in progress.
    let mut last = (capture.counters().records, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    while last.1.elapsed() < Duration::from_millis(500) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = capture.counters().records;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let counters = capture.counters();
    let spool = Arc::clone(&capture.spool);
    capture.stop();
    let decisions = spooled(&spool);
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
    let _ = std::fs::remove_dir_all(&dir);

    let accept_id = rule_id(
        &pid(PolicyKind::NetworkPolicy, Some("ns"), "b-from-a"),
        0,
        Direction::Ingress,
    );
    let deny_id = rule_id(
        &pid(PolicyKind::ClusterNetworkPolicy, None, "block-c"),
        0,
        Direction::Ingress,
    );
    let allowed = decisions
        .get(&(accept_id.clone(), a.clone(), b.clone(), Some(7001)))
        .unwrap_or_else(|| panic!("no allow record for a → b:7001 in {decisions:#?}"));
    assert_eq!(allowed.count, 3, "one record per connection: {allowed:?}");
    assert_eq!(allowed.verdict, Verdict::Allow);
    assert_eq!(allowed.policy.as_deref(), Some("NetworkPolicy ns/b-from-a"));
    assert_eq!(allowed.rule_index, Some(0));
    assert_eq!(allowed.tier, "networkpolicy");
    assert_eq!(allowed.protocol, "tcp");
    assert_eq!(
        allowed
            .dst
            .as_ref()
            .map(|e| (e.namespace.as_str(), e.pod.as_str())),
        Some(("ns", "b"))
    );
    assert_eq!(allowed.src, None, "a is not a pod of this node");

    let denied = decisions
        .get(&(deny_id.clone(), c.clone(), b.clone(), Some(7002)))
        .unwrap_or_else(|| panic!("no deny record for c → b:7002 in {decisions:#?}"));
    assert_eq!(denied.verdict, Verdict::Deny);
    assert_eq!(denied.tier, "admin");
    assert_eq!(
        denied.policy.as_deref(),
        Some("ClusterNetworkPolicy block-c")
    );
    assert!(denied.isolated_by.is_empty());

    let default = decisions
        .iter()
        .find(|((_, s, d, p), _)| *s == a && *d == b && *p == Some(7002))
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no default-deny record for a → b:7002 in {decisions:#?}"));
    assert_eq!(default.verdict, Verdict::Deny);
    assert_eq!(default.policy, None);
    assert_eq!(
        default.isolated_by,
        vec!["NetworkPolicy ns/b-from-a".to_string()]
    );
    assert!(default.rule_id.starts_with('T'), "{default:?}");

    let flood = decisions
        .iter()
        .find(|((_, s, d, p), _)| *s == c && *d == b && *p == Some(7003))
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no record of the flood in {decisions:#?}"));
    assert_eq!(flood.protocol, "udp");
    assert_eq!(
        flood.isolated_by,
        vec!["NetworkPolicy ns/b-from-a".to_string()]
    );
    eprintln!(
        "flood: {} logged over {flood_secs:.3} s; {counters:?}",
        flood.count
    );
    let bound = 20.0 + 10.0 * (flood_secs + 1.0);
    assert!(
        flood.count >= 15 && (flood.count as f64) <= bound,
        "2000 denied datagrams logged {} times (burst 20, 10/s over {flood_secs:.2} s)",
        flood.count
    );
    // Nothing else was logged, nothing lost.
    assert_eq!(decisions.len(), 4, "{decisions:#?}");
    assert_eq!(
        counters.malformed + counters.unattributed + counters.overrun_lost,
        0,
        "{counters:?}"
    );
}

fn nflog_lines(rs: &NodeRuleSet) -> Vec<String> {
    let rendered = render(rs, &RenderOptions::default()).expect("renders");
    rendered
        .ipv4
        .chains
        .values()
        .flatten()
        .filter(|l| l.contains("NFLOG"))
        .cloned()
        .collect()
}

/// Two accepting rules of one policy, merged into one `hash:net,port` set: each
/// connection is logged under the rule that accepts it (its port picks the rule), not
/// under the first rule merged.
#[test]
fn merged_rules_are_logged_under_their_own_rule() {
    if !can_netns("merged audit") {
        return;
    }
    let lab = Lab::new(&["198.18.7.20", "198.18.7.21", "198.18.7.22"]);
    let (a, b, c) = (
        lab.ip(0).to_string(),
        lab.ip(1).to_string(),
        lab.ip(2).to_string(),
    );
    lab.serve(&[7001, 7002]);
    let v4 = palisade_policy::model::Family::IPv4;
    let rs = mk_rule_set(
        1,
        &[LAB_NODE_IP],
        vec![np_tier()],
        vec![
            mk_set("a", v4, &[&format!("{a}/32")], &[]),
            mk_set("c", v4, &[&format!("{c}/32")], &[]),
        ],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "b",
            0,
            vec![
                mk_rule(
                    0,
                    Action::Accept,
                    vec![mk_match(Some(vec![0]), Some(vec![tcp(7001)]), None)],
                ),
                mk_rule(
                    1,
                    Action::Accept,
                    vec![mk_match(Some(vec![1]), Some(vec![tcp(7002)]), None)],
                ),
            ],
            vec![],
        )],
        vec![mk_pod("ns", "b", &[&b], vec![tp(0, &[0])], vec![])],
    );
    let rendered = render(&rs, &RenderOptions::default()).expect("renders");
    assert_eq!(rendered.ipv4.sets.len(), 1, "the two rules are merged");
    let (capture, dir) = capture_applied(&lab.node, "merged", 200, &rs);
    drop(lab.connect(0, 1, 7001).expect("a → b:7001 (rule 0)"));
    drop(lab.connect(2, 1, 7002).expect("c → b:7002 (rule 1)"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.counters().records < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let spool = Arc::clone(&capture.spool);
    capture.stop();
    let decisions = spooled(&spool);
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = pid(PolicyKind::NetworkPolicy, Some("ns"), "b");
    for (index, from, port) in [(0, &a, 7001), (1, &c, 7002)] {
        let id = rule_id(&policy, index, Direction::Ingress);
        let d = decisions
            .get(&(id, from.clone(), b.clone(), Some(port)))
            .unwrap_or_else(|| {
                panic!("no record of rule {index} for {from} → :{port} in {decisions:#?}")
            });
        assert_eq!(
            (d.rule_index, d.verdict),
            (Some(index as u32), Verdict::Allow)
        );
    }
    assert_eq!(decisions.len(), 2, "{decisions:#?}");
}

#[test]
fn audit_settings_decide_what_is_logged() {
    let rs = state("198.18.7.10", "198.18.7.11", "198.18.7.12");
    let accept = rule_id(
        &pid(PolicyKind::NetworkPolicy, Some("ns"), "b-from-a"),
        0,
        Direction::Ingress,
    );
    let deny = rule_id(
        &pid(PolicyKind::ClusterNetworkPolicy, None, "block-c"),
        0,
        Direction::Ingress,
    );
    let logs = |rs: &NodeRuleSet, id: &str| {
        nflog_lines(rs)
            .iter()
            .any(|l| l.contains(&format!("--nflog-prefix {id}")))
    };
    let default_logged = |rs: &NodeRuleSet| {
        nflog_lines(rs)
            .iter()
            .any(|l| l.contains("--nflog-prefix T"))
    };

    // Default: everything.
    assert!(logs(&rs, &accept) && logs(&rs, &deny) && default_logged(&rs));
    // Denials are rate-limited per source; allowed connections are not.
    // Denials are rate-limited per source and then on the whole node (many sources at
    // once cannot drown it either); allowed connections are not.
    for l in nflog_lines(&rs) {
        assert_eq!(
            l.contains("--hashlimit-mode srcip"),
            !l.contains(&accept),
            "{l}"
        );
        let per_source = l.find("--hashlimit-name pal-deny-log");
        let node = l.find("--hashlimit-name pal-deny-node");
        assert_eq!(per_source.is_some(), node.is_some(), "{l}");
        assert!(per_source <= node, "per source first: {l}");
    }

    // A policy that says Deny: its accepts are not logged, its default denial is.
    let mut only_deny = rs.clone();
    only_deny.policies[1].audit = Some(AuditMode::Deny);
    assert!(!logs(&only_deny, &accept) && logs(&only_deny, &deny) && default_logged(&only_deny));

    // None: nothing of that policy, nor the default denial it alone isolates for.
    let mut none = rs.clone();
    none.policies[1].audit = Some(AuditMode::None);
    assert!(!logs(&none, &accept) && !default_logged(&none) && logs(&none, &deny));

    // The operator's default applies to policies without a setting of their own.
    let mut quiet = rs.clone();
    quiet.audit_default = Some(AuditMode::None);
    assert!(nflog_lines(&quiet).is_empty());
    quiet.policies[0].audit = Some(AuditMode::All);
    assert!(logs(&quiet, &deny) && !logs(&quiet, &accept));

    // Audit off in the enforcer: no logging rule at all.
    let off = render(
        &rs,
        &RenderOptions {
            reject: false,
            audit: None,
        },
    )
    .expect("renders");
    assert!(off
        .ipv4
        .chains
        .values()
        .flatten()
        .all(|l| !l.contains("NFLOG")));

    // The default denial's id maps to the policies that isolate the pod.
    let rendered = render(&rs, &RenderOptions::default()).expect("renders");
    let iso: Vec<_> = rendered
        .ids
        .values()
        .filter(|r| !r.isolated_by.is_empty())
        .collect();
    assert_eq!(iso.len(), 1, "{iso:?}");
    assert_eq!(
        iso[0].isolated_by,
        vec![pid(PolicyKind::NetworkPolicy, Some("ns"), "b-from-a")]
    );
    assert_eq!(iso[0].action, Action::Deny);
    let _ = (DefaultAction::Deny, Protocol::Tcp);
}

#[test]
fn the_reader_configures_its_nflog_group() {
    if !can_netns("nflog config") {
        return;
    }
    let ns = Netns::new("cfg");
    let line = ns.run(|| {
        let _s = palisade_enforcer::audit::NflogSocket::bind(100, Duration::from_millis(100))
            .expect("bind");
        // This thread's namespace (/proc/net is the process's).
        std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_log")
            .expect("nfnetlink_log")
    });
    // group, port id, queued, copy mode, copy range, flush timeout (1/100 s), uses.
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 7, "{line}");
    assert_eq!(fields[0], "100", "{line}");
    assert_eq!(fields[3], "2", "copy-packet mode: {line}");
    assert_eq!(fields[4], "128", "copy range: {line}");
    assert_eq!(fields[5], "5", "flush timeout: {line}");
}

#[test]
fn connections_every_tier_passes_are_logged_too() {
    // x/p is isolated for egress by an admin-tier policy that only denies 10.9.0.0/16;
    // everything else passes the tier, and the pod has no other: allowed, no rule decided.
    let deny_some = mk_rule_set(
        1,
        &[LAB_NODE_IP],
        vec![admin()],
        vec![mk_set(
            "blocked",
            palisade_policy::model::Family::IPv4,
            &["10.9.0.0/16"],
            &[],
        )],
        vec![mk_policy(
            PolicyKind::ClusterNetworkPolicy,
            None,
            "block",
            0,
            vec![],
            vec![mk_rule(0, Action::Deny, vec![from_sets(&[0])])],
        )],
        vec![mk_pod("x", "p", &["10.1.0.2"], vec![], vec![tp(0, &[0])])],
    );
    let rendered = render(&deny_some, &RenderOptions::default()).expect("renders");
    let pass: Vec<_> = rendered
        .ids
        .values()
        .filter(|r| r.action == Action::Accept && r.policy.is_none())
        .collect();
    assert_eq!(pass.len(), 1, "{:?}", rendered.ids);
    assert_eq!(pass[0].direction, Direction::Egress);
    assert_eq!(pass[0].tier, "admin");
    let line = format!("--nflog-prefix {}", pass[0].id);
    let logged: Vec<&String> = rendered
        .ipv4
        .chains
        .values()
        .flatten()
        .filter(|l| l.contains(&line))
        .collect();
    assert_eq!(logged.len(), 1);
    assert!(
        logged[0].contains("-m mark ! --mark 0x2000000/0x2000000"),
        "only what no tier accepted: {}",
        logged[0]
    );
    // A policy that does not record allowed connections: no pod chain of its own,
    // the pod dispatches straight to its tier chain as without audit.
    let mut quiet = deny_some.clone();
    quiet.policies[0].audit = Some(AuditMode::Deny);
    let rendered = render(&quiet, &RenderOptions::default()).expect("renders");
    assert!(rendered.ids.values().all(|r| r.action != Action::Accept));
    assert!(rendered
        .ipv4
        .chains
        .keys()
        .all(|c| !c.starts_with("PALISADE-E-")));
}

/// An ICMPv6 echo request from the calling thread's namespace (raw socket: the kernel
/// fills in the checksum).
fn ping6(to: std::net::Ipv6Addr) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2), checked.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
    assert!(
        fd >= 0,
        "raw ICMPv6 socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let echo = [128u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    // SAFETY: a zeroed sockaddr_in6 with family and address set is valid.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_addr.s6_addr = to.octets();
    // SAFETY: echo and addr are valid for the given lengths.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            echo.as_ptr().cast(),
            echo.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        echo.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn ipv6_decisions_are_captured_with_ports_and_icmpv6_types() {
    use dataplane_common::{DsLab, Neigh, NODE_V4, NODE_V6};
    if !can_netns("audit capture ipv6") {
        return;
    }
    let lab = DsLab::new(
        &[
            ("a", None, Some("2001:db8:7::a")),
            ("b", None, Some("2001:db8:7::b")),
        ],
        Neigh::Static,
    );
    let (a, b) = (lab.pod("a").ip(true), lab.pod("b").ip(true));
    let rs = mk_rule_set(
        1,
        &[NODE_V4, NODE_V6],
        vec![np_tier()],
        vec![mk_set(
            "a6",
            palisade_policy::model::Family::IPv6,
            &[&format!("{a}/128")],
            &[],
        )],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "b-from-a",
            0,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![0]), Some(vec![udp(9000)]), None)],
            )],
            vec![],
        )],
        vec![mk_pod(
            "ns",
            "b",
            &[&b.to_string()],
            vec![tp(0, &[0])],
            vec![],
        )],
    );
    let (capture, dir) = capture_applied(&lab.node, "ipv6", 200, &rs);
    let std::net::IpAddr::V6(b6) = b else {
        panic!("b has an IPv6 address")
    };
    lab.pod("a").ns.run(|| {
        let s = UdpSocket::bind("[::]:0").expect("bind");
        s.send_to(b"allowed", (b, 9000)).expect("send");
        s.send_to(b"denied", (b, 9001)).expect("send");
        ping6(b6);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.counters().records < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let spool = Arc::clone(&capture.spool);
    capture.stop();
    let decisions = spooled(&spool);
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
    let _ = std::fs::remove_dir_all(&dir);

    let find = |proto: &str, port: Option<u16>| {
        decisions
            .values()
            .find(|d| d.protocol == proto && d.dst_port == port)
            .unwrap_or_else(|| panic!("no {proto} {port:?} record in {decisions:#?}"))
    };
    let allowed = find("udp", Some(9000));
    assert_eq!((allowed.src_ip, allowed.dst_ip), (a, b));
    assert_eq!(allowed.verdict, Verdict::Allow);
    assert_eq!(allowed.policy.as_deref(), Some("NetworkPolicy ns/b-from-a"));
    assert_eq!(allowed.src_port, None, "source ports are not kept");
    let denied = find("udp", Some(9001));
    assert_eq!(denied.verdict, Verdict::Deny);
    assert_eq!(
        denied.isolated_by,
        vec!["NetworkPolicy ns/b-from-a".to_string()]
    );
    // ICMPv6: the type (echo request, 128) in src_port, the code in dst_port.
    let ping = find("icmpv6", Some(0));
    assert_eq!((ping.src_port, ping.verdict), (Some(128), Verdict::Deny));
    assert_eq!(decisions.len(), 3, "{decisions:#?}");
}

#[test]
fn a_kernel_overrun_is_seen_and_its_size_known_from_the_sequence_numbers() {
    use palisade_enforcer::audit::{nflog::parse_datagram, NflogSocket, Parsed, RecvError};
    if !can_netns("audit overrun") {
        return;
    }
    let lab = Lab::new(&["198.18.8.10", "198.18.8.11"]);
    let (a, b) = (lab.ip(0).to_string(), lab.ip(1).to_string());
    // b isolated for ingress, nothing allowed: every datagram is a logged denial (a high
    // rate limit, so the flood is logged in full).
    let rs = mk_rule_set(
        1,
        &[LAB_NODE_IP],
        vec![np_tier()],
        vec![],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "deny-all",
            0,
            vec![],
            vec![],
        )],
        vec![mk_pod("ns", "b", &[&b], vec![tp(0, &[0])], vec![])],
    );
    let opts = ApplyOptions {
        audit: Some(palisade_enforcer::AuditRules {
            group: 100,
            deny_per_sec: 100_000,
            deny_burst: 100_000,
            deny_node_per_sec: 100_000,
        }),
        ..ApplyOptions::default()
    };
    let mut enforcer = Enforcer::with_backend(Backend::Nft, opts);
    // A tiny receive buffer that nobody reads while 3,000 packets are logged.
    let socket = lab.node.run(|| {
        enforcer.apply(&rs).expect("apply");
        let s = NflogSocket::bind(100, Duration::from_millis(200)).expect("bind");
        s.set_receive_buffer(4096).expect("small buffer");
        s
    });
    let target = lab.addr(1, 9);
    let send = |n: usize| {
        lab.endpoints[0].0.run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for _ in 0..n {
                let _ = s.send_to(b"x", target);
            }
        })
    };
    send(3000);
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = vec![0u8; 256 << 10];
    let (mut overruns, mut records) = (0u64, 0u64);
    let mut max_seq = 0u32;
    let mut drain = |overruns: &mut u64, records: &mut u64, max_seq: &mut u32| {
        // Bounded: at most 10,000 receives, until one times out.
        for _ in 0..10_000 {
            match socket.recv(&mut buf) {
                Ok(n) => parse_datagram(&buf[..n], &mut |p| {
                    if let Parsed::Record(r) = p {
                        *records += 1;
                        *max_seq = (*max_seq).max(r.seq.unwrap_or(0));
                    }
                }),
                Err(RecvError::Overrun) => *overruns += 1,
                Err(RecvError::Timeout) => break,
                Err(RecvError::Io(e)) => panic!("recv: {e}"),
            }
        }
    };
    drain(&mut overruns, &mut records, &mut max_seq);
    let before = records;
    // The next message after the overrun carries the group's count of every message
    // made, delivered or not: the jump is what was lost.
    send(1);
    drain(&mut overruns, &mut records, &mut max_seq);
    drop(socket);
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
    eprintln!("overrun: {overruns} ENOBUFS, {before} then {records} records, last seq {max_seq}; from {a}");
    assert!(overruns >= 1, "the kernel reports the overrun");
    assert!(before > 0 && before < 3000, "{before}");
    assert_eq!(records, before + 1, "the message after the overrun arrives");
    assert_eq!(max_seq, 3000, "3,001 messages made, numbered from 0");
    let lost = u64::from(max_seq) + 1 - records;
    assert_eq!(lost, 3000 - before);
}

/// The ids of a new rule set reach the attribution before the kernel logs under
/// them (after render, before the first change); an apply that changes no id
/// publishes the same map (so the attribution retires nothing); a failed apply
/// publishes the rule set in force again. Real traffic under the new ids is
/// attributed.
#[test]
fn new_rule_ids_are_published_before_the_kernel_changes() {
    if !can_netns("audit attribution order") {
        return;
    }
    let lab = Lab::new(&["198.18.9.10", "198.18.9.11", "198.18.9.12"]);
    let (a, b, c) = (
        lab.ip(0).to_string(),
        lab.ip(1).to_string(),
        lab.ip(2).to_string(),
    );
    lab.serve(&[7001]);
    let accepts = |version: u64, name: &str, peers: usize| {
        let mut rs = state(&a, &b, &c);
        rs.version = version;
        if peers == 2 {
            rs.sets.push(mk_set(
                "d",
                palisade_policy::model::Family::IPv4,
                &[&format!("{a}/32")],
                &[],
            ));
        }
        rs.policies[1] = mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            name,
            1,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![peers]), Some(vec![tcp(7001)]), None)],
            )],
            vec![],
        );
        rs
    };
    let id = |name: &str| {
        rule_id(
            &pid(PolicyKind::NetworkPolicy, Some("ns"), name),
            0,
            Direction::Ingress,
        )
    };
    let (id1, id2, id4) = (id("b-from-a"), id("b-from-a-v2"), id("b-from-a-v4"));
    let rs1 = state(&a, &b, &c);
    let rs2 = accepts(2, "b-from-a-v2", 0);
    let mut rs3 = rs2.clone();
    rs3.version = 3;
    // Rule set 4 needs a set for its policy's rule (merged into the policy's set), which
    // the test makes impossible to create.
    let rs4 = accepts(4, "b-from-a-v4", 2);
    let d_set = palisade_enforcer::names::set_name(
        &palisade_enforcer::names::merged_set_key(
            &pid(PolicyKind::NetworkPolicy, Some("ns"), "b-from-a-v4"),
            Direction::Ingress,
        ),
        palisade_policy::model::Family::IPv4,
    );
    let dir = spool_dir("order");
    let config = AuditConfig {
        group: 100,
        window: Duration::from_millis(200),
        spool_dir: dir.clone(),
        spool_max_bytes: 1 << 20,
        keep_previous: Duration::from_secs(30),
    };
    let emit: palisade_enforcer::stream::Emit = Arc::new(|_| {});
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    // Per call of the observer: (the ids' map, rule 1 and rule 2 in the kernel then).
    let mut seen: Vec<(Ids, bool, bool, usize)> = Vec::new();
    let capture = lab.node.run(|| {
        let capture = Capture::start(&config, "node-a", emit).expect("capture starts");
        enforcer
            .apply_attributed(&rs1, &capture.attribution)
            .expect("apply 1");
        let mut observe = |ids: &Ids, pods: &[palisade_policy::compiled::LocalPod]| {
            let rules = sh("iptables-nft-save -t filter");
            seen.push((
                Arc::clone(ids),
                rules.contains(&id1),
                rules.contains(&id2),
                pods.len(),
            ));
            capture.attribution.lock().expect("lock").update(
                Arc::clone(ids),
                pods,
                Instant::now(),
                wall_ms(),
            );
        };
        enforcer
            .apply_observed(&rs2, &mut observe)
            .expect("apply 2");
        enforcer
            .apply_observed(&rs3, &mut observe)
            .expect("apply 3");
        sh(&format!("ipset create {d_set} hash:net family inet6"));
        assert!(
            enforcer.apply_observed(&rs4, &mut observe).is_err(),
            "set {d_set} exists with another type"
        );
        capture
    });
    let s = lab
        .connect(0, 1, 7001)
        .expect("a → b:7001 is allowed by rule set 3");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.counters().records < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counters = capture.counters();
    let spool = Arc::clone(&capture.spool);
    capture.stop();
    let decisions = spooled(&spool);
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
    let _ = std::fs::remove_dir_all(&dir);

    // Rule set 2's ids were known while the kernel held rule set 1 only.
    let (ids2, had1, had2, pods) = seen.first().expect("rule set 2 observed");
    assert!(ids2.contains_key(&id2) && !ids2.contains_key(&id1));
    assert!(*had1 && !*had2, "published after the kernel changed");
    assert_eq!(*pods, 1);
    assert_eq!(seen.len(), 4, "rs2, rs3, rs4 and rs4's undoing");
    // Rule set 3 changed no id: the same map.
    assert!(
        Arc::ptr_eq(&seen[1].0, ids2),
        "an unchanged map was replaced"
    );
    // Rule set 4 published, failed, and rule set 3's map is current again.
    assert!(seen[2].0.contains_key(&id4));
    assert!(
        Arc::ptr_eq(&seen[3].0, ids2),
        "the failed apply was not undone"
    );
    assert_eq!(seen[3].3, 1);
    let allowed = decisions
        .get(&(id2.clone(), a.clone(), b.clone(), Some(7001)))
        .unwrap_or_else(|| panic!("no allow record under {id2} in {decisions:#?}"));
    assert_eq!(
        allowed.policy.as_deref(),
        Some("NetworkPolicy ns/b-from-a-v2")
    );
    assert_eq!(counters.unattributed, 0, "{counters:?}");
}

/// Milliseconds since the epoch, the clock of the packets' timestamps.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
