//! Programming a node, for real, in throwaway network namespaces.
//!
//! A node with 100 local pods and 1,000 rules (200 NetworkPolicies × 5 ingress
//! rules, each rule's peers one set of 5 addresses: 5,000 peer addresses), plus a
//! baseline egress policy with one set of all 5,000 addresses
//! (`support/node_state.rs`), in two configurations: IPv4 only, and dual-stack
//! (every pod and peer with both addresses, every set in both families: 5,000 peer
//! addresses per family). Measured, rounds and configurations interleaved,
//! min / median / max:
//! - full: a fresh enforcer programs an empty namespace (target < 300 ms);
//! - full, warm: the same in a namespace that held the sets before (its ipset
//!   table has grown already: a reinstall on a running node);
//! - full, sized: the same in a fresh namespace created while the ip_set
//!   `max_sets` parameter was 4,096 (its table starts with 4,096 slots: a node
//!   whose ip_set module was loaded with `max_sets=4096`, see the README's
//!   "Node tuning"); skipped when `/sys/module/ip_set/parameters/max_sets` cannot
//!   be written;
//! - incremental: one pod address added to one set (target < 20 ms), with and
//!   without revocation (which lists conntrack);
//! - no-op: the same state again;
//! - render alone.
//!
//! `cargo bench -p palisade-enforcer --bench program` (root). `ROUNDS=N` to change
//! the number of rounds (default 9); `RENDER_LOOP=N` times render alone;
//! `FAMILIES=4` or `FAMILIES=46` measures one configuration alone.
//!
//! Where the full program goes (one fresh namespace, traced): `ipset restore` of
//! 1,001 sets ≈ 45 ms, of which a fresh namespace adds ≈ 120 ms the first time
//! (the kernel grows its per-namespace set table from 256 slots 64 at a time, one
//! RCU grace period per step; a node pays it once in its life); `iptables-restore`
//! of 2,209 rules ≈ 30 ms; reading what is installed, the hooks and the other
//! backend ≈ 1 ms per process (about 10); render ≈ 5 ms.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/node_state.rs"]
mod node_state;

use std::time::{Duration, Instant};

use common::*;
use node_state::node_state;
use palisade_enforcer::{render, ApplyOptions, Backend, Enforcer, RenderOptions};

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

/// The ip_set module parameter that sizes the table of sets of every network
/// namespace created after it is written (the kernel reads it at namespace creation).
const MAX_SETS: &str = "/sys/module/ip_set/parameters/max_sets";

/// A fresh namespace whose ipset table starts with `slots` slots, or `None` when
/// the parameter cannot be written. The parameter is restored at once: only this
/// namespace is affected.
fn sized_netns(slots: usize) -> Option<Netns> {
    let old = std::fs::read_to_string(MAX_SETS).ok()?;
    std::fs::write(MAX_SETS, slots.to_string()).ok()?;
    let ns = Netns::new("bench");
    if let Err(e) = std::fs::write(MAX_SETS, old.trim()) {
        eprintln!("could not restore {MAX_SETS} to {}: {e}", old.trim());
    }
    Some(ns)
}

fn main() {
    if !can_netns("bench program") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let configs: Vec<(&str, bool)> = match std::env::var("FAMILIES").ok().as_deref() {
        Some("4") => vec![("IPv4", false)],
        Some("46") => vec![("dual-stack", true)],
        _ => vec![("IPv4", false), ("dual-stack", true)],
    };
    if let Ok(n) = std::env::var("RENDER_LOOP") {
        let n: usize = n.parse().unwrap_or(100);
        for (name, dual) in &configs {
            let (base, _) = node_state(1, *dual);
            let t = Instant::now();
            for _ in 0..n {
                let _ = render(&base, &RenderOptions::default()).expect("render");
            }
            println!(
                "render ({name}): {:.2} ms each",
                t.elapsed().as_secs_f64() * 1000.0 / n as f64
            );
        }
        return;
    }
    struct Run {
        name: &'static str,
        base: palisade_enforcer::NodeRuleSet,
        grown: palisade_enforcer::NodeRuleSet,
        times: [Vec<Duration>; 7],
    }
    let mut runs: Vec<Run> = configs
        .iter()
        .map(|(name, dual)| {
            let (base, grow) = node_state(1, *dual);
            let (mut grown, _) = node_state(2, *dual);
            grown.sets[grow]
                .entries
                .push("10.64.200.7/32".parse().expect("net"));
            let rendered = render(&base, &RenderOptions::default()).expect("render");
            for fam in [&rendered.ipv4, &rendered.ipv6] {
                let rules: usize = fam.chains.values().map(Vec::len).sum();
                let members: usize = fam.sets.values().map(|s| s.members.len()).sum();
                if fam.sets.is_empty() && rules < 10 {
                    continue;
                }
                println!(
                    "{name} node, {:?}: {} local pods, {} policy rules, {} iptables rules in {} chains, {} sets with {} members",
                    fam.family,
                    base.pods.len(),
                    base.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum::<usize>(),
                    rules,
                    fam.chains.len(),
                    fam.sets.len(),
                    members
                );
            }
            Run {
                name,
                base,
                grown,
                times: Default::default(),
            }
        })
        .collect();

    for _ in 0..rounds {
        for run in runs.iter_mut() {
            let [rend, full, inc, inc_norevoke, noop, warm, sized] = &mut run.times;
            let t = Instant::now();
            let _ = render(&run.base, &RenderOptions::default()).expect("render");
            rend.push(t.elapsed());

            let ns = Netns::new("bench");
            let (base, grown) = (&run.base, &run.grown);
            ns.run(|| {
                for (revoke, out) in [(true, &mut *inc), (false, &mut *inc_norevoke)] {
                    let opts = ApplyOptions {
                        reject: false,
                        revoke,
                        ..ApplyOptions::default()
                    };
                    let mut e = Enforcer::with_backend(Backend::Nft, opts);
                    let t = Instant::now();
                    e.apply(base).expect("full");
                    if revoke {
                        full.push(t.elapsed());
                    }
                    let t = Instant::now();
                    let r = e.apply(grown).expect("incremental");
                    out.push(t.elapsed());
                    assert_eq!((r.chains_written, r.sets_updated), (0, 1), "{r:?}");
                    if revoke {
                        let t = Instant::now();
                        let r = e.apply(grown).expect("no-op");
                        noop.push(t.elapsed());
                        assert_eq!(r.chains_written + r.sets_updated, 0);
                    }
                    e.cleanup().expect("cleanup");
                }
                // The namespace has held this many sets before: its ipset table
                // has grown already (a reinstall on a running node).
                let mut e = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
                let t = Instant::now();
                e.apply(base).expect("full, warm");
                warm.push(t.elapsed());
                e.cleanup().expect("cleanup");
            });
            drop(ns);
            if let Some(ns) = sized_netns(4096) {
                ns.run(|| {
                    let mut e = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
                    let t = Instant::now();
                    e.apply(base).expect("full, sized table");
                    sized.push(t.elapsed());
                    e.cleanup().expect("cleanup");
                });
            }
        }
    }
    println!("rounds: {rounds} (interleaved)");
    for run in runs {
        let [rend, full, inc, inc_norevoke, noop, warm, sized] = run.times;
        println!("-- {}", run.name);
        stats("render alone", None, rend);
        stats(
            "full program (fresh enforcer, empty netns)",
            Some(300.0),
            full,
        );
        stats("full program, namespace that held sets before", None, warm);
        if sized.is_empty() {
            println!(
                "full program, ipset table sized (max_sets=4096): skipped, {MAX_SETS} not writable"
            );
        } else {
            stats(
                "full program, fresh netns, max_sets=4096",
                Some(300.0),
                sized,
            );
        }
        stats("incremental: +1 address in 1 set (revoke)", Some(20.0), inc);
        stats(
            "incremental: +1 address in 1 set (no-revoke)",
            Some(20.0),
            inc_norevoke,
        );
        stats("no-op: same state again", None, noop);
    }
}
