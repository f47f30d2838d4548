//! Churn: real traffic through a node namespace while rules change under it. A
//! node namespace with three pod namespaces (A, B, C) behind veths with /32 routes
//! ([`Lab`]); B is the server, isolated for ingress. Every address lives in
//! namespaces these tests create (198.18.0.0/15); every loop that sends traffic is
//! bounded in count and in time; the namespaces go on drop, also on panic.
//!
//! - revocation: long-lived UDP and TCP flows a new state denies (client-driven
//!   echoes, and a server that pushes) stop within a second of the apply, an
//!   allowed connection carries on with its conntrack entry untouched; with
//!   revocation off the old flows live on and new ones time out; a busy UDP flow
//!   revoked 25 times never comes back in reverse;
//! - 200 rewrites (unrelated policies, set members, tiers, whole chains) under
//!   continuous probing: a denied pair never connects, an allowed pair always does,
//!   an established connection never breaks;
//! - an enforcer restart (`run`, SIGTERM, `run` again) leaves no gap: probes and
//!   samples of `iptables-save` / `ipset save` throughout.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use palisade_enforcer::{ApplyOptions, Backend, Enforcer, NodeRuleSet};
use palisade_policy::compiled::{CompiledPolicy, LocalPod};
use palisade_policy::model::{Action, DefaultAction, Family, PolicyKind};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const IPS: [&str; 3] = ["198.18.0.10", "198.18.0.11", "198.18.0.12"];

/// The conntrack id of the node's entry for the TCP connection between these
/// ports (either way round).
fn ct_id(lab: &Lab, client_port: u16, server_port: u16) -> Option<String> {
    let text = lab
        .node
        .exec("conntrack -L -p tcp -o extended,id 2>/dev/null");
    let ports = format!("sport={client_port} dport={server_port} ");
    text.lines()
        .find(|l| l.contains(&ports))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")))
        .map(str::to_string)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One new UDP flow (a new socket, so a new 5-tuple): how many of `n` datagrams
/// sent 50 ms apart came back.
fn udp_answers(lab: &Lab, from: usize, to: usize, port: u16, n: usize) -> usize {
    let s = lab.udp(from, to, port);
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 64];
    (0..n)
        .filter(|_| s.send(b"n").is_ok() && s.recv(&mut buf).is_ok())
        .count()
}

const TICK: Duration = Duration::from_millis(20);

/// A: UDP echo 7001 and TCP echo 7001 (both denied by the new state), TCP push
/// 7003 (denied: the server speaks, the client only acknowledges), TCP echo 7002
/// (stays allowed).
fn revocation_case(revoke: bool) {
    let lab = Lab::new(&IPS);
    lab.serve(&[7001, 7002]);
    lab.serve_udp(&[7001]);
    lab.serve_push(&[7003], TICK, Duration::from_secs(10));
    let before = b_accepts_a(
        1,
        IPS[A],
        IPS[B],
        vec![tcp(7001), udp(7001), tcp(7002), tcp(7003)],
    );
    let after = b_accepts_a(2, IPS[A], IPS[B], vec![tcp(7002)]);
    let mut enforcer = nft_enforcer(false, revoke);
    lab.node.run(|| enforcer.apply(&before).expect("apply"));

    let limit = Duration::from_secs(6);
    let udp_cut = Echoes::udp(lab.udp(A, B, 7001), TICK, limit);
    let tcp_cut = Echoes::tcp(lab.connect(A, B, 7001).expect("7001"), TICK, limit);
    let push_cut = Echoes::push(lab.connect(A, B, 7003).expect("7003"), TICK, limit);
    let kept_stream = lab.connect(A, B, 7002).expect("7002");
    let kept_port = kept_stream.local_addr().expect("addr").port();
    let kept = Echoes::tcp(kept_stream, TICK, limit);
    std::thread::sleep(Duration::from_millis(300));
    let flows = [
        ("UDP 7001", &udp_cut),
        ("TCP 7001", &tcp_cut),
        ("TCP push 7003", &push_cut),
        ("TCP 7002 (stays allowed)", &kept),
    ];
    for (name, f) in flows {
        assert!(f.count() >= 5, "{name}: only {} answers before", f.count());
    }
    let kept_id = ct_id(&lab, kept_port, 7002).expect("conntrack entry of 7002");

    let t0 = Instant::now();
    let report = lab.node.run(|| enforcer.apply(&after).expect("apply"));
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let end = Instant::now();
    eprintln!(
        "revoke={revoke}: apply took {} (revoked {})",
        ms(t1 - t0),
        report.revoked
    );
    for (name, f) in flows {
        eprintln!(
            "  {name}: {} answers, {} after the apply began, last {} after it",
            f.count(),
            f.after(t0),
            f.last()
                .map(|l| ms(l.saturating_duration_since(t0)))
                .unwrap_or_default()
        );
    }

    // The connection that stays allowed never noticed, whatever the mode.
    let gap = kept.max_gap(t0 - Duration::from_millis(300), end);
    assert!(
        gap < Duration::from_millis(300),
        "allowed connection stalled for {}",
        ms(gap)
    );
    assert!(kept.after(t1 + Duration::from_secs(1)) >= 10);
    assert_eq!(
        ct_id(&lab, kept_port, 7002).as_deref(),
        Some(kept_id.as_str()),
        "the allowed connection's conntrack entry was replaced"
    );

    if revoke {
        // Three entries; one more when an echo in flight came back reversed and
        // revocation caught it.
        assert!((3..=5).contains(&report.revoked), "{report:?}");
        for (name, f) in &flows[..3] {
            assert_eq!(
                f.after(t0 + Duration::from_secs(1)),
                0,
                "{name} still answered more than a second after the apply"
            );
        }
    } else {
        assert_eq!(report.revoked, 0, "{report:?}");
        for (name, f) in &flows[..3] {
            let gap = f.max_gap(t0 - Duration::from_millis(300), end);
            assert!(
                gap < Duration::from_millis(300),
                "{name} stalled for {} without revocation",
                ms(gap)
            );
        }
    }
    for (name, f) in flows {
        let why = f.stop();
        assert!(why == "stopped", "{name} ended: {why}");
    }

    // Either way, new connections of the same kind are refused (time out), and
    // new ones on the port that stays allowed work.
    for port in [7001, 7003] {
        let err = lab
            .connect_timeout(A, B, port, Duration::from_millis(500))
            .expect_err("a new denied TCP connection");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{port}: {err}");
    }
    assert_eq!(udp_answers(&lab, A, B, 7001, 5), 0, "a new denied UDP flow");
    let mut c = lab.connect(A, B, 7002).expect("7002 still allowed");
    let mut b = [0u8; 1];
    c.write_all(b"x").expect("write");
    c.read_exact(&mut b).expect("echo");
}

#[test]
fn revocation_cuts_udp_and_tcp_flows_within_a_second() {
    if !can_netns("churn revocation") {
        return;
    }
    revocation_case(true);
}

#[test]
fn without_revocation_old_flows_live_and_new_ones_are_refused() {
    if !can_netns("churn no-revoke") {
        return;
    }
    revocation_case(false);
}

/// A busy UDP flow (a datagram every millisecond, each echoed) revoked 25 times:
/// an echo in flight when the entry goes must not carry the flow on in reverse.
#[test]
fn revoked_busy_udp_flows_stay_revoked() {
    if !can_netns("churn busy udp") {
        return;
    }
    let lab = Lab::new(&IPS[..2]);
    lab.serve_udp(&[7001]);
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    let rounds = 25;
    let mut answers_before = 0;
    for i in 0..rounds {
        let allow = b_accepts_a(2 * i + 1, IPS[A], IPS[B], vec![udp(7001), tcp(7002)]);
        let deny = b_accepts_a(2 * i + 2, IPS[A], IPS[B], vec![tcp(7002)]);
        lab.node.run(|| enforcer.apply(&allow).expect("apply"));
        let flow = Echoes::udp(
            lab.udp(A, B, 7001),
            Duration::from_millis(1),
            Duration::from_secs(5),
        );
        std::thread::sleep(Duration::from_millis(30));
        answers_before += flow.count();
        let report = lab.node.run(|| enforcer.apply(&deny).expect("apply"));
        // Counted from when the apply (revocation included) returned: under load
        // the apply itself may take longer than the in-flight margin.
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        let late = flow.after(t0 + Duration::from_millis(50));
        flow.stop();
        assert!(report.revoked >= 1, "round {i}: {report:?}");
        assert_eq!(
            late,
            0,
            "round {i}: the revoked flow carried on: {}",
            lab.node.exec("conntrack -L -p udp 2>/dev/null")
        );
    }
    assert!(answers_before >= rounds as usize * 10, "{answers_before}");
}

/// What a prober saw.
#[derive(Debug, Default)]
struct Probed {
    made: usize,
    failures: Vec<String>,
}

/// Opens new TCP connections from one endpoint to another in a loop, on its own
/// thread inside the client's namespace, until stopped (at most `MAX_PROBES`
/// connections and `PROBE_LIMIT`).
struct Prober {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Probed>>,
}

const MAX_PROBES: usize = 50_000;
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// Probes are paced so that the node's conntrack table, which every apply reads
/// to revoke, stays the size of a busy node's rather than a benchmark's.
const PROBE_EVERY: Duration = Duration::from_millis(5);

impl Prober {
    /// Every connection must open (within 1 s) and echo a byte.
    fn allowed(lab: &Lab, from: usize, to: usize, port: u16) -> Prober {
        let addr = lab.addr(to, port);
        Self::start(lab, from, move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut b = [0u8; 1];
            s.write_all(b"p").map_err(|e| format!("write: {e}"))?;
            s.read_exact(&mut b).map_err(|e| format!("echo: {e}"))
        })
    }

    /// No connection may open: each attempt gives up after `timeout` (a connection
    /// through an open path takes well under a millisecond here).
    fn denied(lab: &Lab, from: usize, to: usize, port: u16, timeout: Duration) -> Prober {
        let addr = lab.addr(to, port);
        Self::start(
            lab,
            from,
            move || match std::net::TcpStream::connect_timeout(&addr, timeout) {
                Ok(_) => Err("connected".to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
                Err(e) => Err(format!("unexpected {e}")),
            },
        )
    }

    /// Runs `probe` in a loop, at most one every [`PROBE_EVERY`].
    fn start(
        lab: &Lab,
        from: usize,
        probe: impl Fn() -> Result<(), String> + Send + 'static,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = lab.endpoints[from].0.spawn(move || {
            let start = Instant::now();
            let mut out = Probed::default();
            while out.made < MAX_PROBES
                && start.elapsed() < PROBE_LIMIT
                && !stop2.load(Ordering::Relaxed)
            {
                out.made += 1;
                let next = Instant::now() + PROBE_EVERY;
                if let Err(e) = probe() {
                    out.failures
                        .push(format!("probe {} at {:?}: {e}", out.made, start.elapsed()));
                }
                if let Some(left) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(left);
                }
            }
            out
        });
        Prober {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Probed {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("prober panicked")
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What both churn tests watch while the rules change: an established echo
/// connection A→B:8081 (and its conntrack entry), new connections A→B:8080
/// (allowed), C→B:8080 and A→B:8082 (denied).
struct Watch {
    established: Echoes,
    est_port: u16,
    est_id: String,
    allowed: Prober,
    denied_c: Prober,
    denied_port: Prober,
}

/// What a [`Watch`] saw.
struct Watched {
    allowed: Probed,
    denied_c: Probed,
    denied_port: Probed,
    est_count: usize,
    est_gap: Duration,
    est_end: String,
    est_port: u16,
    est_id: String,
}

impl Watch {
    /// Starts it all (B serves 8080 to 8082), waits `settle` for the first
    /// probes, then notes the established connection's conntrack id.
    fn start(lab: &Lab, settle: Duration) -> Watch {
        let est_stream = lab.connect(A, B, 8081).expect("8081");
        let est_port = est_stream.local_addr().expect("addr").port();
        let established = Echoes::tcp(est_stream, Duration::from_millis(10), PROBE_LIMIT);
        let allowed = Prober::allowed(lab, A, B, 8080);
        let denied_c = Prober::denied(lab, C, B, 8080, Duration::from_millis(30));
        let denied_port = Prober::denied(lab, A, B, 8082, Duration::from_millis(30));
        std::thread::sleep(settle);
        let est_id = ct_id(lab, est_port, 8081).expect("conntrack entry of 8081");
        Watch {
            established,
            est_port,
            est_id,
            allowed,
            denied_c,
            denied_port,
        }
    }

    /// Stops it all; the established connection's echoes and longest gap are
    /// those between `start` and `end`.
    fn finish(self, start: Instant, end: Instant) -> Watched {
        let allowed = self.allowed.finish();
        let denied_c = self.denied_c.finish();
        let denied_port = self.denied_port.finish();
        let est_gap = self.established.max_gap(start, end);
        let est_count = self.established.after(start);
        let est_end = self.established.stop();
        Watched {
            allowed,
            denied_c,
            denied_port,
            est_count,
            est_gap,
            est_end,
            est_port: self.est_port,
            est_id: self.est_id,
        }
    }
}

impl Watched {
    /// The numbers, for the log.
    fn summary(&self) -> String {
        format!(
            "allowed probes {} ({} failed), denied probes C→B {} + A→B:8082 {} ({} + {} connected), \
             established connection: {} echoes, longest gap {}",
            self.allowed.made,
            self.allowed.failures.len(),
            self.denied_c.made,
            self.denied_port.made,
            self.denied_c.failures.len(),
            self.denied_port.failures.len(),
            self.est_count,
            ms(self.est_gap),
        )
    }

    /// Nothing broke: every allowed probe got through and no denied one did (at
    /// least `min_allowed` and `min_denied` of each made), and the established
    /// connection never stalled for 500 ms and kept its conntrack entry.
    fn check(&self, lab: &Lab, min_allowed: usize, min_denied: usize) {
        assert!(
            self.allowed.failures.is_empty(),
            "{:?}",
            self.allowed.failures
        );
        assert!(
            self.denied_c.failures.is_empty(),
            "{:?}",
            self.denied_c.failures
        );
        assert!(
            self.denied_port.failures.is_empty(),
            "{:?}",
            self.denied_port.failures
        );
        assert!(
            self.allowed.made >= min_allowed
                && self.denied_c.made >= min_denied
                && self.denied_port.made >= min_denied
        );
        assert_eq!(self.est_end, "stopped", "the established connection broke");
        assert!(
            self.est_gap < Duration::from_millis(500),
            "established connection stalled for {}",
            ms(self.est_gap)
        );
        assert_eq!(
            ct_id(lab, self.est_port, 8081).as_deref(),
            Some(self.est_id.as_str()),
            "the established connection's conntrack entry was replaced"
        );
    }
}

/// The churn states: B accepts A on 8080 and 8081 (never C, never 8082); A is
/// isolated for egress and may reach B; C is not isolated. Each bit of `variant`
/// changes something unrelated to those flows:
/// - 1: an extra tier in front (a user tier, default Pass, with a policy that
///   denies an unrelated range to B): every tier index, B's pod chain and its tier
///   chains change;
/// - 2: unrelated members in the set that holds A, and in A's egress set;
/// - 4: unrelated policies selecting unrelated local pods (added / removed);
/// - 8: B's policy rewritten: an unrelated rule first, its own rule second (the
///   policy chain replaced whole, same name);
/// - 16: the unrelated pods' set emptied and refilled differently (build and swap).
fn churn_state(version: u64, variant: u32) -> NodeRuleSet {
    let (a, b) = (IPS[A].to_string(), IPS[B].to_string());
    let extra_tier = variant & 1 != 0;
    let extra_members = variant & 2 != 0;
    let extra_policies = variant & 4 != 0;
    let rewritten = variant & 8 != 0;
    let swapped = variant & 16 != 0;

    let mut tiers = vec![admin()];
    if extra_tier {
        tiers.push(mk_tier("user", false, DefaultAction::Pass));
    }
    tiers.push(np_tier());
    tiers.push(baseline());
    let tier = |name: &str| tiers.iter().position(|t| t.name == name).expect("tier");
    let (t_admin, t_np, t_base) = (tier("admin"), tier("networkpolicy"), tier("baseline"));

    let mut a_set = vec![a.clone()];
    let mut b_set = vec![b.clone()];
    if extra_members {
        a_set.extend((1..=20).map(|i| format!("198.18.9.{i}")));
        b_set.extend((1..=5).map(|i| format!("198.18.8.{i}")));
    }
    let unrelated: Vec<String> = if swapped {
        (0..40)
            .map(|i| format!("198.18.{}.0/24", 100 + i))
            .collect()
    } else {
        (0..30)
            .map(|i| format!("198.18.{}.0/25", 150 + i))
            .collect()
    };
    let unrelated_refs: Vec<&str> = unrelated.iter().map(String::as_str).collect();
    let mut sets = vec![
        host_set("peers-of-b", &a_set),
        host_set("a-may-reach", &b_set),
        mk_set(
            "unrelated",
            Family::IPv4,
            &unrelated_refs,
            &["198.18.100.7/32"],
        ),
        mk_set("blocked", Family::IPv4, &["203.0.113.0/24"], &[]),
    ];
    let (s_peers, s_reach, s_unrelated, s_blocked) = (0, 1, 2, 3);

    let mut b_rules = vec![mk_rule(
        0,
        Action::Accept,
        vec![mk_match(
            Some(vec![s_peers]),
            Some(vec![tcp(8080), tcp(8081)]),
            None,
        )],
    )];
    if rewritten {
        b_rules.insert(
            0,
            mk_rule(
                0,
                Action::Accept,
                vec![mk_match(
                    Some(vec![s_unrelated]),
                    Some(vec![tcp(9999)]),
                    None,
                )],
            ),
        );
        b_rules[1].index = 1;
    }
    let mut policies: Vec<CompiledPolicy> = vec![
        mk_policy(
            PolicyKind::ClusterNetworkPolicy,
            None,
            "block",
            t_admin,
            vec![mk_rule(0, Action::Deny, vec![from_sets(&[s_blocked])])],
            vec![],
        ),
        mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "b-from-a",
            t_np,
            b_rules,
            vec![],
        ),
        mk_policy(
            PolicyKind::NetworkPolicy,
            Some("ns"),
            "a-to-b",
            t_np,
            vec![],
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(Some(vec![s_reach]), None, None)],
            )],
        ),
        mk_policy(
            PolicyKind::BaselineAdminNetworkPolicy,
            None,
            "default",
            t_base,
            vec![mk_rule(0, Action::Deny, vec![from_sets(&[s_unrelated])])],
            vec![],
        ),
    ];
    let (p_block, p_b, p_a, p_base) = (0, 1, 2, 3);
    let mut b_ingress = vec![tp(t_admin, &[p_block])];
    if extra_tier {
        sets.push(mk_set(
            "user-denied",
            Family::IPv4,
            &["198.18.200.0/24"],
            &[],
        ));
        let s = sets.len() - 1;
        policies.push(mk_policy(
            PolicyKind::TieredNetworkPolicy,
            None,
            "user-deny",
            tier("user"),
            vec![mk_rule(0, Action::Deny, vec![from_sets(&[s])])],
            vec![],
        ));
        b_ingress.push(tp(tier("user"), &[policies.len() - 1]));
    }
    b_ingress.push(tp(t_np, &[p_b]));
    b_ingress.push(tp(t_base, &[p_base]));
    let mut pods: Vec<LocalPod> = vec![
        mk_pod("ns", "a", &[&a], vec![], vec![tp(t_np, &[p_a])]),
        mk_pod("ns", "b", &[&b], b_ingress, vec![]),
    ];
    if extra_policies {
        for i in 0..5u16 {
            policies.push(mk_policy(
                PolicyKind::NetworkPolicy,
                Some("other"),
                &format!("unrelated-{i}"),
                t_np,
                vec![mk_rule(
                    0,
                    Action::Accept,
                    vec![mk_match(
                        Some(vec![s_unrelated]),
                        Some(vec![tcp(9000 + i)]),
                        None,
                    )],
                )],
                vec![],
            ));
            let p = policies.len() - 1;
            let ip = format!("198.18.7.{}", 10 + i);
            pods.push(mk_pod(
                "other",
                &format!("pod-{i}"),
                &[&ip],
                vec![tp(t_np, &[p]), tp(t_base, &[p_base])],
                vec![],
            ));
        }
    }
    mk_rule_set(version, &[LAB_NODE_IP], tiers, sets, policies, pods)
}

#[test]
fn rules_rewritten_200_times_under_traffic() {
    if !can_netns("churn rewrites") {
        return;
    }
    let lab = Lab::new(&IPS);
    lab.serve(&[8080, 8081, 8082]);
    let mut enforcer = Enforcer::with_backend(Backend::Nft, ApplyOptions::default());
    lab.node
        .run(|| enforcer.apply(&churn_state(1, 0)).expect("apply"));

    let watch = Watch::start(&lab, Duration::from_millis(100));

    let start = Instant::now();
    let mut revoked = 0;
    let mut changes = 0;
    let mut slowest = Duration::ZERO;
    let rounds = 200u32;
    for i in 0..rounds {
        // 0..32 covers every combination of the five changes; consecutive states
        // differ in one to five of them.
        let variant = (i * 7 + 1) % 32;
        let state = churn_state(u64::from(i) + 2, variant);
        let t = Instant::now();
        let r = lab.node.run(|| enforcer.apply(&state).expect("apply"));
        slowest = slowest.max(t.elapsed());
        revoked += r.revoked;
        if r.chains_written + r.chains_removed + r.sets_created + r.sets_updated + r.sets_removed
            > 0
        {
            changes += 1;
        }
    }
    let churn = start.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let end = Instant::now();

    let watched = watch.finish(start, end);
    eprintln!(
        "{rounds} applies in {} ({} each on average, slowest {}), {changes} changed something; {}",
        ms(churn),
        ms(churn / rounds),
        ms(slowest),
        watched.summary(),
    );
    assert_eq!(changes, rounds, "every rewrite changed the kernel");
    assert_eq!(revoked, 0, "nothing was ever revoked");
    watched.check(&lab, 100, 20);
}

/// Our rules (chains and hooks, both families) and our sets with their members,
/// as the kernel of the node shows them right now.
fn ours(lab: &Lab) -> (String, String) {
    lab.node.run(ours_here)
}

/// [`ours`] of the current thread's namespace (set members only).
fn ours_here() -> (String, String) {
    our_rules_and_sets_here(&["add PAL-"])
}

#[test]
fn enforcer_restart_leaves_no_gap() {
    if !can_netns("churn restart") {
        return;
    }
    let lab = Lab::new(&IPS);
    lab.serve(&[8080, 8081, 8082]);
    let dir = TempDir::new("churn");
    let state_path = dir.0.join("state.json");
    std::fs::write(
        &state_path,
        serde_json::to_vec(&churn_state(5, 0b11111)).expect("json"),
    )
    .expect("write state");

    let first = Agent::start(&lab.node, &state_path, &[], None);
    first.applied(5);
    let (rules, sets) = ours(&lab);
    assert!(rules.contains("-j PALISADE-FORWARD") && sets.contains("198.18.0.10"));

    // Sample our rules and sets as fast as the tools go, through the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let (rules, sets) = (rules.clone(), sets.clone());
        lab.node.spawn(move || {
            let mut samples = 0;
            let mut differing = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < PROBE_LIMIT {
                let (now_rules, now_sets) = ours_here();
                samples += 1;
                if now_rules != rules || now_sets != sets {
                    differing.push(format!(
                        "sample {samples} at {:?}: rules {}, sets {}",
                        start.elapsed(),
                        if now_rules == rules { "same" } else { "DIFFER" },
                        if now_sets == sets { "same" } else { "DIFFER" }
                    ));
                }
            }
            (samples, differing)
        })
    };
    let watch = Watch::start(&lab, Duration::from_millis(300));

    let start = Instant::now();
    let status = first.terminate();
    assert!(status.success(), "{status}");
    let stopped = start.elapsed();
    std::thread::sleep(Duration::from_millis(500)); // no enforcer at all
    let restart = Instant::now();
    let second = Agent::start(&lab.node, &state_path, &[], None);
    let report = second.applied(5);
    let reapplied = restart.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let end = Instant::now();

    stop.store(true, Ordering::Relaxed);
    let (samples, differing) = sampler.join().expect("sampler");
    let watched = watch.finish(start, end);
    let status = second.terminate();
    eprintln!(
        "first run stopped {} after SIGTERM; second run applied {} after it started \
         ({} chains rewritten, {} sets created, {} revoked); {samples} samples of the rules, \
         {} differing; {}",
        ms(stopped),
        ms(reapplied),
        report["chains_written"],
        report["sets_created"],
        report["revoked"],
        differing.len(),
        watched.summary(),
    );
    assert!(status.success(), "{status}");
    assert!(samples >= 20, "only {samples} samples");
    assert!(differing.is_empty(), "{differing:?}");
    assert_eq!(report["sets_created"], 0, "{report}");
    assert_eq!(report["revoked"], 0, "{report}");
    watched.check(&lab, 50, 10);
    assert_eq!(
        ours(&lab),
        (rules, sets),
        "the same rules after the restart"
    );
}
