//! Builders for compiled rule sets (`mk_*`) and throwaway network namespaces.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::IpNet;
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

/// A small realistic state: two local pods, admin Deny/Pass, a user tier with
/// default Deny, NetworkPolicies, baseline egress deny, IPv4 and IPv6 sets.
/// `variant` changes policies and sets so that applies have something to remove.
pub fn sample_state(version: u64, variant: u8) -> NodeRuleSet {
    use palisade_policy::model::{Action, DefaultAction};
    let mut tiers = vec![
        admin(),
        mk_tier("security", false, DefaultAction::Deny),
        np_tier(),
        baseline(),
    ];
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
        ),
        mk_policy(
            PolicyKind::TieredNetworkPolicy,
            None,
            "trusted-only",
            1,
            vec![mk_rule(0, Action::Accept, vec![from_sets(&[2])])],
            vec![],
        ),
        mk_policy(
            PolicyKind::NetworkPolicy,
            Some("shop"),
            "front",
            2,
            vec![mk_rule(
                0,
                Action::Accept,
                vec![mk_match(
                    Some(vec![3, 4]),
                    Some(vec![tcp(80), range(Protocol::Tcp, 8000, 8100)]),
                    None,
                )],
            )],
            vec![],
        ),
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
    let mut pods = vec![
        mk_pod(
            "shop",
            "web-0",
            &["10.1.0.2", "fd00:1::2"],
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
    ];
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
