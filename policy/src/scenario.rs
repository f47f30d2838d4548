//! Scenario files (`shared/spec/scenario-format.md`): a small cluster, its policies,
//! the probes to run and the denied pairs expected.
//!
//! This module parses and validates the file, lists the endpoints and the pairs each
//! probe covers, and compares what was observed (by the engine or by real packets)
//! with what was expected. The `policies` text is converted by `palisade-crds`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine;
use crate::model::{
    Cluster, ContainerPort, Family, Labels, Namespace, Node, Pod, Policy, Protocol, Tier,
};

/// A scenario that cannot be used: the file, where and why.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Yaml(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    namespaces: BTreeMap<String, Option<Labels>>,
    #[serde(default)]
    nodes: Option<Vec<RawNode>>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    externals: Vec<RawExternal>,
    #[serde(default)]
    policies: Option<String>,
    #[serde(default)]
    probes: Vec<serde_json::Value>,
    #[serde(default)]
    expected: Vec<RawExpectation>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum RawNode {
    Name(String),
    Full(RawNodeFull),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeFull {
    name: String,
    #[serde(default)]
    ips: Option<Vec<IpAddr>>,
    #[serde(default)]
    labels: Labels,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    ns: String,
    name: String,
    #[serde(default)]
    ip: Option<IpAddr>,
    #[serde(default)]
    ips: Option<Vec<IpAddr>>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    host_network: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default = "tcp")]
    protocol: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExternal {
    name: String,
    ip: IpAddr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProbe {
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    port_name: Option<String>,
    #[serde(default = "tcp")]
    protocol: Protocol,
    #[serde(default)]
    family: Family,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    probe: serde_json::Value,
    #[serde(default)]
    denied: Vec<String>,
}

/// A probe: one port and protocol, tried from every endpoint to every other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The probe exactly as the file wrote it (echoed in JSON output).
    pub raw: serde_json::Value,
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
    pub port_name: Option<String>,
}

/// What an endpoint is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    /// Index into [`Scenario::pods`] (host-network pods included).
    Pod(usize),
    /// Index into [`Scenario::nodes`].
    Node(usize),
    External,
}

/// A probe endpoint: `NS/POD`, `node:NAME` or `ext:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub kind: EndpointKind,
    /// The addresses it sends from and is reached at (a host-network pod's are its node's).
    pub ips: Vec<IpAddr>,
}

impl Endpoint {
    pub fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(ip) == family)
    }
}

/// A validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    pub source: Option<String>,
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub ports: Vec<ContainerPort>,
    pub endpoints: Vec<Endpoint>,
    /// The multi-document policy YAML, converted by `palisade-crds`.
    pub policies: String,
    pub probes: Vec<Probe>,
    /// Per probe (same index as `probes`), the denied pairs expected.
    pub expected: Vec<BTreeSet<String>>,
}

/// A pair of endpoints, by index into [`Scenario::endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub src: usize,
    pub dst: usize,
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario =
            serde_yaml::from_str(text).map_err(|e| ScenarioError::Yaml(e.to_string()))?;
        build(raw)
    }

    /// The pairs a probe covers: every endpoint to every other one that has an
    /// address of the probe's family, except external to external and node to
    /// node or external.
    pub fn pairs(&self, probe: &Probe) -> Vec<Pair> {
        let mut pairs = Vec::new();
        for (s, src) in self.endpoints.iter().enumerate() {
            for (d, dst) in self.endpoints.iter().enumerate() {
                if s == d || !probed(src, dst) {
                    continue;
                }
                if src.ip_of(probe.family).is_some() && dst.ip_of(probe.family).is_some() {
                    pairs.push(Pair { src: s, dst: d });
                }
            }
        }
        pairs
    }

    pub fn pair_name(&self, pair: Pair) -> String {
        format!(
            "{}->{}",
            self.endpoints[pair.src].name, self.endpoints[pair.dst].name
        )
    }

    /// The cluster this scenario describes, with its policies and tiers (converted
    /// from [`Scenario::policies`] by the caller).
    pub fn cluster(&self, policies: Vec<Policy>, tiers: Vec<Tier>) -> Cluster {
        Cluster {
            namespaces: self.namespaces.clone(),
            nodes: self.nodes.clone(),
            pods: self.pods.clone(),
            policies,
            tiers,
        }
    }

    /// The engine's endpoint for a scenario endpoint, in a family.
    pub fn engine_endpoint(&self, endpoint: usize, family: Family) -> Option<engine::Endpoint> {
        let e = &self.endpoints[endpoint];
        let ip = e.ip_of(family)?;
        Some(match e.kind {
            EndpointKind::Pod(p) => engine::Endpoint::Pod(p),
            EndpointKind::Node(n) => engine::Endpoint::Node(n),
            EndpointKind::External => engine::Endpoint::External(ip),
        })
    }

    /// The connection a probe makes between a pair.
    pub fn connection(&self, probe: &Probe, pair: Pair) -> Option<engine::Connection> {
        Some(engine::Connection {
            src: self.engine_endpoint(pair.src, probe.family)?,
            dst: self.engine_endpoint(pair.dst, probe.family)?,
            family: probe.family,
            protocol: probe.protocol,
            port: probe.port,
        })
    }

    /// The denied pairs per probe, as the engine (built from [`Scenario::cluster`]) decides.
    pub fn evaluate(&self, engine: &engine::Engine) -> Vec<BTreeSet<String>> {
        self.probes
            .iter()
            .map(|probe| {
                self.pairs(probe)
                    .into_iter()
                    .filter(|&pair| {
                        self.connection(probe, pair)
                            .is_some_and(|conn| !engine.allowed(&conn))
                    })
                    .map(|pair| self.pair_name(pair))
                    .collect()
            })
            .collect()
    }

    /// Compares the observed denied pairs per probe with the expected ones.
    pub fn compare(&self, observed: Vec<BTreeSet<String>>) -> Outcome {
        let results: Vec<ProbeResult> = self
            .probes
            .iter()
            .zip(observed)
            .zip(&self.expected)
            .map(|((probe, denied), expected)| ProbeResult {
                probe: probe.raw.clone(),
                unexpected_denied: denied.difference(expected).cloned().collect(),
                unexpected_allowed: expected.difference(&denied).cloned().collect(),
                denied: denied.into_iter().collect(),
            })
            .collect();
        Outcome {
            name: self.name.clone(),
            passed: results
                .iter()
                .all(|r| r.unexpected_denied.is_empty() && r.unexpected_allowed.is_empty()),
            results,
        }
    }
}

fn probed(src: &Endpoint, dst: &Endpoint) -> bool {
    use EndpointKind::*;
    !matches!(
        (&src.kind, &dst.kind),
        (External, External) | (Node(_), Node(_)) | (Node(_), External) | (External, Node(_))
    )
}

/// The result of one probe of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    pub probe: serde_json::Value,
    /// Sorted.
    pub denied: Vec<String>,
    #[serde(skip)]
    pub unexpected_denied: Vec<String>,
    #[serde(skip)]
    pub unexpected_allowed: Vec<String>,
}

/// The result of a scenario, in the contract's JSON shape.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub results: Vec<ProbeResult>,
}

impl Outcome {
    /// The plain-text lines for this scenario: `PASS name` or `FAIL name` with the
    /// differing pairs under it.
    pub fn plain(&self) -> String {
        let mut out = format!(
            "{} {}\n",
            if self.passed { "PASS" } else { "FAIL" },
            self.name
        );
        for r in &self.results {
            for pair in &r.unexpected_denied {
                out.push_str(&format!(
                    "    {}: {pair} denied, expected allowed\n",
                    r.probe
                ));
            }
            for pair in &r.unexpected_allowed {
                out.push_str(&format!(
                    "    {}: {pair} allowed, expected denied\n",
                    r.probe
                ));
            }
        }
        out
    }
}

/// The final line of a plain run.
pub fn summary_line(outcomes: &[Outcome]) -> String {
    let passed = outcomes.iter().filter(|o| o.passed).count();
    format!("{passed} passed, {} failed", outcomes.len() - passed)
}

fn build(raw: RawScenario) -> Result<Scenario, ScenarioError> {
    if raw.name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    let namespaces: Vec<Namespace> = raw
        .namespaces
        .into_iter()
        .map(|(name, labels)| Namespace {
            name,
            labels: labels.unwrap_or_default(),
        })
        .collect();
    let ports = build_ports(&raw.ports)?;
    let nodes = build_nodes(raw.nodes.as_deref(), &raw.pods)?;
    let pods = build_pods(&raw.pods, &namespaces, &nodes, &ports)?;
    check_addresses(&pods, &nodes, &raw.externals)?;
    let endpoints = build_endpoints(&pods, &nodes, &raw.externals)?;
    let probes = raw
        .probes
        .iter()
        .enumerate()
        .map(|(i, p)| build_probe(i, p, &ports))
        .collect::<Result<Vec<_>, _>>()?;
    let expected = build_expected(&raw.expected, &probes, &endpoints, &ports)?;
    Ok(Scenario {
        name: raw.name,
        description: raw.description,
        source: raw.source,
        namespaces,
        nodes,
        pods,
        ports,
        endpoints,
        policies: raw.policies.unwrap_or_default(),
        probes,
        expected,
    })
}

fn build_ports(raw: &[RawPort]) -> Result<Vec<ContainerPort>, ScenarioError> {
    let mut seen = BTreeSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.port == 0 {
                return Err(invalid(format!("ports[{i}].port"), "must be 1..=65535"));
            }
            if p.protocol == Protocol::Icmp {
                return Err(invalid(format!("ports[{i}].protocol"), "ICMP has no ports"));
            }
            if let Some(name) = &p.name {
                if !seen.insert(name.clone()) {
                    return Err(invalid(
                        format!("ports[{i}].name"),
                        format!("duplicate name {name:?}"),
                    ));
                }
            }
            Ok(ContainerPort {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol,
            })
        })
        .collect()
}

fn build_nodes(raw: Option<&[RawNode]>, pods: &[RawPod]) -> Result<Vec<Node>, ScenarioError> {
    let Some(raw) = raw else {
        // Default: the nodes named by pods, bare (not endpoints).
        let names: BTreeSet<&String> = pods.iter().filter_map(|p| p.node.as_ref()).collect();
        return Ok(names
            .into_iter()
            .map(|name| Node {
                name: name.clone(),
                labels: Labels::new(),
                ips: Vec::new(),
            })
            .collect());
    };
    let mut seen = BTreeSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, n)| {
            let node = match n {
                RawNode::Name(name) => Node {
                    name: name.clone(),
                    labels: Labels::new(),
                    ips: Vec::new(),
                },
                RawNode::Full(f) => Node {
                    name: f.name.clone(),
                    labels: f.labels.clone(),
                    ips: f.ips.clone().unwrap_or_default(),
                },
            };
            if !seen.insert(node.name.clone()) {
                return Err(invalid(
                    format!("nodes[{i}]"),
                    format!("duplicate node {}", node.name),
                ));
            }
            check_one_per_family(&node.ips, &format!("nodes[{i}].ips"))?;
            Ok(node)
        })
        .collect()
}

fn check_one_per_family(ips: &[IpAddr], field: &str) -> Result<(), ScenarioError> {
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    if v4 > 1 || ips.len() - v4 > 1 {
        return Err(invalid(field, "at most one address per family"));
    }
    Ok(())
}

fn build_pods(
    raw: &[RawPod],
    namespaces: &[Namespace],
    nodes: &[Node],
    ports: &[ContainerPort],
) -> Result<Vec<Pod>, ScenarioError> {
    let mut seen = BTreeSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, p)| {
            let field = |f: &str| format!("pods[{i}] ({}/{}).{f}", p.ns, p.name);
            if !seen.insert((p.ns.clone(), p.name.clone())) {
                return Err(invalid(field("name"), "duplicate pod"));
            }
            if !namespaces.iter().any(|n| n.name == p.ns) {
                return Err(invalid(
                    field("ns"),
                    format!("namespace {} is not in `namespaces`", p.ns),
                ));
            }
            let node = match &p.node {
                Some(name) => Some(nodes.iter().find(|n| &n.name == name).ok_or_else(|| {
                    invalid(field("node"), format!("node {name} is not in `nodes`"))
                })?),
                None => None,
            };
            let ips = match (p.host_network, &p.ip, &p.ips) {
                (true, None, None) => {
                    if node.is_none_or(|n| n.ips.is_empty()) {
                        return Err(invalid(
                            field("hostNetwork"),
                            "a host-network pod's node must be given with `ips`",
                        ));
                    }
                    Vec::new()
                }
                (true, _, _) => {
                    return Err(invalid(
                        field("ip"),
                        "a host-network pod has no address of its own",
                    ))
                }
                (false, Some(ip), None) => vec![*ip],
                (false, None, Some(ips)) if !ips.is_empty() => {
                    check_one_per_family(ips, &field("ips"))?;
                    ips.clone()
                }
                _ => {
                    return Err(invalid(
                        field("ip"),
                        "exactly one of `ip` or `ips` is required",
                    ))
                }
            };
            Ok(Pod {
                namespace: p.ns.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                ips,
                node: p.node.clone(),
                terminating: false,
                created: None,
                host_network: p.host_network,
                ports: if p.host_network {
                    Vec::new()
                } else {
                    ports.to_vec()
                },
            })
        })
        .collect()
}

fn pod_cidrs() -> [IpNet; 2] {
    [
        IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default()),
        IpNet::V6(
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8)
                .unwrap_or_default(),
        ),
    ]
}

fn check_addresses(
    pods: &[Pod],
    nodes: &[Node],
    externals: &[RawExternal],
) -> Result<(), ScenarioError> {
    let cidrs = pod_cidrs();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut claim = |ip: IpAddr, who: String| match seen.insert(ip, who.clone()) {
        Some(other) => Err(invalid(
            who,
            format!("address {ip} is also used by {other}"),
        )),
        None => Ok(()),
    };
    for pod in pods {
        for ip in &pod.ips {
            if !cidrs.iter().any(|c| c.contains(ip)) {
                return Err(invalid(
                    format!("pods ({}/{}).ip", pod.namespace, pod.name),
                    format!("{ip} is outside the pod ranges 10.0.0.0/8 and fd00::/8"),
                ));
            }
            claim(*ip, format!("pod {}/{}", pod.namespace, pod.name))?;
        }
    }
    for node in nodes {
        for ip in &node.ips {
            claim(*ip, format!("node {}", node.name))?;
        }
    }
    for ext in externals {
        if cidrs.iter().any(|c| c.contains(&ext.ip)) {
            return Err(invalid(
                format!("externals ({}).ip", ext.name),
                format!("{} is inside a pod range (10.0.0.0/8, fd00::/8)", ext.ip),
            ));
        }
        claim(ext.ip, format!("external {}", ext.name))?;
    }
    Ok(())
}

fn build_endpoints(
    pods: &[Pod],
    nodes: &[Node],
    externals: &[RawExternal],
) -> Result<Vec<Endpoint>, ScenarioError> {
    let mut endpoints = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let ips = if pod.host_network {
            nodes
                .iter()
                .find(|n| Some(&n.name) == pod.node.as_ref())
                .map(|n| n.ips.clone())
                .unwrap_or_default()
        } else {
            pod.ips.clone()
        };
        endpoints.push(Endpoint {
            name: format!("{}/{}", pod.namespace, pod.name),
            kind: EndpointKind::Pod(i),
            ips,
        });
    }
    for (i, node) in nodes.iter().enumerate().filter(|(_, n)| !n.ips.is_empty()) {
        endpoints.push(Endpoint {
            name: format!("node:{}", node.name),
            kind: EndpointKind::Node(i),
            ips: node.ips.clone(),
        });
    }
    let mut seen = BTreeSet::new();
    for ext in externals {
        if !seen.insert(&ext.name) {
            return Err(invalid(
                format!("externals ({})", ext.name),
                "duplicate name",
            ));
        }
        endpoints.push(Endpoint {
            name: format!("ext:{}", ext.name),
            kind: EndpointKind::External,
            ips: vec![ext.ip],
        });
    }
    Ok(endpoints)
}

fn build_probe(
    i: usize,
    raw: &serde_json::Value,
    ports: &[ContainerPort],
) -> Result<Probe, ScenarioError> {
    let p: RawProbe = serde_json::from_value(raw.clone())
        .map_err(|e| invalid(format!("probes[{i}]"), e.to_string()))?;
    let (port, protocol) = match (&p.port, &p.port_name) {
        (Some(0), None) => return Err(invalid(format!("probes[{i}].port"), "must be 1..=65535")),
        (Some(port), None) => (*port, p.protocol),
        (None, Some(name)) => {
            let cp = ports
                .iter()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| {
                    invalid(
                        format!("probes[{i}].portName"),
                        format!("no port named {name:?} in `ports`"),
                    )
                })?;
            if cp.protocol != p.protocol {
                return Err(invalid(
                    format!("probes[{i}].protocol"),
                    format!("port {name:?} is {}, not {}", cp.protocol, p.protocol),
                ));
            }
            (cp.port, cp.protocol)
        }
        _ => {
            return Err(invalid(
                format!("probes[{i}]"),
                "exactly one of `port` or `portName` is required",
            ))
        }
    };
    if protocol == Protocol::Icmp {
        return Err(invalid(
            format!("probes[{i}].protocol"),
            "probes use TCP, UDP or SCTP",
        ));
    }
    Ok(Probe {
        raw: raw.clone(),
        port,
        protocol,
        family: p.family,
        port_name: p.port_name,
    })
}

fn build_expected(
    raw: &[RawExpectation],
    probes: &[Probe],
    endpoints: &[Endpoint],
    ports: &[ContainerPort],
) -> Result<Vec<BTreeSet<String>>, ScenarioError> {
    let names: BTreeSet<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    let mut expected = vec![BTreeSet::new(); probes.len()];
    for (i, exp) in raw.iter().enumerate() {
        let field = format!("expected[{i}]");
        // The probe as written, or failing that the same port, protocol and family.
        let index = probes
            .iter()
            .position(|p| p.raw == exp.probe)
            .or_else(|| {
                let parsed = build_probe(i, &exp.probe, ports).ok()?;
                probes.iter().position(|p| {
                    (p.port, p.protocol, p.family) == (parsed.port, parsed.protocol, parsed.family)
                })
            })
            .ok_or_else(|| invalid(format!("{field}.probe"), "matches no entry of `probes`"))?;
        for pair in &exp.denied {
            let ok = pair
                .split_once("->")
                .is_some_and(|(s, d)| names.contains(s) && names.contains(d) && s != d);
            if !ok {
                return Err(invalid(
                    format!("{field}.denied"),
                    format!("{pair:?} is not a pair of endpoints (SRC->DST)"),
                ));
            }
            if !expected[index].insert(pair.clone()) {
                return Err(invalid(
                    format!("{field}.denied"),
                    format!("{pair} listed twice"),
                ));
            }
        }
    }
    Ok(expected)
}
