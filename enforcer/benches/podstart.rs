//! The pod-start window: from a new pod's address being known (the node's state
//! file written with the pod in it) to its rules being applied, through the real
//! `palisade-enforcer run` (which polls the file every 50 ms), in a throwaway
//! network namespace.
//!
//! The node is the `program` bench's (`support/node_state.rs`), dual-stack: 100
//! local pods and 1,000 rules over 5,000 peer addresses per family. Each round
//! adds pod 100 (both addresses; selected by 4 NetworkPolicies for ingress and
//! the baseline policy for egress; its addresses added to 4 peer sets and to the
//! baseline set of each family, as a pod matching those selectors would be) and
//! then removes it again, so every round measures the same change. Reported,
//! min / median / max over the rounds:
//! - window: file renamed into place → `{"applied_version":N}` read from the
//!   enforcer (what a pod waits for);
//! - apply: the enforcer's own `elapsed_ms` for that apply (the rest is the
//!   poll interval and reading the file);
//! - in process: the same change applied by an `Enforcer` in this process.
//!
//! `cargo bench -p palisade-enforcer --bench podstart` (root); `ROUNDS=N` (default 11).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/node_state.rs"]
mod node_state;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use node_state::*;
use palisade_enforcer::{ApplyOptions, Backend, Enforcer, NodeRuleSet};

/// The base state with pod 100 added (`with_pod`) or not, at `version`.
fn state(version: u64, with_pod: bool) -> NodeRuleSet {
    let (mut rs, _) = node_state(version, true);
    if with_pod {
        let baseline = rs.policies.len() - 1;
        let pod = local_pod(100, true, baseline);
        // Its addresses join the peer sets of 4 rules and the baseline sets.
        let v4 = format!("{}/32", pod4(100)).parse().expect("net");
        let v6 = format!("{}/128", pod6(100)).parse().expect("net");
        for set in rs.sets.iter_mut() {
            let pick = set.name.starts_with("baseline/")
                || ["p3/in/0", "p42/in/1", "p77/in/2", "p150/in/3"]
                    .iter()
                    .any(|k| set.name.contains(k));
            if pick {
                set.entries.push(match set.family {
                    palisade_policy::model::Family::IPv4 => v4,
                    palisade_policy::model::Family::IPv6 => v6,
                });
            }
        }
        rs.pods.push(pod);
    }
    rs
}

fn write_state(path: &Path, rs: &NodeRuleSet) -> Instant {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(rs).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
    Instant::now()
}

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<46} min {:>8.2} ms  median {:>8.2} ms  max {:>8.2} ms",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    );
}

fn main() {
    if !can_netns("bench podstart") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let dir = TempDir::new("podstart");
    let path = dir.0.join("state.json");

    let ns = Netns::new("podstart");
    write_state(&path, &state(1, false));
    let agent = Agent::start(&ns, &path, &["--backend", "nft"], None);
    agent.applied(1);
    let (mut window, mut apply) = (Vec::new(), Vec::new());
    let mut version = 1;
    for round in 0..rounds {
        version += 1;
        // Let the poll loop be anywhere in its 50 ms, as a real update would: the
        // write comes 0..50 ms (spread over the rounds) after the last apply.
        std::thread::sleep(Duration::from_millis(
            (round as u64 * 50 / rounds as u64) % 50,
        ));
        let known = write_state(&path, &state(version, true));
        let (done, report) = agent.applied_at(version);
        window.push(done - known);
        apply.push(Duration::from_secs_f64(
            report["elapsed_ms"].as_f64().expect("elapsed_ms") / 1000.0,
        ));
        let check = ns.exec(&format!(
            "iptables-nft-save -t filter | grep -c -- '-s {}/32' || true",
            pod4(100)
        ));
        assert!(check.trim() != "0", "pod 100 has no rules: {check}");
        version += 1;
        std::thread::sleep(Duration::from_millis(23));
        write_state(&path, &state(version, false));
        agent.applied(version);
    }
    agent.terminate();
    enforcer_cleanup(&ns);

    // The same change in process (no poll, no file).
    let mut in_process = Vec::new();
    ns.run(|| {
        let mut e = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
        e.apply(&state(1, false)).expect("base");
        let mut v = 1;
        for round in 0..rounds {
            v += 1;
            let t = Instant::now();
            let r = e.apply(&state(v, true)).expect("add pod");
            in_process.push(t.elapsed());
            if round == 0 {
                println!(
                    "adding the pod writes {} chains and updates {} sets (both families together)",
                    r.chains_written, r.sets_updated
                );
            }
            v += 1;
            e.apply(&state(v, false)).expect("remove pod");
        }
        e.cleanup().expect("cleanup");
    });
    println!(
        "dual-stack node, 100 pods, 1,000 rules, 5,000 peers per family; a pod added; {rounds} rounds"
    );
    stats("pod-start window (file written -> applied)", window);
    stats("  of which the enforcer's apply", apply);
    stats("same change applied in process", in_process);
}
