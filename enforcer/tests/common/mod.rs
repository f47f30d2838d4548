//! Builders for compiled rule sets (`mk_*`), throwaway network namespaces
//! ([`Netns`]) and a node lab built in them ([`Lab`]: pod namespaces behind veths
//! with /32 routes, as the e2e lab builds them), with echo servers and traffic
//! monitors ([`Echoes`]).
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use palisade_enforcer::{ApplyOptions, Backend, Enforcer};
use palisade_policy::compiled::{
    AddressSet, CompiledPolicy, CompiledRule, CompiledTier, LocalPod, NodeRuleSet, PortRange,
    RuleMatch, TierPolicies, FORMAT_VERSION,
};
use palisade_policy::model::{Action, DefaultAction, Family, PolicyId, PolicyKind, Protocol};

pub fn mk_set(name: &str, family: Family, entries: &[&str], except: &[&str]) -> AddressSet {
    let parse = |s: &&str| s.parse::<IpNet>().expect("test net");
    AddressSet {
        name: name.to_string(),
        family,
        entries: entries.iter().map(parse).collect(),
        except: except.iter().map(parse).collect(),
    }
}

pub fn mk_tier(name: &str, networkpolicy: bool, default_action: DefaultAction) -> CompiledTier {
    CompiledTier {
        name: name.to_string(),
        networkpolicy,
        default_action,
    }
}

pub fn admin() -> CompiledTier {
    mk_tier("admin", false, DefaultAction::Pass)
}
pub fn np_tier() -> CompiledTier {
    mk_tier("networkpolicy", true, DefaultAction::Pass)
}
pub fn baseline() -> CompiledTier {
    mk_tier("baseline", false, DefaultAction::Pass)
}

pub fn mk_policy(
    kind: PolicyKind,
    namespace: Option<&str>,
    name: &str,
    tier: usize,
    ingress: Vec<CompiledRule>,
    egress: Vec<CompiledRule>,
) -> CompiledPolicy {
    CompiledPolicy {
        id: PolicyId {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        },
        tier,
        ingress,
        egress,
        audit: None,
    }
}

pub fn mk_rule(index: usize, action: Action, matches: Vec<RuleMatch>) -> CompiledRule {
    CompiledRule {
        index,
        name: None,
        action,
        matches,
    }
}

pub fn mk_named_rule(
    index: usize,
    name: &str,
    action: Action,
    matches: Vec<RuleMatch>,
) -> CompiledRule {
    CompiledRule {
        name: Some(name.to_string()),
        ..mk_rule(index, action, matches)
    }
}

pub fn mk_match(
    peers: Option<Vec<usize>>,
    ports: Option<Vec<PortRange>>,
    local: Option<usize>,
) -> RuleMatch {
    RuleMatch {
        peers,
        ports,
        local,
    }
}

/// Any peer, any port.
pub fn any() -> RuleMatch {
    mk_match(None, None, None)
}

pub fn from_sets(sets: &[usize]) -> RuleMatch {
    mk_match(Some(sets.to_vec()), None, None)
}

pub fn range(protocol: Protocol, start: u16, end: u16) -> PortRange {
    PortRange {
        protocol,
        start,
        end,
    }
}

pub fn tcp(port: u16) -> PortRange {
    range(Protocol::Tcp, port, port)
}

pub fn udp(port: u16) -> PortRange {
    range(Protocol::Udp, port, port)
}

pub fn tp(tier: usize, policies: &[usize]) -> TierPolicies {
    TierPolicies {
        tier,
        policies: policies.to_vec(),
    }
}

pub fn mk_pod(
    namespace: &str,
    name: &str,
    ips: &[&str],
    ingress: Vec<TierPolicies>,
    egress: Vec<TierPolicies>,
) -> LocalPod {
    LocalPod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        ips: ips.iter().map(|s| s.parse().expect("test ip")).collect(),
        ingress,
        egress,
    }
}

pub fn mk_rule_set(
    version: u64,
    node_ips: &[&str],
    tiers: Vec<CompiledTier>,
    sets: Vec<AddressSet>,
    policies: Vec<CompiledPolicy>,
    pods: Vec<LocalPod>,
) -> NodeRuleSet {
    NodeRuleSet {
        format: FORMAT_VERSION,
        node: "node-a".to_string(),
        version,
        node_ips: node_ips
            .iter()
            .map(|s| s.parse().expect("test ip"))
            .collect(),
        tiers,
        sets,
        policies,
        pods,
        audit_default: None,
    }
}

/// True when we can create namespaces; otherwise prints why the test is skipped.
pub fn can_netns(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("SKIPPED {test}: needs root to create network namespaces (euid {euid})");
        return false;
    }
    true
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace created for one test, deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("palt-{tag}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff);
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs a shell command inside the namespace; returns (success, stdout+stderr).
    pub fn try_exec(&self, cmd: &str) -> (bool, String) {
        try_sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `f` on a thread that has entered the namespace (so every process it
    /// starts, and every socket it opens, lives there). Never runs `f` elsewhere.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("open netns");
                // SAFETY: setns on a valid namespace fd; it only affects this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {path} failed");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Like [`Netns::run`], on a detached thread: `f` runs inside the namespace
    /// while the caller goes on. Joining returns `f`'s result (or its panic).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; it only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path} failed");
            drop(file);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn try_sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn sh(cmd: &str) -> String {
    let (ok, text) = try_sh(cmd);
    assert!(ok, "`{cmd}` failed: {text}");
    text
}

/// A directory for one test's files (`<tmp>/palisade-<tag>-<pid>`, emptied
/// first), removed on drop (also on panic).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("palisade-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The enforcer binary these tests (and the benches that include this module) run.
pub const ENFORCER_BIN: &str = env!("CARGO_BIN_EXE_palisade-enforcer");

/// A `palisade-enforcer run` in a namespace; its JSON lines arrive on `rx`.
/// Killed on drop if it is still running (also on panic).
pub struct Agent {
    child: Child,
    /// Each line with the moment it was read (the benches time applies by it).
    rx: mpsc::Receiver<(Instant, serde_json::Value)>,
}

impl Agent {
    /// Starts `palisade-enforcer run <args> --state <state>` in `ns`. With
    /// `path_prefix`, that directory comes first in its `PATH` (tool wrappers).
    pub fn start(ns: &Netns, state: &Path, args: &[&str], path_prefix: Option<&Path>) -> Agent {
        let path = std::env::var("PATH").unwrap_or_default();
        let path = match path_prefix {
            Some(p) => format!("{}:{path}", p.display()),
            None => path,
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "env"])
            .arg(format!("PATH={path}"))
            .args([ENFORCER_BIN, "run"])
            .args(args)
            .arg("--state")
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn palisade-enforcer run");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // Ends with the enforcer's stdout, or when the agent is gone.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send((Instant::now(), v)).is_err() {
                        break;
                    }
                }
            }
        });
        Agent { child, rx }
    }

    /// Waits (at most 10 s) for the report of `version`; panics on an error
    /// report before it.
    pub fn applied(&self, version: u64) -> serde_json::Value {
        self.applied_at(version).1
    }

    /// [`Agent::applied`], with the moment its report was read.
    pub fn applied_at(&self, version: u64) -> (Instant, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok((t, v)) if v["applied_version"] == version => return (t, v),
                Ok((_, v)) if v.get("error").is_some() => panic!("enforcer error: {v}"),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("version {version} not applied within 10 s");
    }

    /// SIGTERM, then waits for the exit (at most 10 s).
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "enforcer did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Our rules (chains and hooks, both families, as `iptables-save` prints them)
/// and the lines of `ipset save` that start with one of `set_lines` (sorted), as
/// the kernel of the current thread's namespace shows them right now.
pub fn our_rules_and_sets_here(set_lines: &[&str]) -> (String, String) {
    let (_, rules) = try_sh(
        "(iptables-nft-save -t filter; ip6tables-nft-save -t filter) | grep -E '^-A .*PALISADE|^:PALISADE'",
    );
    let (_, sets) = try_sh("ipset save");
    let mut sets: Vec<String> = sets
        .lines()
        .filter(|l| set_lines.iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect();
    sets.sort();
    (rules, sets.join("\n"))
}

/// `palisade-enforcer cleanup` in `ns`: our rules and sets gone; panics on failure.
pub fn enforcer_cleanup(ns: &Netns) {
    sh(&format!("ip netns exec {} {ENFORCER_BIN} cleanup", ns.name));
}

/// Tiers 0 to 3: admin, a user tier `security` with defaultAction Deny, the
/// NetworkPolicy tier and baseline.
pub fn security_tiers() -> Vec<CompiledTier> {
    vec![
        admin(),
        mk_tier("security", false, DefaultAction::Deny),
        np_tier(),
        baseline(),
    ]
}

/// Admin tier (0): ingress from set 0 denied (rule `deny-blocked`), from set 1
/// passed on (`pass-monitoring`).
pub fn block_bad() -> CompiledPolicy {
    mk_policy(
        PolicyKind::ClusterNetworkPolicy,
        None,
        "block-bad",
        0,
        vec![
            mk_named_rule(0, "deny-blocked", Action::Deny, vec![from_sets(&[0])]),
            mk_named_rule(1, "pass-monitoring", Action::Pass, vec![from_sets(&[1])]),
        ],
        vec![],
    )
}

/// Tier 1 (a user tier): ingress from set 2 accepted.
pub fn trusted_only() -> CompiledPolicy {
    mk_policy(
        PolicyKind::TieredNetworkPolicy,
        None,
        "trusted-only",
        1,
        vec![mk_rule(0, Action::Accept, vec![from_sets(&[2])])],
        vec![],
    )
}

/// NetworkPolicy tier (2): shop/front accepts ingress from `peers` on `ports`.
pub fn shop_front(peers: Vec<usize>, ports: Vec<PortRange>) -> CompiledPolicy {
    mk_policy(
        PolicyKind::NetworkPolicy,
        Some("shop"),
        "front",
        2,
        vec![mk_rule(
            0,
            Action::Accept,
            vec![mk_match(Some(peers), Some(ports), None)],
        )],
        vec![],
    )
}

/// Pods shop/web-0 (at `web0_ips`; ingress: admin, security, networkpolicy) and
/// shop/web-1 (10.1.0.3; ingress: admin, networkpolicy), each policy `i` of tier
/// `i`; both with policy 3 of tier 3 for egress.
pub fn shop_pods(web0_ips: &[&str]) -> Vec<LocalPod> {
    vec![
        mk_pod(
            "shop",
            "web-0",
            web0_ips,
            vec![tp(0, &[0]), tp(1, &[1]), tp(2, &[2])],
            vec![tp(3, &[3])],
        ),
        mk_pod(
            "shop",
            "web-1",
            &["10.1.0.3"],
            vec![tp(0, &[0]), tp(2, &[2])],
            vec![tp(3, &[3])],
        ),
    ]
}

/// A small realistic state: two local pods, admin Deny/Pass, a user tier with
/// default Deny, NetworkPolicies, baseline egress deny, IPv4 and IPv6 sets.
/// `variant` changes policies and sets so that applies have something to remove.
pub fn sample_state(version: u64, variant: u8) -> NodeRuleSet {
    let mut tiers = security_tiers();
    let mut sets = vec![
        mk_set("blocked", Family::IPv4, &["10.66.0.0/16"], &[]),
        mk_set("monitoring", Family::IPv4, &["10.7.0.0/24"], &[]),
        mk_set(
            "trusted",
            Family::IPv4,
            &["10.5.0.0/16", "10.6.0.0/16"],
            &["10.5.5.0/24"],
        ),
        mk_set("frontend", Family::IPv4, &["10.1.0.0/24"], &[]),
        mk_set(
            "frontend6",
            Family::IPv6,
            &["fd00:1::/64", "::/0"],
            &["fd00:66::/32"],
        ),
    ];
    let mut policies = vec![
        block_bad(),
        trusted_only(),
        shop_front(vec![3, 4], vec![tcp(80), range(Protocol::Tcp, 8000, 8100)]),
        mk_policy(
            PolicyKind::BaselineAdminNetworkPolicy,
            None,
            "default",
            3,
            vec![],
            vec![mk_rule(
                0,
                Action::Deny,
                vec![mk_match(None, Some(vec![udp(53)]), None)],
            )],
        ),
    ];
    let mut pods = shop_pods(&["10.1.0.2", "fd00:1::2"]);
    if variant == 1 {
        // Drop the security tier and the trusted set, move web-1 to a new policy.
        tiers.remove(1);
        sets.remove(2);
        policies.remove(1);
        for p in &mut policies {
            if p.tier > 0 {
                p.tier -= 1;
            }
        }
        policies[1].ingress[0].matches[0].peers = Some(vec![2, 3]);
        sets.push(mk_set("new-peers", Family::IPv4, &["10.8.0.0/16"], &[]));
        policies.push(mk_policy(
            PolicyKind::NetworkPolicy,
            Some("shop"),
            "other",
            1,
            vec![mk_rule(0, Action::Accept, vec![from_sets(&[4])])],
            vec![],
        ));
        pods[0].ingress = vec![tp(0, &[0]), tp(1, &[1])];
        pods[0].egress = vec![tp(2, &[2])];
        pods[1].ingress = vec![tp(1, &[3])];
        pods[1].egress = vec![tp(2, &[2])];
    }
    mk_rule_set(version, &["192.0.2.1"], tiers, sets, policies, pods)
}

/// The node's own address in a [`Lab`] (on the node namespace's loopback).
pub const LAB_NODE_IP: &str = "198.19.255.1";
/// The pods' default gateway: link-local, answered by a static neighbour entry.
const LAB_GW: &str = "169.254.1.1";

/// A node namespace and endpoint namespaces (pods or outside hosts) routed
/// through it: one veth each, a /32 route on the node side, a default route via a
/// link-local gateway on the endpoint side. Every address is one the caller chose
/// (use 198.18.0.0/15, the benchmarking range); all of it goes with the namespaces
/// when the lab is dropped (also on panic).
pub struct Lab {
    pub node: Netns,
    /// (namespace, address) per endpoint, in the order given.
    pub endpoints: Vec<(Netns, String)>,
}

impl Lab {
    pub fn new(ips: &[&str]) -> Lab {
        let node = Netns::new("node");
        node.exec(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && ip addr add {LAB_NODE_IP}/32 dev lo"
        ));
        let mut endpoints = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let ep = Netns::new("ep");
            let veth = format!("pv{i}");
            let mac = format!("02:00:00:00:00:{:02x}", i + 1);
            node.exec(&format!(
                "ip link add {veth} address {mac} type veth peer name eth0 netns {} && ip link set {veth} up && ip route add {ip}/32 dev {veth}",
                ep.name
            ));
            ep.exec(&format!(
                "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && ip route add {LAB_GW} dev eth0 scope link && ip route add default via {LAB_GW} dev eth0 && ip neigh add {LAB_GW} lladdr {mac} dev eth0 nud permanent"
            ));
            endpoints.push((ep, ip.to_string()));
        }
        Lab { node, endpoints }
    }

    pub fn ip(&self, i: usize) -> &str {
        &self.endpoints[i].1
    }

    pub fn addr(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(i).parse().expect("ip"), port)
    }

    /// TCP echo servers on `ports` in every endpoint (one thread per connection,
    /// which ends with the connection). They live until the process ends (their
    /// namespaces, and so their sockets, go with the test).
    pub fn serve(&self, ports: &[u16]) {
        self.serve_tcp(ports, |mut s| {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }

    /// TCP servers on `ports` in every endpoint that push one byte every `every` to
    /// each client, unprompted (a download, a stream of events), for at most
    /// `limit` per connection or until the client goes away.
    pub fn serve_push(&self, ports: &[u16], every: Duration, limit: Duration) {
        self.serve_tcp(ports, move |mut s| {
            let start = Instant::now();
            let max = (limit.as_millis() / every.as_millis().max(1)) as usize;
            for _ in 0..max {
                if start.elapsed() >= limit || s.write_all(b"p").is_err() {
                    break;
                }
                std::thread::sleep(every);
            }
        });
    }

    /// Listens on `ports` in every endpoint and runs `handle` on a thread of its
    /// own for each connection accepted, until the process ends.
    fn serve_tcp(&self, ports: &[u16], handle: impl Fn(TcpStream) + Copy + Send + 'static) {
        for (ep, _) in &self.endpoints {
            let listeners: Vec<TcpListener> = ep.run(|| {
                ports
                    .iter()
                    .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("bind"))
                    .collect()
            });
            for l in listeners {
                std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        std::thread::spawn(move || handle(s));
                    }
                });
            }
        }
    }

    /// UDP echo servers on `ports` in every endpoint. Each answers at most 100,000
    /// datagrams and stops after a minute without any.
    pub fn serve_udp(&self, ports: &[u16]) {
        for (ep, _) in &self.endpoints {
            let sockets: Vec<UdpSocket> = ep.run(|| {
                ports
                    .iter()
                    .map(|p| UdpSocket::bind(("0.0.0.0", *p)).expect("bind udp"))
                    .collect()
            });
            for s in sockets {
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut buf = [0u8; 1500];
                    for _ in 0..100_000 {
                        let Ok((n, from)) = s.recv_from(&mut buf) else {
                            break;
                        };
                        let _ = s.send_to(&buf[..n], from);
                    }
                });
            }
        }
    }

    /// A new TCP connection from endpoint `from` to `to`:`port` (2 s to connect).
    pub fn connect(&self, from: usize, to: usize, port: u16) -> std::io::Result<TcpStream> {
        self.connect_timeout(from, to, port, Duration::from_secs(2))
    }

    pub fn connect_timeout(
        &self,
        from: usize,
        to: usize,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        let addr = self.addr(to, port);
        self.endpoints[from]
            .0
            .run(|| TcpStream::connect_timeout(&addr, timeout))
    }

    /// A UDP socket of endpoint `from`, connected to `to`:`port` (one 5-tuple).
    pub fn udp(&self, from: usize, to: usize, port: u16) -> UdpSocket {
        let addr = self.addr(to, port);
        self.endpoints[from].0.run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind udp client");
            s.connect(addr).expect("connect udp");
            s
        })
    }
}

/// An enforcer on the nft backend; `reject`, `revoke` as given, the rest of the
/// options their defaults.
pub fn nft_enforcer(reject: bool, revoke: bool) -> Enforcer {
    Enforcer::with_backend(
        Backend::Nft,
        ApplyOptions {
            reject,
            revoke,
            ..ApplyOptions::default()
        },
    )
}

/// An IPv4 set of single hosts (each address as a /32).
pub fn host_set<S: AsRef<str>>(name: &str, ips: &[S]) -> AddressSet {
    let nets: Vec<String> = ips.iter().map(|i| format!("{}/32", i.as_ref())).collect();
    let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
    mk_set(name, Family::IPv4, &refs, &[])
}

/// For a [`Lab`]: pod ns/b (at `b`) accepts `a` on `ports` (one NetworkPolicy,
/// ns/b-from-a, its peers in set `a`); nothing else is isolated.
pub fn b_accepts_a(version: u64, a: &str, b: &str, ports: Vec<PortRange>) -> NodeRuleSet {
    mk_rule_set(
        version,
        &[LAB_NODE_IP],
        vec![np_tier()],
        vec![host_set("a", &[a])],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "b-from-a",
            0,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![0]), Some(ports), None)],
            )],
            vec![],
        )],
        vec![mk_pod("ns", "b", &[b], vec![tp(0, &[0])], vec![])],
    )
}

/// A long-lived flow watched from its client side, on its own thread: every
/// `every` it sends one byte (TCP echo, UDP echo) or just listens (TCP push), and
/// records when each answer arrives. Bounded by `limit` and by [`Echoes::stop`]
/// (also on drop).
pub struct Echoes {
    stop: Arc<AtomicBool>,
    times: Arc<Mutex<Vec<Instant>>>,
    handle: Mutex<Option<JoinHandle<String>>>,
}

/// What a flow's client does each tick.
enum EchoKind {
    Tcp(TcpStream),
    Push(TcpStream),
    Udp(UdpSocket),
}

impl Echoes {
    /// Writes a byte every `every` on an echo connection; each byte back counts.
    pub fn tcp(stream: TcpStream, every: Duration, limit: Duration) -> Echoes {
        Self::start(EchoKind::Tcp(stream), every, limit)
    }

    /// Only reads: each byte the server pushes counts.
    pub fn push(stream: TcpStream, every: Duration, limit: Duration) -> Echoes {
        Self::start(EchoKind::Push(stream), every, limit)
    }

    /// Sends a datagram every `every` on a connected socket; each echo counts.
    pub fn udp(socket: UdpSocket, every: Duration, limit: Duration) -> Echoes {
        Self::start(EchoKind::Udp(socket), every, limit)
    }

    fn start(kind: EchoKind, every: Duration, limit: Duration) -> Echoes {
        let stop = Arc::new(AtomicBool::new(false));
        let times = Arc::new(Mutex::new(Vec::new()));
        let (stop2, times2) = (Arc::clone(&stop), Arc::clone(&times));
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut next = start;
            let mut buf = [0u8; 1500];
            let ticks = (limit.as_micros() / every.as_micros().max(1)) as usize + 1;
            for _ in 0..ticks {
                if stop2.load(Ordering::Relaxed) || start.elapsed() >= limit {
                    return "stopped".to_string();
                }
                let sent = match &kind {
                    EchoKind::Tcp(s) => (&*s).write_all(b"e"),
                    EchoKind::Udp(s) => s.send(b"e").map(|_| ()),
                    EchoKind::Push(_) => Ok(()),
                };
                if let Err(e) = sent {
                    // UDP: ICMP errors surface on a later send; keep going.
                    if !matches!(kind, EchoKind::Udp(_)) {
                        return format!("send failed: {e}");
                    }
                }
                next += every;
                // Read whatever comes back until the next tick.
                while let Some(left) = next.checked_duration_since(Instant::now()) {
                    if left.is_zero() {
                        break;
                    }
                    let got = match &kind {
                        EchoKind::Tcp(s) | EchoKind::Push(s) => {
                            let _ = s.set_read_timeout(Some(left));
                            (&*s).read(&mut buf)
                        }
                        EchoKind::Udp(s) => {
                            let _ = s.set_read_timeout(Some(left));
                            s.recv(&mut buf)
                        }
                    };
                    match got {
                        Ok(0) if !matches!(kind, EchoKind::Udp(_)) => {
                            return "closed by the peer".to_string()
                        }
                        Ok(n) => {
                            let now = Instant::now();
                            let answers = if matches!(kind, EchoKind::Udp(_)) {
                                1
                            } else {
                                n
                            };
                            let mut t = times2.lock().expect("lock");
                            t.extend(std::iter::repeat_n(now, answers));
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                                    | std::io::ErrorKind::ConnectionRefused
                            ) => {}
                        Err(e) => return format!("receive failed: {e}"),
                    }
                }
            }
            "limit reached".to_string()
        });
        Echoes {
            stop,
            times,
            handle: Mutex::new(Some(handle)),
        }
    }

    /// When each answer arrived.
    pub fn times(&self) -> Vec<Instant> {
        self.times.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.times.lock().expect("lock").len()
    }

    /// Answers that arrived after `t`.
    pub fn after(&self, t: Instant) -> usize {
        self.times().iter().filter(|&&x| x > t).count()
    }

    pub fn last(&self) -> Option<Instant> {
        self.times().last().copied()
    }

    /// The longest time without an answer between `from` and `to`.
    pub fn max_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for t in self.times().into_iter().filter(|&t| t > from && t <= to) {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap.max(to.saturating_duration_since(prev))
    }

    /// Stops the client; returns why its loop ended (`stopped` when it was still
    /// running; empty when asked before).
    pub fn stop(&self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.lock().expect("lock").take();
        handle
            .map(|h| h.join().unwrap_or_else(|_| "panicked".to_string()))
            .unwrap_or_default()
    }
}

impl Drop for Echoes {
    fn drop(&mut self) {
        self.stop();
    }
}
