//! The lab's wiring: nodes, pods and externals as network namespaces. No policy
//! knowledge here, only addresses.
//!
//! ```text
//!   pod netns pal-R-p<k>          node netns pal-R-n<i>            fabric netns pal-R-fab
//!   eth0: pod /32, /128  ──veth── p<k> (no address)
//!   default via 169.254.1.1       pod /32 dev p<k> (static neigh)
//!           / fe80::1             fab0: node /32, /128 ──veth────── n<i>: node /32 dev n<i>
//!   (static neigh ee:ee:..)       default via 169.254.1.1 / fe80::1      pod /32 via node
//!                                                                 x<j>: external /32 dev x<j>
//!   external netns pal-R-x<j>  eth0: its address, default via 169.254.1.1 / fe80::1 ──┘
//! ```
//!
//! Every gateway side of a veth has the MAC `ee:ee:ee:ee:ee:ee` and no address (as
//! Calico does); every hop has static neighbour entries, so nothing depends on
//! ARP, NDP or DAD timing. The fabric is a plain router with routes only to the
//! lab's own addresses: nothing leaves it. Host-network pods live in their node's
//! namespace. Every namespace is named `pal-RUNID-...` and removed on drop.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::netns;

const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub nodes: Vec<NodeSpec>,
    pub pods: Vec<PodSpec>,
    pub externals: Vec<ExternalSpec>,
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    /// The node's own addresses (at most one per family); the missing families get
    /// generated addresses (172.31.0.0/16, fc00:31::/64), used only for routing.
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    /// Index into [`Spec::nodes`].
    pub node: usize,
    /// Its own addresses (empty for host-network pods).
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
}

#[derive(Clone, Debug)]
pub struct ExternalSpec {
    pub name: String,
    pub ip: IpAddr,
}

/// A node as built.
#[derive(Clone, Debug)]
pub struct LabNode {
    pub name: String,
    pub ns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A process the lab started inside one of its namespaces.
pub struct Spawned {
    pub pid: u32,
    pub stdout: Option<ChildStdout>,
}

/// A built lab. Dropping it kills what it started and removes its namespaces.
pub struct Lab {
    pub run_id: String,
    pub prefix: String,
    pub fabric: String,
    pub nodes: Vec<LabNode>,
    /// The namespace of each pod (its node's for a host-network pod).
    pub pods: Vec<String>,
    pub externals: Vec<String>,
    children: Mutex<Vec<Child>>,
}

/// A short run id, unique among the namespaces present.
fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut x = (nanos as u64) ^ ((std::process::id() as u64) << 20);
    for _ in 0..16 {
        // xorshift, to spread the bits of consecutive calls.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = format!("{:05x}", x & 0xf_ffff);
        if netns::list(&format!("{}{id}-", netns::PREFIX)).is_empty() {
            return id;
        }
    }
    format!("{:05x}", (nanos as u64 >> 8) & 0xf_ffff)
}

fn mac(kind: u8, index: usize) -> String {
    format!(
        "02:00:00:{kind:02x}:{:02x}:{:02x}",
        (index >> 8) & 0xff,
        index & 0xff
    )
}

fn host_len(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

impl Lab {
    /// Builds the namespaces, links, addresses and routes of `spec`.
    pub fn create(spec: &Spec) -> Result<Lab> {
        if spec.nodes.is_empty() && !spec.pods.is_empty() {
            bail!("pods need at least one node");
        }
        if spec.nodes.len() > 4000 || spec.pods.len() > 60000 || spec.externals.len() > 4000 {
            bail!("topology too large for the lab");
        }
        let run_id = new_run_id();
        let prefix = format!("{}{run_id}-", netns::PREFIX);
        crate::signals::register(&prefix);
        let mut lab = Lab {
            fabric: format!("{prefix}fab"),
            run_id,
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            externals: Vec::new(),
            children: Mutex::new(Vec::new()),
        };
        lab.build(spec)?;
        Ok(lab)
    }

    fn build(&mut self, spec: &Spec) -> Result<()> {
        let used: BTreeSet<IpAddr> = spec
            .nodes
            .iter()
            .flat_map(|n| n.ips.iter().copied())
            .chain(spec.pods.iter().flat_map(|p| p.ips.iter().copied()))
            .chain(spec.externals.iter().map(|x| x.ip))
            .collect();
        let mut v4_pool = (2u32..65000)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 0)) + i))
            .filter(|ip| !used.contains(&IpAddr::V4(*ip)));
        let mut v6_pool = (2u16..65000)
            .map(|i| Ipv6Addr::new(0xfc00, 0x31, 0, 0, 0, 0, 0, i))
            .filter(|ip| !used.contains(&IpAddr::V6(*ip)));
        for (i, n) in spec.nodes.iter().enumerate() {
            let v4 = n
                .ips
                .iter()
                .find_map(|ip| match ip {
                    IpAddr::V4(a) => Some(*a),
                    _ => None,
                })
                .or_else(|| v4_pool.next())
                .context("out of node addresses")?;
            let v6 = n
                .ips
                .iter()
                .find_map(|ip| match ip {
                    IpAddr::V6(a) => Some(*a),
                    _ => None,
                })
                .or_else(|| v6_pool.next())
                .context("out of node addresses")?;
            self.nodes.push(LabNode {
                name: n.name.clone(),
                ns: format!("{}n{i}", self.prefix),
                v4,
                v6,
            });
        }
        for (k, p) in spec.pods.iter().enumerate() {
            let node = self
                .nodes
                .get(p.node)
                .with_context(|| format!("pod {}: no node {}", p.name, p.node))?;
            self.pods.push(if p.host_network {
                node.ns.clone()
            } else {
                format!("{}p{k}", self.prefix)
            });
        }
        for j in 0..spec.externals.len() {
            self.externals.push(format!("{}x{j}", self.prefix));
        }

        // Namespaces first, with their sysctls (so `default` applies to every link).
        let router = [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ];
        let host = [
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ];
        let mut all_ns: Vec<(&str, bool)> = vec![(self.fabric.as_str(), true)];
        all_ns.extend(self.nodes.iter().map(|n| (n.ns.as_str(), true)));
        for (k, p) in spec.pods.iter().enumerate() {
            if !p.host_network {
                all_ns.push((self.pods[k].as_str(), false));
            }
        }
        all_ns.extend(self.externals.iter().map(|x| (x.as_str(), false)));
        for (ns, _) in &all_ns {
            netns::add(ns)?;
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = all_ns
                .iter()
                .map(|&(ns, is_router)| {
                    s.spawn(move || netns::sysctl(ns, if is_router { &router } else { &host }))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|_| bail!("sysctl thread panicked")))
        })?;

        // The fabric: one link per node and per external, routes to everything.
        let mut fab = vec!["link set lo up".to_string()];
        for (i, n) in self.nodes.iter().enumerate() {
            fab.push(format!(
                "link add n{i} address {GATEWAY_MAC} type veth peer name fab0 address {} netns {}",
                mac(2, i),
                n.ns
            ));
            fab.push(format!("link set n{i} up"));
            for ip in [IpAddr::V4(n.v4), IpAddr::V6(n.v6)] {
                fab.push(format!("route add {ip}/{} dev n{i}", host_len(&ip)));
                fab.push(format!(
                    "neigh replace {ip} lladdr {} dev n{i} nud permanent",
                    mac(2, i)
                ));
            }
        }
        for p in spec.pods.iter().filter(|p| !p.host_network) {
            let n = &self.nodes[p.node];
            for ip in &p.ips {
                let via = match ip {
                    IpAddr::V4(_) => IpAddr::V4(n.v4),
                    IpAddr::V6(_) => IpAddr::V6(n.v6),
                };
                fab.push(format!(
                    "route add {ip}/{} via {via} dev n{}",
                    host_len(ip),
                    p.node
                ));
            }
        }
        for (j, (x, ns)) in spec.externals.iter().zip(&self.externals).enumerate() {
            fab.push(format!(
                "link add x{j} address {GATEWAY_MAC} type veth peer name eth0 address {} netns {ns}",
                mac(3, j)
            ));
            fab.push(format!("link set x{j} up"));
            let ip = x.ip;
            fab.push(format!("route add {ip}/{} dev x{j}", host_len(&ip)));
            fab.push(format!(
                "neigh replace {ip} lladdr {} dev x{j} nud permanent",
                mac(3, j)
            ));
        }
        netns::batch(&self.fabric, &fab)?;

        // Nodes: uplink, default route to the fabric, one veth and route per pod.
        for (i, n) in self.nodes.iter().enumerate() {
            let mut cmds = vec![
                "link set lo up".to_string(),
                "link set dev fab0 up".to_string(),
                format!("addr add {}/32 dev fab0", n.v4),
                format!("addr add {}/128 dev fab0 nodad", n.v6),
            ];
            cmds.extend(gateway_routes("fab0"));
            for (k, p) in spec.pods.iter().enumerate() {
                if p.node != i || p.host_network {
                    continue;
                }
                cmds.push(format!(
                    "link add p{k} address {GATEWAY_MAC} type veth peer name eth0 address {} netns {}",
                    mac(1, k),
                    self.pods[k]
                ));
                cmds.push(format!("link set p{k} up"));
                for ip in &p.ips {
                    let src = match ip {
                        IpAddr::V4(_) => IpAddr::V4(n.v4),
                        IpAddr::V6(_) => IpAddr::V6(n.v6),
                    };
                    cmds.push(format!(
                        "route add {ip}/{} dev p{k} src {src}",
                        host_len(ip)
                    ));
                    cmds.push(format!(
                        "neigh replace {ip} lladdr {} dev p{k} nud permanent",
                        mac(1, k)
                    ));
                }
            }
            netns::batch(&n.ns, &cmds)?;
        }

        // Pods and externals: their addresses and a default route.
        let mut leaves: Vec<(&str, Vec<IpAddr>)> = Vec::new();
        for (k, p) in spec.pods.iter().enumerate() {
            if !p.host_network {
                leaves.push((&self.pods[k], p.ips.clone()));
            }
        }
        for (x, ns) in spec.externals.iter().zip(&self.externals) {
            leaves.push((ns, vec![x.ip]));
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = leaves
                .iter()
                .map(|(ns, ips)| {
                    s.spawn(move || {
                        let mut cmds =
                            vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
                        for ip in ips {
                            cmds.push(format!(
                                "addr add {ip}/{} dev eth0{}",
                                host_len(ip),
                                if ip.is_ipv6() { " nodad" } else { "" }
                            ));
                        }
                        cmds.extend(gateway_routes("eth0"));
                        netns::batch(ns, &cmds)
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|_| bail!("ip thread panicked")))
        })?;
        Ok(())
    }

    /// Starts `cmd` inside namespace `ns` (stdout piped, stderr inherited); the lab
    /// kills it on drop.
    pub fn spawn(&self, ns: &str, cmd: Command) -> Result<Spawned> {
        if !ns.starts_with(&self.prefix) {
            bail!("{ns} is not a namespace of this lab");
        }
        let mut cmd = netns::in_netns(cmd, ns)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {cmd:?} in {ns}"))?;
        let spawned = Spawned {
            pid: child.id(),
            stdout: child.stdout.take(),
        };
        self.children
            .lock()
            .map_err(|_| anyhow::anyhow!("lab lock poisoned"))?
            .push(child);
        Ok(spawned)
    }

    /// Stops one process this lab started: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, pid: u32, grace: std::time::Duration) {
        let Ok(mut children) = self.children.lock() else {
            return;
        };
        if let Some(pos) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(pos);
            stop_child(&mut child, grace);
        }
    }

    /// Whether a process this lab started is still running.
    pub fn running(&self, pid: u32) -> bool {
        let Ok(mut children) = self.children.lock() else {
            return false;
        };
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Every namespace of the lab with an endpoint or a server in it.
    pub fn namespaces(&self) -> Vec<String> {
        netns::list(&self.prefix)
    }

    /// Kills everything and removes the namespaces (also done on drop).
    pub fn teardown(&self) -> Result<()> {
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                // SAFETY: SIGTERM to a child we started and have not reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
            for mut child in children.drain(..) {
                stop_child(&mut child, std::time::Duration::from_millis(500));
            }
        }
        let (_, errors) = netns::delete_all(&self.prefix);
        crate::signals::unregister(&self.prefix);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn stop_child(child: &mut Child, grace: std::time::Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: SIGTERM to a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("e2e: removing lab {}: {e:#}", self.run_id);
        }
    }
}

fn gateway_routes(dev: &str) -> Vec<String> {
    vec![
        format!("neigh replace {GATEWAY_V4} lladdr {GATEWAY_MAC} dev {dev} nud permanent"),
        format!("route add 0.0.0.0/0 via {GATEWAY_V4} dev {dev} onlink"),
        format!("neigh replace {GATEWAY_V6} lladdr {GATEWAY_MAC} dev {dev} nud permanent"),
        format!("route add ::/0 via {GATEWAY_V6} dev {dev}"),
    ]
}

/// Reads one line from a child's stdout with a deadline (the read happens on a
/// helper thread; on timeout the thread is left to finish when the child dies).
pub fn read_line_timeout(
    reader: &mut Option<BufReader<ChildStdout>>,
    timeout: std::time::Duration,
) -> Result<Option<String>> {
    let Some(mut r) = reader.take() else {
        return Ok(None);
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let res = r.read_line(&mut line);
        let _ = tx.send((res, line, r));
    });
    match rx.recv_timeout(timeout) {
        Ok((Ok(0), _, _)) => Ok(None),
        Ok((Ok(_), line, r)) => {
            *reader = Some(r);
            Ok(Some(line))
        }
        Ok((Err(e), _, _)) => Err(e.into()),
        Err(_) => bail!("no output within {timeout:?}"),
    }
}
