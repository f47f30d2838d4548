//! Scale against Antrea's published controller benchmark: 25,000 namespaces,
//! 100,000 pods, 75,000 NetworkPolicies over 100 nodes. Every node's state is
//! computed from scratch through the operator's index, then one pod is
//! relabelled and only the affected nodes are updated.

use std::time::Instant;

use palisade_policy::index::ClusterIndex;

// The allocator palisade-operator uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let mut cluster = Some(support::antrea_workload(25_000, 100));
    println!("workload built; {}", rss());
    let mut idx = ClusterIndex::new();
    let t = Instant::now();
    idx.reset(cluster.take().expect("workload")).expect("valid");
    let changed = idx.commit().expect("commit");
    println!(
        "from scratch: {} node states in {:.0} ms; {}",
        changed.len(),
        t.elapsed().as_secs_f64() * 1e3,
        rss()
    );
    drop(changed);
    let json = serde_json::to_vec(&idx.node_state("node-0")).map_or(0, |j| j.len());
    println!("node-0 state: {} KiB as JSON; {}", json / 1024, rss());
    let mut times = Vec::new();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    for round in 0..rounds {
        let mut pod = idx
            .cluster()
            .expect("committed")
            .pods
            .iter()
            .find(|p| p.name == format!("pod-{}", round * 4))
            .cloned()
            .expect("pod");
        pod.labels = support::labels(&[("app-2", "scale-2")]);
        let t = Instant::now();
        idx.apply_pod(pod);
        let changed = idx.commit().expect("commit");
        times.push((t.elapsed().as_secs_f64() * 1e3, changed.len()));
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "one pod relabelled ({} rounds): min {:.2} ms, median {:.2} ms, max {:.2} ms; nodes updated per change: {}",
        rounds,
        times[0].0,
        times[times.len() / 2].0,
        times[times.len() - 1].0,
        times[0].1
    );
    println!("{}", rss());
}

/// Resident memory now and at peak, from /proc/self/status.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.trim_start_matches(name).trim().to_string())
            .unwrap_or_default()
    };
    format!("RSS {}, peak {}", field("VmRSS:"), field("VmHWM:"))
}
