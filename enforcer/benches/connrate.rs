//! New-connection rate through a node namespace, as `/work/shared/design/benchmarking.md`
//! says: connect, 64-byte request, 64-byte reply, close; 4 concurrent clients
//! (saturating both cores) and 1 serial client; the client and server pods in
//! their own namespaces, routed through the node namespace ([`Lab`]). Configurations,
//! interleaved over `ROUNDS` rounds (default 9, the order rotating each round),
//! each run `RUN_SECS` long (default 2), conntrack flushed in the node before each:
//!
//! - (i) no rules at all: no table in the node namespace, so no conntrack either;
//! - (ii) Palisade's chains installed with no policy (conntrack on): the baseline;
//! - (iii) 1,000 rules active: 100 local pods (client and server among them), 200
//!   NetworkPolicies × 5 ingress rules, each rule's peers a set of 5 addresses
//!   (5,000 peer addresses), 4 policies per pod; every pod isolated for egress by a
//!   baseline policy whose set holds all 5,000 peers and the pods. The client is
//!   allowed by the last rule of the last policy of the server (the server and the
//!   client are the last pods dispatched, so their SYN walks everything before);
//! - (iv) 1,000 non-matching linear rules after an `ESTABLISHED,RELATED` accept, no
//!   Palisade (the floor's "1,000 linear rules", for comparison).
//!
//! Reported: connections per second, min / median / max over the rounds, and the
//! ratios (iii)/(ii), (ii)/(i), (iv)/(ii) computed per round. Target: (iii)/(ii) ≥ 0.9.
//! Each run waits (up to 20 s) for the machine to be quiet first, and the runs that
//! started on a busy machine are counted: on a shared host, figures from a busy
//! period are noise.
//!
//! Audit logging (issue 14): `AUDIT=reader` (the default) renders the logging rules and
//! runs the NFLOG reader in the node, as the agent does; `AUDIT=rules` the rules without a
//! reader; `AUDIT=off` neither (`--no-audit`).
//!
//! `cargo bench -p palisade-enforcer --bench connrate` (root; not run in CI).
//! `ROUNDS=N`, `RUN_SECS=S`; `ONLY=i|ii|iii|iv` runs one configuration alone (to
//! profile it, e.g. under `perf record -a -g`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use palisade_enforcer::{render, ApplyOptions, Backend, Enforcer, NodeRuleSet, RenderOptions};
use palisade_policy::compiled::CompiledPolicy;
use palisade_policy::model::{Action, Family, PolicyKind};

const CLIENT_IP: &str = "198.18.0.10";
const SERVER_IP: &str = "198.18.0.11";
const PORT: u16 = 8004;
const MSG: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    NoRules,
    NoPolicy,
    Rules1000,
    Linear1000,
}

const CONFIGS: [Config; 4] = [
    Config::NoRules,
    Config::NoPolicy,
    Config::Rules1000,
    Config::Linear1000,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::NoRules => "(i)   no rules at all",
            Config::NoPolicy => "(ii)  Palisade, no policy",
            Config::Rules1000 => "(iii) Palisade, 1,000 rules",
            Config::Linear1000 => "(iv)  1,000 linear rules",
        }
    }
}

fn peer(i: usize) -> String {
    format!("10.128.{}.{}", i / 250, 1 + i % 250)
}

fn pod_ip(i: usize) -> String {
    match i {
        98 => CLIENT_IP.to_string(),
        99 => SERVER_IP.to_string(),
        _ => format!("10.64.{}.{}", i / 250, 1 + i % 250),
    }
}

/// The realistic node of (iii); see the module doc.
fn busy_state(version: u64) -> NodeRuleSet {
    // Pod i is selected by 4 policies, the last of them `last_policy(i)`.
    let selected = |i: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..4).map(|k| (i + 50 * k) % 200).collect();
        v.sort_unstable();
        v
    };
    let server_policies = selected(99);
    let allowing = *server_policies.last().expect("4 policies");
    let mut sets = Vec::new();
    let mut policies: Vec<CompiledPolicy> = Vec::new();
    for p in 0..200 {
        let mut ingress = Vec::new();
        for r in 0..5 {
            let set = sets.len();
            let mut entries: Vec<String> = (0..5)
                .map(|k| format!("{}/32", peer(set * 5 + k)))
                .collect();
            if p == allowing && r == 4 {
                // The client, in the last rule of the server's last policy.
                entries[4] = format!("{CLIENT_IP}/32");
            }
            let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
            sets.push(mk_set(
                &format!("np/ns{}/p{p}/in/{r}", p % 10),
                Family::IPv4,
                &refs,
                &[],
            ));
            ingress.push(mk_rule(
                r,
                Action::Accept,
                vec![mk_match(
                    Some(vec![set]),
                    Some(vec![tcp(8000 + r as u16)]),
                    None,
                )],
            ));
        }
        policies.push(mk_policy(
            PolicyKind::NetworkPolicy,
            Some(&format!("ns{}", p % 10)),
            &format!("p{p}"),
            0,
            ingress,
            vec![],
        ));
    }
    let mut all: Vec<String> = (0..5000).map(|i| format!("{}/32", peer(i))).collect();
    all.extend((0..100).map(|i| format!("{}/32", pod_ip(i))));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    sets.push(mk_set("baseline/all-peers", Family::IPv4, &refs, &[]));
    let big = sets.len() - 1;
    policies.push(mk_policy(
        PolicyKind::BaselineAdminNetworkPolicy,
        None,
        "default",
        1,
        vec![],
        vec![mk_rule(0, Action::Accept, vec![from_sets(&[big])])],
    ));
    let baseline_policy = policies.len() - 1;
    let pods = (0..100)
        .map(|i| {
            mk_pod(
                &format!("ns{}", i % 10),
                &format!("pod{i}"),
                &[&pod_ip(i)],
                vec![tp(0, &selected(i))],
                vec![tp(1, &[baseline_policy])],
            )
        })
        .collect();
    mk_rule_set(
        version,
        &[LAB_NODE_IP],
        vec![np_tier(), baseline()],
        sets,
        policies,
        pods,
    )
}

fn empty_state(version: u64) -> NodeRuleSet {
    mk_rule_set(version, &[LAB_NODE_IP], vec![], vec![], vec![], vec![])
}

/// `iptables-restore` input for (iv).
fn linear_rules() -> String {
    let mut s = String::from("*filter\n:BENCH-LINEAR - [0:0]\n");
    s.push_str("-A FORWARD -j BENCH-LINEAR\n");
    s.push_str("-A BENCH-LINEAR -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for i in 0..1000 {
        s.push_str(&format!(
            "-A BENCH-LINEAR -s 10.250.{}.{}/32 -p tcp -m tcp --dport 9 -j DROP\n",
            i / 250,
            1 + i % 250
        ));
    }
    s.push_str("COMMIT\n");
    s
}

/// Servers: `threads` acceptors on one listener; each connection gets its 64-byte
/// reply, then the server closes (first, so that TIME_WAIT stays on its side and
/// the client's ports are free at once).
fn serve(lab: &Lab, threads: usize) {
    let listener = lab.endpoints[1]
        .0
        .run(|| TcpListener::bind(("0.0.0.0", PORT)).expect("bind"));
    for _ in 0..threads {
        let l = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            let mut buf = [0u8; MSG];
            for mut s in l.incoming().flatten() {
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            }
        });
    }
}

/// One run: `clients` threads in the client namespace, each doing connect,
/// request, reply, close in a loop for `secs`. Returns (connections/s, errors).
fn run(lab: &Lab, clients: usize, secs: f64) -> (f64, usize) {
    let server = lab.addr(1, PORT);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, stop) = (Arc::clone(&barrier), Arc::clone(&stop));
            lab.endpoints[0].0.spawn(move || {
                let req = [7u8; MSG];
                let mut buf = [0u8; MSG];
                let (mut done, mut errors) = (0usize, 0usize);
                barrier.wait();
                // Bounded by the stop flag, by 10 million connections and by a minute.
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed)
                    && done < 10_000_000
                    && start.elapsed() < Duration::from_secs(60)
                {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect(server)?;
                        s.write_all(&req)?;
                        s.read_exact(&mut buf)?;
                        // Wait for the server's FIN: it closes first.
                        let mut end = [0u8; 1];
                        let _ = s.read(&mut end)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done += 1,
                        Err(_) => errors += 1,
                    }
                }
                (done, errors)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut errors = 0;
    for h in handles {
        let (d, e) = h.join().expect("client");
        total += d;
        errors += e;
    }
    (total as f64 / start.elapsed().as_secs_f64(), errors)
}

/// (busy, total) jiffies of all CPUs so far, from `/proc/stat`.
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits (at most `QUIET_WAIT`) until the machine is quiet: under 10 % of its CPU
/// busy over 250 ms (other processes on the host distort every figure). Returns
/// whether it got quiet.
fn wait_quiet() -> bool {
    let start = Instant::now();
    while start.elapsed() < QUIET_WAIT {
        let (b0, t0) = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(250));
        let (b1, t1) = cpu_jiffies();
        if t1 > t0 && (b1 - b0) * 10 < (t1 - t0) {
            return true;
        }
    }
    false
}

const QUIET_WAIT: Duration = Duration::from_secs(20);

struct Node<'a> {
    lab: &'a Lab,
    enforcer: Enforcer,
    busy: NodeRuleSet,
    version: u64,
}

impl Node<'_> {
    fn flush_conntrack(&self) {
        self.lab.node.exec("conntrack -F 2>/dev/null || true");
    }

    fn setup(&mut self, config: Config) {
        self.flush_conntrack();
        let lab = self.lab;
        let linear_present = lab.node.try_exec("iptables-nft -w -S BENCH-LINEAR").0;
        if linear_present && config != Config::Linear1000 {
            lab.node.exec(
                "iptables-nft -w -D FORWARD -j BENCH-LINEAR && iptables-nft -w -F BENCH-LINEAR && iptables-nft -w -X BENCH-LINEAR",
            );
        }
        self.version += 1;
        let version = self.version;
        match config {
            Config::NoRules | Config::Linear1000 => {
                let e = &mut self.enforcer;
                lab.node.run(|| e.cleanup().expect("cleanup"));
                lab.node.exec("nft flush ruleset");
                if config == Config::Linear1000 {
                    let rules = linear_rules();
                    lab.node.run(|| {
                        let mut child = std::process::Command::new("iptables-nft-restore")
                            .args(["--noflush", "-w"])
                            .stdin(std::process::Stdio::piped())
                            .spawn()
                            .expect("iptables-nft-restore");
                        child
                            .stdin
                            .take()
                            .expect("stdin")
                            .write_all(rules.as_bytes())
                            .expect("write rules");
                        assert!(child.wait().expect("wait").success());
                    });
                }
            }
            Config::NoPolicy => {
                let e = &mut self.enforcer;
                lab.node
                    .run(|| e.apply(&empty_state(version)).expect("apply empty"));
            }
            Config::Rules1000 => {
                let mut state = self.busy.clone();
                state.version = version;
                let e = &mut self.enforcer;
                lab.node.run(|| e.apply(&state).expect("apply busy"));
            }
        }
        // What the node holds now, briefly.
        let rules = lab
            .node
            .exec("iptables-nft-save -t filter 2>/dev/null | grep -c '^-A' || true");
        let expect_some = config != Config::NoRules;
        assert_eq!(
            rules.trim() != "0",
            expect_some,
            "{config:?}: {} rules",
            rules.trim()
        );
    }
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    if !can_netns("bench connrate") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let secs: f64 = std::env::var("RUN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let lab = Lab::new(&[CLIENT_IP, SERVER_IP]);
    // 64,512 client ports: a 2-s run never reuses one.
    lab.endpoints[0]
        .0
        .exec("sysctl -qw net.ipv4.ip_local_port_range=\"1024 65535\"");
    serve(&lab, 4);

    let busy = busy_state(1);
    let rendered = render(&busy, &RenderOptions::default()).expect("render");
    println!(
        "(iii): {} local pods, {} policy rules, {} iptables rules in {} chains, {} sets with {} members",
        busy.pods.len(),
        busy.policies
            .iter()
            .map(|p| p.ingress.len() + p.egress.len())
            .sum::<usize>(),
        rendered.ipv4.chains.values().map(Vec::len).sum::<usize>(),
        rendered.ipv4.chains.len(),
        rendered.ipv4.sets.len(),
        rendered
            .ipv4
            .sets
            .values()
            .map(|s| s.members.len())
            .sum::<usize>(),
    );
    let audit = std::env::var("AUDIT").unwrap_or_else(|_| "reader".into());
    println!("audit: {audit}");
    let spool_dir = std::env::temp_dir().join(format!("pal-connrate-spool-{}", std::process::id()));
    let capture = (audit == "reader").then(|| {
        let config = palisade_enforcer::audit::AuditConfig {
            group: 100,
            window: Duration::from_secs(2),
            spool_dir: spool_dir.clone(),
            spool_max_bytes: 64 << 20,
            keep_previous: Duration::from_secs(30),
        };
        let emit: palisade_enforcer::stream::Emit = Arc::new(|_| {});
        lab.node.run(|| {
            palisade_enforcer::audit::Capture::start(&config, "bench", emit).expect("capture")
        })
    });
    let mut node = Node {
        lab: &lab,
        enforcer: Enforcer::with_backend(
            Backend::Nft,
            ApplyOptions {
                reject: false,
                revoke: false,
                audit: (audit != "off").then(palisade_enforcer::AuditRules::default),
            },
        ),
        busy,
        version: 0,
    };
    // Warm up (and check every configuration works) before measuring.
    for config in CONFIGS {
        node.setup(config);
        let (rate, errors) = run(&lab, 4, 0.5);
        assert!(
            rate > 100.0 && errors == 0,
            "{config:?}: {rate}/s, {errors} errors"
        );
    }

    // ONLY=i|ii|iii|iv measures that configuration alone (to profile it).
    let active: Vec<usize> = match std::env::var("ONLY").ok().as_deref() {
        Some("i") => vec![0],
        Some("ii") => vec![1],
        Some("iii") => vec![2],
        Some("iv") => vec![3],
        _ => (0..CONFIGS.len()).collect(),
    };
    // CLIENTS=4 or CLIENTS=1 measures that mode alone.
    let modes: Vec<usize> = match std::env::var("CLIENTS").ok().as_deref() {
        Some("4") => vec![4],
        Some("1") => vec![1],
        _ => vec![4, 1],
    };
    // results[mode][config] = one figure per round
    let mut results = vec![vec![Vec::with_capacity(rounds); CONFIGS.len()]; modes.len()];
    let mut errors = 0;
    let mut conntrack_off = true;
    let mut disturbed = 0;
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..active.len() {
            let ci = active[(k + round) % active.len()];
            let config = CONFIGS[ci];
            node.setup(config);
            for (mi, clients) in modes.iter().enumerate() {
                node.flush_conntrack();
                if !wait_quiet() {
                    disturbed += 1;
                }
                let (rate, e) = run(&lab, *clients, secs);
                results[mi][ci].push(rate);
                errors += e;
                if config == Config::NoRules {
                    let n = lab.node.exec("conntrack -C 2>/dev/null || echo 0");
                    conntrack_off &= n.trim() == "0";
                }
            }
        }
        eprintln!(
            "round {}/{rounds} done ({:.0} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    node.setup(Config::NoRules);

    println!(
        "\nnew connections/s (connect, {MSG} B request, {MSG} B reply, close), {rounds} rounds \
         interleaved, {secs} s per run; min / median / max"
    );
    let mode_name = |clients: usize| {
        if clients == 1 {
            "1 client (serial)".to_string()
        } else {
            format!("{clients} clients")
        }
    };
    let mut header = format!("{:<30}", "");
    for clients in &modes {
        header.push_str(&format!(" {:>28}", mode_name(*clients)));
    }
    println!("{header}");
    for &ci in &active {
        let mut line = format!("{:<30}", CONFIGS[ci].label());
        for by_config in &results {
            let (lo, med, hi) = stats(&by_config[ci]);
            line.push_str(&format!(" {lo:>8.0} {med:>8.0} {hi:>8.0}   "));
        }
        println!("{line}");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (mi, clients) in modes.iter().enumerate() {
        let what = if *clients == 1 {
            "latency per connection (serial)".to_string()
        } else {
            format!("CPU per connection ({cpus} CPUs, {clients} clients)")
        };
        let per: Vec<String> = active
            .iter()
            .map(|&ci| {
                let n = if *clients == 1 { 1.0 } else { cpus as f64 };
                format!(
                    "{} {:.1} µs",
                    CONFIGS[ci].label().split_whitespace().next().unwrap_or(""),
                    1e6 * n / stats(&results[mi][ci]).1
                )
            })
            .collect();
        println!("{what}, at the median: {}", per.join(", "));
    }
    println!(
        "client errors: {errors}; conntrack off with no rules: {}; runs started on a busy \
         machine (>10 % CPU in use by others after {} s of waiting): {disturbed}",
        if conntrack_off { "yes" } else { "NO" },
        QUIET_WAIT.as_secs()
    );
    if active.len() < CONFIGS.len() {
        return;
    }
    println!("\nratios per round, min / median / max");
    let ratio = |mi: usize, a: usize, b: usize| -> (f64, f64, f64) {
        let v: Vec<f64> = results[mi][a]
            .iter()
            .zip(&results[mi][b])
            .map(|(x, y)| x / y)
            .collect();
        stats(&v)
    };
    for (name, a, b, target) in [
        ("(iii)/(ii)", 2, 1, Some(0.9)),
        ("(ii)/(i)", 1, 0, None),
        ("(iii)/(i)", 2, 0, None),
        ("(iv)/(ii)", 3, 1, None),
        ("(iv)/(i)", 3, 0, None),
    ] {
        let mut line = format!("{name:<12}");
        for (mi, clients) in modes.iter().enumerate() {
            let (lo, med, hi) = ratio(mi, a, b);
            line.push_str(&format!(
                "  {clients} client{}: {lo:.3} {med:.3} {hi:.3}",
                if *clients == 1 { " " } else { "s" }
            ));
            if let Some(t) = target {
                line.push_str(if med >= t {
                    " (≥ 0.9: met)"
                } else {
                    " (≥ 0.9: MISSED)"
                });
            }
        }
        println!("{line}");
    }
    if let Some(c) = capture {
        println!("audit reader: {:?}", c.counters());
        c.stop();
    }
    let _ = std::fs::remove_dir_all(&spool_dir);
}
