//! The lab itself, without policies: topology, servers, probers, cleanup. Needs
//! root (network namespaces); skipped with a message otherwise.

use std::path::PathBuf;
use std::process::Command;

use e2e::netns;
use e2e::probe::Outcome;
use e2e::runner::{Options, ScenarioLab};
use palisade_policy::scenario::Scenario;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the lab needs root");
    }
    root
}

fn opts() -> Options {
    Options::new(PathBuf::from(env!("CARGO_BIN_EXE_e2e")))
}

/// Two nodes (one with addresses, so it is an endpoint, with a host-network pod),
/// three dual-stack pods, an IPv4 and an IPv6 external.
const SMOKE: &str = r#"
name: lab-smoke
namespaces:
  x: {kubernetes.io/metadata.name: x}
nodes:
  - {name: n1, ips: [172.18.0.2, "fd00:18::2"]}
  - n2
pods:
  - {ns: x, name: a, ips: [10.244.1.2, "fd00:10:244:1::2"], node: n1}
  - {ns: x, name: b, ips: [10.244.2.2, "fd00:10:244:2::2"], node: n2}
  - {ns: x, name: c, ips: [10.244.2.3, "fd00:10:244:2::3"], node: n2}
  - {ns: x, name: host, node: n1, hostNetwork: true}
externals:
  - {name: ext4, ip: 192.0.2.10}
  - {name: ext6, ip: "2001:db8::10"}
ports:
  - {port: 80, protocol: TCP}
  - {port: 53, protocol: UDP}
  - {port: 80, protocol: SCTP}
probes:
  - {port: 80, protocol: TCP}
  - {port: 53, protocol: UDP}
  - {port: 80, protocol: TCP, family: IPv6}
  - {port: 53, protocol: UDP, family: IPv6}
"#;

#[test]
fn every_pair_is_reachable_without_policy() {
    if !root() {
        return;
    }
    let scenario = Scenario::parse(SMOKE).expect("smoke scenario parses");
    let opts = opts();
    let lab = ScenarioLab::build(&scenario, &opts).expect("lab builds");
    let start = std::time::Instant::now();
    let results = lab.probe_detailed(&scenario, &opts).expect("probes run");
    eprintln!("{} probes in {:?}", results.len(), start.elapsed());
    // 4 pod endpoints (host included), node:n1, 2 externals; IPv4 and IPv6 each
    // have 6 endpoints: pods<->pods 12, node<->3 pods... checked by the count.
    let expected_pairs: usize = scenario
        .probes
        .iter()
        .map(|p| scenario.pairs(p).len())
        .sum();
    assert_eq!(results.len(), expected_pairs);
    assert!(expected_pairs > 50, "only {expected_pairs} pairs");
    let bad: Vec<_> = results
        .iter()
        .filter(|(_, _, o)| *o != Outcome::Allowed)
        .collect();
    assert!(bad.is_empty(), "not allowed: {bad:#?}");
}

#[test]
fn sctp_is_probed_or_reported_unavailable() {
    if !root() {
        return;
    }
    let text = SMOKE.replace(
        "probes:\n",
        "probes:\n  - {port: 80, protocol: SCTP}\n  - {port: 81, protocol: SCTP}\n  - {port: 81, protocol: SCTP, family: IPv6}\n",
    );
    let scenario = Scenario::parse(&text).expect("scenario parses");
    let mut opts = opts();
    if !e2e::sock::sctp_available() {
        // The runner refuses, naming the reason; a single probe reports an error.
        let err = match ScenarioLab::build(&scenario, &opts) {
            Ok(_) => panic!("an SCTP scenario must not run without kernel SCTP"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("SCTP"), "{err}");
        let outcome = e2e::probe::probe(
            e2e::probe::Target::parse("sctp:127.0.0.1:80").expect("target"),
            e2e::probe::Timing::default(),
        );
        assert!(
            matches!(&outcome, Outcome::Error(e) if e.contains("SCTP")),
            "{outcome:?}"
        );
        eprintln!("SCTP unavailable in this kernel, testing --sctp-raw: {err}");
        opts.timing.sctp_raw = true;
    }
    let lab = ScenarioLab::build(&scenario, &opts).expect("lab builds");
    // Both nodes drop conntrack-INVALID packets (so a bad checksum shows), n2 drops
    // SCTP 81.
    for node in &lab.lab.nodes {
        for tool in ["iptables", "ip6tables"] {
            iptables(
                &node.ns,
                tool,
                &[
                    "-I",
                    "FORWARD",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "INVALID",
                    "-j",
                    "DROP",
                ],
            );
            if node.name == "n2" {
                iptables(
                    &node.ns,
                    tool,
                    &["-A", "FORWARD", "-p", "sctp", "--dport", "81", "-j", "DROP"],
                );
            }
        }
    }
    let results = lab.probe_detailed(&scenario, &opts).expect("probes run");
    let on_n2 = |pair: &str| pair.contains("x/b") || pair.contains("x/c");
    for (pi, pair, outcome) in &results {
        let probe = &scenario.probes[*pi];
        let dropped = probe.port == 81 && probe.protocol.as_str() == "SCTP" && on_n2(pair);
        let want = if dropped {
            Outcome::Denied
        } else {
            Outcome::Allowed
        };
        assert_eq!(outcome, &want, "{}: {pair} ({})", probe.raw, lab.sctp);
    }
}

fn iptables(ns: &str, tool: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, tool, "-w"])
        .args(args)
        .status()
        .expect("iptables runs");
    assert!(status.success(), "{tool} {args:?} in {ns}");
}

#[test]
fn dropping_the_lab_removes_its_namespaces_and_processes() {
    if !root() {
        return;
    }
    let scenario = Scenario::parse(SMOKE).expect("smoke scenario parses");
    let lab = ScenarioLab::build(&scenario, &opts()).expect("lab builds");
    let prefix = lab.lab.prefix.clone();
    let namespaces = netns::list(&prefix);
    // fabric, 2 nodes, 3 pods, 2 externals.
    assert_eq!(namespaces.len(), 8, "{namespaces:?}");
    let pids: Vec<i32> = namespaces.iter().flat_map(|ns| netns::pids(ns)).collect();
    assert!(!pids.is_empty(), "servers are running");
    drop(lab);
    assert!(
        netns::list(&prefix).is_empty(),
        "left: {:?}",
        netns::list(&prefix)
    );
    for pid in pids {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
        assert!(!alive, "process {pid} survived the lab");
    }
}

#[test]
fn a_dropped_port_is_observed_as_denied() {
    if !root() {
        return;
    }
    let text = SMOKE.replace(
        "probes:\n",
        "probes:\n  - {port: 81, protocol: TCP}\n  - {port: 54, protocol: UDP}\n  - {port: 81, protocol: TCP, family: IPv6}\n",
    );
    let scenario = Scenario::parse(&text).expect("scenario parses");
    let opts = opts();
    let lab = ScenarioLab::build(&scenario, &opts).expect("lab builds");
    // Node n2 drops everything forwarded to TCP 81 and UDP 54, both families.
    let n2 = &lab.lab.nodes[1].ns;
    for (tool, proto, port) in [
        ("iptables", "tcp", "81"),
        ("iptables", "udp", "54"),
        ("ip6tables", "tcp", "81"),
        ("ip6tables", "udp", "54"),
    ] {
        let status = Command::new("ip")
            .args([
                "netns", "exec", n2, tool, "-w", "-A", "FORWARD", "-p", proto,
            ])
            .args(["--dport", port, "-j", "DROP"])
            .status()
            .expect("iptables runs");
        assert!(status.success(), "{tool} in {n2}");
    }
    let results = lab.probe_detailed(&scenario, &opts).expect("probes run");
    let on_n2 = |pair: &str| pair.contains("x/b") || pair.contains("x/c");
    let mut denied = 0;
    for (pi, pair, outcome) in &results {
        let probe = &scenario.probes[*pi];
        let dropped = (probe.port == 81 || probe.port == 54) && on_n2(pair);
        let want = if dropped {
            Outcome::Denied
        } else {
            Outcome::Allowed
        };
        assert_eq!(outcome, &want, "{}: {pair}", probe.raw);
        denied += usize::from(dropped);
    }
    assert!(denied > 10, "only {denied} denied");
}
