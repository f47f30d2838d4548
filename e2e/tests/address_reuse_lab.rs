//! One owner per pod address, on real packets through the operator: the reviewer's case.
//! x/b admits `pod=a` pods of x on TCP 80. x/old (`pod=a`) has 10.244.1.12; then y/new
//! (`pod=new`) gets 10.244.1.12 while x/old, Terminating, still lists it. A connection
//! from 10.244.1.12 (the namespace of the lab's y/new) to x/b must be judged as y/new's:
//! denied. Once y/new is gone, x/old (terminating, still running) owns the address again.
//! palisade-operator reads manifests with `creationTimestamp` / `deletionTimestamp` (the lab
//! writes them from each pod's `created` and `terminating`), one
//! palisade-enforcer agent per node applies the rules; every step waits until each agent
//! enforces what the engine compiles (so the operator resolves owners as the engine does).
//! Needs root and the three binaries (`cargo build --workspace --bins`); skipped otherwise.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use e2e::probe::{Outcome, Target, Timing};
use e2e::runner::{load, Loaded, Options, ScenarioLab};
use e2e::sock::Proto;
use palisade_policy::model::{Cluster, Pod};

const SCENARIO: &str = r#"name: address-reuse-one-owner
namespaces:
  x: {kubernetes.io/metadata.name: x}
  "y": {kubernetes.io/metadata.name: "y"}
nodes: [n1, n2]
pods:
  - {ns: x, name: b, ip: 10.244.1.20, node: n1, labels: {pod: b}}
  - {ns: "y", name: new, ip: 10.244.1.12, node: n2, labels: {pod: new}}
ports:
  - {port: 80, protocol: TCP}
policies: |
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: allow-a, namespace: x}
  spec:
    podSelector: {matchLabels: {pod: b}}
    ingress:
    - from: [{podSelector: {matchLabels: {pod: a}}}]
      ports: [{port: 80, protocol: TCP}]
probes:
  - {port: 80, protocol: TCP}
expected:
  - probe: {port: 80, protocol: TCP}
    denied: ["y/new->x/b"]
"#;

/// x/old's and y/new's creation times (seconds since the epoch).
const OLD_CREATED: i64 = 1_795_658_400;
const NEW_CREATED: i64 = 1_795_662_010;

/// The cluster of one step: the scenario's, without y/new, plus `extra` pods (the lab
/// writes their creation and deletion marks into the manifests).
fn step(lab: &ScenarioLab, loaded: &Loaded, extra: &[Pod]) -> Cluster {
    let mut cluster = lab.placed(loaded.engine.cluster());
    cluster.pods.retain(|p| p.name != "new");
    cluster.pods.extend(extra.iter().cloned());
    cluster
}

/// y/new as the scenario has it (its address, node, ports), with its creation time.
fn new_pod(loaded: &Loaded) -> Pod {
    let mut pod = loaded
        .engine
        .cluster()
        .pods
        .iter()
        .find(|p| p.name == "new")
        .cloned()
        .expect("y/new in the scenario");
    pod.created = Some(NEW_CREATED);
    pod
}

/// x/old: y/new's address (and node and ports), namespace x, `pod=a`, created earlier.
fn old_pod(loaded: &Loaded, terminating: bool) -> Pod {
    let mut pod = new_pod(loaded);
    pod.namespace = "x".into();
    pod.name = "old".into();
    pod.labels = [("pod".to_string(), "a".to_string())].into_iter().collect();
    pod.created = Some(OLD_CREATED);
    pod.terminating = terminating;
    pod
}

/// Writes a step's manifests and waits until every agent enforces it.
fn apply(lab: &mut ScenarioLab, loaded: &Loaded, extra: &[Pod], what: &str) {
    let cluster = step(lab, loaded, extra);
    let cp = lab.control.as_ref().expect("operator mode");
    cp.write_cluster(&cluster).expect("write manifests");
    lab.wait_realised(&cluster, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{what}: not realised: {e:#}"));
}

/// One TCP connection from the namespace holding 10.244.1.12 to x/b:80.
fn probe(lab: &ScenarioLab, loaded: &Loaded, opts: &Options) -> Outcome {
    let index = |name: &str| {
        loaded
            .scenario
            .endpoints
            .iter()
            .position(|e| e.name == name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
    };
    let b = &loaded.scenario.endpoints[index("x/b")];
    let target = Target {
        proto: Proto::Tcp,
        addr: SocketAddr::new(b.ips[0], 80),
    };
    let timing = Timing {
        timeout: Duration::from_millis(300),
        udp_tries: 1,
        sctp_raw: false,
    };
    let from = &lab.endpoint_ns[index("y/new")];
    let out = e2e::probe::probe_from(&opts.exe, from, &[target], timing, 1).expect("probe runs");
    out.into_iter().next().expect("one outcome")
}

#[test]
fn an_address_given_to_a_new_pod_is_judged_as_the_new_pods() {
    let Some(opts) = common::operator_options() else {
        return;
    };
    let dir = TempDir::new();
    let file = dir.0.join("address-reuse.yaml");
    std::fs::write(&file, SCENARIO).expect("scenario written");
    let loaded = load(&file).expect("scenario loads");
    let mut lab = ScenarioLab::build(&loaded.scenario, &opts).expect("lab builds");
    lab.start(&loaded, &opts)
        .expect("operator and agents start");

    // x/old alone has the address: x/b admits it (the control).
    apply(&mut lab, &loaded, &[old_pod(&loaded, false)], "x/old alone");
    assert_eq!(probe(&lab, &loaded, &opts), Outcome::Allowed, "x/old alone");

    // y/new (created later) gets it while x/old, Terminating, still lists it: denied.
    let both = [old_pod(&loaded, true), new_pod(&loaded)];
    apply(&mut lab, &loaded, &both, "x/old terminating, y/new");
    assert_eq!(
        probe(&lab, &loaded, &opts),
        Outcome::Denied,
        "10.244.1.12 judged with x/old's labels while y/new owns it"
    );
    let log = lab.operator_log();
    assert!(
        log.lines()
            .any(|l| l.contains("address claimed by several pods")
                && l.contains("10.244.1.12")
                && l.contains("y/new")
                && l.contains("x/old")),
        "the conflict is logged:\n{log}"
    );

    // Without the deletion mark, the newer pod owns it all the same.
    let both = [old_pod(&loaded, false), new_pod(&loaded)];
    apply(&mut lab, &loaded, &both, "x/old running, y/new");
    assert_eq!(
        probe(&lab, &loaded, &opts),
        Outcome::Denied,
        "by creation time"
    );

    // y/new gone: x/old, still terminating, gets the address back (graceful shutdown).
    apply(
        &mut lab,
        &loaded,
        &[old_pod(&loaded, true)],
        "x/old terminating alone",
    );
    assert_eq!(
        probe(&lab, &loaded, &opts),
        Outcome::Allowed,
        "x/old alone again"
    );

    lab.teardown().expect("teardown");
}

/// A fresh folder for the scenario file, removed when dropped (also on a failed assert).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("pal-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
