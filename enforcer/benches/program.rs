//! Programming a node, for real, in throwaway network namespaces.
//!
//! A node with 100 local pods and 1,000 rules (200 NetworkPolicies × 5 ingress
//! rules, each rule's peers one set of 5 addresses: 5,000 peer addresses), plus a
//! baseline egress policy with one set of all 5,000 addresses. Measured, rounds
//! interleaved, min / median / max:
//! - full: a fresh enforcer programs an empty namespace (target < 300 ms);
//! - incremental: one pod address added to one set (target < 20 ms), with and
//!   without revocation (which lists conntrack);
//! - no-op: the same state again;
//! - render alone.
//!
//! `cargo bench -p palisade-enforcer --bench program` (root). `ROUNDS=N` to change
//! the number of rounds (default 9); `RENDER_LOOP=N` times render alone.
//!
//! Where the full program goes (one fresh namespace, traced): `ipset restore` of
//! 1,001 sets ≈ 45 ms, of which a fresh namespace adds ≈ 120 ms the first time
//! (the kernel grows its per-namespace set table from 256 slots 64 at a time, one
//! RCU grace period per step; a node pays it once in its life); `iptables-restore`
//! of 2,209 rules ≈ 30 ms; reading what is installed, the hooks and the other
//! backend ≈ 1 ms per process (about 10); render ≈ 5 ms.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use palisade_enforcer::{render, ApplyOptions, Backend, Enforcer, NodeRuleSet, RenderOptions};
use palisade_policy::compiled::CompiledPolicy;
use palisade_policy::model::{Action, Family, PolicyKind};

fn addr(i: usize) -> String {
    format!("10.128.{}.{}", i / 250, 1 + i % 250)
}

fn state(version: u64) -> NodeRuleSet {
    let mut sets = Vec::new();
    let mut policies: Vec<CompiledPolicy> = Vec::new();
    for p in 0..200 {
        let mut ingress = Vec::new();
        for r in 0..5 {
            let set = sets.len();
            let entries: Vec<String> = (0..5)
                .map(|k| format!("{}/32", addr(set * 5 + k)))
                .collect();
            let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
            sets.push(mk_set(
                &format!("np/ns{}/p{p}/in/{r}", p % 10),
                Family::IPv4,
                &refs,
                &[],
            ));
            ingress.push(mk_rule(
                r,
                Action::Accept,
                vec![mk_match(
                    Some(vec![set]),
                    Some(vec![tcp(8000 + r as u16)]),
                    None,
                )],
            ));
        }
        policies.push(mk_policy(
            PolicyKind::NetworkPolicy,
            Some(&format!("ns{}", p % 10)),
            &format!("p{p}"),
            0,
            ingress,
            vec![],
        ));
    }
    let all: Vec<String> = (0..5000).map(|i| format!("{}/32", addr(i))).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sets.push(mk_set("baseline/all-peers", Family::IPv4, &refs, &[]));
    let big = sets.len() - 1;
    policies.push(mk_policy(
        PolicyKind::BaselineAdminNetworkPolicy,
        None,
        "default",
        1,
        vec![],
        vec![mk_rule(0, Action::Accept, vec![from_sets(&[big])])],
    ));
    let baseline_policy = policies.len() - 1;
    let pods = (0..100)
        .map(|i| {
            // Each pod is selected by 4 of the 200 policies.
            let selected: Vec<usize> = (0..4)
                .map(|k| (i + 100 * (k % 2) + k / 2 * 7) % 200)
                .collect();
            let mut sorted = selected.clone();
            sorted.sort_unstable();
            sorted.dedup();
            mk_pod(
                &format!("ns{}", i % 10),
                &format!("pod{i}"),
                &[&format!("10.64.{}.{}", i / 250, 1 + i % 250)],
                vec![tp(0, &sorted)],
                vec![tp(1, &[baseline_policy])],
            )
        })
        .collect();
    mk_rule_set(
        version,
        &["192.0.2.1"],
        vec![np_tier(), baseline()],
        sets,
        policies,
        pods,
    )
}

fn stats(name: &str, target_ms: Option<f64>, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = v[v.len() / 2];
    let verdict = match target_ms {
        Some(t) if ms(median) < t => format!("  (target < {t} ms: met)"),
        Some(t) => format!("  (target < {t} ms: MISSED)"),
        None => String::new(),
    };
    println!(
        "{name:<44} min {:>8.2} ms  median {:>8.2} ms  max {:>8.2} ms{verdict}",
        ms(v[0]),
        ms(median),
        ms(v[v.len() - 1])
    );
}

fn main() {
    if !can_netns("bench program") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let base = state(1);
    if let Ok(n) = std::env::var("RENDER_LOOP") {
        let n: usize = n.parse().unwrap_or(100);
        let t = Instant::now();
        for _ in 0..n {
            let _ = render(&base, &RenderOptions::default()).expect("render");
        }
        println!(
            "render: {:.2} ms each",
            t.elapsed().as_secs_f64() * 1000.0 / n as f64
        );
        return;
    }
    let rendered = render(&base, &RenderOptions::default()).expect("render");
    let rules: usize = rendered.ipv4.chains.values().map(Vec::len).sum();
    let members: usize = rendered.ipv4.sets.values().map(|s| s.members.len()).sum();
    println!(
        "node: {} local pods, {} policy rules, {} iptables rules in {} chains, {} sets with {} members",
        base.pods.len(),
        base.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum::<usize>(),
        rules,
        rendered.ipv4.chains.len(),
        rendered.ipv4.sets.len(),
        members
    );
    let mut grown = state(2);
    grown.sets[17]
        .entries
        .push("10.64.200.7/32".parse().expect("net"));

    let (mut full, mut inc, mut inc_norevoke, mut noop, mut rend) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let _ = render(&base, &RenderOptions::default()).expect("render");
        rend.push(t.elapsed());

        let ns = Netns::new("bench");
        ns.run(|| {
            for (revoke, out) in [(true, &mut inc), (false, &mut inc_norevoke)] {
                let opts = ApplyOptions {
                    reject: false,
                    revoke,
                };
                let mut e = Enforcer::with_backend(Backend::Nft, opts);
                let t = Instant::now();
                e.apply(&base).expect("full");
                if revoke {
                    full.push(t.elapsed());
                }
                let t = Instant::now();
                let r = e.apply(&grown).expect("incremental");
                out.push(t.elapsed());
                assert_eq!((r.chains_written, r.sets_updated), (0, 1), "{r:?}");
                if revoke {
                    let t = Instant::now();
                    let r = e.apply(&grown).expect("no-op");
                    noop.push(t.elapsed());
                    assert_eq!(r.chains_written + r.sets_updated, 0);
                }
                e.cleanup().expect("cleanup");
            }
        });
    }
    println!("rounds: {rounds} (interleaved)");
    stats("render alone", None, rend);
    stats(
        "full program (fresh enforcer, empty netns)",
        Some(300.0),
        full,
    );
    stats("incremental: +1 address in 1 set (revoke)", Some(20.0), inc);
    stats(
        "incremental: +1 address in 1 set (no-revoke)",
        Some(20.0),
        inc_norevoke,
    );
    stats("no-op: same state again", None, noop);
}
