//! Operator memory with 10,000 pods and 2,000 NetworkPolicies in the index (issue 11:
//! target < 300 MiB RSS).
//!
//! `cargo bench -p palisade-operator --bench memory` runs each mode in a fresh child process
//! (so each peak is its own) and prints one line per mode:
//!
//! - `dir`: the cluster written as manifests (one file per namespace, nodes in one file),
//!   read through the manifest-directory source, every event applied by the reconciler,
//!   committed once (every node compiled) — the lab's operator, source state included;
//! - `direct`: the same objects applied straight to the reconciler and committed (the
//!   index and compiled states alone; what the Kubernetes source keeps, since its watchers
//!   keep only keys).
//!
//! The cluster: 100 nodes, 500 namespaces of 20 pods (10,000 pods, each with a named
//! container port and an IPv4 address), 4 policies per namespace (2,000): a default deny, an
//! allow from the same app on a named port, an allow from a team's namespaces on a port
//! range, and an egress rule to an ipBlock with an exception plus DNS.
//!
//! Figures are VmHWM (peak RSS) and VmRSS after the commit, from /proc/self/status; and, in
//! `dir` mode, the time from one pod relabelled in its file to the commit that recompiled
//! its node (scan of the 501 files, one file re-read and parsed, the directory diffed,
//! the event applied, the commit).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use palisade_operator::hub::Hub;
use palisade_operator::metrics::Metrics;
use palisade_operator::reconcile::{Debounce, Reconciler};
use palisade_operator::source::dir::DirState;
use palisade_operator::source::Event;
use palisade_operator::status::Status;

const NODES: usize = 100;
const NAMESPACES: usize = 500;
const PODS_PER_NAMESPACE: usize = 20;

fn main() {
    match std::env::var("PALISADE_MEMORY_MODE").ok().as_deref() {
        Some(mode) => run(mode),
        None => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => {
                    eprintln!("cannot find the bench binary: {e}");
                    std::process::exit(1);
                }
            };
            println!(
                "operator memory: {} pods, {} NetworkPolicies, {NODES} nodes",
                NAMESPACES * PODS_PER_NAMESPACE,
                NAMESPACES * 4
            );
            println!("mode    objects  load      commit    VmHWM      VmRSS      one edit");
            for mode in ["dir", "direct"] {
                let status = Command::new(&exe)
                    .env("PALISADE_MEMORY_MODE", mode)
                    .status();
                if !status.is_ok_and(|s| s.success()) {
                    eprintln!("mode {mode} failed");
                    std::process::exit(1);
                }
            }
        }
    }
}

fn run(mode: &str) {
    let hub = Hub::new();
    let metrics = Metrics::new(hub.clone());
    let status = Status::new();
    let mut reconciler = Reconciler::new(hub.clone(), metrics, status, Debounce::default());
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));

    let start = Instant::now();
    let mut dir_state = None;
    let objects = match mode {
        "dir" => {
            write_cluster(tmp.path());
            let start = Instant::now();
            let mut state = DirState::new(tmp.path());
            let events = state.scan().unwrap_or_else(|e| panic!("scan: {e}"));
            let n = apply_all(&mut reconciler, events);
            dir_state = Some(state);
            eprintln!("(dir: manifests written, read in {:?})", start.elapsed());
            n
        }
        _ => {
            let yaml = cluster_yaml();
            let events: Vec<Event> = yaml
                .iter()
                .flat_map(|(_, text)| palisade_crds::parse_objects(text))
                .filter_map(|d| d.result.ok().flatten().map(Event::Apply))
                .collect();
            drop(yaml);
            apply_all(&mut reconciler, events)
        }
    };
    let load = start.elapsed();
    let start = Instant::now();
    reconciler.apply(Event::Synced);
    let published = reconciler
        .commit()
        .unwrap_or_else(|e| panic!("commit: {e}"));
    let commit = start.elapsed();
    assert_eq!(published, NODES, "every node compiled");
    let (hwm, rss) = memory();

    // One pod relabelled through the directory, a few times (median): scan (stat every file,
    // read the one that changed), apply, commit.
    let mut edit = String::from("-");
    if let Some(state) = dir_state.as_mut() {
        let rounds: usize = std::env::var("PALISADE_MEMORY_EDITS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(9);
        let path = tmp.path().join("ns-0.yaml");
        let original = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read: {e}"));
        let relabelled = original.replacen("labels: {app: app-0,", "labels: {app: app-1,", 1);
        let mut totals = Vec::new();
        let mut scans = Vec::new();
        for round in 0..rounds {
            let text = if round % 2 == 0 {
                &relabelled
            } else {
                &original
            };
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write: {e}"));
            let start = Instant::now();
            let events = state.scan().unwrap_or_else(|e| panic!("scan: {e}"));
            scans.push(start.elapsed());
            assert_eq!(events.len(), 1, "one pod changed");
            apply_all(&mut reconciler, events);
            let changed = reconciler
                .commit()
                .unwrap_or_else(|e| panic!("commit: {e}"));
            assert!(changed >= 1);
            totals.push(start.elapsed());
        }
        totals.sort();
        scans.sort();
        if let (Some(total), Some(scan)) = (totals.get(rounds / 2), scans.get(rounds / 2)) {
            edit = format!(
                "{:.1} ms (scan {:.1} ms)",
                total.as_secs_f64() * 1e3,
                scan.as_secs_f64() * 1e3
            );
        }
    }

    let load = format!("{:.2} s", load.as_secs_f64());
    let commit = format!("{:.2} s", commit.as_secs_f64());
    let hwm = format!("{:.0} MiB", hwm as f64 / 1024.0);
    let rss = format!("{:.0} MiB", rss as f64 / 1024.0);
    println!("{mode:<7} {objects:<8} {load:<9} {commit:<9} {hwm:<10} {rss:<10} {edit}");
    // Everything stays alive until measured.
    drop(dir_state);
    drop(reconciler);
}

fn apply_all(reconciler: &mut Reconciler, events: Vec<Event>) -> usize {
    let mut n = 0;
    for event in events {
        if let Event::Reject(r) = &event {
            panic!("rejected: {r:?}");
        }
        n += usize::from(matches!(event, Event::Apply(_)));
        reconciler.apply(event);
    }
    n
}

/// VmHWM and VmRSS in KiB.
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Writes the manifests, dated an hour ago (the directory source re-reads files modified in
/// the last two seconds on every poll; a steady directory is older).
fn write_cluster(dir: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for (name, text) in cluster_yaml() {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .unwrap_or_else(|e| panic!("set mtime: {e}"));
    }
}

/// (file name, manifest) of the whole cluster.
fn cluster_yaml() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut nodes = String::new();
    for n in 0..NODES {
        let _ = write!(
            nodes,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-{n}, labels: {{zone: z{}}}}}\nstatus: {{addresses: [{{type: InternalIP, address: 172.18.{}.{}}}]}}\n",
            n % 3,
            n / 250,
            n % 250 + 1
        );
    }
    files.push(("nodes.yaml".to_string(), nodes));
    let mut pod = 0usize;
    for ns in 0..NAMESPACES {
        let team = ns % 20;
        let mut text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{team: t{team}}}}}\n"
        );
        for p in 0..PODS_PER_NAMESPACE {
            let app = p % 5;
            let node = pod % NODES;
            let ip = format!(
                "10.{}.{}.{}",
                1 + pod / 62500,
                (pod / 250) % 250,
                pod % 250 + 1
            );
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{p}, namespace: ns-{ns}, labels: {{app: app-{app}, team: t{team}}}}}\nspec:\n  nodeName: node-{node}\n  containers:\n  - name: main\n    ports: [{{containerPort: 8080, name: http}}, {{containerPort: 9090, name: metrics}}]\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
            );
            pod += 1;
        }
        let _ = write!(
            text,
            "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: ns-{ns}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: same-app, namespace: ns-{ns}}}
spec:
  podSelector: {{matchLabels: {{app: app-1}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: app-1}}}}}}]
    ports: [{{port: http}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-team, namespace: ns-{ns}}}
spec:
  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [app-2, app-3]}}]}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{team: t{team}}}}}}}]
    ports: [{{port: 8000, endPort: 8100, protocol: TCP}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: egress, namespace: ns-{ns}}}
spec:
  podSelector: {{matchLabels: {{app: app-4}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}}}]
  - ports: [{{port: 53, protocol: UDP}}, {{port: 53, protocol: TCP}}]
"
        );
        files.push((format!("ns-{ns}.yaml"), text));
    }
    files
}
