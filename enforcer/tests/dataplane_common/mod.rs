//! A dual-stack node lab for the dataplane tests (`dataplane_*.rs`): one node
//! namespace and pod namespaces behind veths, each pod with an IPv4 and/or an IPv6
//! address routed as /32 and /128 into the node (as Calico and kindnet do), name
//! servers in the pods, and small probing helpers (TCP, UDP, ICMP echo, raw IP).
//!
//! Every address is one the tests choose, inside the benchmarking ranges
//! (198.18.0.0/15 and 2001:2::/48), and lives only in namespaces the lab creates;
//! every namespace goes with the lab ([`common::Netns`] removes itself on drop, also
//! on panic). Servers and probes are bounded in count and time.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::common::Netns;

/// The node's own addresses (on its loopback).
pub const NODE_V4: &str = "198.19.255.1";
pub const NODE_V6: &str = "2001:2:ff::1";
/// The pods' IPv4 gateway: link-local, answered by a static neighbour entry.
const GW_V4: &str = "169.254.1.1";
/// The pods' IPv6 gateway: the node side of every veth has it.
const GW_V6: &str = "fe80::1";
const GW_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// How neighbours are found on the pod links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neigh {
    /// Static entries on both sides (nothing waits on ARP or NDP).
    Static,
    /// IPv6 by real neighbour discovery (the node side has `fe80::1/64`, the pods
    /// resolve it and the node resolves them); IPv4 still static.
    Ndp,
}

/// One pod of a [`DsLab`].
pub struct DsPod {
    pub ns: Netns,
    pub name: String,
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    /// The node side of its veth.
    pub veth: String,
}

impl DsPod {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.v6.expect("pod has an IPv6 address")
        } else {
            self.v4.expect("pod has an IPv4 address")
        }
    }

    pub fn ips(&self) -> Vec<String> {
        self.v4
            .iter()
            .chain(self.v6.iter())
            .map(|ip| ip.to_string())
            .collect()
    }
}

pub struct DsLab {
    pub node: Netns,
    pub pods: Vec<DsPod>,
}

/// `(name, IPv4, IPv6)` of a pod to build.
pub type PodAddrs<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

impl DsLab {
    pub fn new(pods: &[PodAddrs], neigh: Neigh) -> DsLab {
        let node = Netns::new("dsnode");
        node.exec(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
             net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 && \
             ip addr add {NODE_V4}/32 dev lo && ip addr add {NODE_V6}/128 dev lo nodad"
        ));
        let mut out = Vec::new();
        for (i, (name, v4, v6)) in pods.iter().enumerate() {
            let ns = Netns::new("dspod");
            ns.exec(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
            );
            let veth = format!("dp{i}");
            let pod_mac = format!("02:00:00:00:01:{:02x}", i + 1);
            let mut node_cmds = vec![format!(
                "ip link add {veth} address {GW_MAC} type veth peer name eth0 address {pod_mac} netns {}",
                ns.name
            )];
            node_cmds.push(format!("ip link set {veth} up"));
            let mut pod_cmds = vec!["ip link set eth0 up".to_string()];
            if let Some(v4) = v4 {
                node_cmds.push(format!("ip route add {v4}/32 dev {veth} src {NODE_V4}"));
                node_cmds.push(format!(
                    "ip neigh replace {v4} lladdr {pod_mac} dev {veth} nud permanent"
                ));
                pod_cmds.push(format!("ip addr add {v4}/32 dev eth0"));
                pod_cmds.push(format!("ip route add {GW_V4} dev eth0 scope link"));
                pod_cmds.push(format!("ip route add default via {GW_V4} dev eth0"));
                pod_cmds.push(format!(
                    "ip neigh replace {GW_V4} lladdr {GW_MAC} dev eth0 nud permanent"
                ));
            }
            if let Some(v6) = v6 {
                node_cmds.push(format!("ip addr add {GW_V6}/64 dev {veth} nodad"));
                node_cmds.push(format!("ip -6 route add {v6}/128 dev {veth} src {NODE_V6}"));
                pod_cmds.push(format!("ip addr add {v6}/128 dev eth0 nodad"));
                pod_cmds.push(format!("ip -6 route add default via {GW_V6} dev eth0"));
                if neigh == Neigh::Static {
                    node_cmds.push(format!(
                        "ip -6 neigh replace {v6} lladdr {pod_mac} dev {veth} nud permanent"
                    ));
                    pod_cmds.push(format!(
                        "ip -6 neigh replace {GW_V6} lladdr {GW_MAC} dev eth0 nud permanent"
                    ));
                }
            }
            node.exec(&node_cmds.join(" && "));
            ns.exec(&pod_cmds.join(" && "));
            out.push(DsPod {
                ns,
                name: name.to_string(),
                v4: v4.map(|s| s.parse().expect("test address")),
                v6: v6.map(|s| s.parse().expect("test address")),
                veth,
            });
        }
        DsLab { node, pods: out }
    }

    /// The same pods on a bridged node, as flannel's and kubenet's `cni0` or the
    /// bridge plugin build it: one bridge `br0` holding the `.1` of the pods' IPv4
    /// /24 and the `::1` of their IPv6 /64, the pods on-link with each other
    /// (ARP and real neighbour discovery between them, through the bridge) and
    /// `bridge-nf-call-iptables` / `-ip6tables` on, so bridged pod-to-pod packets
    /// cross FORWARD as kube-proxy requires on such nodes.
    pub fn bridged(pods: &[PodAddrs]) -> DsLab {
        let node = Netns::new("dsbr");
        let first_v4 = pods.iter().find_map(|p| p.1).expect("a pod with IPv4");
        let first_v6: std::net::Ipv6Addr = pods
            .iter()
            .find_map(|p| p.2)
            .expect("a pod with IPv6")
            .parse()
            .expect("test address");
        let gw4 = match first_v4.rsplit_once('.') {
            Some((net, _)) => format!("{net}.1"),
            None => panic!("bad test address {first_v4}"),
        };
        let seg = first_v6.segments();
        let gw6 = std::net::Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 1);
        node.exec(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && \
             ip addr add {NODE_V4}/32 dev lo && ip addr add {NODE_V6}/128 dev lo nodad && \
             ip link add br0 type bridge && ip link set br0 up && \
             ip addr add {gw4}/24 dev br0 && ip addr add {gw6}/64 dev br0 nodad && \
             sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1"
        ));
        let mut out = Vec::new();
        for (i, (name, v4, v6)) in pods.iter().enumerate() {
            let ns = Netns::new("dsbrpod");
            ns.exec("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
            let veth = format!("bp{i}");
            node.exec(&format!(
                "ip link add {veth} type veth peer name eth0 netns {} && \
                 ip link set {veth} master br0 up",
                ns.name
            ));
            let mut pod_cmds = vec!["ip link set eth0 up".to_string()];
            if let Some(v4) = v4 {
                pod_cmds.push(format!("ip addr add {v4}/24 dev eth0"));
                pod_cmds.push(format!("ip route add default via {gw4}"));
            }
            if let Some(v6) = v6 {
                pod_cmds.push(format!("ip addr add {v6}/64 dev eth0 nodad"));
                pod_cmds.push(format!("ip -6 route add default via {gw6}"));
            }
            ns.exec(&pod_cmds.join(" && "));
            out.push(DsPod {
                ns,
                name: name.to_string(),
                v4: v4.map(|s| s.parse().expect("test address")),
                v6: v6.map(|s| s.parse().expect("test address")),
                veth,
            });
        }
        DsLab { node, pods: out }
    }

    pub fn pod(&self, name: &str) -> &DsPod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// TCP servers on `port` in every pod (both families: one `[::]` socket) that
    /// greet each client with the pod's name and close. Each accepts at most
    /// 200,000 connections; they live until the test process ends (their sockets go
    /// with the namespaces).
    pub fn serve_names(&self, port: u16) {
        for pod in &self.pods {
            serve_name(&pod.ns, port, &pod.name);
        }
    }

    /// UDP echo servers on `port` in every pod, both families, bounded.
    pub fn serve_udp(&self, port: u16) {
        for pod in &self.pods {
            let s = pod
                .ns
                .run(|| UdpSocket::bind(("::", port)).expect("bind udp"));
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

/// A name server (see [`DsLab::serve_names`]) in any namespace.
pub fn serve_name(ns: &Netns, port: u16, name: &str) {
    let listener = ns.run(|| TcpListener::bind(("::", port)).expect("bind"));
    let greeting = format!("{name}\n").into_bytes();
    std::thread::spawn(move || {
        for mut s in listener.incoming().take(200_000).flatten() {
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(&greeting);
        }
    });
}

/// What a TCP probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Connected; the server's greeting (its pod name).
    Name(String),
    /// No answer within the timeout (dropped).
    TimedOut,
    /// Refused: a TCP reset (REJECT, or nothing listening).
    Refused,
    Other(String),
}

impl Seen {
    pub fn allowed(&self) -> bool {
        matches!(self, Seen::Name(_))
    }
}

/// One new TCP connection from namespace `from` to `to`; reads the greeting.
pub fn tcp_probe(from: &Netns, to: SocketAddr, timeout: Duration) -> Seen {
    from.run(|| tcp_probe_here(to, timeout))
}

/// [`tcp_probe`] from the namespace of the calling thread.
pub fn tcp_probe_here(to: SocketAddr, timeout: Duration) -> Seen {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(timeout));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.ends_with(b"\n") {
                            break;
                        }
                    }
                    Err(e) => return Seen::Other(format!("read: {e}")),
                }
            }
            Seen::Name(String::from_utf8_lossy(&buf).trim().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Seen::TimedOut,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Seen::Refused,
        Err(e) => Seen::Other(e.to_string()),
    }
}

/// One UDP exchange (a new socket) from `from` to `to`: whether the echo came back.
pub fn udp_probe(from: &Netns, to: SocketAddr, timeout: Duration) -> bool {
    from.run(|| {
        let bind: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(bind).expect("bind udp");
        s.connect(to).expect("connect udp");
        let _ = s.set_read_timeout(Some(timeout / 2));
        let mut buf = [0u8; 64];
        (0..2).any(|_| s.send(b"probe").is_ok() && s.recv(&mut buf).is_ok())
    })
}

/// An ICMP (or ICMPv6) datagram socket ("ping socket"): the kernel fills in the
/// identifier and the checksum; allowed for root once `ping_group_range` covers
/// group 0 in the namespace.
fn ping_socket(v6: bool) -> std::io::Result<OwnedFd> {
    let (domain, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Lets root open ping sockets in the namespace of the calling thread.
pub fn allow_ping_sockets(ns: &Netns) {
    ns.exec("sysctl -qw net.ipv4.ping_group_range=\"0 2147483647\"");
}

/// Sends up to `tries` ICMP echo requests from namespace `from` to `to`, each
/// waiting `each` for the reply: whether a reply came back.
pub fn ping(from: &Netns, to: IpAddr, tries: usize, each: Duration) -> bool {
    from.run(|| ping_here(to, tries, each))
}

pub fn ping_here(to: IpAddr, tries: usize, each: Duration) -> bool {
    let v6 = to.is_ipv6();
    let fd = ping_socket(v6).expect("ping socket (ping_group_range?)");
    let (addr, len) = sockaddr(to);
    let timeout = libc::timeval {
        tv_sec: each.as_secs() as libc::time_t,
        tv_usec: each.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a timeval of the right size on our socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let request_type: u8 = if v6 { 128 } else { 8 };
    let reply_type: u8 = if v6 { 129 } else { 0 };
    for seq in 0..tries as u16 {
        let mut pkt = [0u8; 16];
        pkt[0] = request_type;
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..16].copy_from_slice(b"palisade");
        // SAFETY: sendto(2) of a buffer we own to an address of the given length.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        };
        if sent < 0 {
            continue;
        }
        let deadline = Instant::now() + each;
        while Instant::now() < deadline {
            let mut buf = [0u8; 128];
            // SAFETY: recv(2) into a buffer we own, with its size.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                break;
            }
            if n >= 8 && buf[0] == reply_type && buf[6..8] == seq.to_be_bytes() {
                return true;
            }
        }
    }
    false
}

/// A raw IP socket of protocol `proto` (no ports) in the calling thread's namespace.
pub fn raw_socket(v6: bool, proto: i32) -> OwnedFd {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends one datagram of IP protocol `proto` from namespace `from` to `to`, and
/// whether a receiver in namespace `at` (a raw socket of the same protocol) got
/// it within `timeout`.
pub fn raw_ip_delivered(
    from: &Netns,
    at: &Netns,
    to: IpAddr,
    proto: i32,
    timeout: Duration,
) -> bool {
    let v6 = to.is_ipv6();
    let rx = at.run(|| raw_socket(v6, proto));
    let t = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt with a timeval of the right size on our socket.
    unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &t as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let marker = b"palisade-raw-probe";
    from.run(|| {
        let tx = raw_socket(v6, proto);
        let (addr, len) = sockaddr(to);
        // SAFETY: sendto(2) of a buffer we own to an address of the given length.
        let n = unsafe {
            libc::sendto(
                tx.as_raw_fd(),
                marker.as_ptr() as *const libc::c_void,
                marker.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        };
        assert!(n >= 0, "raw send: {}", std::io::Error::last_os_error());
    });
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut buf = [0u8; 256];
        // SAFETY: recv(2) into a buffer we own, with its size.
        let n = unsafe {
            libc::recv(
                rx.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n <= 0 {
            continue;
        }
        // IPv4 raw sockets deliver the IP header, IPv6 ones only the payload.
        if buf[..n as usize].windows(marker.len()).any(|w| w == marker) {
            return true;
        }
    }
    false
}

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
