//! Apply for real, inside throwaway network namespaces: idempotence, foreign rules
//! untouched, stale chains and sets removed, incremental updates, cleanup, both
//! backends.

mod common;

use common::*;
use palisade_enforcer::{ApplyOptions, Backend, Enforcer};
use palisade_policy::model::Family;

fn save(ns: &Netns, tool: &str) -> String {
    ns.exec(&format!("{tool} -t filter"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn saves(ns: &Netns, backend: Backend) -> String {
    let (v4, v6) = match backend {
        Backend::Nft => ("iptables-nft-save", "ip6tables-nft-save"),
        Backend::Legacy => ("iptables-legacy-save", "ip6tables-legacy-save"),
    };
    format!("{}\n---\n{}", save(ns, v4), save(ns, v6))
}

fn ipsets(ns: &Netns) -> String {
    // `initval` is random per set and `ipset save` order is the kernel's: normalize.
    let mut lines: Vec<String> = ns
        .exec("ipset save")
        .lines()
        .map(|l| match l.find(" initval") {
            Some(at) => l[..at].to_string(),
            None => l.to_string(),
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

fn iptables(backend: Backend, family: Family) -> String {
    backend.iptables(family)
}

fn add_foreign(ns: &Netns, backend: Backend) {
    for fam in [Family::IPv4, Family::IPv6] {
        let ipt = iptables(backend, fam);
        ns.exec(&format!(
            "{ipt} -w -A FORWARD -m comment --comment decoy -j ACCEPT"
        ));
        ns.exec(&format!("{ipt} -w -N FOREIGN-CHAIN"));
        ns.exec(&format!("{ipt} -w -A FOREIGN-CHAIN -j RETURN"));
        ns.exec(&format!("{ipt} -w -A FORWARD -j FOREIGN-CHAIN"));
    }
    ns.exec("ipset create foreign-set hash:ip && ipset add foreign-set 203.0.113.7");
}

fn foreign_intact(ns: &Netns, backend: Backend) {
    let all = saves(ns, backend);
    for part in all.split("---") {
        assert!(
            part.contains("-A FORWARD -m comment --comment decoy -j ACCEPT"),
            "{all}"
        );
        assert!(part.contains(":FOREIGN-CHAIN"), "{all}");
        assert!(part.contains("-A FOREIGN-CHAIN -j RETURN"), "{all}");
        assert!(part.contains("-A FORWARD -j FOREIGN-CHAIN"), "{all}");
    }
    assert!(ns
        .exec("ipset save foreign-set")
        .contains("add foreign-set 203.0.113.7"));
}

fn lifecycle(backend: Backend) {
    let ns = Netns::new("apply");
    add_foreign(&ns, backend);
    let before = saves(&ns, backend);
    let opts = ApplyOptions::default();
    let state = sample_state(1, 0);

    let first = ns.run(|| {
        Enforcer::with_backend(backend, opts)
            .apply(&state)
            .expect("first apply")
    });
    assert!(
        first.chains_written > 0 && first.sets_created == 5,
        "{first:?}"
    );
    let installed = saves(&ns, backend);
    let sets_installed = ipsets(&ns);
    foreign_intact(&ns, backend);
    for part in installed.split("---") {
        // Exactly one hook, at the top of FORWARD.
        let forward: Vec<&str> = part
            .lines()
            .filter(|l| l.starts_with("-A FORWARD "))
            .collect();
        assert_eq!(
            forward
                .iter()
                .filter(|l| l.contains("PALISADE-FORWARD"))
                .count(),
            1,
            "{part}"
        );
        assert!(forward[0].contains("-j PALISADE-FORWARD"), "{part}");
    }

    // Same state, same enforcer: nothing to do at all.
    let (again, fresh) = ns.run(|| {
        let mut e = Enforcer::with_backend(backend, opts);
        let a = e.apply(&state).expect("apply");
        let b = e.apply(&state).expect("apply again");
        (b, a)
    });
    assert_eq!(
        again.chains_written + again.sets_created + again.sets_updated,
        0,
        "{again:?}"
    );
    // A fresh enforcer (a restart) rewrites its chains but changes nothing.
    assert_eq!(fresh.sets_created, 0, "{fresh:?}");
    assert_eq!(
        saves(&ns, backend),
        installed,
        "iptables-save differs after re-apply"
    );
    assert_eq!(
        ipsets(&ns),
        sets_installed,
        "ipset save differs after re-apply"
    );

    // A different state: stale chains and sets go, the new ones are there.
    let (changed, kept) = ns.run(|| {
        let mut e = Enforcer::with_backend(backend, opts);
        e.apply(&state).expect("apply");
        let c = e.apply(&sample_state(2, 1)).expect("apply variant");
        // One more host address in one set: a one-line ipset delta, no chain.
        let mut grown = sample_state(3, 1);
        grown.sets[4]
            .entries
            .push("10.8.200.1/32".parse().expect("net"));
        grown.sets[4]
            .entries
            .push("10.9.0.0/16".parse().expect("net"));
        let _ = e.apply(&grown).expect("grow");
        let mut host = grown.clone();
        host.version = 4;
        host.sets[4]
            .entries
            .push("10.20.0.1/32".parse().expect("net"));
        (c, e.apply(&host).expect("host delta"))
    });
    assert!(
        changed.chains_removed > 0 && changed.sets_removed == 1,
        "{changed:?}"
    );
    assert_eq!((kept.chains_written, kept.sets_updated), (0, 1), "{kept:?}");
    let text = saves(&ns, backend);
    let reference =
        palisade_enforcer::render(&sample_state(4, 1), &Default::default()).expect("render");
    for (fam, part) in [&reference.ipv4, &reference.ipv6]
        .iter()
        .zip(text.split("---"))
    {
        let ours: Vec<&str> = part
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| c.starts_with("PALISADE-"))
            .collect();
        let want: Vec<&str> = fam.chains.keys().map(String::as_str).collect();
        assert_eq!(
            ours, want,
            "chains in the kernel are exactly the rendered ones"
        );
    }
    let set_names: Vec<String> = ns
        .exec("ipset list -n")
        .lines()
        .filter(|n| n.starts_with("PAL-"))
        .map(str::to_string)
        .collect();
    let mut want: Vec<String> = reference
        .ipv4
        .sets
        .keys()
        .chain(reference.ipv6.sets.keys())
        .cloned()
        .collect();
    let mut got = set_names.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let grown_set = reference
        .ipv4
        .sets
        .keys()
        .find(|k| reference.ipv4.sets[*k].source == "new-peers")
        .expect("new-peers set");
    let members = ns.exec(&format!("ipset save {grown_set}"));
    assert!(members.contains("10.20.0.1"), "{members}");
    assert!(members.contains("10.9.0.0/16"), "{members}");
    foreign_intact(&ns, backend);

    // Cleanup: nothing of ours is left, everything foreign is.
    ns.run(|| palisade_enforcer::cleanup().expect("cleanup"));
    let after = saves(&ns, backend);
    assert!(!after.contains("PALISADE"), "{after}");
    assert!(!ns.exec("ipset list -n").contains("PAL-"));
    foreign_intact(&ns, backend);
    assert_eq!(after, before, "cleanup restores the tables as they were");
}

#[test]
fn lifecycle_nft() {
    if !can_netns("lifecycle_nft") {
        return;
    }
    lifecycle(Backend::Nft);
}

#[test]
fn lifecycle_legacy() {
    if !can_netns("lifecycle_legacy") {
        return;
    }
    let probe = Netns::new("probe");
    let (ok, why) =
        probe.try_exec("iptables-legacy -w -L FORWARD && ip6tables-legacy -w -L FORWARD");
    if !ok {
        eprintln!("SKIPPED lifecycle_legacy: iptables-legacy does not work in a netns here: {why}");
        return;
    }
    drop(probe);
    lifecycle(Backend::Legacy);
}

#[test]
fn backend_detection_follows_the_rules() {
    if !can_netns("backend_detection") {
        return;
    }
    let ns = Netns::new("detect");
    assert_eq!(
        ns.run(palisade_enforcer::detect_backend),
        Backend::Nft,
        "tie → nft"
    );
    let (ok, _) = ns.try_exec(
        "iptables-legacy -w -A FORWARD -j ACCEPT && iptables-legacy -w -A INPUT -j ACCEPT",
    );
    if ok {
        assert_eq!(ns.run(palisade_enforcer::detect_backend), Backend::Legacy);
    }
}

#[test]
fn refused_state_changes_nothing() {
    if !can_netns("refused_state") {
        return;
    }
    let ns = Netns::new("refuse");
    let state = sample_state(1, 0);
    ns.run(|| {
        Enforcer::with_backend(Backend::Nft, ApplyOptions::default())
            .apply(&state)
            .expect("apply")
    });
    let before = saves(&ns, Backend::Nft);
    let mut bad = sample_state(2, 1);
    bad.format = 999;
    let err = ns.run(|| Enforcer::with_backend(Backend::Nft, ApplyOptions::default()).apply(&bad));
    assert!(err.is_err());
    assert_eq!(saves(&ns, Backend::Nft), before);
}

#[test]
fn switching_backends_leaves_nothing_behind() {
    if !can_netns("switching_backends") {
        return;
    }
    let ns = Netns::new("switch");
    let (ok, _) = ns.try_exec("iptables-legacy -w -L FORWARD && ip6tables-legacy -w -L FORWARD");
    if !ok {
        eprintln!("SKIPPED switching_backends: iptables-legacy does not work in a netns here");
        return;
    }
    let opts = ApplyOptions::default();
    ns.run(|| Enforcer::with_backend(Backend::Legacy, opts).apply(&sample_state(1, 0)))
        .expect("legacy apply");
    assert!(saves(&ns, Backend::Legacy).contains("PALISADE-FORWARD"));
    // Variant 1 drops a set that only legacy's chains reference: it must go too.
    ns.run(|| Enforcer::with_backend(Backend::Nft, opts).apply(&sample_state(2, 1)))
        .expect("nft apply");
    assert!(!saves(&ns, Backend::Legacy).contains("PALISADE"));
    assert!(saves(&ns, Backend::Nft).contains("PALISADE-FORWARD"));
}
