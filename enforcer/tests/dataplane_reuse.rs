//! Address reuse and pending pods, with real packets through a dual-stack node
//! namespace. States are built as a cluster, decided by the engine and compiled by
//! `compile_node`, as the operator does; the enforcer applies them in process.
//!
//! - reuse: pod trusted/old at address P (both families) is deleted and P is given
//!   to guest/new in another namespace, in one update. From the moment the new
//!   state starts to take effect, P carries guest/new's verdicts, never
//!   trusted/old's: two probers run throughout, one from P to a destination only
//!   trusted/old may reach, one canary whose access is opened by a set change of
//!   the same update. Once the canary has got through, no connection from P may
//!   (the update order between sets and rules never lets the old pod's allowances
//!   apply to the new one).
//! - pending: a pod without an address is compiled and applied without error and
//!   enforced as soon as its address appears.

#[path = "../../policy/tests/support/mod.rs"]
mod support;

mod common;
mod dataplane_common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{can_netns, Netns};
use dataplane_common::*;
use palisade_enforcer::{ApplyOptions, Backend, Enforcer, NodeRuleSet};
use palisade_policy::compile::compile_node;
use palisade_policy::engine::{Connection, Endpoint, Engine};
use palisade_policy::model::{Cluster, Family, Pod, Policy, Protocol};
use support::{allow, labels, mk_node, mk_np, mk_ns, pods_peer, sel, tcp};

const PORT: u16 = 8080;
/// The reused address.
const P4: &str = "198.18.1.20";
const P6: &str = "2001:2::1:20";

fn pod(ns: &str, name: &str, ips: &[&str], l: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(l),
        ips: ips.iter().map(|i| i.parse().expect("test ip")).collect(),
        node: Some("n1".into()),
        terminating: false,
        created: None,
        host_network: false,
        ports: Vec::new(),
    }
}

/// `db/server` admits namespace `trusted` and pods labelled `canary=yes` on 8080;
/// pods of `trusted` may only reach `web/w` and `db/server` on 8080; `guest/new` may reach
/// nothing. `owner` holds P: `Some(true)` trusted/old, `Some(false)` guest/new,
/// `None` nobody. `canary` labels guest/z `canary=yes`.
fn cluster(owner: Option<bool>, canary: bool) -> Cluster {
    let mut pods = vec![
        pod(
            "db",
            "server",
            &["198.18.1.10", "2001:2::1:10"],
            &[("app", "db")],
        ),
        pod(
            "web",
            "w",
            &["198.18.1.40", "2001:2::1:40"],
            &[("app", "web")],
        ),
        pod(
            "guest",
            "z",
            &["198.18.1.30", "2001:2::1:30"],
            if canary {
                &[("app", "z"), ("canary", "yes")]
            } else {
                &[("app", "z")]
            },
        ),
    ];
    match owner {
        Some(true) => pods.push(pod("trusted", "old", &[P4, P6], &[("app", "old")])),
        Some(false) => pods.push(pod("guest", "new", &[P4, P6], &[("app", "new")])),
        None => {}
    }
    let policies: Vec<Policy> = vec![
        mk_np(
            "db",
            "server",
            sel(&[("app", "db")]),
            Some(vec![allow(
                Some(vec![
                    pods_peer(Some(sel(&[("team", "trusted")])), "db", sel(&[])),
                    pods_peer(Some(sel(&[])), "db", sel(&[("canary", "yes")])),
                ]),
                Some(vec![tcp(PORT)]),
            )]),
            None,
        ),
        mk_np(
            "trusted",
            "only-web",
            sel(&[]),
            None,
            Some(vec![allow(
                Some(vec![
                    pods_peer(Some(sel(&[("team", "web")])), "trusted", sel(&[])),
                    pods_peer(
                        Some(sel(&[("kubernetes.io/metadata.name", "db")])),
                        "trusted",
                        sel(&[]),
                    ),
                ]),
                Some(vec![tcp(PORT)]),
            )]),
        ),
        mk_np(
            "guest",
            "new-nothing",
            sel(&[("app", "new")]),
            None,
            Some(vec![]),
        ),
    ];
    Cluster {
        namespaces: vec![
            mk_ns("db", &[]),
            mk_ns("web", &[("team", "web")]),
            mk_ns("guest", &[("team", "guest")]),
            mk_ns("trusted", &[("team", "trusted")]),
        ],
        nodes: vec![mk_node("n1", &[NODE_V4, NODE_V6])],
        pods,
        policies,
        tiers: Vec::new(),
    }
}

fn compiled(c: &Cluster, version: u64) -> (Engine, NodeRuleSet) {
    let engine = Engine::new(c.clone()).expect("valid cluster");
    let rs = compile_node(&engine, "n1", version);
    (engine, rs)
}

fn engine_allows(e: &Engine, from: &str, to: &str, family: Family) -> bool {
    let idx = |n: &str| {
        let (ns, name) = n.split_once('/').expect("ns/name");
        e.pod_index(ns, name).expect("pod")
    };
    e.allowed(&Connection {
        src: Endpoint::Pod(idx(from)),
        dst: Endpoint::Pod(idx(to)),
        family,
        protocol: Protocol::Tcp,
        port: PORT,
    })
}

/// One probe: when it started and ended, and whether it got through.
#[derive(Clone, Copy, Debug)]
struct Shot {
    start: Instant,
    end: Instant,
    through: bool,
}

const PACE: Duration = Duration::from_micros(200);

/// Opens TCP connections from `ns` to `to` one after the other (at most one per
/// [`PACE`]) on its own thread until stopped (at most 100,000 and 20 s).
struct Prober {
    stop: Arc<AtomicBool>,
    shots: Arc<Mutex<Vec<Shot>>>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Prober {
    fn start(ns: &Netns, to: std::net::SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let shots: Arc<Mutex<Vec<Shot>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop2, shots2) = (Arc::clone(&stop), Arc::clone(&shots));
        let handle = ns.spawn(move || {
            let begin = Instant::now();
            let mut odd = Vec::new();
            for _ in 0..100_000 {
                if stop2.load(Ordering::Relaxed) || begin.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let start = Instant::now();
                if let Some(last) = shots2.lock().expect("lock").last() {
                    // Paced (every 200 µs at most), so the conntrack table every
                    // apply reads to revoke stays the size of a busy node's.
                    if let Some(wait) = (last.start + PACE).checked_duration_since(start) {
                        std::thread::sleep(wait);
                    }
                }
                let start = Instant::now();
                let seen = tcp_probe_here(to, Duration::from_millis(300));
                let end = Instant::now();
                match &seen {
                    // Connected under the old rules, then cut (quarantine,
                    // revocation) before the greeting: not through.
                    Seen::Other(e) if e.starts_with("read") => {}
                    Seen::Other(e) => odd.push(e.clone()),
                    Seen::Name(n) if n.is_empty() => odd.push("empty greeting".into()),
                    _ => {}
                }
                shots2.lock().expect("lock").push(Shot {
                    start,
                    end,
                    through: seen.allowed(),
                });
            }
            odd
        });
        Prober {
            stop,
            shots,
            handle: Some(handle),
        }
    }

    fn shots(&self) -> Vec<Shot> {
        self.shots.lock().expect("lock").clone()
    }

    fn finish(mut self) -> (Vec<Shot>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let odd = self
            .handle
            .take()
            .map(|h| h.join().expect("prober thread"))
            .unwrap_or_default();
        (self.shots(), odd)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reuse_case(v6: bool, rounds: usize) {
    let lab = DsLab::new(
        &[
            ("server", Some("198.18.1.10"), Some("2001:2::1:10")),
            ("w", Some("198.18.1.40"), Some("2001:2::1:40")),
            ("z", Some("198.18.1.30"), Some("2001:2::1:30")),
            // The namespace that owns P: trusted/old, then guest/new (the
            // dataplane only ever sees the address).
            ("p", Some(P4), Some(P6)),
        ],
        Neigh::Static,
    );
    lab.serve_names(PORT);
    let family = if v6 { Family::IPv6 } else { Family::IPv4 };
    let (server, w, z, p) = (lab.pod("server"), lab.pod("w"), lab.pod("z"), lab.pod("p"));
    // REJECT: a denied connection is refused at once, so probes run back to back.
    let mut enforcer = Enforcer::with_backend(
        Backend::Nft,
        ApplyOptions {
            reject: true,
            revoke: true,
            ..ApplyOptions::default()
        },
    );
    for round in 0..rounds {
        let v = 2 * round as u64 + 1;
        let (old_engine, old) = compiled(&cluster(Some(true), false), v);
        let (new_engine, new) = compiled(&cluster(Some(false), true), v + 1);
        // The engine: trusted/old reaches web/w and db/server, guest/new neither;
        // guest/z reaches db/server only once it is a canary.
        assert!(engine_allows(&old_engine, "trusted/old", "web/w", family));
        assert!(engine_allows(
            &old_engine,
            "trusted/old",
            "db/server",
            family
        ));
        assert!(!engine_allows(&old_engine, "guest/z", "db/server", family));
        assert!(!engine_allows(&new_engine, "guest/new", "web/w", family));
        assert!(!engine_allows(
            &new_engine,
            "guest/new",
            "db/server",
            family
        ));
        assert!(engine_allows(&new_engine, "guest/z", "db/server", family));

        let r = lab.node.run(|| enforcer.apply(&old).expect("apply old"));
        assert!(r.errors.is_empty() && r.issues.is_empty(), "{r:?}");
        let to_w = sa(w.ip(v6), PORT);
        let to_server = sa(server.ip(v6), PORT);
        assert!(tcp_probe(&p.ns, to_w, Duration::from_secs(1)).allowed());
        assert!(!tcp_probe(&z.ns, to_server, Duration::from_secs(1)).allowed());

        let from_p = Prober::start(&p.ns, to_w);
        let canary = Prober::start(&z.ns, to_server);
        wait_until(
            "probes from P to get through",
            Duration::from_secs(5),
            || from_p.shots().iter().filter(|s| s.through).count() >= 20,
        );
        wait_until("canary probes", Duration::from_secs(5), || {
            canary.shots().len() >= 20
        });
        let t0 = Instant::now();
        let r = lab.node.run(|| enforcer.apply(&new).expect("apply new"));
        let t1 = Instant::now();
        assert!(r.errors.is_empty() && r.issues.is_empty(), "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
        let (p_shots, p_odd) = from_p.finish();
        let (c_shots, c_odd) = canary.finish();
        assert!(p_odd.is_empty() && c_odd.is_empty(), "{p_odd:?} {c_odd:?}");

        // The canary got through during the apply or right after it.
        let first_canary = c_shots
            .iter()
            .filter(|s| s.through && s.start >= t0)
            .map(|s| s.end)
            .min()
            .expect("the canary never got through after the update");
        // Once it has (the new state's sets are in force), P never gets through:
        // not with trusted/old's egress allowance, not in any mixed state.
        let leaks: Vec<Duration> = p_shots
            .iter()
            .filter(|s| s.through && s.start > first_canary)
            .map(|s| s.start - t0)
            .collect();
        let during = p_shots
            .iter()
            .filter(|s| s.start >= t0 && s.end <= t1)
            .count();
        eprintln!(
            "{family:?} round {round}: apply {:.1} ms, canary through {:.1} ms after it began; \
             {} probes from P during the apply, {} got through after the canary",
            (t1 - t0).as_secs_f64() * 1e3,
            (first_canary - t0).as_secs_f64() * 1e3,
            during,
            leaks.len()
        );
        assert!(
            leaks.is_empty(),
            "{family:?} round {round}: P reached web/w with trusted/old's allowance after \
             the new state's sets were in force, at {leaks:?} after the apply began"
        );
        // And after the apply, the new verdicts only.
        for _ in 0..3 {
            assert_eq!(
                tcp_probe(&p.ns, to_w, Duration::from_millis(500)),
                Seen::Refused
            );
            assert_eq!(
                tcp_probe(&p.ns, to_server, Duration::from_millis(500)),
                Seen::Refused
            );
            assert!(tcp_probe(&z.ns, to_server, Duration::from_secs(1)).allowed());
        }
    }
    lab.node.run(|| enforcer.cleanup().expect("cleanup"));
}

#[test]
fn reused_address_carries_the_new_pods_verdicts_ipv4() {
    if !can_netns("reuse ipv4") {
        return;
    }
    reuse_case(false, 4);
}

#[test]
fn reused_address_carries_the_new_pods_verdicts_ipv6() {
    if !can_netns("reuse ipv6") {
        return;
    }
    reuse_case(true, 4);
}

/// A pod whose address is not known yet (pending) compiles to nothing, applies
/// without error, and is enforced from the apply that brings its address.
#[test]
fn pending_pod_is_enforced_as_soon_as_its_address_appears() {
    if !can_netns("pending pod") {
        return;
    }
    let lab = DsLab::new(
        &[
            ("client", Some("198.18.2.10"), Some("2001:2::2:10")),
            ("pending", Some("198.18.2.20"), Some("2001:2::2:20")),
        ],
        Neigh::Static,
    );
    lab.serve_names(PORT);
    let (client, pending) = (lab.pod("client"), lab.pod("pending"));
    // guest/pending is isolated for ingress (deny all) and for egress (only to
    // app=client). Its address is not known at first.
    let state = |ips: &[&str], version: u64| {
        let c = Cluster {
            namespaces: vec![mk_ns("guest", &[])],
            nodes: vec![mk_node("n1", &[NODE_V4, NODE_V6])],
            pods: vec![
                pod(
                    "guest",
                    "client",
                    &["198.18.2.10", "2001:2::2:10"],
                    &[("app", "client")],
                ),
                pod("guest", "pending", ips, &[("app", "pending")]),
            ],
            policies: vec![
                mk_np(
                    "guest",
                    "pending-in",
                    sel(&[("app", "pending")]),
                    Some(vec![]),
                    None,
                ),
                mk_np(
                    "guest",
                    "pending-out",
                    sel(&[("app", "pending")]),
                    None,
                    Some(vec![allow(
                        Some(vec![pods_peer(None, "guest", sel(&[("app", "client")]))]),
                        None,
                    )]),
                ),
            ],
            tiers: Vec::new(),
        };
        compiled(&c, version).1
    };
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    let unknown = state(&[], 1);
    assert!(
        unknown.pods.iter().all(|p| p.name != "pending"),
        "a pod without an address must not be compiled: {:?}",
        unknown.pods
    );
    let r = lab
        .node
        .run(|| enforcer.apply(&unknown).expect("apply pending"));
    assert!(r.errors.is_empty() && r.issues.is_empty(), "{r:?}");
    for v6 in [false, true] {
        // Nothing is known of the address: nothing restricts it.
        assert!(tcp_probe(&client.ns, sa(pending.ip(v6), PORT), Duration::from_secs(1)).allowed());
    }
    let known = state(&["198.18.2.20", "2001:2::2:20"], 2);
    let r = lab
        .node
        .run(|| enforcer.apply(&known).expect("apply known"));
    assert!(r.errors.is_empty() && r.issues.is_empty(), "{r:?}");
    for v6 in [false, true] {
        let ip: IpAddr = pending.ip(v6);
        assert_eq!(
            tcp_probe(&client.ns, sa(ip, PORT), Duration::from_millis(500)),
            Seen::TimedOut,
            "{ip}: ingress of the pod whose address appeared"
        );
        assert!(tcp_probe(&pending.ns, sa(client.ip(v6), PORT), Duration::from_secs(1)).allowed());
    }
    // Only one family known at first (status.podIPs grows): the other joins later.
    let half = state(&["2001:2::2:20"], 3);
    lab.node.run(|| enforcer.apply(&half).expect("apply half"));
    assert!(tcp_probe(
        &client.ns,
        sa(pending.ip(false), PORT),
        Duration::from_secs(1)
    )
    .allowed());
    assert_eq!(
        tcp_probe(
            &client.ns,
            sa(pending.ip(true), PORT),
            Duration::from_millis(500)
        ),
        Seen::TimedOut
    );
    lab.node.run(|| enforcer.cleanup().expect("cleanup"));
}
