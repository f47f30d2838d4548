//! Palisade beside kube-proxy, in a dual-stack node namespace.
//!
//! iptables mode:
//!
//! kube-proxy's filter rules `ACCEPT` in `KUBE-FORWARD` what its nat rules marked
//! for masquerade (`0x4000`: NodePort and external-IP traffic, hairpin), and it
//! *prepends* its jump to `KUBE-FORWARD` in `FORWARD` whenever the jump is missing
//! (its first sync after a boot, after a flush). If that jump comes before
//! Palisade's, Palisade never sees those packets: an external client reaches an
//! isolated pod through a NodePort of its node.
//!
//! The test programs the node with `palisade-enforcer run` (hook check every 200
//! ms), then installs a kube-proxy-like NodePort 30080 → pod a:8080 (nat
//! `KUBE-NODEPORTS` / `KUBE-EXT` / `KUBE-MARK-MASQ` / `KUBE-SEP`, `MASQUERADE` in
//! `POSTROUTING`) and `KUBE-FORWARD`, its jump prepended to `FORWARD` after
//! Palisade's hook, as a kube-proxy starting second does. Within a hook check
//! Palisade's jump is first again, and the external client is refused through
//! the NodePort as it is directly, in both families; the pod that a's policy
//! admits still gets through the NodePort.
//!
//! nftables mode: kube-proxy's own tables (`ip` / `ip6 kube-proxy`), DNAT in a
//! `type nat hook prerouting priority dstnat` chain, masquerade at `srcnat`, and
//! a `type filter hook forward priority dstnat - 10` (-110) chain, here made to
//! `accept` every new connection (kube-proxy's only drops or rejects; this is the
//! worst case). An accept ends only its own base chain: iptables-nft's FORWARD (table
//! `ip filter`, priority `filter`) still sees the packet after DNAT, so the client
//! is refused through the NodePort and the admitted pod gets through.

mod common;
mod dataplane_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dataplane_common::*;
use palisade_enforcer::NodeRuleSet;
use palisade_policy::model::{Action, Family, PolicyKind};

const PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
/// The enforcer's arguments besides `--state`: a hook check every 200 ms.
const ARGS: &[&str] = &["--backend", "nft", "--hook-check-ms", "200"];

/// Pod a admits pod friend on 8080 (both families); nothing else is isolated.
fn state(a: &DsPod, friend: &DsPod) -> NodeRuleSet {
    let v4 = format!("{}/32", friend.ip(false));
    let v6 = format!("{}/128", friend.ip(true));
    mk_rule_set(
        1,
        &[NODE_V4, NODE_V6],
        vec![np_tier()],
        vec![
            mk_set("a/in/0/v4", Family::IPv4, &[&v4], &[]),
            mk_set("a/in/0/v6", Family::IPv6, &[&v6], &[]),
        ],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("web"),
            "a-from-friend",
            0,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![0, 1]), Some(vec![tcp(PORT)]), None)],
            )],
            vec![],
        )],
        vec![mk_pod(
            "web",
            "a",
            &[&a.ip(false).to_string(), &a.ip(true).to_string()],
            vec![tp(0, &[0])],
            vec![],
        )],
    )
}

/// A dual-stack node with pods a and friend and an outside client (no pod,
/// routed through the node like the rest) at `198.18.<net>.10/20/30` and
/// `2001:2::<net>:10/20/30`, each serving its name on 8080, and the enforcer
/// running there with [`state`] applied. The directory holds its state file.
fn programmed_lab(net: u8, tag: &str) -> (DsLab, TempDir, Agent) {
    let addrs: Vec<(String, String)> = [10, 20, 30]
        .iter()
        .map(|host| {
            (
                format!("198.18.{net}.{host}"),
                format!("2001:2::{net}:{host}"),
            )
        })
        .collect();
    let lab = DsLab::new(
        &[
            ("a", Some(addrs[0].0.as_str()), Some(addrs[0].1.as_str())),
            (
                "friend",
                Some(addrs[1].0.as_str()),
                Some(addrs[1].1.as_str()),
            ),
            (
                "client",
                Some(addrs[2].0.as_str()),
                Some(addrs[2].1.as_str()),
            ),
        ],
        Neigh::Static,
    );
    lab.serve_names(PORT);
    let dir = TempDir::new(tag);
    let path = dir.0.join("state.json");
    let state = state(lab.pod("a"), lab.pod("friend"));
    std::fs::write(&path, serde_json::to_vec(&state).expect("json")).expect("write");
    let agent = Agent::start(&lab.node, &path, ARGS, None);
    agent.applied(1);
    (lab, dir, agent)
}

/// Three times in each family: the client is refused through the NodePort (and,
/// with `direct`, at a itself); the friend gets through the NodePort to a.
fn node_port_obeys_the_policy(lab: &DsLab, direct: bool) {
    let (a, friend, client) = (lab.pod("a"), lab.pod("friend"), lab.pod("client"));
    let wait = Duration::from_millis(500);
    for v6 in [false, true] {
        let node_ip: std::net::IpAddr = if v6 { NODE_V6 } else { NODE_V4 }.parse().expect("ip");
        let through_node_port = sa(node_ip, NODE_PORT);
        for _ in 0..3 {
            assert_eq!(
                tcp_probe(&client.ns, through_node_port, wait),
                Seen::TimedOut,
                "v6 {v6}: the client reached a through the NodePort"
            );
            if direct {
                assert_eq!(
                    tcp_probe(&client.ns, sa(a.ip(v6), PORT), wait),
                    Seen::TimedOut
                );
            }
            assert_eq!(
                tcp_probe(&friend.ns, through_node_port, wait),
                Seen::Name("a".into()),
                "v6 {v6}: the friend through the NodePort"
            );
        }
    }
}

/// Runs `cmd args` in `node` with `text` on its standard input; panics unless it
/// succeeds.
fn load(node: &Netns, cmd: &str, args: &[&str], text: &str) {
    node.run(|| {
        let mut child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        assert!(child.wait().expect("wait").success(), "{text}");
    });
}

/// kube-proxy's rules for NodePort 30080 → a:8080 (one family), its filter jump
/// prepended to FORWARD.
fn kube_proxy(a: &DsPod, v6: bool) -> String {
    let dest = if v6 {
        format!("[{}]:{PORT}", a.ip(true))
    } else {
        format!("{}:{PORT}", a.ip(false))
    };
    format!(
        "*nat\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-EXT-A - [0:0]\n:KUBE-SEP-A - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         -I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-NODEPORTS -p tcp -m tcp --dport {NODE_PORT} -j KUBE-EXT-A\n\
         -A KUBE-EXT-A -j KUBE-MARK-MASQ\n\
         -A KUBE-EXT-A -j KUBE-SEP-A\n\
         -A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination {dest}\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE\n\
         COMMIT\n\
         *filter\n\
         :KUBE-FORWARD - [0:0]\n\
         -I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    )
}

fn first_forward_rule(node: &Netns, v6: bool) -> String {
    let tool = if v6 { "ip6tables-nft" } else { "iptables-nft" };
    node.exec(&format!("{tool} -w -S FORWARD"))
        .lines()
        .find(|l| l.starts_with("-A FORWARD "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn kube_proxy_prepending_its_forward_jump_never_bypasses_policies() {
    if !can_netns("kube-proxy forward order") {
        return;
    }
    let (lab, _dir, agent) = programmed_lab(6, "kp");
    let (a, friend, client) = (lab.pod("a"), lab.pod("friend"), lab.pod("client"));

    let wait = Duration::from_millis(500);
    for v6 in [false, true] {
        // Before kube-proxy: the client is refused, the friend admitted.
        assert_eq!(
            tcp_probe(&client.ns, sa(a.ip(v6), PORT), wait),
            Seen::TimedOut
        );
        assert!(tcp_probe(&friend.ns, sa(a.ip(v6), PORT), wait).allowed());
        // kube-proxy starts and prepends its jump: it is first for a moment.
        let tool = if v6 {
            "ip6tables-nft-restore"
        } else {
            "iptables-nft-restore"
        };
        load(
            &lab.node,
            tool,
            &["--noflush", "-w", "10"],
            &kube_proxy(a, v6),
        );
        assert!(first_forward_rule(&lab.node, v6).contains("KUBE-FORWARD"));
    }
    // Within a hook check (200 ms here), Palisade's jump is first again.
    let deadline = Instant::now() + Duration::from_secs(3);
    for v6 in [false, true] {
        while !first_forward_rule(&lab.node, v6).contains("-j PALISADE-FORWARD") {
            assert!(
                Instant::now() < deadline,
                "{}",
                lab.node.exec(if v6 {
                    "ip6tables-nft -S FORWARD"
                } else {
                    "iptables-nft -S FORWARD"
                })
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let listing = lab.node.exec(if v6 {
            "ip6tables-nft -S FORWARD"
        } else {
            "iptables-nft -S FORWARD"
        });
        assert_eq!(
            listing.matches("-j PALISADE-FORWARD").count(),
            1,
            "{listing}"
        );
        assert!(
            listing.contains("-j KUBE-FORWARD"),
            "kube-proxy's jump kept: {listing}"
        );
    }
    // The NodePort DNATs to a and marks for masquerade: KUBE-FORWARD would ACCEPT
    // it; Palisade, first, refuses the client as a's policy says.
    node_port_obeys_the_policy(&lab, true);
    agent.terminate();
    enforcer_cleanup(&lab.node);
}

/// kube-proxy's nftables mode, reduced to what matters here (one family).
fn kube_proxy_nft(a: &DsPod, v6: bool) -> String {
    let (family, dest) = if v6 {
        ("ip6", format!("[{}]:{PORT}", a.ip(true)))
    } else {
        ("ip", format!("{}:{PORT}", a.ip(false)))
    };
    format!(
        "table {family} kube-proxy {{\n\
           chain filter-forward {{\n\
             type filter hook forward priority -110; policy accept;\n\
             ct state new accept\n\
           }}\n\
           chain nat-prerouting {{\n\
             type nat hook prerouting priority dstnat; policy accept;\n\
             fib daddr type local tcp dport {NODE_PORT} meta mark set meta mark | 0x4000 dnat to {dest}\n\
           }}\n\
           chain nat-postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             meta mark & 0x4000 == 0x4000 meta mark set meta mark ^ 0x4000 masquerade\n\
           }}\n\
         }}\n"
    )
}

#[test]
fn kube_proxy_nftables_mode_cannot_bypass_policies() {
    if !can_netns("kube-proxy nftables mode") {
        return;
    }
    let (lab, _dir, agent) = programmed_lab(7, "kpnft");
    let a = lab.pod("a");
    for v6 in [false, true] {
        load(&lab.node, "nft", &["-f", "-"], &kube_proxy_nft(a, v6));
    }
    node_port_obeys_the_policy(&lab, false);
    // The DNAT happened (the friend's connections went through kube-proxy's
    // table): its chain counted them.
    let ruleset = lab.node.exec("nft list table ip kube-proxy");
    assert!(ruleset.contains("dnat to"), "{ruleset}");
    agent.terminate();
    enforcer_cleanup(&lab.node);
    lab.node
        .exec("nft delete table ip kube-proxy; nft delete table ip6 kube-proxy");
}
