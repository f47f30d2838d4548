//! Services: kube-proxy rewrites a ClusterIP to a pod address before the filter
//! sees the packet, so policies judge the real backend pod. Needs root and the
//! enforcer binary (`cargo build -p palisade-enforcer`); skipped otherwise.
//!
//! A two-node dual-stack lab with real enforcers; in both node namespaces a
//! kube-proxy-like service (iptables mode, nat table, both families):
//! `KUBE-SERVICES` from `PREROUTING` (pods) and `OUTPUT` (the node itself), a
//! `KUBE-SVC` chain load-balancing with `statistic --mode nth --every 2` over two
//! `KUBE-SEP` chains that DNAT 10.96.0.10:80 / [fd00:96::10]:80 to the backends'
//! port 8080 and mark hairpin traffic (source = the backend) for `MASQUERADE` in
//! `POSTROUTING`, as kube-proxy does.
//!
//! Every source (pods of both nodes, both backends, both nodes) connects to the
//! ClusterIP four times per family; the packet counters of the two `KUBE-SVC`
//! rules tell which backend each connection was sent to (one SYN per probe: the
//! timeout is below the first retransmission). Each verdict through the ClusterIP
//! equals the verdict of a direct connection from the same source to that backend
//! and the engine's verdict for that pair; a backend reaching itself through the
//! Service (hairpin) is allowed although its policy admits only another pod.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::runner::{Options, ScenarioLab};
use palisade_crds::scenario::load_text;
use palisade_policy::engine::{Connection, Endpoint, Engine};
use palisade_policy::model::{Family, Protocol};
use palisade_policy::scenario::{EndpointKind, Scenario};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the lab needs root");
    }
    root
}

const SCENARIO: &str = r#"
name: services-kube-proxy
namespaces:
  web: {kubernetes.io/metadata.name: web, team: web}
  client: {kubernetes.io/metadata.name: client, team: client}
nodes:
  - {name: n1, ips: [172.18.0.2, "fc00:18::2"]}
  - {name: n2, ips: [172.18.0.3, "fc00:18::3"]}
pods:
  - {ns: web, name: a, ips: [10.244.1.10, "fd00:10:244:1::10"], node: n1, labels: {app: web, be: a}}
  - {ns: web, name: b, ips: [10.244.2.10, "fd00:10:244:2::10"], node: n2, labels: {app: web, be: b}}
  - {ns: client, name: x, ips: [10.244.1.20, "fd00:10:244:1::20"], node: n1, labels: {app: x}}
  - {ns: client, name: y, ips: [10.244.2.20, "fd00:10:244:2::20"], node: n2, labels: {app: y}}
ports:
  - {name: http, port: 8080, protocol: TCP}
policies: |
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: a-from-x, namespace: web}
  spec:
    podSelector:
      matchLabels: {be: a}
    ingress:
    - from:
      - namespaceSelector:
          matchLabels: {team: client}
        podSelector:
          matchLabels: {app: x}
      ports:
      - {port: http}
  ---
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: b-from-y, namespace: web}
  spec:
    podSelector:
      matchLabels: {be: b}
    ingress:
    - from:
      - namespaceSelector:
          matchLabels: {team: client}
        podSelector:
          matchLabels: {app: y}
      ports:
      - {port: http}
  ---
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: x-to-web-only, namespace: client}
  spec:
    podSelector:
      matchLabels: {app: x}
    policyTypes: [Egress]
    egress:
    - to:
      - namespaceSelector:
          matchLabels: {team: web}
      ports:
      - {port: 8080, protocol: TCP}
probes:
  - {port: 8080, protocol: TCP}
  - {port: 8080, protocol: TCP, family: IPv6}
expected:
  - probe: {port: 8080, protocol: TCP}
    denied: ["client/y->web/a", "web/b->web/a", "node:n2->web/a", "client/x->web/b", "web/a->web/b", "node:n1->web/b", "client/x->client/y", "client/x->node:n2"]
  - probe: {port: 8080, protocol: TCP, family: IPv6}
    denied: ["client/y->web/a", "web/b->web/a", "node:n2->web/a", "client/x->web/b", "web/a->web/b", "node:n1->web/b", "client/x->client/y", "client/x->node:n2"]
"#;

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const SVC_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// Below the first SYN retransmission (1 s): one SYN, one nat decision per probe.
const TIMEOUT: Duration = Duration::from_millis(400);

/// The kube-proxy rules of one family (iptables mode), backends in order.
fn kube_proxy(v6: bool, backends: &[IpAddr; 2]) -> String {
    let (vip, len) = if v6 { (VIP6, 128) } else { (VIP4, 32) };
    let host = |ip: &IpAddr| format!("{ip}/{len}");
    let dest = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => format!("{ip}:{TARGET_PORT}"),
        IpAddr::V6(_) => format!("[{ip}]:{TARGET_PORT}"),
    };
    let mut s = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-WEB - [0:0]\n:KUBE-SEP-A - [0:0]\n\
         :KUBE-SEP-B - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE\n",
    );
    s.push_str(&format!(
        "-A KUBE-SERVICES -d {vip}/{len} -p tcp -m tcp --dport {SVC_PORT} -j KUBE-SVC-WEB\n\
         -A KUBE-SVC-WEB -m statistic --mode nth --every 2 --packet 0 -j KUBE-SEP-A\n\
         -A KUBE-SVC-WEB -j KUBE-SEP-B\n"
    ));
    for (chain, ip) in [("KUBE-SEP-A", &backends[0]), ("KUBE-SEP-B", &backends[1])] {
        s.push_str(&format!(
            "-A {chain} -s {} -j KUBE-MARK-MASQ\n-A {chain} -p tcp -m tcp -j DNAT --to-destination {}\n",
            host(ip),
            dest(ip)
        ));
    }
    s.push_str("COMMIT\n");
    s
}

fn in_ns(ns: &str, cmd: &str, input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ip netns exec");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets counted by the two `KUBE-SVC-WEB` rules (to A, to B).
fn counters(node_ns: &str, v6: bool) -> (u64, u64) {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let text = in_ns(
        node_ns,
        &format!("{tool} -w -t nat -L KUBE-SVC-WEB -v -x -n"),
        None,
    );
    let pkts: Vec<u64> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pkts.len(), 2, "{text}");
    (pkts[0], pkts[1])
}

/// A TCP connection from inside namespace `ns` (a thread that joined it): whether
/// the server's greeting came back within the timeout.
fn connect_from(ns: &str, to: SocketAddr) -> bool {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd; it only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}");
            match TcpStream::connect_timeout(&to, TIMEOUT) {
                Ok(mut c) => {
                    let _ = c.set_read_timeout(Some(TIMEOUT));
                    let mut buf = [0u8; 32];
                    matches!(c.read(&mut buf), Ok(n) if n > 0)
                }
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{ns} -> {to}: {e}");
                    false
                }
            }
        })
        .join()
        .expect("probe thread")
    })
}

struct Source {
    name: String,
    ns: String,
    node_ns: String,
    endpoint: Endpoint,
}

#[test]
fn services_judge_the_backend_and_hairpin_is_allowed() {
    if !root() {
        return;
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_e2e"));
    let Ok(enforcer) = e2e::enforcer::find_binary(None, &exe) else {
        eprintln!("skipped: palisade-enforcer is not built (cargo build -p palisade-enforcer)");
        return;
    };
    let loaded = load_text(Path::new("services.yaml"), SCENARIO).expect("scenario loads");
    let (scenario, engine): (&Scenario, &Engine) = (&loaded.scenario, &loaded.engine);
    let mut opts = Options::new(exe);
    opts.enforcer = Some(enforcer);
    let mut lab = ScenarioLab::build(scenario, &opts).expect("lab builds");
    lab.start_enforcers(engine.cluster(), &opts)
        .expect("enforcers start");

    // Direct probes: the scenario passes and the kernel agrees with the engine.
    let observed = lab.probe(scenario, &opts).expect("probes run");
    let outcome = scenario.compare(observed.clone());
    assert!(outcome.passed, "{}", outcome.plain());
    assert_eq!(observed, scenario.evaluate(engine));

    let node_ns = |node: &str| {
        let i = lab.node_names.iter().position(|n| n == node).expect("node");
        lab.lab.nodes[i].ns.clone()
    };
    let pod_ip = |name: &str, v6: bool| -> IpAddr {
        let e = scenario
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .expect("endpoint");
        e.ip_of(if v6 { Family::IPv6 } else { Family::IPv4 })
            .expect("address")
    };
    let backends = ["web/a", "web/b"];
    for v6 in [false, true] {
        let text = kube_proxy(v6, &[pod_ip(backends[0], v6), pod_ip(backends[1], v6)]);
        let tool = if v6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        for node in ["n1", "n2"] {
            in_ns(&node_ns(node), &format!("{tool} -w --noflush"), Some(&text));
        }
    }

    let mut sources = Vec::new();
    for (i, e) in scenario.endpoints.iter().enumerate() {
        let (node, endpoint) = match e.kind {
            EndpointKind::Pod(p) => (
                scenario.pods[p].node.clone().expect("node"),
                Endpoint::Pod(p),
            ),
            EndpointKind::Node(n) => (scenario.nodes[n].name.clone(), Endpoint::Node(n)),
            EndpointKind::External => continue,
        };
        sources.push(Source {
            name: e.name.clone(),
            ns: lab.endpoint_ns[i].clone(),
            node_ns: node_ns(&node),
            endpoint,
        });
    }
    let engine_allows = |src: Endpoint, dst: &str, family: Family| {
        let (ns, name) = dst.split_once('/').expect("ns/name");
        engine.allowed(&Connection {
            src,
            dst: Endpoint::Pod(engine.pod_index(ns, name).expect("pod")),
            family,
            protocol: Protocol::Tcp,
            port: TARGET_PORT,
        })
    };

    // One lane per node and family (their nat counters are separate): the sources
    // of a node probe one after the other, the lanes in parallel.
    let lanes: Vec<(String, bool)> = ["n1", "n2"]
        .iter()
        .flat_map(|n| [(node_ns(n), false), (node_ns(n), true)])
        .collect();
    let results: Vec<Vec<(String, bool, usize, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|(lane_ns, v6)| {
                let sources = &sources;
                s.spawn(move || {
                    let vip: IpAddr = if *v6 { VIP6 } else { VIP4 }.parse().expect("vip");
                    let mut out = Vec::new();
                    for src in sources.iter().filter(|s| &s.node_ns == lane_ns) {
                        for _ in 0..4 {
                            let before = counters(lane_ns, *v6);
                            let through = connect_from(&src.ns, SocketAddr::new(vip, SVC_PORT));
                            let after = counters(lane_ns, *v6);
                            let backend = match (after.0 - before.0, after.1 - before.1) {
                                (1, 0) => 0,
                                (0, 1) => 1,
                                d => panic!(
                                    "{} -> service ({v6}): counters moved by {d:?}",
                                    src.name
                                ),
                            };
                            out.push((src.name.clone(), *v6, backend, through));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("lane"))
            .collect()
    });

    let results: Vec<(String, bool, usize, bool)> = results.into_iter().flatten().collect();
    // The same sources straight to the backends' addresses and port, once per
    // pair, all at once. A pod to its own address never leaves its namespace.
    let mut pairs: Vec<(String, bool, usize)> = results
        .iter()
        .map(|(name, v6, backend, _)| (name.clone(), *v6, *backend))
        .collect();
    pairs.sort();
    pairs.dedup();
    let direct: Vec<((String, bool, usize), bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|(name, v6, backend)| {
                let src = sources.iter().find(|s| &s.name == name).expect("source");
                let target = backends[*backend];
                let to = SocketAddr::new(pod_ip(target, *v6), TARGET_PORT);
                s.spawn(move || name == target || connect_from(&src.ns, to))
            })
            .collect();
        pairs
            .iter()
            .cloned()
            .zip(handles.into_iter().map(|h| h.join().expect("direct probe")))
            .collect()
    });
    let mut lines = Vec::new();
    let mut hairpins = 0;
    for (name, v6, backend, through) in results {
        let family = if v6 { Family::IPv6 } else { Family::IPv4 };
        let src = sources.iter().find(|s| s.name == name).expect("source");
        let target = backends[backend];
        let engine_says = engine_allows(src.endpoint, target, family);
        let direct = direct
            .iter()
            .find(|(k, _)| *k == (name.clone(), v6, backend))
            .map(|(_, d)| *d)
            .expect("direct verdict");
        lines.push(format!(
            "{family:?} {name} -> service -> {target}: {} (direct {}, engine {})",
            verdict(through),
            verdict(direct),
            verdict(engine_says)
        ));
        assert_eq!(through, direct, "{}", lines.last().expect("line"));
        assert_eq!(through, engine_says, "{}", lines.last().expect("line"));
        if name == target {
            hairpins += 1;
            assert!(through, "hairpin refused: {}", lines.last().expect("line"));
        }
    }
    eprintln!("{}", lines.join("\n"));
    // Every source reached both backends through the Service (nth alternates),
    // in both families; each backend got through to itself twice per family.
    for src in &sources {
        for v6 in [false, true] {
            for target in backends {
                let tag = format!(
                    "{:?} {} -> service -> {target}:",
                    if v6 { Family::IPv6 } else { Family::IPv4 },
                    src.name
                );
                assert!(
                    lines.iter().any(|l| l.starts_with(&tag)),
                    "{tag} never chosen"
                );
            }
        }
    }
    assert_eq!(hairpins, 2 * 2 * 2, "{lines:#?}");
    // The hairpin was masqueraded (the backend saw the node's address), yet
    // allowed: FORWARD judged it with the backend's own address on both sides.
    for (node, backend) in [("n1", "web/a"), ("n2", "web/b")] {
        let ct = in_ns(&node_ns(node), "conntrack -L -p tcp 2>/dev/null", None);
        let ip = pod_ip(backend, false).to_string();
        assert!(
            ct.lines().any(|l| {
                l.contains(&format!("src={ip} dst={VIP4} "))
                    && l.contains(&format!("src={ip} dst=172.18."))
            }),
            "{node}: no masqueraded hairpin entry for {backend}:\n{ct}"
        );
    }
    lab.teardown().expect("teardown");
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}
