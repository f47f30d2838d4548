//! Render: a node's [`NodeRuleSet`] → ipset and `iptables-restore --noflush` text.
//!
//! Pure: no I/O. Renders only our own chains (`PALISADE-…`) and sets (`PAL-…`) of
//! the filter table, for each family (IPv4 → `iptables` and ipset `family inet`,
//! IPv6 → `ip6tables` and `family inet6`). The hook in built-in FORWARD is not part
//! of the text: apply installs it with `-C`/`-I` so that foreign rules are never
//! flushed or reordered.
//!
//! # Chains
//!
//! ```text
//! FORWARD ─► PALISADE-FORWARD
//!              ctstate ESTABLISHED,RELATED → ACCEPT     (replies, related ICMP)
//!              ctstate INVALID            → DROP
//!              IPv6 neighbour solicitation / advertisement, hop limit 255 → RETURN
//!              -s <ip> -d <ip> → RETURN   (a pod's traffic to itself, per isolated pod ip)
//!              tcp, not a SYN, ctstate NEW → PALISADE-PICKUP     (when a pod is isolated)
//!              -s <local pod ip> → <egress chain of that pod>     (one per isolated pod)
//!              -d <local pod ip> → <ingress chain of that pod>
//!              clear our mark bits; fall off → RETURN to FORWARD
//! pod chain      PALISADE-{I,E}-<hash>   one per distinct list of tier chains
//!              -j <tier chain 1>;  mark ACCEPT? → RETURN;  -j <tier chain 2> …
//! tier chain     PALISADE-T-<hash>       one per distinct (direction, tier, policy list)
//!              clear mark;  -j <policy chain 1>;  mark set? → RETURN;  -j <policy chain 2> …
//!              networkpolicy tier or defaultAction Deny: → PALISADE-DENY
//! policy chain   PALISADE-P{I,E}-<hash of the policy id>, shared by all pods it selects
//!              (all rules Accept) -m set --match-set <merged set> {src|dst},dst
//!                    -g PALISADE-ACCEPT | -g PALISADE-LM-<hash>      (see "Merged sets")
//!              <match> -g PALISADE-ACCEPT | -g PALISADE-PASS | -j PALISADE-DENY
//! PALISADE-LM-<hash>  -p <proto> --dport <port> -g <the log chain of the rule with that port>
//! PALISADE-ACCEPT / PALISADE-PASS   set the ACCEPT / PASS mark bit (then return)
//! PALISADE-DENY                     DROP (or REJECT: tcp-reset / port-unreachable)
//! PALISADE-PICKUP  -s <pod isolated for ingress> → PALISADE-DENY
//!                  -d <pod isolated for egress>  → PALISADE-DENY;  fall off → RETURN
//! ```
//!
//! A pod with a single tier in a direction dispatches straight to its tier chain,
//! unless the connections that every tier passes are logged (see "Audit").
//!
//! Why marks: policy chains are shared by every local pod a policy selects (so a
//! policy selecting 100 local pods costs its rules once, not 100 times), and a shared
//! chain cannot know which tier follows for a given pod. A matching Accept or Pass
//! rule therefore records its outcome in a mark bit and leaves with a *goto* into a
//! one-rule marking chain: a goto pushes no return address, so when the marking
//! chain ends the packet is back in the tier chain, right after the jump to the
//! policy chain, where one rule returns as soon as any bit is set. A Deny drops at
//! once from wherever it is. The tier chain clears our bits first, so a Pass of an
//! earlier tier never leaks into a later one, and PALISADE-FORWARD clears them before
//! handing the packet back. The bits are 0x02000000 (ACCEPT) and 0x04000000 (PASS),
//! mask 0x06000000: clear of kube-proxy (0x4000 masquerade, 0x8000 drop), Cilium
//! (0x0f00), Weave and kube-router (0x10000-0x40000), Tailscale (0xff0000), Istio
//! (0x539) and AWS VPC CNI (0x80, 0x100). Calico's default mask 0xffff0000 covers them,
//! but Calico is an alternative to Palisade, never run beside it. The packet mark is
//! per packet, so NEW packets only ever carry bits we set while evaluating them.
//!
//! Why PALISADE-PICKUP: conntrack (`nf_conntrack_tcp_loose`, on by default) picks
//! up a TCP connection it has no entry for from any packet of it, and takes that
//! packet's sender for the client. When a connection from A to an isolated B is
//! revoked (its entry deleted), A's next packet is judged as A → B and dropped, but
//! B's next packet (a retransmission, data it pushes) would be judged as a new
//! connection from B to A's port, which B's egress and A's ingress usually allow:
//! conntrack would then let the revoked connection resume, reversed. So a TCP
//! packet other than a SYN without a conntrack entry is denied when its sender is
//! isolated for ingress or its receiver is isolated for egress (its policies decide
//! who may open connections to or from it, and such a packet opens none). The
//! price: a connection of such a pod whose entry is lost some other way (flushed,
//! expired while idle) ends instead of being picked up, as after a revocation.
//!
//! Allowed connections RETURN to FORWARD (never ACCEPT), so foreign rules after our
//! hook, and FORWARD's policy, still apply to them: Palisade only ever takes
//! traffic away. Established and related packets are ACCEPTed at the top of
//! PALISADE-FORWARD (a connection only becomes established after every rule of
//! FORWARD let its first packet through).
//!
//! Traffic between a local pod and its own node never crosses FORWARD (INPUT and
//! OUTPUT of the node namespace), and we install nothing there, so it is always
//! allowed, as the tiers contract requires.
//!
//! A pod's traffic to itself is always allowed too ("a pod cannot block access to
//! itself"): through a Service that load-balances back to it, kube-proxy's DNAT
//! (nat PREROUTING) runs before FORWARD and its hairpin masquerade (nat
//! POSTROUTING) after, so FORWARD sees the pod's own address as source and
//! destination; one `-s IP -d IP -j RETURN` per isolated local pod address lets it
//! through before any pod chain.
//!
//! # Merged sets
//!
//! The kernel keeps a namespace's ipsets in a table that grows 64 slots at a time, one RCU
//! grace period (about 11 ms) per step: a node with a set per rule pays for it (1,000 rules in
//! two families: 28 steps). A policy whose rules in a direction all accept needs no order
//! among them, so its small matches (a few plain peers, no exception, on a few TCP, UDP or
//! SCTP ports, on any pod the policy selects) become one `hash:net,port` set of
//! (peer, protocol:port) pairs, matched once with the packet's remote address and
//! destination port: a peer only ever gets its own rule's ports. Merged rules never share a
//! port (a rule on a port another merged rule has keeps its own set), so when they are logged
//! the port picks the rule's log chain in `PALISADE-LM-<hash>`. Merging stops at the first
//! match that is not merged, so merged matches precede every other line and a packet is
//! logged under the first rule that matches it. A compiled set is installed only when a
//! rule matches on it (a merged rule's own set never is).
//!
//! Sets change before chains (an apply's order). A rule that leaves the merged set (it grew
//! past the limits, or a port it shares appeared) loses its members there before its own
//! line exists: its new connections are refused for those milliseconds (closed, never
//! open). A packet that a new merged member takes but the old dispatch chain does not goes
//! on with the old rules after it.
//!
//! # Audit
//!
//! With [`RenderOptions::audit`], decisions are logged through NFLOG before they take
//! effect, under the id of what decided (the prefix): an Accept rule goes to
//! `PALISADE-L-<hash>` (NFLOG, then the ACCEPT mark), a Deny rule to one that logs
//! rate-limited per source (hashlimit) and then denies; a tier chain's default denial
//! logs (rate-limited) under an id that also names the chain, so it maps to the
//! policies isolating the pod; a pod whose last tier can pass gets a pod chain that
//! logs, after that tier, the connections no tier accepted (allowed, no rule decided).
//! Which rules log follows [`NodeRuleSet::audit_of`] (Pass rules never do). Only the
//! pod chains' NEW packets get there, so an allowed connection is logged once per
//! direction.
//!
//! # Ids
//!
//! Every policy rule carries `-m comment --comment "<short id> pal:<tier>:<kind>:<ns/name>:<index>:<rule name|->:<action>"`
//! (at most 255 characters). The short id `P<policy hash>R<index><I|E>` (tier
//! defaults: `T<tier hash>D<I|E>`) fits an NFLOG prefix; [`Rendered::ids`] maps it
//! back, and the restore script lists the mapping in `#` lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_policy::compiled::{
    AddressSet, CompiledPolicy, CompiledRule, LocalPod, NodeRuleSet, PortRange, RuleMatch,
    TierPolicies,
};
use palisade_policy::model::{
    Action, AuditMode, DefaultAction, Direction, Family, PolicyId, Protocol,
};
use serde::Serialize;

use crate::check::check;
use crate::error::{RenderError, RuleIssue};
use crate::names::{self, *};

/// Options that change the rendered text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Denied packets get a TCP reset / ICMP port unreachable instead of a silent drop.
    pub reject: bool,
    /// Log decisions through NFLOG for the audit log (see "Audit" above); `None`: off.
    pub audit: Option<AuditRules>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            reject: false,
            audit: Some(AuditRules::default()),
        }
    }
}

/// How the rules log decisions (the enforcer's audit settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRules {
    /// The NFLOG group the enforcer's reader binds.
    pub group: u16,
    /// Denied packets logged per second and source address (hashlimit `--hashlimit-upto`)...
    pub deny_per_sec: u32,
    /// ...after a burst of this many.
    pub deny_burst: u32,
    /// Denied packets logged per second on the whole node (after the per-source
    /// limit; a burst of twice as many): many sources at once cannot drown it either.
    pub deny_node_per_sec: u32,
}

/// The default NFLOG group.
pub const DEFAULT_NFLOG_GROUP: u16 = 100;

impl Default for AuditRules {
    fn default() -> Self {
        AuditRules {
            group: DEFAULT_NFLOG_GROUP,
            deny_per_sec: 10,
            deny_burst: 20,
            deny_node_per_sec: 1000,
        }
    }
}

/// What a short id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub id: String,
    pub tier: String,
    /// `None` for a tier's default decision.
    pub policy: Option<PolicyId>,
    pub direction: Direction,
    pub rule_index: Option<usize>,
    pub rule_name: Option<String>,
    pub action: Action,
    /// For the default denial of a tier chain (an isolated pod that no rule of the
    /// tier accepted): the policies of the tier that isolate the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<PolicyId>,
}

/// One ipset member: a net, with the protocol and destination port for a
/// `hash:net,port` set (a policy's merged Accept rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub net: IpNet,
    /// `(protocol, port)`: `tcp`, `udp` or `sctp`.
    pub port: Option<(&'static str, u16)>,
}

impl Member {
    pub fn net(net: IpNet) -> Self {
        Member { net, port: None }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            None => write!(f, "{}", self.net),
            Some((proto, port)) => write!(f, "{},{proto}:{port}", self.net),
        }
    }
}

/// Members of one ipset: member → `nomatch`.
pub type Members = BTreeMap<Member, bool>;

/// An address set's members as nets: net → `nomatch`.
pub type NetMembers = BTreeMap<IpNet, bool>;

/// One ipset as rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRules {
    /// The compiled set's name.
    pub source: String,
    pub members: Members,
}

/// Everything of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRules {
    pub family: Family,
    /// Chain → its full rule list (`-A CHAIN …` lines, in order).
    pub chains: BTreeMap<String, Vec<String>>,
    /// ipset name → members.
    pub sets: BTreeMap<String, SetRules>,
    /// Short ids used by this family's rules.
    pub ids: BTreeSet<String>,
}

/// The rendered state of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub version: u64,
    pub ipv4: FamilyRules,
    pub ipv6: FamilyRules,
    /// Short id → meaning.
    pub ids: BTreeMap<String, RuleRef>,
    /// Rules enforced fail-closed because they could not be enforced as written.
    pub issues: Vec<RuleIssue>,
}

/// Renders a node's rule set. Errors refuse the whole rule set.
pub fn render(rs: &NodeRuleSet, opts: &RenderOptions) -> Result<Rendered, RenderError> {
    let (rs, issues) = check(rs)?;
    render_checked(&rs, issues, opts)
}

/// Renders a rule set that [`check`] returned.
pub(crate) fn render_checked(
    rs: &NodeRuleSet,
    issues: Vec<RuleIssue>,
    opts: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let mut ids = BTreeMap::new();
    let ipv4 = FamilyRenderer::new(rs, Family::IPv4, *opts, &mut ids).run()?;
    let ipv6 = FamilyRenderer::new(rs, Family::IPv6, *opts, &mut ids).run()?;
    Ok(Rendered {
        version: rs.version,
        ipv4,
        ipv6,
        ids,
        issues,
    })
}

impl Rendered {
    pub fn family(&self, family: Family) -> &FamilyRules {
        match family {
            Family::IPv4 => &self.ipv4,
            Family::IPv6 => &self.ipv6,
        }
    }

    /// What a short id (from a comment or an NFLOG prefix) stands for.
    pub fn lookup(&self, short_id: &str) -> Option<&RuleRef> {
        self.ids.get(short_id)
    }

    /// Both families' scripts, for people (`palisade-enforcer render`).
    pub fn scripts(&self) -> String {
        let mut out = String::new();
        for fam in [&self.ipv4, &self.ipv6] {
            let (ipset, ipt) = match fam.family {
                Family::IPv4 => ("ipset restore -exist (family inet)", "iptables-restore"),
                Family::IPv6 => ("ipset restore -exist (family inet6)", "ip6tables-restore"),
            };
            let _ = writeln!(out, "### {ipset}");
            out.push_str(&fam.ipset_restore());
            let _ = writeln!(out, "### {ipt} --noflush");
            out.push_str(&fam.iptables_restore(&self.ids));
        }
        out
    }
}

/// The parts of a rule comment, as [`parse_comment`] reads them back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommentId {
    pub short_id: String,
    pub tier: String,
    /// `None` for a tier default (`default` in the comment).
    pub kind: Option<palisade_policy::model::PolicyKind>,
    /// `ns/name` or `name`; for a tier default, the direction.
    pub policy: String,
    pub rule_index: Option<usize>,
    pub rule_name: Option<String>,
    pub action: Action,
}

/// Reads back a comment written by render (possibly truncated in its rule name).
pub fn parse_comment(comment: &str) -> Option<CommentId> {
    let comment = comment.trim_matches('"');
    let (short_id, rest) = comment.split_once(' ')?;
    let rest = rest.strip_prefix("pal:")?;
    let parts: Vec<&str> = rest.split(':').collect();
    let action = |s: &str| match s {
        "Accept" => Some(Action::Accept),
        "Deny" => Some(Action::Deny),
        "Pass" => Some(Action::Pass),
        _ => None,
    };
    match parts.as_slice() {
        [tier, "default", dir, act] => Some(CommentId {
            short_id: short_id.to_string(),
            tier: tier.to_string(),
            kind: None,
            policy: dir.to_string(),
            rule_index: None,
            rule_name: None,
            action: action(act)?,
        }),
        [tier, kind, policy, index, rule_name, act] => Some(CommentId {
            short_id: short_id.to_string(),
            tier: tier.to_string(),
            kind: Some(kind_from_short(kind)?),
            policy: policy.to_string(),
            rule_index: index.parse().ok(),
            rule_name: (*rule_name != "-").then(|| rule_name.to_string()),
            action: action(act)?,
        }),
        _ => None,
    }
}

/// Initial hash size for a set of `members` (a power of two in 64..=1024; the kernel
/// grows it as needed). Small sets start small: creating a thousand sets with the
/// default 1024 buckets costs about 150 ms more than with 64. `create -exist`
/// accepts an existing set whatever its hash size.
fn hashsize(members: usize) -> usize {
    members.next_power_of_two().clamp(64, 1024)
}

fn ipset_family(family: Family) -> &'static str {
    match family {
        Family::IPv4 => "inet",
        Family::IPv6 => "inet6",
    }
}

/// `create NAME hash:net family inet …` (without `-exist`: restore runs with it);
/// `hash:net,port` when the members carry ports.
pub fn set_create_line(name: &str, family: Family, members: &Members) -> String {
    let kind = if members.keys().any(|m| m.port.is_some()) {
        "hash:net,port"
    } else {
        "hash:net"
    };
    format!(
        "create {name} {kind} family {} hashsize {} maxelem 1048576",
        ipset_family(family),
        hashsize(members.len())
    )
}

/// `add NAME MEMBER [nomatch]`.
pub fn set_add_line(name: &str, member: &Member, nomatch: bool) -> String {
    if nomatch {
        format!("add {name} {member} nomatch")
    } else {
        format!("add {name} {member}")
    }
}

/// Lines that build `name` with `members` in a temporary set and swap it in:
/// atomic for the set, whatever it held before.
pub fn set_build_and_swap(name: &str, family: Family, members: &Members) -> Vec<String> {
    let temp = temp_set_name(name);
    let mut lines = Vec::with_capacity(members.len() + 5);
    lines.push(set_create_line(&temp, family, members));
    lines.push(format!("flush {temp}"));
    for (member, nomatch) in members {
        lines.push(set_add_line(&temp, member, *nomatch));
    }
    lines.push(set_create_line(name, family, members));
    lines.push(format!("swap {temp} {name}"));
    lines.push(format!("destroy {temp}"));
    lines
}

impl FamilyRules {
    /// The whole state as one `iptables-restore --noflush` input: every chain of ours
    /// declared (which empties it) and refilled.
    pub fn iptables_restore(&self, ids: &BTreeMap<String, RuleRef>) -> String {
        let mut out = String::new();
        if !self.ids.is_empty() {
            out.push_str("# palisade rule ids\n");
            for id in &self.ids {
                if let Some(r) = ids.get(id) {
                    let _ = writeln!(out, "# {id} = {}", describe(r));
                }
            }
        }
        out.push_str("*filter\n");
        for chain in self.chains.keys() {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for lines in self.chains.values() {
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The whole state as `ipset restore -exist` input: each set built and swapped.
    pub fn ipset_restore(&self) -> String {
        let mut out = String::new();
        for (name, set) in &self.sets {
            for line in set_build_and_swap(name, self.family, &set.members) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

fn describe(r: &RuleRef) -> String {
    if !r.isolated_by.is_empty() {
        let by: Vec<String> = r.isolated_by.iter().map(|p| p.to_string()).collect();
        return format!(
            "tier {} {} default {:?}, isolated by {}",
            r.tier,
            r.direction.as_str(),
            r.action,
            by.join(", ")
        );
    }
    match &r.policy {
        Some(p) => format!(
            "tier {} {} {} rule {}{} {:?}",
            r.tier,
            p,
            r.direction.as_str(),
            r.rule_index.map(|i| i.to_string()).unwrap_or_default(),
            r.rule_name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            r.action
        ),
        None if r.action == Action::Accept => format!(
            "{} every tier passed (last: {}), Accept",
            r.direction.as_str(),
            r.tier
        ),
        None => format!(
            "tier {} {} default {:?}",
            r.tier,
            r.direction.as_str(),
            r.action
        ),
    }
}

/// An address set's ipset members, with exactly [`AddressSet::contains`] semantics.
///
/// ipset `hash:net` decides by the most specific matching prefix, as `contains`
/// does; two things need care. A `/0` cannot be stored: it becomes the two `/1`
/// halves, with the flag the original set gives a `/1` that is no entry or
/// exception of its own. A net that is both an entry and an exception is not in
/// the set (`contains` needs the entry to be strictly more specific), so it is
/// stored once, as `nomatch`. Members of the other family are ignored (the set is
/// only ever consulted for packets of its own family).
pub fn set_members(set: &AddressSet) -> NetMembers {
    let family_ok = |n: &IpNet| {
        matches!(
            (set.family, n),
            (Family::IPv4, IpNet::V4(_)) | (Family::IPv6, IpNet::V6(_))
        )
    };
    let entries: BTreeSet<IpNet> = set
        .entries
        .iter()
        .filter(|n| family_ok(n))
        .map(|n| n.trunc())
        .collect();
    let excepts: BTreeSet<IpNet> = set
        .except
        .iter()
        .filter(|n| family_ok(n))
        .map(|n| n.trunc())
        .collect();
    let zero_entry = entries.iter().any(|n| n.prefix_len() == 0);
    let zero_except = excepts.iter().any(|n| n.prefix_len() == 0);
    let mut out = NetMembers::new();
    for e in entries.iter().filter(|n| n.prefix_len() > 0) {
        out.insert(*e, excepts.contains(e));
    }
    for x in excepts.iter().filter(|n| n.prefix_len() > 0) {
        out.insert(*x, true);
    }
    if zero_entry {
        for half in halves(set.family) {
            out.entry(half).or_insert(zero_except);
        }
    }
    out
}

fn halves(family: Family) -> [IpNet; 2] {
    match family {
        Family::IPv4 => [
            IpNet::V4(Ipv4Net::new([0, 0, 0, 0].into(), 1).expect("valid /1")),
            IpNet::V4(Ipv4Net::new([128, 0, 0, 0].into(), 1).expect("valid /1")),
        ],
        Family::IPv6 => [
            IpNet::V6(Ipv6Net::new(0u128.into(), 1).expect("valid /1")),
            IpNet::V6(Ipv6Net::new((1u128 << 127).into(), 1).expect("valid /1")),
        ],
    }
}

/// IPv6 neighbour solicitations and advertisements that cross FORWARD: on a bridged
/// CNI with `bridge-nf-call-ip6tables` (flannel's and kubenet's cni0, the bridge
/// plugin) pods resolve each other through the bridge, and these packets are
/// UNTRACKED by conntrack (neither ESTABLISHED nor INVALID), so without these rules
/// they would be judged by the pod chains like new connections and an isolated pod
/// could not resolve its peers. Hop limit 255 only: a genuine neighbour discovery
/// packet never crossed a router (RFC 4861 receivers drop any other).
fn neighbour_discovery() -> Vec<String> {
    ["neighbour-solicitation", "neighbour-advertisement"]
        .iter()
        .map(|t| {
            format!(
                "-A {CHAIN_FORWARD} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq 255 \
                 -m comment --comment \"neighbour discovery\" -j RETURN"
            )
        })
        .collect()
}

fn mark_hex(v: u32) -> String {
    format!("{v:#x}")
}

fn host_prefix(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn truncate_comment(mut text: String) -> String {
    // Sanitized text is ASCII, so byte truncation keeps characters whole.
    text.truncate(255);
    text
}

fn dir_word(direction: Direction) -> &'static str {
    direction.as_str()
}

struct FamilyRenderer<'a> {
    rs: &'a NodeRuleSet,
    family: Family,
    opts: RenderOptions,
    ids: &'a mut BTreeMap<String, RuleRef>,
    out: FamilyRules,
    /// chain or set name → what it stands for (to detect hash collisions).
    owners: BTreeMap<String, String>,
    /// Set index → ipset name, `None` for sets of the other family.
    set_names: Vec<Option<String>>,
    /// The sets a rule matches on (the others are not installed).
    used_sets: BTreeSet<String>,
    /// The merged set of the policy chain being rendered (`None`: it merges nothing).
    merging: Option<Merged>,
}

/// At most this many addresses and ports in a rule match merged into its policy's
/// `hash:net,port` set (each pair is one member): larger peer sets stay shared sets of
/// their own, so a big selector used by many policies is stored once.
const MERGE_MAX_NETS: usize = 64;
const MERGE_MAX_PORTS: usize = 16;

/// The rule matches of one policy chain merged into one `hash:net,port` set.
#[derive(Default)]
struct Merged {
    members: Members,
    /// The rules merged, in order: (index, short id, the ports their merged matches take).
    rules: Vec<MergedRule>,
    /// Which rule a merged (protocol, port) belongs to: no two merged rules share one,
    /// so a logged packet's port tells which rule accepted it.
    port_owner: BTreeMap<(&'static str, u16), usize>,
    /// Set once a match is not merged: no later match is, so every merged match comes
    /// before every rule line, and a packet is logged under the first rule that matches
    /// it (two merged rules never match one packet: they share no port).
    closed: bool,
}

type MergedRule = (usize, String, BTreeSet<(&'static str, u16)>);

impl Merged {
    /// Takes a match of rule `index` (`id`) when none of its ports belongs to another
    /// merged rule.
    fn take(&mut self, index: usize, id: &str, members: Vec<Member>) -> bool {
        if members.is_empty() {
            // Its peers are all of the other family: it matches nothing here.
            return true;
        }
        let ports: BTreeSet<(&'static str, u16)> = members.iter().filter_map(|m| m.port).collect();
        if ports
            .iter()
            .any(|p| self.port_owner.get(p).is_some_and(|&owner| owner != index))
        {
            return false;
        }
        for p in &ports {
            self.port_owner.insert(*p, index);
        }
        match self.rules.last_mut() {
            Some((last, _, taken)) if *last == index => taken.extend(ports),
            _ => self.rules.push((index, id.to_string(), ports)),
        }
        self.members.extend(members.into_iter().map(|m| (m, false)));
        true
    }
}

impl<'a> FamilyRenderer<'a> {
    fn new(
        rs: &'a NodeRuleSet,
        family: Family,
        opts: RenderOptions,
        ids: &'a mut BTreeMap<String, RuleRef>,
    ) -> Self {
        FamilyRenderer {
            rs,
            family,
            opts,
            ids,
            out: FamilyRules {
                family,
                chains: BTreeMap::new(),
                sets: BTreeMap::new(),
                ids: BTreeSet::new(),
            },
            owners: BTreeMap::new(),
            set_names: Vec::new(),
            used_sets: BTreeSet::new(),
            merging: None,
        }
    }

    fn claim(&mut self, name: &str, owner: String) -> Result<bool, RenderError> {
        match self.owners.get(name) {
            Some(existing) if *existing == owner => Ok(false),
            Some(existing) => Err(RenderError::Collision {
                name: name.to_string(),
                first: existing.clone(),
                second: owner,
            }),
            None => {
                self.owners.insert(name.to_string(), owner);
                Ok(true)
            }
        }
    }

    fn run(mut self) -> Result<FamilyRules, RenderError> {
        for set in &self.rs.sets {
            if set.family != self.family {
                self.set_names.push(None);
                continue;
            }
            let name = set_name(&set.name, self.family);
            // Only named here (collisions are found at once); a set is rendered once a
            // rule matches on it (`used_sets`), and a merged rule's set never is.
            self.claim(&name, format!("set {}", set.name))?;
            self.set_names.push(Some(name));
        }

        let mask = mark_hex(MARK_MASK);
        self.out.chains.insert(
            CHAIN_ACCEPT.to_string(),
            vec![format!(
                "-A {CHAIN_ACCEPT} -j MARK --set-xmark {}/{mask}",
                mark_hex(MARK_ACCEPT)
            )],
        );
        self.out.chains.insert(
            CHAIN_PASS.to_string(),
            vec![format!(
                "-A {CHAIN_PASS} -j MARK --set-xmark {}/{mask}",
                mark_hex(MARK_PASS)
            )],
        );
        let deny = if self.opts.reject {
            let unreachable = match self.family {
                Family::IPv4 => "icmp-port-unreachable",
                Family::IPv6 => "icmp6-port-unreachable",
            };
            vec![
                format!("-A {CHAIN_DENY} -p tcp -j REJECT --reject-with tcp-reset"),
                format!("-A {CHAIN_DENY} -j REJECT --reject-with {unreachable}"),
            ]
        } else {
            vec![format!("-A {CHAIN_DENY} -j DROP")]
        };
        self.out.chains.insert(CHAIN_DENY.to_string(), deny);
        for name in [CHAIN_FORWARD, CHAIN_ACCEPT, CHAIN_PASS, CHAIN_DENY] {
            self.claim(name, format!("base chain {name}"))?;
        }

        let mut forward = vec![
            format!("-A {CHAIN_FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            format!("-A {CHAIN_FORWARD} -m conntrack --ctstate INVALID -j DROP"),
        ];
        let mut dispatched = false;
        let mut pickup = Vec::new();
        // Isolated local pods' addresses, for the hairpin rules.
        let mut hairpin: Vec<(String, String)> = Vec::new();
        for direction in [Direction::Egress, Direction::Ingress] {
            for pod in &self.rs.pods {
                let list = match direction {
                    Direction::Ingress => &pod.ingress,
                    Direction::Egress => &pod.egress,
                };
                if list.is_empty() {
                    continue;
                }
                let ips: Vec<&IpAddr> = pod
                    .ips
                    .iter()
                    .filter(|ip| Family::of(ip) == self.family)
                    .collect();
                if ips.is_empty() {
                    continue;
                }
                let target = self.pod_chain(direction, list)?;
                let flag = match direction {
                    Direction::Egress => "-s",
                    Direction::Ingress => "-d",
                };
                // A midstream packet from a pod isolated for ingress may be the reply
                // of a connection to it that its policies deny; one to a pod isolated
                // for egress, of a connection from it.
                let pickup_flag = match direction {
                    Direction::Egress => "-d",
                    Direction::Ingress => "-s",
                };
                for ip in ips {
                    let host = host_prefix(ip);
                    if !hairpin.iter().any(|(h, _)| *h == host) {
                        hairpin.push((host, pod_label(pod)));
                    }
                    forward.push(format!(
                        "-A {CHAIN_FORWARD} {flag} {} -m comment --comment \"{} {}\" -j {target}",
                        host_prefix(ip),
                        dir_word(direction),
                        pod_label(pod)
                    ));
                    pickup.push(format!(
                        "-A {CHAIN_PICKUP} {pickup_flag} {} -m comment --comment \"{} {}\" -j {CHAIN_DENY}",
                        host_prefix(ip),
                        dir_word(direction),
                        pod_label(pod)
                    ));
                    dispatched = true;
                }
            }
        }
        if dispatched {
            forward.push(format!(
                "-A {CHAIN_FORWARD} -m mark ! --mark 0x0/{mask} -j MARK --set-xmark 0x0/{mask}"
            ));
            // Right after the conntrack rules, judged before any pod chain: a pod's
            // traffic to itself (hairpin: a Service that load-balances back to it,
            // DNATed in nat PREROUTING, so FORWARD sees the pod's own address on
            // both sides) is always allowed; then the pickup check.
            let mut early: Vec<String> = hairpin
                .iter()
                .map(|(host, label)| {
                    format!(
                        "-A {CHAIN_FORWARD} -s {host} -d {host} -m comment --comment \"self {label}\" -j RETURN"
                    )
                })
                .collect();
            if self.family == Family::IPv6 {
                early.splice(0..0, neighbour_discovery());
            }
            early.push(format!(
                "-A {CHAIN_FORWARD} -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j {CHAIN_PICKUP}"
            ));
            forward.splice(2..2, early);
            self.claim(CHAIN_PICKUP, format!("base chain {CHAIN_PICKUP}"))?;
            self.out.chains.insert(CHAIN_PICKUP.to_string(), pickup);
        }
        self.out.chains.insert(CHAIN_FORWARD.to_string(), forward);
        for (set, name) in self.rs.sets.iter().zip(&self.set_names) {
            let Some(name) = name else { continue };
            if self.used_sets.contains(name) && !self.out.sets.contains_key(name) {
                self.out.sets.insert(
                    name.clone(),
                    SetRules {
                        source: set.name.clone(),
                        members: set_members(set)
                            .into_iter()
                            .map(|(net, nomatch)| (Member::net(net), nomatch))
                            .collect(),
                    },
                );
            }
        }
        Ok(self.out)
    }

    /// The chain a pod's direction dispatches to.
    fn pod_chain(
        &mut self,
        direction: Direction,
        list: &[TierPolicies],
    ) -> Result<String, RenderError> {
        let mut tiers = Vec::with_capacity(list.len());
        for tp in list {
            tiers.push(self.tier_chain(direction, tp)?);
        }
        // Allowed because every tier passed (the last one ends in Pass): no rule
        // decided, so the pod chain logs it after the last tier.
        let pass_log = self.pass_through_logged(list);
        if let ([only], false) = (tiers.as_slice(), pass_log) {
            return Ok(only.clone());
        }
        let key = format!(
            "{}|{}{}",
            dir_word(direction),
            tiers.join(","),
            if pass_log { "|log" } else { "" }
        );
        let name = names::pod_chain(direction, &key);
        if self.claim(&name, format!("pod chain {key}"))? {
            let mut lines = Vec::new();
            for (i, t) in tiers.iter().enumerate() {
                lines.push(format!("-A {name} -j {t}"));
                if i + 1 < tiers.len() {
                    lines.push(format!(
                        "-A {name} -m mark --mark {}/{} -j RETURN",
                        mark_hex(MARK_ACCEPT),
                        mark_hex(MARK_ACCEPT)
                    ));
                }
            }
            if let (true, Some(audit), Some(last)) = (pass_log, self.opts.audit, list.last()) {
                let tier = self
                    .rs
                    .tiers
                    .get(last.tier)
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                let id = names::pass_through_id(&tier, direction, &key);
                self.register(RuleRef {
                    id: id.clone(),
                    tier,
                    policy: None,
                    direction,
                    rule_index: None,
                    rule_name: None,
                    action: Action::Accept,
                    isolated_by: Vec::new(),
                });
                lines.push(format!(
                    "-A {name} -m mark ! --mark {}/{} {}",
                    mark_hex(MARK_ACCEPT),
                    mark_hex(MARK_ACCEPT),
                    self.nflog(&audit, &id)
                ));
            }
            self.out.chains.insert(name.clone(), lines);
        }
        Ok(name)
    }

    /// Whether a pod's connections that every tier passes are logged: the last tier
    /// can end in Pass (not the NetworkPolicy tier, default action Pass) and a policy
    /// of the pod in that direction records allowed connections.
    fn pass_through_logged(&self, list: &[TierPolicies]) -> bool {
        let rs = self.rs;
        if self.opts.audit.is_none() {
            return false;
        }
        let Some(last) = list.last().and_then(|tp| rs.tiers.get(tp.tier)) else {
            return false;
        };
        if last.networkpolicy || last.default_action == DefaultAction::Deny {
            return false;
        }
        list.iter()
            .flat_map(|tp| &tp.policies)
            .filter_map(|&p| rs.policies.get(p))
            .any(|p| rs.audit_of(p) == AuditMode::All)
    }

    fn tier_chain(
        &mut self,
        direction: Direction,
        tp: &TierPolicies,
    ) -> Result<String, RenderError> {
        let rs = self.rs;
        let tier = rs
            .tiers
            .get(tp.tier)
            .ok_or_else(|| RenderError::invalid("pod", direction.as_str(), "tier out of range"))?;
        let mut policy_chains = Vec::with_capacity(tp.policies.len());
        for &p in &tp.policies {
            let policy = rs.policies.get(p).ok_or_else(|| {
                RenderError::invalid("pod", direction.as_str(), "policy out of range")
            })?;
            policy_chains.push(self.policy_chain(policy, direction)?);
        }
        let deny_at_end = tier.networkpolicy || tier.default_action == DefaultAction::Deny;
        let key = format!(
            "{}|{}|np={}|deny={}|{}",
            dir_word(direction),
            tier.name,
            tier.networkpolicy,
            deny_at_end,
            policy_chains.join(",")
        );
        let name = names::tier_chain(&key);
        if self.claim(&name, format!("tier chain {key}"))? {
            let mask = mark_hex(MARK_MASK);
            let mut lines = vec![format!("-A {name} -j MARK --set-xmark 0x0/{mask}")];
            for (i, pc) in policy_chains.iter().enumerate() {
                lines.push(format!("-A {name} -j {pc}"));
                if i + 1 < policy_chains.len() || deny_at_end {
                    lines.push(format!("-A {name} -m mark ! --mark 0x0/{mask} -j RETURN"));
                }
            }
            if deny_at_end {
                let id = tier_default_id(&tier.name, direction);
                let comment = truncate_comment(format!(
                    "{id} pal:{}:default:{}:Deny",
                    sanitize(&tier.name),
                    dir_word(direction)
                ));
                self.register(RuleRef {
                    id: id.clone(),
                    tier: tier.name.clone(),
                    policy: None,
                    direction,
                    rule_index: None,
                    rule_name: None,
                    action: Action::Deny,
                    isolated_by: Vec::new(),
                });
                if let Some(log) = self.default_deny_log(&id, &key, direction, tp) {
                    lines.push(format!(
                        "-A {name} -m comment --comment \"{comment}\" {log}"
                    ));
                }
                lines.push(format!(
                    "-A {name} -m comment --comment \"{comment}\" -j {CHAIN_DENY}"
                ));
            }
            self.out.chains.insert(name.clone(), lines);
        }
        Ok(name)
    }

    fn register(&mut self, r: RuleRef) {
        self.out.ids.insert(r.id.clone());
        self.ids.insert(r.id.clone(), r);
    }

    fn policy_chain(
        &mut self,
        policy: &CompiledPolicy,
        direction: Direction,
    ) -> Result<String, RenderError> {
        let name = names::policy_chain(&policy.id, direction);
        if !self.claim(
            &name,
            format!("policy {} {}", policy_key(&policy.id), dir_word(direction)),
        )? {
            return Ok(name);
        }
        let rules = match direction {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        let tier_name = self
            .rs
            .tiers
            .get(policy.tier)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        // A policy whose rules in this direction all accept: the order of its rules does
        // not matter, so its small port-and-peer matches become one `hash:net,port` set
        // (one set and one rule instead of one of each per rule: a node creates far fewer
        // sets). Merged rules never share a port, so a logged packet's port still tells
        // which rule accepted it.
        let mergeable = !rules.is_empty() && rules.iter().all(|r| r.action == Action::Accept);
        self.merging = mergeable.then(Merged::default);
        let mut lines = Vec::new();
        for rule in rules {
            self.rule_lines(&name, &tier_name, policy, direction, rule, &mut lines)?;
        }
        let merged = self.merging.take();
        if let Some(merged) = merged.filter(|m| !m.members.is_empty()) {
            // First: the merged matches precede every match not merged (`Merged::closed`).
            let merged_lines = self.merged_lines(&name, &tier_name, policy, direction, merged)?;
            lines.splice(0..0, merged_lines);
        }
        self.out.chains.insert(name.clone(), lines);
        Ok(name)
    }

    /// The members of a rule match that can go into its policy's merged set: a match
    /// of a few plain peers (no exception) on a few TCP, UDP or SCTP ports, on any
    /// local pod the policy selects. `None`: rendered as a rule of its own.
    fn merge_members(&self, m: &RuleMatch) -> Option<Vec<Member>> {
        if m.local.is_some() {
            return None;
        }
        let mut ports = Vec::new();
        for r in m.ports.as_ref()? {
            if !r.protocol.has_ports() {
                return None;
            }
            let proto = proto_name(r.protocol, self.family);
            for port in r.start..=r.end {
                ports.push((proto, port));
                if ports.len() > MERGE_MAX_PORTS {
                    return None;
                }
            }
        }
        if ports.is_empty() {
            return None;
        }
        let mut nets = BTreeSet::new();
        for &i in m.peers.as_ref()? {
            let set = self.rs.sets.get(i)?;
            if set.family != self.family {
                continue; // matches nothing here
            }
            if set.entries.len() + set.except.len() > MERGE_MAX_NETS {
                return None;
            }
            for (net, nomatch) in set_members(set) {
                if nomatch {
                    // An exception could hide another rule's entry: not a union.
                    return None;
                }
                nets.insert(net);
            }
            if nets.len() > MERGE_MAX_NETS {
                return None;
            }
        }
        Some(
            nets.iter()
                .flat_map(|net| {
                    ports.iter().map(|&port| Member {
                        net: *net,
                        port: Some(port),
                    })
                })
                .collect(),
        )
    }

    /// The rule matching a policy chain's merged set (and the set). Logged, it calls the
    /// port-dispatch chain and returns to the tier chain when that accepted; a packet no
    /// line of it takes (a set updated before the chains are) goes on with the rules
    /// after, as if the merged rule had not matched.
    fn merged_lines(
        &mut self,
        chain: &str,
        tier: &str,
        policy: &CompiledPolicy,
        direction: Direction,
        merged: Merged,
    ) -> Result<Vec<String>, RenderError> {
        let key = names::merged_set_key(&policy.id, direction);
        let set = set_name(&key, self.family);
        self.claim(&set, format!("set {key}"))?;
        let indices: Vec<String> = merged.rules.iter().map(|r| r.0.to_string()).collect();
        let first_id = merged.rules.first().map(|r| r.1.clone());
        let policy_name = match &policy.id.namespace {
            Some(ns) => format!("{ns}/{}", policy.id.name),
            None => policy.id.name.clone(),
        };
        let comment = truncate_comment(format!(
            "{} pal:{}:{}:{}:{}:-:Accept",
            first_id.unwrap_or_default(),
            sanitize(tier),
            kind_short(policy.id.kind),
            sanitize(&policy_name),
            indices.join(",")
        ));
        let remote = match direction {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        };
        let log = match self.log_audit(policy, Action::Accept) {
            None => None,
            Some(audit) => Some(self.merged_log_chain(&key, &merged.rules, &audit)?),
        };
        self.out.sets.insert(
            set.clone(),
            SetRules {
                source: key,
                members: merged.members,
            },
        );
        self.used_sets.insert(set.clone());
        let matched = format!(
            "-A {chain} -m set --match-set {set} {remote},dst -m comment --comment \"{comment}\""
        );
        Ok(match log {
            None => vec![format!("{matched} -g {CHAIN_ACCEPT}")],
            Some(log) => vec![
                format!("{matched} -j {log}"),
                format!(
                    "-A {chain} -m mark ! --mark 0x0/{} -j RETURN",
                    mark_hex(MARK_MASK)
                ),
            ],
        })
    }

    /// The chain a logged merged set calls: the packet's port picks the rule that
    /// accepted it, and its log chain (which logs under that rule's id and sets the
    /// ACCEPT mark). A packet no line takes returns unmarked.
    fn merged_log_chain(
        &mut self,
        key: &str,
        rules: &[MergedRule],
        audit: &AuditRules,
    ) -> Result<String, RenderError> {
        let name = names::merged_log_chain(key);
        self.claim(&name, format!("merged log chain {key}"))?;
        let mut lines = Vec::new();
        for (_, id, ports) in rules {
            let log = self.log_chain(id, Action::Accept, audit)?;
            for (proto, port) in ports {
                lines.push(format!(
                    "-A {name} -p {proto} -m {proto} --dport {port} -g {log}"
                ));
            }
        }
        self.out.chains.insert(name.clone(), lines);
        Ok(name)
    }

    fn rule_lines(
        &mut self,
        chain: &str,
        tier: &str,
        policy: &CompiledPolicy,
        direction: Direction,
        rule: &CompiledRule,
        lines: &mut Vec<String>,
    ) -> Result<(), RenderError> {
        let id = rule_id(&policy.id, rule.index, direction);
        let policy_name = match &policy.id.namespace {
            Some(ns) => format!("{ns}/{}", policy.id.name),
            None => policy.id.name.clone(),
        };
        let comment = truncate_comment(format!(
            "{id} pal:{}:{}:{}:{}:{}:{:?}",
            sanitize(tier),
            kind_short(policy.id.kind),
            sanitize(&policy_name),
            rule.index,
            rule.name
                .as_deref()
                .map(sanitize)
                .unwrap_or_else(|| "-".to_string()),
            rule.action
        ));
        self.register(RuleRef {
            id: id.clone(),
            tier: tier.to_string(),
            policy: Some(policy.id.clone()),
            direction,
            rule_index: Some(rule.index),
            rule_name: rule.name.clone(),
            action: rule.action,
            isolated_by: Vec::new(),
        });
        let log = self.log_audit(policy, rule.action);
        let target = match log {
            Some(_) => format!("-g {}", names::log_chain(&id)),
            None => match rule.action {
                Action::Accept => format!("-g {CHAIN_ACCEPT}"),
                Action::Pass => format!("-g {CHAIN_PASS}"),
                Action::Deny => format!("-j {CHAIN_DENY}"),
            },
        };
        let (remote_dir, local_dir) = match direction {
            Direction::Ingress => ("src", "dst"),
            Direction::Egress => ("dst", "src"),
        };
        let first_line = lines.len();
        for m in &rule.matches {
            if self.merging.as_ref().is_some_and(|mg| !mg.closed) {
                let members = self.merge_members(m);
                if let Some(merged) = self.merging.as_mut() {
                    let taken = members.is_some_and(|ms| merged.take(rule.index, &id, ms));
                    if taken {
                        continue;
                    }
                    merged.closed = true;
                }
            }
            let peers: Vec<Option<String>> = match &m.peers {
                None => vec![None],
                Some(list) => {
                    let mut seen = BTreeSet::new();
                    list.iter()
                        .filter_map(|&i| self.set_names.get(i).cloned().flatten())
                        .filter(|n| seen.insert(n.clone()))
                        .map(Some)
                        .collect()
                }
            };
            let local: Option<String> = match m.local {
                None => None,
                Some(i) => match self.set_names.get(i).cloned().flatten() {
                    Some(n) => Some(n),
                    None => continue, // a set of the other family: matches nothing here
                },
            };
            let ports: Vec<String> = match &m.ports {
                None => vec![String::new()],
                Some(ranges) => port_specs(ranges, self.family),
            };
            for peer in &peers {
                for port in &ports {
                    let mut line = format!("-A {chain}");
                    // The port first: a rule whose port does not match then
                    // skips its set lookups (~0.25 us each, against ~5 ns for a port).
                    if !port.is_empty() {
                        line.push(' ');
                        line.push_str(port);
                    }
                    if let Some(p) = peer {
                        let _ = write!(line, " -m set --match-set {p} {remote_dir}");
                        self.used_sets.insert(p.clone());
                    }
                    if let Some(l) = &local {
                        let _ = write!(line, " -m set --match-set {l} {local_dir}");
                        self.used_sets.insert(l.clone());
                    }
                    let _ = write!(line, " -m comment --comment \"{comment}\" {target}");
                    lines.push(line);
                }
            }
        }
        // The log chain only when a line of this family goes to it (a rule whose
        // sets are all of the other family has none here).
        if let Some(audit) = log {
            if lines.len() > first_line {
                self.log_chain(&id, rule.action, &audit)?;
            }
        }
        Ok(())
    }

    /// `-j NFLOG …` for decision `id`.
    fn nflog(&self, audit: &AuditRules, id: &str) -> String {
        format!("-j NFLOG --nflog-group {} --nflog-prefix {id}", audit.group)
    }

    /// The rate limit of logged denials: per source address, one table per family
    /// shared by every denying rule, so a flood from one source costs a bounded
    /// number of log messages whatever rules it hits.
    fn deny_limit(&self, audit: &AuditRules) -> String {
        // Per source first, so a source over its limit spends none of the node's.
        let node = audit.deny_node_per_sec.max(1);
        format!(
            "-m hashlimit --hashlimit-upto {}/sec --hashlimit-burst {} --hashlimit-mode srcip --hashlimit-name {DENY_LOG_LIMIT} \
             -m hashlimit --hashlimit-upto {node}/sec --hashlimit-burst {} --hashlimit-name {DENY_LOG_NODE_LIMIT}",
            audit.deny_per_sec.max(1),
            audit.deny_burst.max(1),
            node.saturating_mul(2),
        )
    }

    /// Whether a rule of `policy` with `action` is logged (and how). Pass decides
    /// nothing and is never logged; the tier after it decides.
    fn log_audit(&self, policy: &CompiledPolicy, action: Action) -> Option<AuditRules> {
        let audit = self.opts.audit?;
        let mode = self.rs.audit_of(policy);
        let logged = match action {
            Action::Accept => mode == AuditMode::All,
            Action::Deny => mode != AuditMode::None,
            Action::Pass => false,
        };
        logged.then_some(audit)
    }

    /// The chain a logged rule goes to: it logs the decision under the rule's id,
    /// then does what the rule does (Accept: the ACCEPT mark, back in the tier
    /// chain as after `-g PALISADE-ACCEPT`; Deny: PALISADE-DENY, the log
    /// rate-limited per source).
    fn log_chain(
        &mut self,
        id: &str,
        action: Action,
        audit: &AuditRules,
    ) -> Result<String, RenderError> {
        let name = names::log_chain(id);
        if self.claim(&name, format!("log chain {id}"))? {
            let log = self.nflog(audit, id);
            let lines = match action {
                Action::Accept => vec![
                    format!("-A {name} {log}"),
                    format!(
                        "-A {name} -j MARK --set-xmark {}/{}",
                        mark_hex(MARK_ACCEPT),
                        mark_hex(MARK_MASK)
                    ),
                ],
                _ => vec![
                    format!("-A {name} {} {log}", self.deny_limit(audit)),
                    format!("-A {name} -j {CHAIN_DENY}"),
                ],
            };
            self.out.chains.insert(name.clone(), lines);
        }
        Ok(name)
    }

    /// The log rule before a tier chain's default denial, `None` when not logged
    /// (audit off, or every policy isolating the pods says `None`). Its id names the
    /// tier chain, and maps to the policies that isolate the pods (the chain's).
    fn default_deny_log(
        &mut self,
        tier_id: &str,
        chain_key: &str,
        direction: Direction,
        tp: &TierPolicies,
    ) -> Option<String> {
        let audit = self.opts.audit?;
        let rs = self.rs;
        let policies: Vec<&CompiledPolicy> = tp
            .policies
            .iter()
            .filter_map(|&p| rs.policies.get(p))
            .collect();
        if policies.iter().all(|p| rs.audit_of(p) == AuditMode::None) {
            return None;
        }
        let id = isolation_id(tier_id, chain_key);
        let tier = rs
            .tiers
            .get(tp.tier)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        self.register(RuleRef {
            id: id.clone(),
            tier,
            policy: None,
            direction,
            rule_index: None,
            rule_name: None,
            action: Action::Deny,
            isolated_by: policies.iter().map(|p| p.id.clone()).collect(),
        });
        Some(format!(
            "{} {}",
            self.deny_limit(&audit),
            self.nflog(&audit, &id)
        ))
    }
}

fn pod_label(pod: &LocalPod) -> String {
    sanitize(&format!("{}/{}", pod.namespace, pod.name))
}

fn proto_name(protocol: Protocol, family: Family) -> &'static str {
    match (protocol, family) {
        (Protocol::Tcp, _) => "tcp",
        (Protocol::Udp, _) => "udp",
        (Protocol::Sctp, _) => "sctp",
        (Protocol::Icmp, Family::IPv4) => "icmp",
        (Protocol::Icmp, Family::IPv6) => "ipv6-icmp",
    }
}

/// Port matches for a list of ranges: one per protocol (ICMP: the protocol alone),
/// overlapping and adjacent ranges merged, several ranges as `multiport` (at most 15
/// slots each, a range taking two).
fn port_specs(ranges: &[PortRange], family: Family) -> Vec<String> {
    let mut by_proto: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    for r in ranges {
        by_proto
            .entry(r.protocol)
            .or_default()
            .push((r.start, r.end));
    }
    let mut out = Vec::new();
    for (proto, mut list) in by_proto {
        let name = proto_name(proto, family);
        if !proto.has_ports() {
            out.push(format!("-p {name}"));
            continue;
        }
        list.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (s, e) in list {
            match merged.last_mut() {
                Some(last) if u32::from(s) <= u32::from(last.1) + 1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let fmt = |(s, e): (u16, u16)| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}:{e}")
            }
        };
        if let [only] = merged.as_slice() {
            out.push(format!("-p {name} -m {name} --dport {}", fmt(*only)));
            continue;
        }
        let mut chunk: Vec<String> = Vec::new();
        let mut slots = 0;
        for r in merged {
            let need = if r.0 == r.1 { 1 } else { 2 };
            if slots + need > 15 {
                out.push(format!(
                    "-p {name} -m multiport --dports {}",
                    chunk.join(",")
                ));
                chunk.clear();
                slots = 0;
            }
            chunk.push(fmt(r));
            slots += need;
        }
        if !chunk.is_empty() {
            out.push(format!(
                "-p {name} -m multiport --dports {}",
                chunk.join(",")
            ));
        }
    }
    out
}

/// What apply knows is installed for one family: `None` content means "exists,
/// content unknown" (read from the kernel), which forces a rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub chains: BTreeMap<String, Option<Vec<String>>>,
    pub sets: BTreeMap<String, Option<Members>>,
}

impl From<&FamilyRules> for Installed {
    fn from(f: &FamilyRules) -> Self {
        Installed {
            chains: f
                .chains
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            sets: f
                .sets
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.members.clone())))
                .collect(),
        }
    }
}

/// The smallest update from `old` to `new` for one family, in the order apply
/// runs it: sets created and updated, then chains (one atomic restore), then
/// stale sets destroyed (no rule references them any more).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// `ipset restore -exist` lines: new sets created and filled, changed sets
    /// updated (host-prefix deltas as add/del, anything else built and swapped).
    pub ipset_before: Vec<String>,
    /// `iptables-restore --noflush` input, `None` when no chain changed.
    pub iptables: Option<String>,
    /// `ipset restore -exist` lines destroying sets no longer used.
    pub ipset_after: Vec<String>,
    pub chains_written: usize,
    pub chains_removed: usize,
    pub sets_created: usize,
    pub sets_updated: usize,
    pub sets_removed: usize,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.ipset_before.is_empty() && self.iptables.is_none() && self.ipset_after.is_empty()
    }
}

fn is_host(member: &Member) -> bool {
    member.net.prefix_len() == member.net.max_prefix_len()
}

/// Computes the update from what is installed to the new state.
pub fn delta(old: &Installed, new: &FamilyRules) -> Delta {
    let mut d = Delta::default();
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => {
                d.sets_created += 1;
                // Not in the kernel (what is installed was read from it): create
                // and fill; no rule references it yet.
                d.ipset_before
                    .push(set_create_line(name, new.family, &set.members));
                for (member, nomatch) in &set.members {
                    d.ipset_before.push(set_add_line(name, member, *nomatch));
                }
            }
            Some(Some(members)) if *members == set.members => {}
            Some(Some(members)) => {
                d.sets_updated += 1;
                let removed: Vec<&Member> = members
                    .keys()
                    .filter(|n| !set.members.contains_key(n))
                    .collect();
                let added: Vec<(&Member, bool)> = set
                    .members
                    .iter()
                    .filter(|(n, _)| !members.contains_key(n))
                    .map(|(n, f)| (n, *f))
                    .collect();
                let flag_changed = set
                    .members
                    .iter()
                    .any(|(n, f)| members.get(n).is_some_and(|old| old != f));
                let host_only = !flag_changed
                    && removed.iter().all(|n| is_host(n))
                    && added.iter().all(|(n, _)| is_host(n));
                if host_only {
                    // A host prefix is the most specific entry for its one address,
                    // so adding or deleting it flips that address from its old to its
                    // new membership and touches no other: atomic per address.
                    for n in removed {
                        d.ipset_before.push(format!("del {name} {n}"));
                    }
                    for (n, f) in added {
                        d.ipset_before.push(set_add_line(name, n, f));
                    }
                } else {
                    d.ipset_before
                        .extend(set_build_and_swap(name, new.family, &set.members));
                }
            }
            Some(None) => {
                d.sets_updated += 1;
                d.ipset_before
                    .extend(set_build_and_swap(name, new.family, &set.members));
            }
        }
    }
    let mut declare = Vec::new();
    let mut rules = Vec::new();
    let mut remove = Vec::new();
    for (name, lines) in &new.chains {
        let same = matches!(old.chains.get(name), Some(Some(old_lines)) if old_lines == lines);
        if !same {
            d.chains_written += 1;
            declare.push(format!(":{name} - [0:0]"));
            rules.extend(lines.iter().cloned());
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            d.chains_removed += 1;
            declare.push(format!(":{name} - [0:0]"));
            remove.push(format!("-X {name}"));
        }
    }
    if !declare.is_empty() {
        let mut text = String::from("*filter\n");
        for l in declare.iter().chain(&rules).chain(&remove) {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        d.iptables = Some(text);
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            d.sets_removed += 1;
            d.ipset_after.push(format!("destroy {name}"));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test net")
    }

    fn set(family: Family, entries: &[&str], except: &[&str]) -> AddressSet {
        AddressSet {
            name: "s".into(),
            family,
            entries: entries.iter().map(|s| net(s)).collect(),
            except: except.iter().map(|s| net(s)).collect(),
        }
    }

    /// ipset semantics over members: the most specific matching member decides.
    fn ipset_contains(members: &NetMembers, ip: IpAddr) -> bool {
        members
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .is_some_and(|(_, nomatch)| !nomatch)
    }

    #[test]
    fn members_match_contains() {
        let cases = [
            set(Family::IPv4, &["0.0.0.0/0"], &["10.0.0.0/8"]),
            set(Family::IPv4, &["0.0.0.0/0", "0.0.0.0/1"], &["0.0.0.0/0"]),
            set(Family::IPv4, &["0.0.0.0/0"], &["0.0.0.0/1"]),
            set(Family::IPv4, &["10.0.0.0/8"], &["10.0.0.0/8"]),
            set(
                Family::IPv4,
                &["10.0.0.0/8", "10.1.2.0/24"],
                &["10.1.0.0/16"],
            ),
            set(Family::IPv4, &["10.0.0.5/8"], &[]),
            set(Family::IPv6, &["::/0"], &["fd00::/8", "2001:db8::/32"]),
        ];
        let ips: Vec<IpAddr> = [
            "0.0.0.1",
            "1.2.3.4",
            "10.0.0.1",
            "10.1.0.1",
            "10.1.2.3",
            "127.0.0.1",
            "128.0.0.1",
            "200.1.1.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "2001:db8::1",
            "8000::1",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        for s in &cases {
            let m = set_members(s);
            assert!(m.keys().all(|n| n.prefix_len() > 0), "{s:?}");
            for ip in &ips {
                if Family::of(ip) != s.family {
                    continue;
                }
                assert_eq!(ipset_contains(&m, *ip), s.contains(*ip), "{s:?} {ip}");
            }
        }
    }

    #[test]
    fn ports_merge_and_chunk() {
        let r = |s, e| PortRange {
            protocol: Protocol::Tcp,
            start: s,
            end: e,
        };
        assert_eq!(
            port_specs(&[r(80, 80), r(81, 90)], Family::IPv4),
            vec!["-p tcp -m tcp --dport 80:90"]
        );
        let many: Vec<PortRange> = (0..20).map(|i| r(i * 10, i * 10)).collect();
        let specs = port_specs(&many, Family::IPv4);
        assert_eq!(specs.len(), 2);
        assert!(specs[0].contains("--dports 0,10,20"));
    }

    #[test]
    fn comment_round_trip() {
        let c = "P0011223344556677R3I pal:admin:ANP:ns/x:3:allow-dns:Accept";
        let p = parse_comment(c).expect("parses");
        assert_eq!(p.short_id, "P0011223344556677R3I");
        assert_eq!(p.rule_index, Some(3));
        assert_eq!(p.rule_name.as_deref(), Some("allow-dns"));
        assert_eq!(p.action, Action::Accept);
        let d = parse_comment("T00R pal:baseline:default:egress:Deny").expect("parses");
        assert_eq!(d.kind, None);
        assert_eq!(d.action, Action::Deny);
    }
}
