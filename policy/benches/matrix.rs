//! The engine's verdict cost: the full pod-to-pod matrix for one port over 2,000
//! pods in 50 namespaces with 500 policies, and single verdicts.

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_policy::engine::{Connection, Endpoint, Engine};
use palisade_policy::model::{Family, Protocol};

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

fn matrix(c: &mut Criterion) {
    let cluster = support::large_cluster(50, 2000, 500, 20, 7);
    let n = cluster.pods.len();
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.bench_function("index 2000 pods 500 policies", |b| {
        b.iter(|| Engine::new(cluster.clone()).expect("valid cluster"))
    });
    let engine = Engine::new(cluster).expect("valid cluster");
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
    c.bench_function("engine/single verdict", |b| {
        b.iter(|| {
            i = (i + 7919) % (n * n);
            engine.allowed(&conn(i / n, i % n))
        })
    });
}

criterion_group!(benches, matrix);
criterion_main!(benches);
