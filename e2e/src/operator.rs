//! The lab as a cluster runs it: `palisade-operator` (manifest-directory source)
//! in a control-plane namespace of its own, and one `palisade-enforcer agent` per
//! node namespace following it over the TLS stream, as separate processes.
//!
//! ```text
//!   manifest dir (cluster.yaml, policies.yaml) ──► operator  (netns pal-R-x<j>, 172.31.255.254:9443)
//!                                                     ║ gRPC over TLS, static tokens
//!                       agent per node netns ◄════════╝ ──► iptables / ipset in the node netns
//! ```
//!
//! The lab writes the scenario's namespaces, nodes and pods as manifests, and its
//! policies as they are written in the scenario; a policy change is a rewrite of
//! `policies.yaml` (atomically: temporary dot-file, rename). It knows a change is
//! in force when every agent reports the digest of the rule set the engine
//! compiles for its node (`palisade_wire::digest`), so the lab also checks that the
//! operator compiles exactly what the engine does. Tokens are per node (the static
//! token file stands in for TokenReview); the CA and certificate are throwaway.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use palisade_policy::model::Cluster;
use palisade_wire::pki::{self, Pki};
use serde_json::{json, Value};

use crate::topology::Lab;

/// The name in the operator's certificate (and the agents' `--server-name`).
pub const OPERATOR_NAME: &str = "palisade-operator";
/// The stream's port.
pub const STREAM_PORT: u16 = 9443;
/// How long the operator and the agents may take to bring a change into force.
pub const REALISE_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds `palisade-operator`: `explicit`, else next to `exe` (or its parent).
pub fn find_binary(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("operator binary {} does not exist", p.display());
    }
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("palisade-operator");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "palisade-operator not found next to {}: build it with `cargo build -p palisade-operator` \
         (same profile) or pass --operator-bin PATH",
        exe.display()
    )
}

/// The control plane's address: 172.31.255.254 (below it when a scenario uses it).
pub fn control_plane_ip(used: &BTreeSet<IpAddr>) -> IpAddr {
    (0u8..200)
        .map(|i| IpAddr::V4(Ipv4Addr::new(172, 31, 255, 254 - i)))
        .find(|ip| !used.contains(ip))
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(172, 31, 254, 254)))
}

/// The cluster's namespaces, nodes and pods as Kubernetes manifests (JSON
/// documents, which are YAML, separated by `---`).
pub fn cluster_manifests(cluster: &Cluster) -> String {
    let mut docs: Vec<Value> = Vec::new();
    for ns in &cluster.namespaces {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns.name, "labels": ns.labels},
        }));
    }
    for node in &cluster.nodes {
        let addresses: Vec<Value> = node
            .ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": node.labels},
            "status": {"addresses": addresses},
        }));
    }
    for pod in &cluster.pods {
        let ports: Vec<Value> = pod
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
                if let Some(name) = &p.name {
                    port["name"] = json!(name);
                }
                port
            })
            .collect();
        let mut spec = json!({
            "containers": [{"name": "app", "image": "lab", "ports": ports}],
        });
        if let Some(node) = &pod.node {
            spec["nodeName"] = json!(node);
        }
        if pod.host_network {
            spec["hostNetwork"] = json!(true);
        }
        let ips: Vec<Value> = pod
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        let mut status = json!({"phase": "Running"});
        if let Some(first) = pod.ips.first() {
            status["podIP"] = json!(first.to_string());
            status["podIPs"] = json!(ips);
        }
        let mut metadata =
            json!({"name": pod.name, "namespace": pod.namespace, "labels": pod.labels});
        if let Some(created) = pod.created {
            metadata["creationTimestamp"] = json!(timestamp(created));
        }
        if pod.terminating {
            // Only its presence matters; a fixed time keeps the manifest stable.
            metadata["deletionTimestamp"] = json!(timestamp(pod.created.unwrap_or(0) + 1));
        }
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": status,
        }));
    }
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out
}

/// RFC 3339 text of `seconds` since the epoch, as the API server writes timestamps.
fn timestamp(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map_or_else(|_| "1970-01-01T00:00:00Z".to_string(), |t| t.to_string())
}

/// Writes `text` to `dir/name` atomically (the operator skips dot-files).
fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

fn token() -> String {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32);
    let mut out = String::new();
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// The operator of a lab and its files.
pub struct ControlPlane {
    /// Its namespace (an external host of the lab) and address.
    pub ns: String,
    pub ip: IpAddr,
    /// `cluster.yaml` and `policies.yaml` live here.
    pub manifests: PathBuf,
    pub pki: Pki,
    /// Per node, the file with its agent's token.
    pub tokens: BTreeMap<String, PathBuf>,
    pub log: PathBuf,
    pub pid: Option<u32>,
    binary: PathBuf,
    /// Poll interval of the manifest directory.
    pub poll_ms: u64,
    /// Where the operator writes its policy reports (YAML files, `--report-dir`).
    pub reports: PathBuf,
    /// The operator's audit database (SQLite, one per run: `--audit-database`).
    pub audit_db: PathBuf,
}

impl ControlPlane {
    /// Prepares the files (PKI, tokens, manifest folder) in `dir` for `nodes`.
    pub fn new(
        ns: &str,
        ip: IpAddr,
        dir: &Path,
        binary: &Path,
        nodes: &[String],
    ) -> Result<ControlPlane> {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)
            .with_context(|| format!("creating {}", manifests.display()))?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let ip_text = ip.to_string();
        let pki = pki::write(&pki_dir, &[OPERATOR_NAME, ip_text.as_str()])
            .context("writing the lab's throwaway CA and certificate")?;
        let mut tokens = BTreeMap::new();
        let mut lines = String::from("# TOKEN NODE (the lab's stand-in for TokenReview)\n");
        for (i, node) in nodes.iter().enumerate() {
            let t = format!("{}{i}", token());
            let path = dir.join(format!("token-{i}"));
            std::fs::write(&path, &t).with_context(|| format!("writing {}", path.display()))?;
            lines.push_str(&format!("{t} {node}\n"));
            tokens.insert(node.clone(), path);
        }
        std::fs::write(dir.join("tokens"), lines)?;
        Ok(ControlPlane {
            ns: ns.to_string(),
            ip,
            manifests,
            pki,
            tokens,
            log: dir.join("operator.log"),
            pid: None,
            binary: binary.to_path_buf(),
            poll_ms: 20,
            reports: dir.join("reports"),
            audit_db: dir.join("audit.db"),
        })
    }

    /// `https://IP:PORT` of the stream.
    pub fn url(&self) -> String {
        match self.ip {
            IpAddr::V4(a) => format!("https://{a}:{STREAM_PORT}"),
            IpAddr::V6(a) => format!("https://[{a}]:{STREAM_PORT}"),
        }
    }

    pub fn write_cluster(&self, cluster: &Cluster) -> Result<()> {
        write_atomic(&self.manifests, "cluster.yaml", &cluster_manifests(cluster))
    }

    /// Rewrites the policies (the scenario's `policies` text, as written).
    pub fn write_policies(&self, text: &str) -> Result<()> {
        write_atomic(&self.manifests, "policies.yaml", text)
    }

    /// Starts the operator (it serves as soon as it has read the folder).
    pub fn start(&mut self, lab: &Lab) -> Result<()> {
        let tokens = self
            .tokens
            .values()
            .next()
            .and_then(|p| p.parent())
            .map(|d| d.join("tokens"))
            .context("no node tokens")?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--source")
            .arg(format!("dir:{}", self.manifests.display()))
            .arg("--listen-health")
            .arg("127.0.0.1:9090")
            .arg("--poll-ms")
            .arg(self.poll_ms.to_string())
            .arg("--stream-listen")
            .arg(format!(
                "{}:{STREAM_PORT}",
                match self.ip {
                    IpAddr::V4(a) => a.to_string(),
                    IpAddr::V6(a) => format!("[{a}]"),
                }
            ))
            .arg("--stream-cert")
            .arg(&self.pki.cert)
            .arg("--stream-key")
            .arg(&self.pki.key)
            .arg("--static-tokens")
            .arg(&tokens)
            .arg("--report-dir")
            .arg(&self.reports)
            .arg("--report-interval-ms")
            .arg("200")
            .arg("--report-denied-every-ms")
            .arg("200")
            .arg("--audit-database")
            .arg(format!("sqlite://{}", self.audit_db.display()));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // A log file, not a terminal: no colours.
        cmd.env("NO_COLOR", "1");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        cmd.stderr(Stdio::from(log));
        let spawned = lab.spawn(&self.ns, cmd)?;
        // The operator writes nothing on stdout; the pipe is dropped.
        drop(spawned.stdout);
        self.pid = Some(spawned.pid);
        Ok(())
    }

    /// The policy report of `namespace` (`None`: the cluster report) as the operator last
    /// wrote it, if it has.
    pub fn report(&self, namespace: Option<&str>) -> Option<Value> {
        let name = match namespace {
            Some(ns) => format!("policyreport.{ns}.yaml"),
            None => "clusterpolicyreport.yaml".to_string(),
        };
        let path = self.reports.join(name);
        let text = std::fs::read_to_string(&path).ok()?;
        // The operator writes reports atomically: text that does not parse is a bug to show.
        match serde_yaml::from_str(&text) {
            Ok(report) => Some(report),
            Err(e) => {
                eprintln!("{}: not a report: {e}", path.display());
                None
            }
        }
    }

    /// Waits (bounded) until the report of `namespace` satisfies `pred`; returns it.
    pub fn wait_report(
        &self,
        namespace: Option<&str>,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.report(namespace);
            if let Some(r) = report.as_ref().filter(|r| pred(r)) {
                return Ok(r.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the policy report of {} did not reach the expected state within {timeout:?}; last: {}{}",
                    namespace.unwrap_or("the cluster"),
                    report.map_or("none".to_string(), |r| r.to_string()),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the operator at once (SIGKILL): no goodbye to the enforcers.
    pub fn kill(&mut self, lab: &Lab) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: SIGKILL to a child this lab started and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            lab.stop(pid, Duration::from_secs(2));
        }
    }

    /// Stops the operator (SIGTERM, then SIGKILL).
    pub fn stop(&mut self, lab: &Lab) {
        if let Some(pid) = self.pid.take() {
            lab.stop(pid, Duration::from_secs(3));
        }
    }

    pub fn running(&self, lab: &Lab) -> bool {
        self.pid.is_some_and(|p| lab.running(p))
    }

    /// The operator's log since it started (for checks and error messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(15);
        format!(
            "\n  operator log ({}):\n    {}",
            self.log.display(),
            lines[start..].join("\n    ")
        )
    }
}

/// How an agent is started.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// The node it claims.
    pub node: String,
    pub token_file: PathBuf,
    pub state_file: PathBuf,
    pub log: PathBuf,
}

/// A running `palisade-enforcer agent`.
pub struct Agent {
    pub spec: AgentSpec,
    pub ns: String,
    pub pid: u32,
    lines: Receiver<(Instant, String)>,
    /// The last version and digest it reported in force, and when that line came.
    pub version: u64,
    pub digest: Option<String>,
    pub realised_at: Option<Instant>,
    /// Its `{"error":...}` lines.
    pub errors: Vec<String>,
    /// Every line it printed (JSON values).
    pub seen: Vec<Value>,
}

impl Agent {
    /// Starts an agent in namespace `ns` for `spec.node`, following `cp`.
    pub fn start(
        lab: &Lab,
        binary: &Path,
        ns: &str,
        cp: &ControlPlane,
        spec: AgentSpec,
    ) -> Result<Agent> {
        Agent::start_with_env(lab, binary, ns, cp, spec, &[])
    }

    /// [`Agent::start`] with extra environment variables (a `PATH` with wrappers that make
    /// its iptables fail, for instance).
    pub fn start_with_env(
        lab: &Lab,
        binary: &Path,
        ns: &str,
        cp: &ControlPlane,
        spec: AgentSpec,
        env: &[(&str, std::ffi::OsString)],
    ) -> Result<Agent> {
        let mut cmd = Command::new(binary);
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd.arg("agent")
            .arg("--operator")
            .arg(cp.url())
            .arg("--node")
            .arg(&spec.node)
            .arg("--token-file")
            .arg(&spec.token_file)
            .arg("--ca-file")
            .arg(&cp.pki.ca)
            .arg("--server-name")
            .arg(OPERATOR_NAME)
            .arg("--state-file")
            .arg(&spec.state_file)
            .arg("--backoff-min-ms")
            .arg("50")
            .arg("--backoff-max-ms")
            .arg("500")
            .arg("--connect-timeout-ms")
            .arg("1000")
            .arg("--keepalive-ms")
            .arg("2000")
            // Decisions reach the operator's audit log within a fraction of a second.
            .arg("--audit-window-ms")
            .arg("300");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        cmd.stderr(Stdio::from(log));
        let spawned = lab.spawn(ns, cmd)?;
        let stdout = spawned.stdout.context("agent: no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Agent {
            spec,
            ns: ns.to_string(),
            pid: spawned.pid,
            lines: rx,
            version: 0,
            digest: None,
            realised_at: None,
            errors: Vec::new(),
            seen: Vec::new(),
        })
    }

    fn take(&mut self, at: Instant, line: &str) -> Option<Value> {
        let value: Value = serde_json::from_str(line.trim()).ok()?;
        if let Some(v) = value.get("realised").and_then(Value::as_u64) {
            self.version = v;
            self.realised_at = Some(at);
            self.digest = value
                .get("digest")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if let Some(v) = value.get("current_version").and_then(Value::as_u64) {
            self.version = v;
        }
        if value.get("error").is_some() {
            self.errors.push(line.trim().to_string());
        }
        self.seen.push(value.clone());
        Some(value)
    }

    /// Reads what the agent printed so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok((at, line)) = self.lines.try_recv() {
            self.take(at, &line);
        }
    }

    /// Waits until a line satisfies `pred` (lines read before are checked too).
    pub fn wait_for(
        &mut self,
        lab: &Lab,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        self.drain();
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok((at, line)) => {
                    if let Some(v) = self.take(at, &line) {
                        if pred(&v) {
                            return Ok(v);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !lab.running(self.pid) {
                        bail!(
                            "agent of node {} exited before {what}{}",
                            self.spec.node,
                            self.log_tail()
                        );
                    }
                    if left.is_zero() {
                        bail!(
                            "agent of node {} did not see {what} within {timeout:?}{}",
                            self.spec.node,
                            self.log_tail()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "agent of node {} closed its output before {what}{}",
                    self.spec.node,
                    self.log_tail()
                ),
            }
        }
    }

    /// Waits until the agent has the rule set with `digest` in force (the last
    /// rule set it reported realised, not any it had before).
    pub fn wait_digest(&mut self, lab: &Lab, digest: &str, timeout: Duration) -> Result<()> {
        let what = format!("the rules with digest {}", &digest[..12.min(digest.len())]);
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if self.digest.as_deref() == Some(digest) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok((at, line)) => {
                    self.take(at, &line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !lab.running(self.pid) {
                        bail!(
                            "agent of node {} exited before {what}{}",
                            self.spec.node,
                            self.log_tail()
                        );
                    }
                    if left.is_zero() {
                        bail!(
                            "agent of node {} did not realise {what} within {timeout:?} (it has {}){}",
                            self.spec.node,
                            self.digest.as_deref().map_or("none", |d| &d[..12.min(d.len())]),
                            self.log_tail()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "agent of node {} closed its output before {what}{}",
                    self.spec.node,
                    self.log_tail()
                ),
            }
        }
    }
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if !self.errors.is_empty() {
            let start = self.errors.len().saturating_sub(5);
            out = format!(
                "\n  agent said:\n    {}",
                self.errors[start..].join("\n    ")
            );
        }
        let text = std::fs::read_to_string(&self.spec.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(10);
        if !lines.is_empty() {
            out.push_str(&format!(
                "\n  agent log ({}):\n    {}",
                self.spec.log.display(),
                lines[start..].join("\n    ")
            ));
        }
        out
    }
}
