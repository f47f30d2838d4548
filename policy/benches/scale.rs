//! Scale against Antrea's published controller benchmark: 25,000 namespaces,
//! 100,000 pods, 75,000 NetworkPolicies over 100 nodes, every node's state
//! computed from scratch; then one pod relabelled.

use std::time::Instant;

use palisade_policy::compile::compile_node;
use palisade_policy::engine::Engine;

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let cluster = support::antrea_workload(25_000, 100);
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    println!("workload built; {}", rss());
    for round in 0..3 {
        let copy = cluster.clone();
        let t = Instant::now();
        let engine = Engine::new(copy).expect("valid");
        let indexed = t.elapsed();
        println!("  engine built; {}", rss());
        let sets: Vec<_> = nodes.iter().map(|n| compile_node(&engine, n, 1)).collect();
        let total = t.elapsed();
        let rules: usize = sets.iter().map(|s| s.policies.len()).sum();
        println!(
            "round {round}: index {:.0} ms, compile 100 nodes {:.0} ms, total {:.0} ms ({rules} policy instances)",
            indexed.as_secs_f64() * 1e3,
            (total - indexed).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
        drop(sets);
        println!("  {}", rss());
    }
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
