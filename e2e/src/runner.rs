//! The scenario runner: a scenario's cluster as a lab, its policies compiled per
//! node and applied by real enforcers, every probe sent as real packets, and the
//! result compared with `expected` (and with the engine's own verdicts).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use palisade_crds::scenario::Loaded;
use palisade_crds::scenario::{load_file, scenario_files};
use palisade_policy::compile::compile_node;
use palisade_policy::engine::Engine;
use palisade_policy::model::{Cluster, Node, Protocol};
use palisade_policy::scenario::{summary_line, EndpointKind, Outcome, Scenario};

use crate::enforcer::Enforcer;
use crate::operator::{Agent, AgentSpec, ControlPlane};
use crate::probe::{self, Target, Timing};
use crate::serve::{self, Port};
use crate::sock::Proto;
use crate::topology::{ExternalSpec, Lab, NodeSpec, PodSpec, Spec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Plain,
    Json,
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The e2e binary (started as `serve` / `probe` inside namespaces).
    pub exe: PathBuf,
    /// The enforcer binary; `None`: run without enforcers (only for scenarios
    /// without policies: everything must be allowed).
    pub enforcer: Option<PathBuf>,
    pub engine_check: bool,
    pub timing: Timing,
    /// At most this many probes in flight at once, over all sources.
    pub parallel: usize,
    /// The operator binary: when set, the enforcers are agents following a
    /// `palisade-operator` (manifest-directory source) over its stream, as in a
    /// cluster, instead of reading state files the lab writes.
    pub operator: Option<PathBuf>,
}

impl Options {
    pub fn new(exe: PathBuf) -> Options {
        Options {
            exe,
            enforcer: None,
            engine_check: true,
            timing: Timing::default(),
            parallel: 256,
            operator: None,
        }
    }
}

/// A disagreement between the engine and the kernel on one pair of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub probe: serde_json::Value,
    pub pair: String,
    pub engine_denied: bool,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (engine, kernel) = if self.engine_denied {
            ("denied", "allowed")
        } else {
            ("allowed", "denied")
        };
        write!(
            f,
            "{}: {}: engine {engine}, kernel {kernel}",
            self.probe, self.pair
        )
    }
}

/// What one scenario gave.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// Empty unless the engine check ran and found some.
    pub disagreements: Vec<Disagreement>,
    pub elapsed: Duration,
}

/// Reads a scenario file, converts its policies and indexes it (as `palisade test` does).
pub fn load(path: &Path) -> Result<Loaded> {
    Ok(load_file(path)?)
}

/// Runs every scenario and prints the contract's output. Exit code: 2 if a file
/// could not be read, parsed or run in the lab, else 1 if a scenario failed or the
/// engine and the kernel disagreed, else 0.
pub fn run_all(paths: &[PathBuf], output: Output, opts: &Options) -> u8 {
    let mut outcomes = Vec::new();
    let mut broken = false;
    let mut disagreed = false;
    for file in scenario_files(paths) {
        if crate::signals::stopping() {
            break;
        }
        let result = file.map_err(anyhow::Error::from).and_then(|f| {
            let loaded = load(&f)?;
            run_scenario(&loaded, opts).with_context(|| format!("{}", f.display()))
        });
        match result {
            Ok(report) => {
                match output {
                    Output::Plain => print!("{}", report.outcome.plain()),
                    Output::Json => match serde_json::to_string(&report.outcome) {
                        Ok(json) => println!("{json}"),
                        Err(e) => {
                            eprintln!("error: {}: {e}", report.outcome.name);
                            broken = true;
                        }
                    },
                }
                for d in &report.disagreements {
                    eprintln!(
                        "engine-check {}: engine and kernel disagree: {d}",
                        report.outcome.name
                    );
                }
                disagreed |= !report.disagreements.is_empty();
                eprintln!(
                    "e2e: {} took {:.1}s",
                    report.outcome.name,
                    report.elapsed.as_secs_f64()
                );
                outcomes.push(report.outcome);
            }
            Err(_) if crate::signals::stopping() => break,
            Err(e) => {
                eprintln!("error: {e:#}");
                broken = true;
            }
        }
    }
    if output == Output::Plain {
        println!("{}", summary_line(&outcomes));
    }
    if broken {
        2
    } else if disagreed || !outcomes.iter().all(|o| o.passed) {
        1
    } else {
        0
    }
}

/// Runs one scenario in a fresh lab (removed before returning).
pub fn run_scenario(loaded: &Loaded, opts: &Options) -> Result<Report> {
    let start = Instant::now();
    let scenario = &loaded.scenario;
    let engine = &loaded.engine;
    let mut lab = ScenarioLab::build(scenario, opts)?;
    lab.start(loaded, opts)?;
    let observed = lab.probe(scenario, opts)?;
    for e in &lab.enforcers {
        for line in &e.errors {
            eprintln!("e2e: {}: enforcer of {}: {line}", scenario.name, e.node);
        }
    }
    for a in lab.agents.iter_mut() {
        a.drain();
        for line in &a.errors {
            eprintln!("e2e: {}: agent of {}: {line}", scenario.name, a.spec.node);
        }
    }
    let disagreements = if opts.engine_check {
        disagreements(scenario, &scenario.evaluate(engine), &observed)
    } else {
        Vec::new()
    };
    lab.teardown()?;
    Ok(Report {
        outcome: scenario.compare(observed),
        disagreements,
        elapsed: start.elapsed(),
    })
}

/// The pairs on which the engine and the kernel disagree.
pub fn disagreements(
    scenario: &Scenario,
    engine: &[BTreeSet<String>],
    kernel: &[BTreeSet<String>],
) -> Vec<Disagreement> {
    let mut out = Vec::new();
    for ((probe, e), k) in scenario.probes.iter().zip(engine).zip(kernel) {
        for pair in e.symmetric_difference(k) {
            out.push(Disagreement {
                probe: probe.raw.clone(),
                pair: pair.clone(),
                engine_denied: e.contains(pair),
            });
        }
    }
    out
}

/// The name given to the node that pods without a node run on.
fn synthetic_node_name(scenario: &Scenario) -> String {
    let mut name = "e2e-unscheduled".to_string();
    let mut i = 0;
    while scenario.nodes.iter().any(|n| n.name == name) {
        i += 1;
        name = format!("e2e-unscheduled-{i}");
    }
    name
}

/// A scenario's lab: the topology, a server per endpoint namespace, the enforcers.
pub struct ScenarioLab {
    pub lab: Lab,
    /// The node names, in lab order (the scenario's, then a synthetic one if needed).
    pub node_names: Vec<String>,
    /// The namespace of each scenario endpoint.
    pub endpoint_ns: Vec<String>,
    pub enforcers: Vec<Enforcer>,
    /// With the operator (`Options::operator`): the operator and one agent per node.
    pub control: Option<ControlPlane>,
    pub agents: Vec<Agent>,
    /// How SCTP is served: `kernel`, `raw` or `none`.
    pub sctp: String,
    dir: Option<PathBuf>,
    synthetic: Option<String>,
    /// The control plane's namespace and address (operator mode).
    control_host: Option<(String, std::net::IpAddr)>,
}

impl ScenarioLab {
    /// What the operator has logged so far (empty without the operator).
    pub fn operator_log(&self) -> String {
        self.control
            .as_ref()
            .map(|c| c.log_text())
            .unwrap_or_default()
    }

    /// Builds the topology and starts a server in every endpoint's namespace.
    pub fn build(scenario: &Scenario, opts: &Options) -> Result<ScenarioLab> {
        let sctp_needed = scenario.probes.iter().any(|p| p.protocol == Protocol::Sctp);
        let sctp = !sctp_needed || crate::sock::ensure_sctp();
        if !sctp && !opts.timing.sctp_raw {
            bail!(
                "scenario {} probes SCTP, but this kernel has no SCTP sockets \
                 (CONFIG_IP_SCTP is off or the sctp module cannot be loaded); \
                 SCTP probes cannot be run here (--sctp-raw probes with a raw \
                 INIT / INIT ACK exchange instead)",
                scenario.name
            );
        }
        let mut spec = Spec::default();
        let mut node_names: Vec<String> = scenario.nodes.iter().map(|n| n.name.clone()).collect();
        spec.nodes = scenario
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                ips: n.ips.clone(),
            })
            .collect();
        let synthetic = scenario
            .pods
            .iter()
            .any(|p| p.node.is_none())
            .then(|| synthetic_node_name(scenario));
        if let Some(name) = &synthetic {
            node_names.push(name.clone());
            spec.nodes.push(NodeSpec {
                name: name.clone(),
                ips: Vec::new(),
            });
        }
        for p in &scenario.pods {
            let node = match &p.node {
                Some(n) => node_names.iter().position(|x| x == n),
                None => Some(node_names.len() - 1),
            }
            .with_context(|| format!("pod {}/{}: unknown node", p.namespace, p.name))?;
            spec.pods.push(PodSpec {
                name: format!("{}/{}", p.namespace, p.name),
                node,
                ips: p.ips.clone(),
                host_network: p.host_network,
            });
        }
        let mut external_index = Vec::new();
        for e in &scenario.endpoints {
            if e.kind == EndpointKind::External {
                let ip = *e.ips.first().context("external without address")?;
                external_index.push(spec.externals.len());
                spec.externals.push(ExternalSpec {
                    name: e.name.clone(),
                    ip,
                });
            }
        }
        // With the operator: a control-plane host of its own, outside every node.
        let control_ip = opts.operator.as_ref().map(|_| {
            let used: BTreeSet<std::net::IpAddr> = spec
                .nodes
                .iter()
                .flat_map(|n| n.ips.iter().copied())
                .chain(spec.pods.iter().flat_map(|p| p.ips.iter().copied()))
                .chain(spec.externals.iter().map(|x| x.ip))
                .collect();
            let ip = crate::operator::control_plane_ip(&used);
            spec.externals.push(ExternalSpec {
                name: crate::operator::OPERATOR_NAME.to_string(),
                ip,
            });
            ip
        });
        let lab = Lab::create(&spec)?;
        let control_host = match (control_ip, lab.externals.last()) {
            (Some(ip), Some(ns)) => Some((ns.clone(), ip)),
            _ => None,
        };
        let mut ext = external_index.into_iter();
        let endpoint_ns: Vec<String> = scenario
            .endpoints
            .iter()
            .map(|e| match e.kind {
                EndpointKind::Pod(k) => lab.pods.get(k).cloned(),
                EndpointKind::Node(i) => lab.nodes.get(i).map(|n| n.ns.clone()),
                EndpointKind::External => ext.next().and_then(|j| lab.externals.get(j).cloned()),
            })
            .collect::<Option<_>>()
            .context("an endpoint has no namespace")?;
        let mut this = ScenarioLab {
            lab,
            node_names,
            endpoint_ns,
            enforcers: Vec::new(),
            control: None,
            agents: Vec::new(),
            sctp: String::new(),
            dir: None,
            synthetic,
            control_host,
        };
        this.start_servers(&serve_ports(scenario), opts)?;
        Ok(this)
    }

    fn start_servers(&mut self, ports: &[Port], opts: &Options) -> Result<()> {
        let namespaces: BTreeSet<&String> = self.endpoint_ns.iter().collect();
        let mut started = Vec::new();
        for ns in namespaces {
            let mut cmd = std::process::Command::new(&opts.exe);
            cmd.arg("serve").args(ports.iter().map(Port::arg));
            if opts.timing.sctp_raw {
                cmd.arg("--sctp-raw");
            }
            let spawned = self.lab.spawn(ns, cmd)?;
            started.push((ns.clone(), spawned.stdout));
        }
        for (ns, stdout) in started {
            let ready = serve::wait_ready(stdout, Duration::from_secs(10))
                .with_context(|| format!("server in {ns}"))?;
            self.sctp = ready.sctp;
        }
        Ok(())
    }

    /// The cluster the enforcers compile from: pods without a node are placed on
    /// the synthetic node (which has no address, so nothing else changes).
    pub fn placed(&self, cluster: &Cluster) -> Cluster {
        let mut c = cluster.clone();
        if let Some(name) = &self.synthetic {
            for p in c.pods.iter_mut().filter(|p| p.node.is_none()) {
                p.node = Some(name.clone());
            }
            c.nodes.push(Node {
                name: name.clone(),
                labels: Default::default(),
                ips: Vec::new(),
            });
        }
        c
    }

    /// Compiles `cluster` per node (version `version`).
    pub fn compile(
        &self,
        cluster: &Cluster,
        version: u64,
    ) -> Result<Vec<palisade_policy::compiled::NodeRuleSet>> {
        let engine = Engine::new(self.placed(cluster)).context("building the engine")?;
        Ok(self
            .node_names
            .iter()
            .map(|n| compile_node(&engine, n, version))
            .collect())
    }

    /// The run's folder for state files, logs and manifests (removed on teardown).
    fn run_dir(&mut self) -> Result<PathBuf> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let dir = std::env::temp_dir().join(format!("pal-e2e-{}", self.lab.run_id));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::signals::register_dir(dir.clone());
        self.dir = Some(dir.clone());
        Ok(dir)
    }

    /// Starts the enforcers on a scenario's cluster and policies: fed with state
    /// files, or (with `Options::operator`) as agents of an operator that reads the
    /// scenario as manifests.
    pub fn start(&mut self, loaded: &Loaded, opts: &Options) -> Result<()> {
        if opts.operator.is_some() && opts.enforcer.is_some() {
            self.start_operator(loaded, opts)
        } else {
            self.start_enforcers(loaded.engine.cluster(), opts)
        }
    }

    /// Has the enforcers enforce another step of a scenario (same pods, other
    /// policies): state files rewritten, or the operator's manifests.
    pub fn apply_loaded(&mut self, loaded: &Loaded) -> Result<()> {
        if self.control.is_some() {
            self.write_manifests(loaded)?;
            self.wait_realised(loaded.engine.cluster(), crate::operator::REALISE_TIMEOUT)
        } else {
            self.apply(loaded.engine.cluster())
        }
    }

    /// Writes the scenario's objects and policies into the operator's folder.
    pub fn write_manifests(&self, loaded: &Loaded) -> Result<()> {
        let cp = self.control.as_ref().context("the lab has no operator")?;
        cp.write_cluster(&self.placed(loaded.engine.cluster()))?;
        cp.write_policies(&loaded.scenario.policies)
    }

    /// The digest of the rule set the engine compiles for each node of `cluster`,
    /// its objects in the operator's order (by kind, namespace and name: the order
    /// only decides where things sit in the rule set, never what they mean).
    pub fn expected_digests(&self, cluster: &Cluster) -> Result<Vec<String>> {
        let mut sorted = cluster.clone();
        sorted.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        sorted
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        sorted.policies.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.tiers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(self
            .compile(&sorted, 0)?
            .iter()
            .map(palisade_wire::digest)
            .collect())
    }

    /// Waits until every agent has in force what the engine compiles for its node.
    pub fn wait_realised(&mut self, cluster: &Cluster, timeout: std::time::Duration) -> Result<()> {
        let digests = self.expected_digests(cluster)?;
        let deadline = Instant::now() + timeout;
        for (agent, digest) in self.agents.iter_mut().zip(&digests) {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = agent.wait_digest(&self.lab, digest, left) {
                let tail = self
                    .control
                    .as_ref()
                    .map(|c| c.log_tail())
                    .unwrap_or_default();
                return Err(e.context(format!("operator mode{tail}")));
            }
        }
        Ok(())
    }

    /// The operator (manifest-directory source) in its own namespace, and one
    /// agent per node following it; returns once every node enforces the scenario.
    pub fn start_operator(&mut self, loaded: &Loaded, opts: &Options) -> Result<()> {
        let (Some(operator), Some(enforcer)) = (&opts.operator, &opts.enforcer) else {
            bail!("operator mode needs the operator and the enforcer binaries");
        };
        let (ns, ip) = self
            .control_host
            .clone()
            .context("the lab was built without a control-plane host (Options::operator)")?;
        let dir = self.run_dir()?;
        let mut cp = ControlPlane::new(&ns, ip, &dir, operator, &self.node_names)?;
        cp.write_cluster(&self.placed(loaded.engine.cluster()))?;
        cp.write_policies(&loaded.scenario.policies)?;
        cp.start(&self.lab)?;
        self.control = Some(cp);
        let nodes: Vec<(String, String)> = self
            .lab
            .nodes
            .iter()
            .zip(&self.node_names)
            .map(|(n, name)| (n.ns.clone(), name.clone()))
            .collect();
        for (i, (ns, name)) in nodes.into_iter().enumerate() {
            let cp = self.control.as_ref().context("operator gone")?;
            let token_file = cp.tokens.get(&name).cloned().context("no token")?;
            let spec = AgentSpec {
                node: name,
                token_file,
                state_file: dir.join(format!("agent-{i}.json")),
                log: dir.join(format!("agent-{i}.log")),
            };
            let agent = Agent::start(&self.lab, enforcer, &ns, cp, spec)?;
            self.agents.push(agent);
        }
        self.wait_realised(loaded.engine.cluster(), crate::operator::REALISE_TIMEOUT)
    }

    /// Starts one enforcer per node on the compiled rule sets of `cluster`; without
    /// an enforcer binary, checks that there is nothing to enforce.
    pub fn start_enforcers(&mut self, cluster: &Cluster, opts: &Options) -> Result<()> {
        let Some(binary) = &opts.enforcer else {
            if !cluster.policies.is_empty() {
                bail!("the scenario has policies but no enforcer is used");
            }
            return Ok(());
        };
        let dir = self.run_dir()?;
        let rule_sets = self.compile(cluster, 1)?;
        for (node, rules) in self.lab.nodes.iter().zip(&rule_sets) {
            let e = Enforcer::start(&self.lab, binary, &node.ns, &dir, rules)?;
            self.enforcers.push(e);
        }
        Ok(())
    }

    /// Recompiles `cluster` and has every running enforcer apply it.
    pub fn apply(&mut self, cluster: &Cluster) -> Result<()> {
        let version = self.enforcers.iter().map(|e| e.version).max().unwrap_or(0) + 1;
        let rule_sets = self.compile(cluster, version)?;
        for (e, rules) in self.enforcers.iter_mut().zip(&rule_sets) {
            e.apply(&self.lab, rules)?;
        }
        Ok(())
    }

    /// Sends every probe between every pair; the denied pairs per probe. Any probe
    /// that neither succeeded nor timed out makes the whole run an error.
    pub fn probe(&self, scenario: &Scenario, opts: &Options) -> Result<Vec<BTreeSet<String>>> {
        let detailed = self.probe_detailed(scenario, opts)?;
        let mut errors = Vec::new();
        let mut denied = vec![BTreeSet::new(); scenario.probes.len()];
        for (pi, pair, outcome) in detailed {
            match outcome {
                probe::Outcome::Allowed => {}
                probe::Outcome::Denied => {
                    denied[pi].insert(pair);
                }
                probe::Outcome::Error(e) => {
                    errors.push(format!("{}: {pair}: {e}", scenario.probes[pi].raw))
                }
            }
        }
        if !errors.is_empty() {
            let n = errors.len();
            errors.truncate(10);
            bail!(
                "{n} probe(s) failed in the lab (neither answered nor timed out):\n  {}",
                errors.join("\n  ")
            );
        }
        Ok(denied)
    }

    /// Every (probe index, pair name, outcome), probes run concurrently.
    pub fn probe_detailed(
        &self,
        scenario: &Scenario,
        opts: &Options,
    ) -> Result<Vec<(usize, String, probe::Outcome)>> {
        // Per source endpoint: its targets, and what each stands for.
        let mut per_source: BTreeMap<usize, Vec<(Target, usize, String)>> = BTreeMap::new();
        for (pi, p) in scenario.probes.iter().enumerate() {
            let proto = match p.protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Sctp => Proto::Sctp,
                Protocol::Icmp => bail!("ICMP probes are not supported"),
            };
            for pair in scenario.pairs(p) {
                let dst = &scenario.endpoints[pair.dst];
                let Some(ip) = dst.ip_of(p.family) else {
                    continue;
                };
                per_source.entry(pair.src).or_default().push((
                    Target {
                        proto,
                        addr: SocketAddr::new(ip, p.port),
                    },
                    pi,
                    scenario.pair_name(pair),
                ));
            }
        }
        let sources = per_source.len().max(1);
        let each = (opts.parallel / sources).clamp(2, 64);
        let results: Vec<Result<Vec<(usize, String, probe::Outcome)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = per_source
                .iter()
                .map(|(&src, items)| {
                    let ns = &self.endpoint_ns[src];
                    s.spawn(move || {
                        let targets: Vec<Target> = items.iter().map(|i| i.0).collect();
                        let outcomes =
                            probe::probe_from(&opts.exe, ns, &targets, opts.timing, each)?;
                        Ok(items
                            .iter()
                            .zip(outcomes)
                            .map(|((_, pi, name), o)| (*pi, name.clone(), o))
                            .collect())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("probe thread panicked")))
                })
                .collect()
        });
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        Ok(all)
    }

    /// Stops the enforcers and servers and removes the namespaces.
    pub fn teardown(&mut self) -> Result<()> {
        for e in &self.enforcers {
            self.lab.stop(e.pid, Duration::from_secs(2));
        }
        self.enforcers.clear();
        for a in &self.agents {
            self.lab.stop(a.pid, Duration::from_secs(2));
        }
        self.agents.clear();
        if let Some(mut cp) = self.control.take() {
            cp.stop(&self.lab);
        }
        let r = self.lab.teardown();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
            crate::signals::unregister_dir(&dir);
        }
        r
    }
}

impl Drop for ScenarioLab {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
            crate::signals::unregister_dir(&dir);
        }
    }
}

/// Every port a server must listen on: the scenario's `ports` and every probe's
/// port (a probe to a port nobody declared still needs a listener to tell an
/// allowed connection from a denied one).
pub fn serve_ports(scenario: &Scenario) -> Vec<Port> {
    let proto = |p: Protocol| match p {
        Protocol::Tcp => Some(Proto::Tcp),
        Protocol::Udp => Some(Proto::Udp),
        Protocol::Sctp => Some(Proto::Sctp),
        Protocol::Icmp => None,
    };
    let ports: BTreeSet<Port> = scenario
        .ports
        .iter()
        .map(|p| (p.protocol, p.port))
        .chain(scenario.probes.iter().map(|p| (p.protocol, p.port)))
        .filter_map(|(pr, port)| {
            Some(Port {
                proto: proto(pr)?,
                port,
            })
        })
        .collect();
    ports.into_iter().collect()
}
