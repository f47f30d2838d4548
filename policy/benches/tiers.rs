//! The engine's verdict cost with tiers: the matrix benchmark's cluster (2,000 pods in 50
//! namespaces, 500 NetworkPolicies) plus 20 user Tiers and 500 cluster policies
//! (ClusterNetworkPolicy admin/baseline, AdminNetworkPolicy, the BaselineAdminNetworkPolicy,
//! TieredNetworkPolicies in the user tiers). The same cluster without the tiers is measured
//! in the same run, for the ratio.

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_policy::engine::{Connection, Endpoint, Engine};
use palisade_policy::model::{Cluster, Direction, Family, Protocol};

#[path = "../tests/support/mod.rs"]
mod support;

fn conn(src: usize, dst: usize) -> Connection {
    Connection {
        src: Endpoint::Pod(src),
        dst: Endpoint::Pod(dst),
        family: Family::IPv4,
        protocol: Protocol::Tcp,
        port: 80,
    }
}

fn clusters() -> [(&'static str, Cluster); 2] {
    let plain = support::large_cluster(50, 2000, 500, 20, 7);
    let mut tiered = plain.clone();
    support::add_tiers(&mut tiered, 20, 500, 13);
    [
        ("no tiers", plain),
        ("20 tiers 500 cluster policies", tiered),
    ]
}

fn matrix(c: &mut Criterion) {
    for (label, cluster) in clusters() {
        let n = cluster.pods.len();
        let mut group = c.benchmark_group(format!("tiers/{label}"));
        group.sample_size(10);
        group.bench_function("index", |b| {
            b.iter(|| Engine::new(cluster.clone()).expect("valid cluster"))
        });
        let engine = Engine::new(cluster).expect("valid cluster");
        let denied: usize = (0..n)
            .flat_map(|s| (0..n).map(move |d| (s, d)))
            .filter(|&(s, d)| !engine.allowed(&conn(s, d)))
            .count();
        let selecting: usize = (0..n)
            .map(|p| {
                engine.policies_selecting(p, Direction::Ingress).len()
                    + engine.policies_selecting(p, Direction::Egress).len()
            })
            .sum();
        eprintln!(
            "tiers/{label}: {} tiers; {:.1} policies per pod (both directions); \
             {denied} of {} pairs denied on 80/TCP",
            engine.tiers().len(),
            selecting as f64 / n as f64,
            n * n
        );
        group.bench_function("full matrix 2000x2000 port 80/TCP", |b| {
            b.iter(|| {
                let mut allowed = 0usize;
                for s in 0..n {
                    for d in 0..n {
                        allowed += usize::from(engine.allowed(&conn(s, d)));
                    }
                }
                allowed
            })
        });
        group.finish();
        let mut i = 0usize;
        c.bench_function(&format!("tiers/{label}/single verdict"), |b| {
            b.iter(|| {
                i = (i + 7919) % (n * n);
                engine.allowed(&conn(i / n, i % n))
            })
        });
    }
}

criterion_group!(benches, matrix);
criterion_main!(benches);
