//! Names of everything Palisade installs, and the packet-mark bits it uses.
//!
//! Every chain starts with `PALISADE-` and every ipset with `PAL-`, so that apply
//! and cleanup can tell ours from foreign objects by name alone. Names that stand
//! for a policy, a pod or a set carry a 64-bit FNV-1a hash of what they stand for:
//! stable across versions, processes and machines, so an unchanged policy keeps
//! its chain and an unchanged set its ipset, and small changes stay small.

use palisade_policy::model::{Direction, Family, PolicyId, PolicyKind};

/// Prefix of every chain we own.
pub const CHAIN_PREFIX: &str = "PALISADE-";
/// Prefix of every ipset we own.
pub const SET_PREFIX: &str = "PAL-";
/// Suffix of the temporary set used by build-and-swap.
pub const TEMP_SET_SUFFIX: &str = "-T";

/// The chain built-in FORWARD jumps to.
pub const CHAIN_FORWARD: &str = "PALISADE-FORWARD";
/// Goto target of an Accept rule: sets [`MARK_ACCEPT`], then returns to the tier chain.
pub const CHAIN_ACCEPT: &str = "PALISADE-ACCEPT";
/// Goto target of a Pass rule: sets [`MARK_PASS`], then returns to the tier chain.
pub const CHAIN_PASS: &str = "PALISADE-PASS";
/// Jump target of a Deny: DROP (or REJECT with `--reject`).
pub const CHAIN_DENY: &str = "PALISADE-DENY";
/// TCP packets conntrack would pick up midstream (not a SYN, no entry): denied
/// when they come from a pod isolated for ingress or go to one isolated for egress.
pub const CHAIN_PICKUP: &str = "PALISADE-PICKUP";

/// The comment on our hook rule in built-in FORWARD.
pub const HOOK_COMMENT: &str = "palisade: enforce network policy";

/// Set by a matching Accept rule ("this direction is accepted").
pub const MARK_ACCEPT: u32 = 0x0200_0000;
/// Set by a matching Pass rule ("skip the rest of this tier").
pub const MARK_PASS: u32 = 0x0400_0000;
/// Every mark bit Palisade touches; other bits of the packet mark are never changed.
pub const MARK_MASK: u32 = MARK_ACCEPT | MARK_PASS;

/// Chain names are at most this long (iptables allows 28 usable characters).
pub const MAX_CHAIN_LEN: usize = 28;
/// ipset names are at most this long.
pub const MAX_SET_LEN: usize = 31;

/// 64-bit FNV-1a: tiny, dependency-free and stable forever (the names derived from
/// it outlive the process that computed them).
pub fn fnv64(data: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `I` or `E`.
pub fn dir_letter(direction: Direction) -> char {
    match direction {
        Direction::Ingress => 'I',
        Direction::Egress => 'E',
    }
}

/// The short kind used in comments.
pub fn kind_short(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::NetworkPolicy => "NP",
        PolicyKind::ClusterNetworkPolicy => "CNP",
        PolicyKind::AdminNetworkPolicy => "ANP",
        PolicyKind::BaselineAdminNetworkPolicy => "BANP",
        PolicyKind::TieredNetworkPolicy => "TNP",
    }
}

/// The kind for a short kind, the inverse of [`kind_short`].
pub fn kind_from_short(short: &str) -> Option<PolicyKind> {
    Some(match short {
        "NP" => PolicyKind::NetworkPolicy,
        "CNP" => PolicyKind::ClusterNetworkPolicy,
        "ANP" => PolicyKind::AdminNetworkPolicy,
        "BANP" => PolicyKind::BaselineAdminNetworkPolicy,
        "TNP" => PolicyKind::TieredNetworkPolicy,
        _ => return None,
    })
}

/// A canonical string for a policy id (the input of its hash).
pub fn policy_key(id: &PolicyId) -> String {
    format!(
        "{}/{}/{}",
        kind_short(id.kind),
        id.namespace.as_deref().unwrap_or(""),
        id.name
    )
}

/// The hash that names a policy's chains and its short rule ids.
pub fn policy_hash(id: &PolicyId) -> u64 {
    fnv64(&policy_key(id))
}

/// `PALISADE-PI-<hash>` / `PALISADE-PE-<hash>`: one chain per policy and direction,
/// shared by every local pod the policy selects.
pub fn policy_chain(id: &PolicyId, direction: Direction) -> String {
    format!(
        "PALISADE-P{}-{:016x}",
        dir_letter(direction),
        policy_hash(id)
    )
}

/// `PALISADE-T-<hash of content>`: one tier of one direction with a given list of
/// policies, shared by every pod with that list.
pub fn tier_chain(content_key: &str) -> String {
    format!("PALISADE-T-{:016x}", fnv64(content_key))
}

/// `PALISADE-I-<hash>` / `PALISADE-E-<hash>`: a direction's list of tier chains,
/// shared by every pod with that list.
pub fn pod_chain(direction: Direction, content_key: &str) -> String {
    format!(
        "PALISADE-{}-{:016x}",
        dir_letter(direction),
        fnv64(content_key)
    )
}

/// `PAL-<hash>`: the ipset of a compiled address set.
pub fn set_name(compiled_name: &str, family: Family) -> String {
    let fam = match family {
        Family::IPv4 => "4",
        Family::IPv6 => "6",
    };
    format!(
        "{SET_PREFIX}{:016x}",
        fnv64(&format!("{fam}/{compiled_name}"))
    )
}

/// The temporary set used to build a replacement of `set` before swapping it in.
pub fn temp_set_name(set: &str) -> String {
    format!("{set}{TEMP_SET_SUFFIX}")
}

/// Short rule id: `P<policy hash>R<rule index><I|E>` (≤ 25 chars, fits an NFLOG prefix).
pub fn rule_id(id: &PolicyId, rule_index: usize, direction: Direction) -> String {
    format!(
        "P{:016x}R{}{}",
        policy_hash(id),
        rule_index,
        dir_letter(direction)
    )
}

/// `PALISADE-L-<hash of the id>`: logs decision `id` (NFLOG), then does what the
/// rule does (see [`mod@crate::render`]).
pub fn log_chain(id: &str) -> String {
    format!("PALISADE-L-{:016x}", fnv64(id))
}

/// What a policy's merged `hash:net,port` set of one direction stands for (its name is
/// [`set_name`] of it).
pub fn merged_set_key(id: &PolicyId, direction: Direction) -> String {
    format!("merged/{}/{}", policy_key(id), direction.as_str())
}

/// `PALISADE-LM-<hash>`: a logged merged set's chain, from the packet's port to the log
/// chain of the rule that accepted it.
pub fn merged_log_chain(key: &str) -> String {
    format!("PALISADE-LM-{:016x}", fnv64(key))
}

/// The hashlimit table of logged denials per source (per family in the kernel).
pub const DENY_LOG_LIMIT: &str = "pal-deny-log";
/// The hashlimit table of all logged denials of the node (one bucket per family).
pub const DENY_LOG_NODE_LIMIT: &str = "pal-deny-node";

/// NFLOG prefix of a tier chain's default denial: `<tier default id>-<hash of the
/// tier chain>` (≤ 36 chars; NFLOG prefixes take 63): the tier chain says which
/// policies isolate the pods it serves.
pub fn isolation_id(tier_default_id: &str, tier_chain_key: &str) -> String {
    format!("{tier_default_id}-{:016x}", fnv64(tier_chain_key))
}

/// NFLOG prefix of a connection every tier of a pod passed (allowed, no rule
/// decided): `T<last tier hash>P<I|E>-<hash of the pod chain>`.
pub fn pass_through_id(last_tier: &str, direction: Direction, pod_chain_key: &str) -> String {
    format!(
        "T{:016x}P{}-{:016x}",
        fnv64(last_tier),
        dir_letter(direction),
        fnv64(pod_chain_key)
    )
}

/// Short id of a tier's default decision: `T<tier hash>D<I|E>`.
pub fn tier_default_id(tier: &str, direction: Direction) -> String {
    format!("T{:016x}D{}", fnv64(tier), dir_letter(direction))
}

/// Keeps a string safe inside a quoted iptables comment and inside the `:`-separated
/// comment format: anything but `[A-Za-z0-9._/-]` becomes `_`.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether a chain name is ours.
pub fn is_our_chain(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX)
}

/// Whether an ipset name is ours.
pub fn is_our_set(name: &str) -> bool {
    name.starts_with(SET_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn names_fit() {
        let id = PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some("x".repeat(63)),
            name: "y".repeat(253),
        };
        assert!(policy_chain(&id, Direction::Ingress).len() <= MAX_CHAIN_LEN);
        assert!(tier_chain("k").len() <= MAX_CHAIN_LEN);
        assert!(pod_chain(Direction::Egress, "k").len() <= MAX_CHAIN_LEN);
        assert!(CHAIN_FORWARD.len() <= MAX_CHAIN_LEN);
        assert!(temp_set_name(&set_name(&"z".repeat(500), Family::IPv6)).len() <= MAX_SET_LEN);
        assert!(rule_id(&id, 99, Direction::Egress).len() <= 25);
    }

    #[test]
    fn sanitize_keeps_comment_safe() {
        assert_eq!(sanitize("a b:\"c\"/d"), "a_b__c_/d");
    }
}
