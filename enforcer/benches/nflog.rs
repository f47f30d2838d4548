//! CPU of the audit capture: new connections per second through a logging rule,
//! and the CPU time the NFLOG reader thread (decode, attribution, aggregation,
//! spool) spends per second of it. Target: 10,000 logged connections/s under half
//! a core.
//!
//! A node namespace with the enforcer's rules (the server pod isolated for
//! ingress, one NetworkPolicy accepting the client: each new connection is logged
//! once, by that rule's log chain) and the capture bound to its NFLOG group; a
//! client pod sends paced UDP datagrams over a raw socket, each one a new
//! connection to conntrack (a source or destination port not used before in the
//! run). Two shapes:
//!
//! - **service**: every connection to one port from a new source port (as clients
//!   of a Service): aggregated into few records;
//! - **distinct**: every connection to a new destination port: every connection
//!   its own record (the aggregation's worst case, the spool writing them all).
//!
//! The reader's CPU is its thread's utime + stime from `/proc/self/task/TID/stat`
//! over the run. `RATE` (default 10000 connections/s), `RUN_SECS` (default 5).
//! `cargo bench -p palisade-enforcer --bench nflog` (root; not run in CI).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use palisade_enforcer::audit::{AuditConfig, Capture};
use palisade_enforcer::{ApplyOptions, Backend, Enforcer, NodeRuleSet};
use palisade_policy::model::{Action, Family, PolicyKind};

const CLIENT_IP: &str = "198.18.9.10";
const SERVER_IP: &str = "198.18.9.11";

fn state() -> NodeRuleSet {
    mk_rule_set(
        1,
        &[LAB_NODE_IP],
        vec![np_tier()],
        vec![mk_set(
            "client",
            Family::IPv4,
            &[&format!("{CLIENT_IP}/32")],
            &[],
        )],
        vec![mk_policy(
            PolicyKind::NetworkPolicy,
            Some("bench"),
            "server-from-client",
            0,
            vec![mk_rule(0, Action::Accept, vec![from_sets(&[0])])],
            vec![],
        )],
        vec![mk_pod(
            "bench",
            "server",
            &[SERVER_IP],
            vec![tp(0, &[0])],
            vec![],
        )],
    )
}

/// An IPv4/UDP datagram (UDP checksum 0: none, allowed over IPv4).
fn datagram(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&8u16.to_be_bytes());
    p
}

fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket(2), checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn send(fd: &OwnedFd, packet: &[u8], dst: Ipv4Addr) {
    // SAFETY: a zeroed sockaddr_in with family and address set is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    // SAFETY: packet and addr are valid for the given lengths.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
    }
}

/// CPU ticks (utime + stime) of this process's thread named `name`.
fn thread_ticks(name: &str) -> Option<u64> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the command (which is in parentheses): state is field 3,
        // utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

struct Figures {
    sent_per_sec: f64,
    records: u64,
    batches: u64,
    reader_cores: f64,
    lost: u64,
}

fn run(lab: &Lab, rate: u64, secs: u64, distinct: bool, tag: &str) -> Figures {
    lab.node.exec("conntrack -F 2>/dev/null || true");
    let dir = std::env::temp_dir().join(format!("pal-nflog-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = AuditConfig {
        group: 100,
        window: Duration::from_secs(1),
        spool_dir: dir.clone(),
        spool_max_bytes: 1 << 30,
        keep_previous: Duration::from_secs(30),
    };
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    let emit: palisade_enforcer::stream::Emit = Arc::new(|_| {});
    let capture = lab.node.run(|| {
        let capture = Capture::start(&config, "bench", emit).expect("capture");
        enforcer
            .apply_attributed(&state(), &capture.attribution)
            .expect("apply");
        capture
    });
    let ticks_per_sec = 100.0; // USER_HZ
    let before = thread_ticks("nflog-reader").expect("reader thread");
    let t0 = Instant::now();
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (
        CLIENT_IP.parse().expect("ip"),
        SERVER_IP.parse().expect("ip"),
    );
    let total = rate * secs;
    let sent = lab.endpoints[0].0.run(|| {
        let fd = raw_socket();
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1);
        let mut sent = 0u64;
        // Bounded: `total` datagrams, paced per 10 ms.
        while sent < total {
            let due = t0 + tick * (sent / per_tick) as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for _ in 0..per_tick.min(total - sent) {
                // A tuple not used before in the run: a new conntrack entry.
                let n = sent;
                let (sport, dport) = if distinct {
                    (40000 + (n / 60000) as u16, 1024 + (n % 60000) as u16)
                } else {
                    (1024 + (n % 60000) as u16, 9000 + (n / 60000) as u16)
                };
                send(&fd, &datagram(src, dst, sport, dport), dst);
                sent += 1;
            }
        }
        sent
    });
    let elapsed = t0.elapsed().as_secs_f64();
    // The kernel's queue flush (50 ms) and the last window.
    std::thread::sleep(Duration::from_millis(1500));
    let after = thread_ticks("nflog-reader").expect("reader thread");
    let busy = (after - before) as f64 / ticks_per_sec;
    let c = capture.counters();
    capture.stop();
    lab.node
        .run(|| palisade_enforcer::cleanup().expect("cleanup"));
    let _ = std::fs::remove_dir_all(&dir);
    Figures {
        sent_per_sec: sent as f64 / elapsed,
        records: c.records,
        batches: c.batches,
        // Over the traffic's duration plus the drain after it.
        reader_cores: busy / (elapsed + 1.5),
        lost: c.overrun_lost + c.malformed + c.unattributed,
    }
}

fn main() {
    if !can_netns("nflog bench") {
        return;
    }
    let rate: u64 = std::env::var("RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let secs: u64 = std::env::var("RUN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let lab = Lab::new(&[CLIENT_IP, SERVER_IP]);
    // Room for every connection of a run in the conntrack table.
    lab.node
        .exec("sysctl -qw net.netfilter.nf_conntrack_max=1048576 2>/dev/null || true");
    println!("NFLOG capture: {rate} new connections/s for {secs} s, reader CPU");
    for (distinct, label) in [(false, "service "), (true, "distinct")] {
        let f = run(&lab, rate, secs, distinct, label.trim());
        println!(
            "  {label}: sent {:>7.0}/s, logged {:>6} ({:.1}%), batches {:>3}, lost {}, reader {:.3} cores ({:.1} us per connection)",
            f.sent_per_sec,
            f.records,
            100.0 * f.records as f64 / (rate * secs) as f64,
            f.batches,
            f.lost,
            f.reader_cores,
            f.reader_cores * 1e6 / f.sent_per_sec,
        );
    }
}
