//! Dual-stack programming, for real, in throwaway namespaces.
//!
//! - One transaction per family: the `palisade-enforcer` binary runs with every
//!   tool it calls wrapped (each call logged with its input); a first apply and an
//!   update that touches only IPv6 run exactly one `ip6tables-nft-restore` each
//!   (every IPv6 chain of ours in one input), and the update no
//!   `iptables-nft-restore`; the `family inet6` sets are created and filled in the
//!   `ipset restore` that runs before it.
//! - A restart keeps both families: `run`, SIGTERM, `run` again on a dual-stack
//!   node, IPv4 and IPv6 probes through it all, and samples of both families'
//!   rules and of the sets never differ.

mod common;
mod dataplane_common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataplane_common::*;
use palisade_enforcer::NodeRuleSet;
use palisade_policy::model::{Action, Family, PolicyKind};

const PORT: u16 = 8080;
/// The enforcer's arguments besides `--state`.
const NFT: &[&str] = &["--backend", "nft"];

fn write_state(path: &Path, state: &NodeRuleSet) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(state).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// x/a (dual-stack) admits `peers4` / `peers6` on TCP 8080; `v6_more` adds an
/// IPv6 peer and an IPv6-only ipBlock rule (nothing changes for IPv4).
fn state(
    version: u64,
    a: &DsPod,
    peers4: &[String],
    peers6: &[String],
    v6_more: bool,
) -> NodeRuleSet {
    let hosts = |ips: &[String], len: u8| -> Vec<String> {
        ips.iter().map(|i| format!("{i}/{len}")).collect()
    };
    let p4 = hosts(peers4, 32);
    let mut p6 = hosts(peers6, 128);
    if v6_more {
        p6.push("2001:2::4:99/128".into());
    }
    let p4: Vec<&str> = p4.iter().map(String::as_str).collect();
    let p6: Vec<&str> = p6.iter().map(String::as_str).collect();
    let mut sets = vec![
        mk_set("x/a/in/0/v4", Family::IPv4, &p4, &[]),
        mk_set("x/a/in/0/v6", Family::IPv6, &p6, &[]),
    ];
    let mut rules = vec![mk_rule(
        0,
        Action::Accept,
        vec![mk_match(Some(vec![0, 1]), Some(vec![tcp(PORT)]), None)],
    )];
    if v6_more {
        sets.push(mk_set(
            "x/a/in/1/block6",
            Family::IPv6,
            &["2001:db8::/64"],
            &["2001:db8::66/128"],
        ));
        rules.push(mk_rule(1, Action::Accept, vec![from_sets(&[2])]));
    }
    mk_rule_set(
        version,
        &[NODE_V4, NODE_V6],
        vec![np_tier()],
        sets,
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("x"),
            "a-in",
            0,
            rules,
            vec![],
        )],
        vec![mk_pod(
            "x",
            "a",
            &a.ips().iter().map(String::as_str).collect::<Vec<_>>(),
            vec![tp(0, &[0])],
            vec![],
        )],
    )
}

const TOOLS: [&str; 13] = [
    "iptables-nft-restore",
    "ip6tables-nft-restore",
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-nft",
    "ip6tables-nft",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-restore",
    "ipset",
    "conntrack",
    "ip",
];

/// Wrappers for every tool the enforcer runs: each call appends `N TOOL ARGS` to
/// `calls.log` and keeps its standard input in `in.N`.
fn wrappers(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    for tool in TOOLS {
        let real = sh(&format!("command -v {tool}")).trim().to_string();
        assert!(!real.is_empty(), "{tool} not found");
        let script = format!(
            "#!/bin/sh\n\
             d={dir}\n\
             n=$(date +%s%N)\n\
             echo \"$n {tool} $*\" >> $d/calls.log\n\
             if [ \"{tool}\" != ip ] && [ \"{tool}\" != conntrack ] && ! [ -t 0 ]; then\n\
               cat > $d/in.$n\n\
               exec {real} \"$@\" < $d/in.$n\n\
             fi\n\
             exec {real} \"$@\"\n",
            dir = dir.display()
        );
        let path = bin.join(tool);
        std::fs::write(&path, script).expect("write wrapper");
        sh(&format!("chmod +x {}", path.display()));
    }
    bin
}

/// The calls logged so far: (id, tool, args).
fn calls(dir: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut w = l.splitn(3, ' ');
            (
                w.next().unwrap_or_default().to_string(),
                w.next().unwrap_or_default().to_string(),
                w.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn count(calls: &[(String, String, String)], tool: &str) -> usize {
    calls.iter().filter(|(_, t, _)| t == tool).count()
}

#[test]
fn each_family_is_one_restore_transaction() {
    if !can_netns("dual-stack transactions") {
        return;
    }
    let lab = DsLab::new(
        &[
            ("a", Some("198.18.4.20"), Some("2001:2::4:20")),
            ("b", Some("198.18.4.10"), Some("2001:2::4:10")),
        ],
        Neigh::Static,
    );
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    let tmp = TempDir::new("ds-tx");
    let bin = wrappers(&tmp.0);
    let state_path = tmp.0.join("state.json");
    let peers4 = vec![b.ip(false).to_string()];
    let peers6 = vec![b.ip(true).to_string()];
    write_state(&state_path, &state(1, a, &peers4, &peers6, false));
    let agent = Agent::start(&lab.node, &state_path, NFT, Some(&bin));
    agent.applied(1);

    // First apply: one restore per family writes every chain, the sets (both
    // families) before it; the hook into FORWARD comes after (its own small
    // transaction, as in every hook check).
    let first = calls(&tmp.0);
    let input = |id: &str| std::fs::read_to_string(tmp.0.join(format!("in.{id}"))).expect("input");
    let chain_restores = |calls: &[(String, String, String)], tool: &str| -> usize {
        calls
            .iter()
            .filter(|(id, t, _)| t == tool && input(id).contains(":PALISADE-"))
            .count()
    };
    assert_eq!(
        chain_restores(&first, "iptables-nft-restore"),
        1,
        "{first:#?}"
    );
    assert_eq!(
        chain_restores(&first, "ip6tables-nft-restore"),
        1,
        "{first:#?}"
    );
    let hook = first
        .iter()
        .filter(|(id, t, _)| t == "ip6tables-nft-restore" && !input(id).contains(":PALISADE-"))
        .map(|(id, _, _)| input(id))
        .collect::<Vec<_>>();
    assert_eq!(hook.len(), 1, "{first:#?}");
    assert!(
        hook[0].contains("-I FORWARD 1 ") && hook[0].lines().count() == 3,
        "{}",
        hook[0]
    );
    assert_eq!(
        count(&first, "iptables-legacy-restore") + count(&first, "ip6tables-legacy-restore"),
        0
    );
    let pos = |tool: &str, args: &str| {
        first
            .iter()
            .position(|(_, t, a)| t == tool && a.contains(args))
            .unwrap_or_else(|| panic!("no {tool} {args}: {first:#?}"))
    };
    // The families' loads run side by side: the IPv6 sets are the ipset restore
    // that declares inet6 sets, and it must come before the IPv6 rules.
    let sets_at = first
        .iter()
        .position(|(id, t, a)| {
            t == "ipset" && a.contains("restore") && input(id).contains("family inet6")
        })
        .unwrap_or_else(|| panic!("no IPv6 ipset restore: {first:#?}"));
    let v6_at = pos("ip6tables-nft-restore", "--noflush");
    assert!(sets_at < v6_at, "{first:#?}");
    let set_input = input(&first[sets_at].0);
    assert!(set_input.contains("family inet6"), "{set_input}");
    assert!(
        set_input.contains(&format!("{}", b.ip(true))),
        "{set_input}"
    );
    // Every chain of ours the kernel now holds for IPv6 was declared in that one
    // ip6tables-restore input, with its rules.
    let v6_input = input(&first[v6_at].0);
    let saved = lab.node.exec("ip6tables-nft-save -t filter");
    let ours: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("PALISADE-"))
        .collect();
    assert!(ours.len() >= 5, "{saved}");
    for chain in &ours {
        assert!(
            v6_input.contains(&format!(":{chain} ")),
            "{chain} not in the one IPv6 restore:\n{v6_input}"
        );
    }
    assert_eq!(v6_input.matches("COMMIT").count(), 1, "{v6_input}");
    let hooks = lab.node.exec("ip6tables-nft -S FORWARD");
    assert!(hooks.contains("-j PALISADE-FORWARD"), "{hooks}");
    let list = lab.node.exec("ipset list -t");
    assert!(list.contains("family inet6"), "{list}");

    // An update that changes only IPv6: one ip6tables restore, no iptables one.
    let before = first.len();
    write_state(&state_path, &state(2, a, &peers4, &peers6, true));
    agent.applied(2);
    let all = calls(&tmp.0);
    let update = &all[before..];
    assert_eq!(count(update, "ip6tables-nft-restore"), 1, "{update:#?}");
    assert_eq!(count(update, "iptables-nft-restore"), 0, "{update:#?}");
    let sets_at = update
        .iter()
        .position(|(_, t, a)| t == "ipset" && a.contains("restore"))
        .expect("ipset restore");
    let v6_at = update
        .iter()
        .position(|(_, t, _)| t == "ip6tables-nft-restore")
        .expect("ip6tables restore");
    assert!(sets_at < v6_at, "{update:#?}");
    let set_input = input(&update[sets_at].0);
    assert!(
        set_input.contains("2001:2::4:99")
            && set_input.contains("2001:db8::66")
            && set_input.contains("family inet6"),
        "{set_input}"
    );
    assert!(
        !set_input.contains("family inet "),
        "an IPv4 set changed: {set_input}"
    );
    let status = agent.terminate();
    assert!(status.success());
    enforcer_cleanup(&lab.node);
}

/// Our rules (both families), sets and set members, in the current namespace.
fn ours_here() -> (String, String) {
    our_rules_and_sets_here(&["add PAL-", "create PAL-"])
}

#[test]
fn dual_stack_restart_keeps_both_families() {
    if !can_netns("dual-stack restart") {
        return;
    }
    let lab = DsLab::new(
        &[
            ("a", Some("198.18.5.20"), Some("2001:2::5:20")),
            ("b", Some("198.18.5.10"), Some("2001:2::5:10")),
            ("c", Some("198.18.5.30"), Some("2001:2::5:30")),
        ],
        Neigh::Static,
    );
    lab.serve_names(PORT);
    let (a, b, c) = (lab.pod("a"), lab.pod("b"), lab.pod("c"));
    let tmp = TempDir::new("ds-restart");
    let state_path = tmp.0.join("state.json");
    write_state(
        &state_path,
        &state(
            3,
            a,
            &[b.ip(false).to_string()],
            &[b.ip(true).to_string()],
            true,
        ),
    );
    let first = Agent::start(&lab.node, &state_path, NFT, None);
    first.applied(3);
    let (rules, sets) = lab.node.run(ours_here);
    assert!(
        rules.contains("-j PALISADE-FORWARD") && sets.contains("family inet6"),
        "{rules}\n{sets}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let (rules, sets) = (rules.clone(), sets.clone());
        lab.node.spawn(move || {
            let (mut samples, mut differing) = (0, 0);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(15) {
                let now = ours_here();
                samples += 1;
                if now != (rules.clone(), sets.clone()) {
                    differing += 1;
                }
            }
            (samples, differing)
        })
    };
    // Probers: b -> a allowed and c -> a denied, both families, throughout.
    let probe = |from: &DsPod, v6: bool| {
        let stop = Arc::clone(&stop);
        let to = sa(a.ip(v6), PORT);
        from.ns.spawn(move || {
            let mut seen = Vec::new();
            let start = Instant::now();
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(15) {
                    break;
                }
                seen.push(tcp_probe_here(to, Duration::from_millis(40)).allowed());
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    let probers = [
        (probe(b, false), true, "b -> a IPv4"),
        (probe(b, true), true, "b -> a IPv6"),
        (probe(c, false), false, "c -> a IPv4"),
        (probe(c, true), false, "c -> a IPv6"),
    ];
    std::thread::sleep(Duration::from_millis(200));
    let status = first.terminate();
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(300)); // no enforcer at all
    let second = Agent::start(&lab.node, &state_path, NFT, None);
    let report = second.applied(3);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (samples, differing) = sampler.join().expect("sampler");
    eprintln!("restart: {samples} samples of both families' rules and sets, {differing} differing; {report}");
    assert!(
        samples >= 10 && differing == 0,
        "{samples} samples, {differing} differ"
    );
    assert_eq!(report["sets_created"], 0, "{report}");
    for (handle, want, what) in probers {
        let seen = handle.join().expect("prober");
        assert!(seen.len() >= 10, "{what}: {} probes", seen.len());
        assert!(seen.iter().all(|&s| s == want), "{what}: {seen:?}");
    }
    assert!(second.terminate().success());
    assert_eq!(lab.node.run(ours_here), (rules, sets));
    enforcer_cleanup(&lab.node);
}
