//! The dataplane scenarios of issue 12 on the real lab (real enforcers, real
//! packets, both families), with the pairs that matter named one by one. Needs
//! root and the enforcer binary (`cargo build -p palisade-enforcer`); skipped
//! otherwise. (`make test` also runs every scenario file in the lab.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use e2e::runner::{load, run_scenario, Options};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the lab needs root");
    }
    root
}

fn options() -> Option<Options> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_e2e"));
    let Ok(enforcer) = e2e::enforcer::find_binary(None, &exe) else {
        eprintln!("skipped: palisade-enforcer is not built (cargo build -p palisade-enforcer)");
        return None;
    };
    let mut opts = Options::new(exe);
    opts.enforcer = Some(enforcer);
    opts.timing.sctp_raw = true;
    Some(opts)
}

/// Runs one scenario file in the lab: it must pass with the engine and the
/// kernel agreeing; returns the denied pairs per probe (`TCP 80 IPv4`, ...).
fn run(file: &str, opts: &Options) -> Vec<(String, BTreeSet<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(file);
    let loaded = load(&path).expect("scenario loads");
    let report = run_scenario(&loaded, opts).expect("scenario runs in the lab");
    assert!(report.outcome.passed, "{}", report.outcome.plain());
    assert!(
        report.disagreements.is_empty(),
        "{:?}",
        report.disagreements
    );
    loaded
        .scenario
        .probes
        .iter()
        .zip(&report.outcome.results)
        .map(|(p, r)| {
            (
                format!("{} {} {:?}", p.protocol, p.port, p.family),
                r.denied.iter().cloned().collect(),
            )
        })
        .collect()
}

fn check(results: &[(String, BTreeSet<String>)], allowed: &[&str], denied: &[&str]) {
    for (probe, d) in results {
        for pair in allowed {
            assert!(!d.contains(*pair), "{probe}: {pair} denied");
        }
        for pair in denied {
            assert!(d.contains(*pair), "{probe}: {pair} allowed");
        }
    }
}

#[test]
fn nodes_reach_their_own_pods_under_deny_all_and_nothing_else() {
    if !root() {
        return;
    }
    let Some(opts) = options() else { return };
    let r = run(
        "node-own-node-always-reaches-its-pods-under-deny-all.yaml",
        &opts,
    );
    // TCP and UDP, IPv4 and IPv6: a prober in the node's namespace reaches its
    // pods under deny-all, they reach it; the other node is refused both ways.
    assert_eq!(r.len(), 4);
    check(
        &r,
        &[
            "node:n1->x/a",
            "node:n1->x/c",
            "node:n2->x/b",
            "x/a->node:n1",
            "x/c->node:n1",
            "x/b->node:n2",
        ],
        &[
            "node:n2->x/a",
            "node:n1->x/b",
            "x/a->node:n2",
            "x/b->node:n1",
            "x/a->x/c",
        ],
    );
    // The remote node is matched only by an ipBlock, of its own family.
    let r = run("node-remote-node-is-matched-only-by-ipblock.yaml", &opts);
    for (probe, d) in &r {
        assert_eq!(
            d.contains("node:n2->x/a"),
            probe.ends_with("IPv6"),
            "{probe}: {d:?}"
        );
        assert!(!d.contains("node:n1->x/a"), "{probe}");
    }
}

#[test]
fn host_network_pods_are_their_node() {
    if !root() {
        return;
    }
    let Some(opts) = options() else { return };
    // Labelled like the isolated kube-system/dns, but never a subject.
    let r = run("hostnet-pods-are-never-subjects.yaml", &opts);
    check(
        &r,
        &[
            "kube-system/agent-2->x/a",
            "x/a->kube-system/agent-2",
            "kube-system/agent-1->kube-system/dns",
            "kube-system/dns->kube-system/agent-1",
        ],
        &[
            "kube-system/agent-2->kube-system/dns",
            "kube-system/dns->kube-system/agent-2",
            "x/a->kube-system/dns",
        ],
    );
    // Matched by no selector: refused like its node where the real pod is not.
    let r = run(
        "hostnet-pods-are-never-matched-by-pod-or-namespace-selectors.yaml",
        &opts,
    );
    check(
        &r,
        &["kube-system/dns->x/a", "kube-system/agent-2->x/a"],
        &["kube-system/agent-1->x/a", "node:n1->x/a"],
    );
}

#[test]
fn a_one_family_policy_never_leaves_the_other_family_open() {
    if !root() {
        return;
    }
    let Some(opts) = options() else { return };
    let r = run("ds-ipv4-only-ipblock-never-opens-ipv6.yaml", &opts);
    for (probe, d) in &r {
        let v6 = probe.ends_with("IPv6");
        for src in ["x/b", "y/a", "ext:ext4", "ext:ext6", "y/b", "y/c"] {
            let pair = format!("{src}->x/a");
            let in_family = match src {
                "ext:ext4" | "y/c" => !v6,
                "ext:ext6" | "y/b" => v6,
                _ => true,
            };
            if in_family {
                assert_eq!(d.contains(&pair), v6, "{probe}: {pair}");
            }
        }
    }
    let r = run("ds-ipblock-except-ipv6-leaves-ipv4-isolated.yaml", &opts);
    check(&r, &[], &["x/b->x/a", "y/a->x/a"]);
    for (probe, d) in &r {
        let pair = if probe.ends_with("IPv6") {
            "y/b->x/a"
        } else {
            "y/c->x/a"
        };
        assert_eq!(d.contains(pair), !probe.ends_with("IPv6"), "{probe}: {d:?}");
    }
}
