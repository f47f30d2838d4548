//! Apply: the only module that runs `iptables`, `ip6tables`, `ipset`, `conntrack`
//! (and `ip`, to list local addresses). Everything runs in the network namespace of
//! the calling thread.
//!
//! An [`Enforcer`] remembers what it installed, so each apply writes only the
//! difference ([`crate::render::delta`]): changed set members as `ipset` add/del (or
//! a build-and-swap), changed chains in one `iptables-restore --noflush` transaction
//! per family. Its first apply reads what the kernel holds (chain names from
//! `iptables-save`, set members from `ipset save`) and rewrites every chain of ours,
//! so a restarted enforcer converges without ever flushing. Before any change, the
//! new rule set's short ids and pods go to the observer (the audit reader's
//! attribution, [`Enforcer::apply_attributed`]), so the first packet a new rule
//! logs is known. Order of one apply:
//!
//! 0. only when a local pod's address now belongs to another pod (a pod deleted
//!    and its address given to a new one): `iptables-restore --noflush -w` per
//!    family of that address, quarantining it (see [`Enforcer::apply`]);
//! 1. `ipset restore -exist`: new sets created and filled, changed sets updated
//!    (before any rule can reference them);
//! 2. `iptables-restore --noflush -w` per family: changed chains replaced and stale
//!    chains deleted, atomically;
//!
//!    steps 1 and 2 run for the two families at once, one thread each (their sets
//!    and tables are independent), 1 before 2 within a family; an error of either
//!    family is returned (both, when both fail);
//! 3. hooks: `-S FORWARD`, and `-I FORWARD 1` when missing or not first (first
//!    apply, and [`Enforcer::ensure_hooks`]);
//! 4. `ipset restore -exist`: stale sets destroyed (no rule references them any more);
//! 5. revocation: conntrack entries of connections the new state denies and the
//!    previous one allowed are deleted (see [`Enforcer::revoke`]).
//!
//! The backend (nft or legacy) is chosen as kube-proxy's iptables wrapper does: the
//! one whose `*-save` shows more rules, nft on a tie.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;
use palisade_policy::compiled::{LocalPod, NodeRuleSet};
use palisade_policy::model::Family;
use serde::Serialize;

use crate::audit::{Attribution, Ids};
use crate::check::check;
use crate::error::{ApplyError, RuleIssue};
use crate::eval::{Evaluator, Flow, Verdict, L4};
use crate::names::{
    is_our_chain, is_our_set, CHAIN_DENY, CHAIN_FORWARD, HOOK_COMMENT, TEMP_SET_SUFFIX,
};
use crate::render::{
    delta, render_checked, AuditRules, Delta, Installed, Member, Members, RenderOptions, Rendered,
};

/// Which iptables implementation to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Backend {
    Nft,
    Legacy,
}

const FAMILIES: [Family; 2] = [Family::IPv4, Family::IPv6];

impl Backend {
    fn tool(self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::IPv4 => "iptables",
            Family::IPv6 => "ip6tables",
        };
        let backend = match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        format!("{base}-{backend}{suffix}")
    }

    pub fn iptables(self, family: Family) -> String {
        self.tool(family, "")
    }

    pub fn save(self, family: Family) -> String {
        self.tool(family, "-save")
    }

    pub fn restore(self, family: Family) -> String {
        self.tool(family, "-restore")
    }
}

/// Options of apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Render denies as REJECT instead of DROP.
    pub reject: bool,
    /// Delete the conntrack entries of connections a new state denies.
    pub revoke: bool,
    /// Log decisions through NFLOG for the audit log; `None`: off.
    pub audit: Option<AuditRules>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            reject: false,
            revoke: true,
            audit: Some(AuditRules::default()),
        }
    }
}

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub version: u64,
    pub chains_written: usize,
    pub chains_removed: usize,
    pub sets_created: usize,
    pub sets_updated: usize,
    pub sets_removed: usize,
    /// conntrack entries deleted.
    pub revoked: usize,
    /// Rules enforced fail-closed.
    pub issues: Vec<RuleIssue>,
    /// Non-fatal failures (revocation of single entries).
    pub errors: Vec<String>,
    pub elapsed_us: u128,
}

/// Programs one node (the current network namespace).
#[derive(Debug)]
pub struct Enforcer {
    backend: Backend,
    opts: ApplyOptions,
    /// What we know is installed, per family; `None` until the first successful
    /// apply and after a failed one (then the next apply re-reads the kernel).
    installed: Option<[Installed; 2]>,
    /// The previous state, to find connections that were allowed.
    previous: Option<Evaluator>,
    /// What the short ids (NFLOG prefixes) of the rules last published stand for.
    ids: Ids,
}

impl Enforcer {
    /// An enforcer on the backend the host uses ([`detect_backend`]).
    pub fn new(opts: ApplyOptions) -> Self {
        Self::with_backend(detect_backend(), opts)
    }

    pub fn with_backend(backend: Backend, opts: ApplyOptions) -> Self {
        Enforcer {
            backend,
            opts,
            installed: None,
            previous: None,
            ids: Arc::default(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Makes the kernel enforce `rs`, changing only what differs from what this
    /// enforcer installed last.
    ///
    /// Address reuse: when an address of a local pod now belongs to another local
    /// pod (the old one deleted, its address given to a new one, often in another
    /// namespace), sets and chains cannot both change at once. New sets with the
    /// old chains would judge the new pod with the old pod's policy chains (its
    /// egress allowances); old sets with new chains would match it as a peer by
    /// the old pod's memberships. So before anything else, one restore per family
    /// quarantines the address (`-s ADDR` / `-d ADDR` to PALISADE-DENY in
    /// PALISADE-FORWARD, right after the conntrack rules: established connections
    /// go on until revocation judges them); the sets change; the chains, quarantine gone, come
    /// last. From the first change on, the address is denied or judged as the new
    /// pod, never as the old one.
    pub fn apply(&mut self, rs: &NodeRuleSet) -> Result<ApplyReport, ApplyError> {
        self.apply_observed(rs, &mut |_, _| {})
    }

    /// [`Enforcer::apply`], keeping the audit reader's `attribution` in step: the
    /// new rule set's ids and pods are published before the kernel changes (see
    /// [`Enforcer::apply_observed`]).
    pub fn apply_attributed(
        &mut self,
        rs: &NodeRuleSet,
        attribution: &Mutex<Attribution>,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_observed(rs, &mut |ids, pods| {
            // A reader that panicked holding the lock left a whole map behind.
            attribution
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(
                    Arc::clone(ids),
                    pods,
                    Instant::now(),
                    crate::audit::now_ms(),
                );
        })
    }

    /// [`Enforcer::apply`], calling `observe` with the short ids (NFLOG prefixes)
    /// of the new rule set and its local pods once it is rendered and before the
    /// kernel changes: a rule logs from its first packet, which must find its id
    /// known. The map is the same `Arc` as last time when no id changed. When the
    /// apply fails before the new rules are all installed, `observe` is called
    /// again with the ids and pods of the rule set applied before (the kernel holds
    /// those, or a part of each).
    pub fn apply_observed(
        &mut self,
        rs: &NodeRuleSet,
        observe: &mut dyn FnMut(&Ids, &[LocalPod]),
    ) -> Result<ApplyReport, ApplyError> {
        let start = Instant::now();
        let (checked, issues) = check(rs)?;
        let mut rendered = render_checked(
            &checked,
            issues,
            &RenderOptions {
                reject: self.opts.reject,
                audit: self.opts.audit,
            },
        )?;
        let evaluator = Evaluator::from_checked(checked.into_owned());
        let ids = std::mem::take(&mut rendered.ids);
        // The same Arc for the same ids: the attribution then keeps the sets it
        // retired before instead of retiring an identical one.
        let ids = if ids == *self.ids {
            Arc::clone(&self.ids)
        } else {
            Arc::new(ids)
        };
        let before = std::mem::replace(&mut self.ids, ids);
        observe(&self.ids, &evaluator.rule_set().pods);
        match self.program(&rendered, evaluator) {
            Ok(mut report) => {
                report.version = rs.version;
                report.elapsed_us = start.elapsed().as_micros();
                Ok(report)
            }
            // Installed: only revocation failed, the new rules are in force.
            Err(e) if self.installed.is_some() => Err(e),
            Err(e) => {
                // The kernel holds the old rules, or a part of each: the old ids
                // are current again, the new ones stay known as replaced.
                self.ids = before;
                let pods = self
                    .previous
                    .as_ref()
                    .map(|old| old.rule_set().pods.as_slice())
                    .unwrap_or_default();
                observe(&self.ids, pods);
                Err(e)
            }
        }
    }

    /// The kernel part of an apply (steps 0 to 5): `rendered` installed, then
    /// `evaluator` is the previous state.
    fn program(
        &mut self,
        rendered: &Rendered,
        evaluator: Evaluator,
    ) -> Result<ApplyReport, ApplyError> {
        let first = self.installed.is_none();
        let (mut installed, leftovers) = match self.installed.take() {
            Some(i) => (i, Vec::new()),
            None => self.read_installed()?,
        };
        let reused = self
            .previous
            .as_ref()
            .map(|old| reused_addresses(old.rule_set(), evaluator.rule_set()))
            .unwrap_or_default();
        self.quarantine(&mut installed, &reused)?;
        let deltas = [
            delta(&installed[0], &rendered.ipv4),
            delta(&installed[1], &rendered.ipv6),
        ];
        // On failure `installed` stays None: the next apply re-reads the kernel.
        self.execute(&leftovers, &deltas, first)?;
        self.installed = Some([
            Installed::from(&rendered.ipv4),
            Installed::from(&rendered.ipv6),
        ]);
        let mut report = ApplyReport {
            issues: rendered.issues.clone(),
            ..ApplyReport::default()
        };
        for d in &deltas {
            report.chains_written += d.chains_written;
            report.chains_removed += d.chains_removed;
            report.sets_created += d.sets_created;
            report.sets_updated += d.sets_updated;
            report.sets_removed += d.sets_removed;
        }
        let changed = deltas.iter().any(|d| !d.is_empty());
        if self.opts.revoke && (changed || first) {
            let (revoked, errors) = self.revoke(self.previous.as_ref(), &evaluator)?;
            report.revoked = revoked;
            report.errors = errors;
        }
        self.previous = Some(evaluator);
        Ok(report)
    }

    /// Step 0 of an apply (see [`Enforcer::apply`]): rewrites PALISADE-FORWARD of
    /// each family that has a reused address as what is installed with the
    /// quarantine rules first, and records it as installed (so the delta writes
    /// the new chain over it). A family whose installed PALISADE-FORWARD is not
    /// known (read back from the kernel after a failure) is left as it is.
    fn quarantine(
        &self,
        installed: &mut [Installed; 2],
        reused: &[IpAddr],
    ) -> Result<(), ApplyError> {
        for (i, family) in FAMILIES.iter().enumerate() {
            let ips: Vec<&IpAddr> = reused
                .iter()
                .filter(|ip| Family::of(ip) == *family)
                .collect();
            if ips.is_empty() {
                continue;
            }
            let Some(Some(current)) = installed[i].chains.get(CHAIN_FORWARD) else {
                continue;
            };
            // After the conntrack rules: connections already established go on
            // until revocation judges them; new ones from or to the address wait.
            let keep = current
                .iter()
                .take_while(|l| l.contains(" -m conntrack --ctstate "))
                .count();
            let mut lines = Vec::with_capacity(current.len() + 2 * ips.len());
            lines.extend(current[..keep].iter().cloned());
            for ip in ips {
                let host = IpNet::from(*ip);
                for flag in ["-s", "-d"] {
                    lines.push(format!(
                        "-A {CHAIN_FORWARD} {flag} {host} -m comment --comment \"quarantine: address reused\" -j {CHAIN_DENY}"
                    ));
                }
            }
            lines.extend(current[keep..].iter().cloned());
            let mut text = format!("*filter\n:{CHAIN_FORWARD} - [0:0]\n");
            for l in &lines {
                text.push_str(l);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
            run_restore(&self.backend.restore(*family), &text)?;
            installed[i]
                .chains
                .insert(CHAIN_FORWARD.to_string(), Some(lines));
        }
        Ok(())
    }

    fn execute(
        &self,
        leftovers: &[String],
        deltas: &[Delta; 2],
        first: bool,
    ) -> Result<(), ApplyError> {
        // Temporary sets a crashed apply left behind go before anything else: a
        // delta may build a set of the same name.
        if !leftovers.is_empty() {
            let lines: Vec<&String> = leftovers.iter().collect();
            ipset_restore(&lines)?;
        }
        // Steps 1 and 2, one thread per family: the families' sets and tables are
        // independent (an IPv4 rule matches only IPv4 sets), so they load at once,
        // each family keeping its own order (its sets before the rules that
        // reference them). Threads inherit the calling thread's network namespace.
        let results: Vec<Result<(), ApplyError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = FAMILIES
                .iter()
                .zip(deltas)
                .filter(|(_, d)| !d.ipset_before.is_empty() || d.iptables.is_some())
                .map(|(family, d)| scope.spawn(move || self.sets_then_chains(*family, d)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut failure: Option<ApplyError> = None;
        for e in results.into_iter().filter_map(Result::err) {
            failure = Some(match failure {
                None => e,
                Some(earlier) => combine_errors(earlier, e),
            });
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if first {
            self.ensure_hooks()?;
            // Chains of ours left in the other backend (the host switched backends)
            // would filter twice and pin stale sets: remove them.
            let other = match self.backend {
                Backend::Nft => Backend::Legacy,
                Backend::Legacy => Backend::Nft,
            };
            remove_chains(other)?;
        }
        let after: Vec<&String> = deltas.iter().flat_map(|d| d.ipset_after.iter()).collect();
        if !after.is_empty() {
            ipset_restore(&after)?;
        }
        Ok(())
    }

    /// Steps 1 and 2 of an apply for one family: its sets created, filled and
    /// updated, then (only if that succeeded) its chains written.
    fn sets_then_chains(&self, family: Family, d: &Delta) -> Result<(), ApplyError> {
        if !d.ipset_before.is_empty() {
            let lines: Vec<&String> = d.ipset_before.iter().collect();
            ipset_restore(&lines)?;
        }
        if let Some(text) = &d.iptables {
            run_restore(&self.backend.restore(family), text)?;
        }
        Ok(())
    }

    /// Makes sure built-in FORWARD of both families jumps to `PALISADE-FORWARD`
    /// first: lists FORWARD, inserts our hook at the top when it is missing, and
    /// moves it back to the top when something was put before it, never touching
    /// any other rule. Needs our chains to exist (call after an apply).
    ///
    /// First, because rules ahead of ours may ACCEPT what our policies deny:
    /// kube-proxy (iptables mode) prepends its jump to `KUBE-FORWARD` whenever it
    /// finds it missing (its first sync after a boot or a flush), and
    /// `KUBE-FORWARD` accepts every packet it marked for masquerade (NodePort and
    /// external-IP traffic, hairpin). The move is one `*-restore --noflush`
    /// transaction (`-D` then `-I 1`): there is never a moment without the hook.
    pub fn ensure_hooks(&self) -> Result<(), ApplyError> {
        let spec = format!("-m comment --comment \"{HOOK_COMMENT}\" -j {CHAIN_FORWARD}");
        for family in FAMILIES {
            let tool = self.backend.iptables(family);
            let listing = run(&tool, &["-w", "10", "-S", "FORWARD"], None)?;
            let mut rules = listing.lines().filter(|l| l.starts_with("-A FORWARD "));
            let is_hook =
                |l: &str| l.contains(HOOK_COMMENT) && l.ends_with(&format!("-j {CHAIN_FORWARD}"));
            if rules.next().is_some_and(is_hook) {
                continue;
            }
            let present = listing.lines().any(is_hook);
            let mut text = String::from("*filter\n");
            if present {
                text.push_str(&format!("-D FORWARD {spec}\n"));
            }
            text.push_str(&format!("-I FORWARD 1 {spec}\nCOMMIT\n"));
            run_restore(&self.backend.restore(family), &text)?;
        }
        Ok(())
    }

    /// Reads the chains and sets of ours the kernel holds. Returns them per family,
    /// and `destroy` lines for temporary sets a crashed apply left behind.
    fn read_installed(&self) -> Result<([Installed; 2], Vec<String>), ApplyError> {
        let mut out = [Installed::default(), Installed::default()];
        for (i, family) in FAMILIES.iter().enumerate() {
            let save = self.backend.save(*family);
            let text = run(&save, &["-t", "filter"], None)?;
            for chain in parse_save(&text).chains {
                out[i].chains.insert(chain, None);
            }
        }
        let text = run("ipset", &["save"], None)?;
        let mut leftovers = Vec::new();
        for (name, (family, members)) in parse_ipset_save(&text) {
            if name.ends_with(TEMP_SET_SUFFIX) {
                leftovers.push(format!("destroy {name}"));
                continue;
            }
            let i = match family {
                Family::IPv4 => 0,
                Family::IPv6 => 1,
            };
            out[i].sets.insert(name, members);
        }
        Ok((out, leftovers))
    }

    /// Deletes the conntrack entries of connections that `new` denies and `old`
    /// accepted (every connection `new` denies when there is no `old`). Each entry
    /// is judged as FORWARD saw its first packet: source = original source,
    /// destination and port = the reply's source (after DNAT). Entries from or to
    /// an address of this namespace never crossed FORWARD and are left alone.
    ///
    /// A reply in flight when its entry goes (B's answer to A's last datagram) is
    /// a new flow to conntrack, from B to A's port, that B's egress and A's ingress
    /// usually allow: conntrack would carry the revoked flow on, reversed. TCP
    /// packets that would do so are denied by `PALISADE-PICKUP` (see
    /// [`crate::render`](mod@crate::render)); for the rest, the table is read
    /// again (2 ms after the deletions, twice, more while any turn up) and the
    /// entries from a revoked destination and port back to its source are deleted
    /// too.
    ///
    /// Returns the number deleted and the deletions that failed.
    pub fn revoke(
        &self,
        old: Option<&Evaluator>,
        new: &Evaluator,
    ) -> Result<(usize, Vec<String>), ApplyError> {
        let entries = list_conntrack()?;
        let mut doomed: BTreeSet<CtKey> = BTreeSet::new();
        for e in entries {
            let Some(flow) = e.key.forward_flow() else {
                continue;
            };
            if new.eval(&flow).verdict == Verdict::Deny
                && old.is_none_or(|o| o.eval(&flow).verdict == Verdict::Accept)
            {
                doomed.insert(e.key);
            }
        }
        if doomed.is_empty() {
            return Ok((0, Vec::new()));
        }
        let local = local_addresses()?;
        let mut deleted = 0;
        let mut errors = Vec::new();
        doomed.retain(|key| !local.contains(&key.orig_src) && !local.contains(&key.reply_src));
        for key in &doomed {
            match delete_conntrack(key) {
                Ok(n) => deleted += n,
                Err(e) => errors.push(e.to_string()),
            }
        }
        for pass in 0..REVERSAL_PASSES {
            std::thread::sleep(REVERSAL_PAUSE);
            let reversed: BTreeSet<CtKey> = list_conntrack()?
                .into_iter()
                .filter(|e| doomed.iter().any(|k| e.reverses(k)))
                .map(|e| e.key)
                .collect();
            if reversed.is_empty() && pass > 0 {
                break;
            }
            for key in &reversed {
                match delete_conntrack(key) {
                    Ok(n) => deleted += n,
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Ok((deleted, errors))
    }

    /// Forgets what this enforcer installed: the next apply re-reads the kernel and
    /// rewrites every chain of ours (after someone else removed or changed them).
    pub fn forget(&mut self) {
        self.installed = None;
    }

    /// Removes everything Palisade installed ([`cleanup`]) and forgets it.
    pub fn cleanup(&mut self) -> Result<CleanupReport, ApplyError> {
        self.installed = None;
        self.previous = None;
        cleanup()
    }
}

/// Addresses of local pods in `new` that belonged to another local pod in `old`.
fn reused_addresses(old: &NodeRuleSet, new: &NodeRuleSet) -> Vec<IpAddr> {
    let by_address = |rs: &NodeRuleSet| -> BTreeMap<IpAddr, (String, String)> {
        rs.pods
            .iter()
            .flat_map(|p| {
                p.ips
                    .iter()
                    .map(move |ip| (*ip, (p.namespace.clone(), p.name.clone())))
            })
            .collect()
    };
    let owners = by_address(old);
    by_address(new)
        .into_iter()
        .filter(|(ip, owner)| owners.get(ip).is_some_and(|old_owner| old_owner != owner))
        .map(|(ip, _)| ip)
        .collect()
}

/// Chooses the backend as kube-proxy's iptables wrapper does: count the rules
/// (`-A` lines) `iptables-legacy-save` and `iptables-nft-save` (both families)
/// show, and take legacy only when it has more.
pub fn detect_backend() -> Backend {
    let count = |backend: Backend| -> usize {
        FAMILIES
            .iter()
            .filter_map(|f| run(&backend.save(*f), &[], None).ok())
            .map(|text| text.lines().filter(|l| l.starts_with('-')).count())
            .sum()
    };
    let legacy = count(Backend::Legacy);
    let nft = count(Backend::Nft);
    if legacy > nft {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Where the kernel reads the slots a new network namespace's table of ipsets starts
/// with (0: its default, 256).
pub const IPSET_MAX_SETS_PARAM: &str = "/sys/module/ip_set/parameters/max_sets";

/// The kernel's default number of slots (`CONFIG_IP_SET_MAX`).
const IPSET_DEFAULT_SLOTS: usize = 256;

/// A hint when an apply created more sets than a table of the size `read_max_sets`
/// gives (the parameter's text, `None` when unreadable) starts with: the kernel grows
/// the table 64 slots at a time, one RCU grace period each, the first time a
/// namespace holds that many sets, which is most of a first program's time on a big
/// node. `None` when the table starts large enough. The parameter is read only when
/// more than the default 256 sets were created: below that, growing a table
/// configured smaller costs a few steps at most, not worth a read per apply.
pub fn ipset_table_hint(
    sets_created: usize,
    read_max_sets: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if sets_created <= IPSET_DEFAULT_SLOTS {
        return None;
    }
    let configured = read_max_sets().and_then(|t| t.trim().parse::<usize>().ok());
    let slots = match configured {
        Some(0) | None => IPSET_DEFAULT_SLOTS,
        Some(n) => n,
    };
    (sets_created > slots).then(|| {
        format!(
            "{sets_created} ipsets created where the kernel's table of sets starts with {slots} slots \
             (ip_set max_sets {}): the kernel grows such a table 64 slots at a time, about 11 ms \
             per step, the first time a namespace holds that many sets; load ip_set with max_sets={} to program such a node faster after boot (README, \"Node tuning\")",
            configured.map_or("unreadable".to_string(), |n| n.to_string()),
            sets_created.next_power_of_two().max(4096)
        )
    })
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    pub hooks: usize,
    pub chains: usize,
    pub sets: usize,
}

/// Removes every hook, chain and set of ours: both families, both backends.
/// Foreign rules and chains are untouched. A backend whose tools are missing or do
/// not work here is skipped.
pub fn cleanup() -> Result<CleanupReport, ApplyError> {
    let mut report = CleanupReport::default();
    for backend in [Backend::Nft, Backend::Legacy] {
        let (hooks, chains) = remove_chains(backend)?;
        report.hooks += hooks;
        report.chains += chains;
    }
    let names = run("ipset", &["list", "-n"], None)?;
    let destroy: Vec<String> = names
        .lines()
        .map(str::trim)
        .filter(|n| is_our_set(n))
        .map(|n| format!("destroy {n}"))
        .collect();
    if !destroy.is_empty() {
        let lines: Vec<&String> = destroy.iter().collect();
        ipset_restore(&lines)?;
        report.sets = destroy.len();
    }
    Ok(report)
}

/// Removes our hooks and chains from one backend (both families), in one
/// restore transaction per family. A backend whose tools do not work is skipped.
fn remove_chains(backend: Backend) -> Result<(usize, usize), ApplyError> {
    let (mut hooks, mut chains) = (0, 0);
    for family in FAMILIES {
        let Ok(text) = run(&backend.save(family), &["-t", "filter"], None) else {
            continue;
        };
        let parsed = parse_save(&text);
        if parsed.chains.is_empty() && parsed.hooks.is_empty() {
            continue;
        }
        let mut input = String::from("*filter\n");
        for hook in &parsed.hooks {
            input.push_str(&hook.replacen("-A ", "-D ", 1));
            input.push('\n');
        }
        for chain in &parsed.chains {
            input.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for chain in &parsed.chains {
            input.push_str(&format!("-X {chain}\n"));
        }
        input.push_str("COMMIT\n");
        run_restore(&backend.restore(family), &input)?;
        hooks += parsed.hooks.len();
        chains += parsed.chains.len();
    }
    Ok((hooks, chains))
}

struct Saved {
    /// Our chains.
    chains: Vec<String>,
    /// Rules in other chains that jump to ours (our hooks), as `-A …` lines.
    hooks: Vec<String>,
}

fn parse_save(text: &str) -> Saved {
    let mut chains = Vec::new();
    let mut hooks = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                if is_our_chain(name) {
                    chains.push(name.to_string());
                }
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if is_our_chain(chain) {
                continue;
            }
            let mut words = rest.split_whitespace().peekable();
            let mut jumps_to_ours = false;
            while let Some(w) = words.next() {
                if (w == "-j" || w == "-g") && words.peek().is_some_and(|t| is_our_chain(t)) {
                    jumps_to_ours = true;
                }
            }
            if jumps_to_ours {
                hooks.push(line.to_string());
            }
        }
    }
    Saved { chains, hooks }
}

/// Our sets from `ipset save`: name → (family, members). The members are `None`
/// (content unknown: the set is rebuilt and swapped) when the set is of a type we never
/// create or holds a member we would not write.
fn parse_ipset_save(text: &str) -> BTreeMap<String, (Family, Option<Members>)> {
    let mut out: BTreeMap<String, (Family, Option<Members>)> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, kind, rest @ ..] if is_our_set(name) => {
                let family = match rest.windows(2).find(|w| w[0] == "family") {
                    Some(w) if w[1] == "inet6" => Family::IPv6,
                    _ => Family::IPv4,
                };
                let known = matches!(*kind, "hash:net" | "hash:net,port");
                out.insert(name.to_string(), (family, known.then(Members::new)));
            }
            ["add", name, net, flags @ ..] if is_our_set(name) => {
                let Some((_, content)) = out.get_mut(*name) else {
                    continue;
                };
                let member = parse_member(net);
                match (content.as_mut(), member) {
                    (Some(members), Some(m)) => {
                        members.insert(m, flags.contains(&"nomatch"));
                    }
                    _ => *content = None,
                }
            }
            _ => {}
        }
    }
    out
}

/// One member as `ipset save` prints it: `NET` or `NET,PROTO:PORT` (host entries
/// without a prefix length). `None`: not one we write (the set is rewritten).
fn parse_member(text: &str) -> Option<Member> {
    let net = |t: &str| {
        t.parse::<IpNet>()
            .ok()
            .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
    };
    let Some((addr, port)) = text.split_once(',') else {
        return net(text).map(Member::net);
    };
    let (proto, number) = port.split_once(':')?;
    let proto = match proto {
        "tcp" => "tcp",
        "udp" => "udp",
        "sctp" => "sctp",
        _ => return None,
    };
    Some(Member {
        net: net(addr)?,
        port: Some((proto, number.parse().ok()?)),
    })
}

/// Runs a command, returns its stdout; a non-zero exit is an error with stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status tells why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let line = stdin.and_then(|_| failing_line(&stderr));
    let line_text = match (line, stdin) {
        (Some(n), Some(input)) => input.lines().nth(n.saturating_sub(1)).map(str::to_string),
        _ => None,
    };
    Err(ApplyError::Command {
        command,
        status: output.status.to_string(),
        stderr,
        line,
        line_text,
    })
}

/// The input line a `*-restore` tool complains about (`line 5 failed`,
/// `Error in line 5:`).
fn failing_line(stderr: &str) -> Option<usize> {
    let at = stderr.find("line ")?;
    let digits: String = stderr[at + 5..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Both families failed in one apply: the first error (IPv4's) is returned, typed,
/// with its failing line; the second is appended to its text so it is not lost.
fn combine_errors(first: ApplyError, second: ApplyError) -> ApplyError {
    match first {
        ApplyError::Command {
            command,
            status,
            stderr,
            line,
            line_text,
        } => ApplyError::Command {
            command,
            status,
            stderr: format!("{stderr}; also: {second}"),
            line,
            line_text,
        },
        ApplyError::Parse { command, reason } => ApplyError::Parse {
            command,
            reason: format!("{reason}; also: {second}"),
        },
        ApplyError::Spawn { command, source } => ApplyError::Spawn {
            command: format!("{command} (also: {second})"),
            source,
        },
        other => other,
    }
}

fn run_restore(tool: &str, input: &str) -> Result<(), ApplyError> {
    run(tool, &["--noflush", "-w", "10"], Some(input)).map(|_| ())
}

fn ipset_restore(lines: &[&String]) -> Result<(), ApplyError> {
    let mut input = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        input.push_str(l);
        input.push('\n');
    }
    run("ipset", &["restore", "-exist"], Some(&input)).map(|_| ())
}

/// A conntrack entry's identity, enough to judge it and to delete it (and every
/// other entry that FORWARD would judge the same way).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CtKey {
    family: Family,
    proto_name: String,
    proto: u8,
    orig_src: IpAddr,
    orig_dst: IpAddr,
    orig_dport: Option<u16>,
    reply_src: IpAddr,
    reply_sport: Option<u16>,
}

struct CtEntry {
    key: CtKey,
    orig_sport: Option<u16>,
}

/// How many times [`Enforcer::revoke`] looks for revoked flows carried on in
/// reverse, at most, and how long it waits before each look.
const REVERSAL_PASSES: usize = 4;
const REVERSAL_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

impl CtEntry {
    /// Whether this entry runs from the destination and port of a revoked flow
    /// (`key`) back to its source: a reply of it that conntrack took for a new flow.
    fn reverses(&self, key: &CtKey) -> bool {
        self.key.family == key.family
            && self.key.proto == key.proto
            && self.key.orig_src == key.reply_src
            && self.key.orig_dst == key.orig_src
            && self.orig_sport == key.reply_sport
    }
}

impl CtKey {
    fn forward_flow(&self) -> Option<Flow> {
        let l4 = match self.proto {
            6 => L4::Tcp(self.reply_sport?),
            17 => L4::Udp(self.reply_sport?),
            132 => L4::Sctp(self.reply_sport?),
            1 | 58 => L4::Icmp,
            n => L4::Other(n),
        };
        Some(Flow {
            src: self.orig_src,
            dst: self.reply_src,
            l4,
        })
    }
}

/// The conntrack table of this thread's namespace: from
/// `/proc/thread-self/net/nf_conntrack` when the kernel has it (no process to
/// start; same format as `conntrack -o extended`), else `conntrack -L`.
fn list_conntrack() -> Result<Vec<CtEntry>, ApplyError> {
    if let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/nf_conntrack") {
        return Ok(text.lines().filter_map(parse_conntrack_line).collect());
    }
    let mut out = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let text = run("conntrack", &["-L", "-f", family, "-o", "extended"], None)?;
        out.extend(text.lines().filter_map(parse_conntrack_line));
    }
    Ok(out)
}

/// Parses a `conntrack -L -o extended` line:
/// `ipv4 2 tcp 6 431999 ESTABLISHED src=… dst=… sport=… dport=… src=… dst=… sport=… dport=… [ASSURED] mark=0 use=1`.
fn parse_conntrack_line(line: &str) -> Option<CtEntry> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let family = match *words.first()? {
        "ipv4" => Family::IPv4,
        "ipv6" => Family::IPv6,
        _ => return None,
    };
    let proto_name = words.get(2)?.to_string();
    let proto: u8 = words.get(3)?.parse().ok()?;
    let mut srcs = Vec::new();
    let mut dsts = Vec::new();
    let mut sports = Vec::new();
    let mut dports = Vec::new();
    for w in &words[4..] {
        if let Some((k, v)) = w.split_once('=') {
            match k {
                "src" => srcs.push(v.parse::<IpAddr>().ok()?),
                "dst" => dsts.push(v.parse::<IpAddr>().ok()?),
                "sport" => sports.push(v.parse::<u16>().ok()?),
                "dport" => dports.push(v.parse::<u16>().ok()?),
                _ => {}
            }
        }
    }
    Some(CtEntry {
        orig_sport: sports.first().copied(),
        key: CtKey {
            family,
            proto_name,
            proto,
            orig_src: *srcs.first()?,
            orig_dst: *dsts.first()?,
            orig_dport: dports.first().copied(),
            reply_src: *srcs.get(1)?,
            reply_sport: sports.get(1).copied(),
        },
    })
}

/// Deletes the entries with this key's original source, destination and port and
/// reply source and port (all judged alike). Returns how many went.
fn delete_conntrack(key: &CtKey) -> Result<usize, ApplyError> {
    let family = match key.family {
        Family::IPv4 => "ipv4",
        Family::IPv6 => "ipv6",
    };
    let orig_src = key.orig_src.to_string();
    let orig_dst = key.orig_dst.to_string();
    let reply_src = key.reply_src.to_string();
    let dport = key.orig_dport.map(|p| p.to_string());
    let sport = key.reply_sport.map(|p| p.to_string());
    let mut args: Vec<&str> = vec![
        "-D",
        "-f",
        family,
        "-p",
        &key.proto_name,
        "-s",
        &orig_src,
        "-d",
        &orig_dst,
        "--reply-src",
        &reply_src,
    ];
    if let (Some(dport), Some(sport)) = (&dport, &sport) {
        args.extend_from_slice(&["--dport", dport, "--reply-port-src", sport]);
    }
    match run("conntrack", &args, None) {
        Ok(_) => Ok(1),
        // conntrack exits 1 when nothing matched: the connection ended meanwhile
        // (or its entry went between the listing and the delete: ENOENT).
        Err(ApplyError::Command { stderr, .. })
            if stderr.contains("0 flow entries")
                || stderr.contains("such conntrack doesn't exist") =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Every address of this network namespace.
fn local_addresses() -> Result<BTreeSet<IpAddr>, ApplyError> {
    let text = run("ip", &["-o", "addr", "show"], None)?;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                if let Some(addr) = words.next().and_then(|a| a.split('/').next()) {
                    if let Ok(ip) = addr.parse() {
                        out.insert(ip);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipset_save_is_read_back_with_port_members_and_unknown_content_flagged() {
        let text = "create PAL-a hash:net,port family inet6 hashsize 64 maxelem 1048576\n\
                    add PAL-a 2001:db8::1,tcp:8080\n\
                    add PAL-a 2001:db8::/64,sctp:9\n\
                    create PAL-b hash:net family inet hashsize 64 maxelem 1048576\n\
                    add PAL-b 10.0.0.1\n\
                    add PAL-b 10.1.0.0/16 nomatch\n\
                    create PAL-c hash:net,port family inet hashsize 64 maxelem 1048576\n\
                    add PAL-c 10.0.0.1,icmp:8/0\n\
                    create PAL-d hash:ip family inet hashsize 64 maxelem 1048576\n\
                    create other hash:net family inet\n";
        let sets = super::parse_ipset_save(text);
        let show = |name: &str| -> Option<Vec<String>> {
            sets[name].1.as_ref().map(|m| {
                m.iter()
                    .map(|(k, f)| format!("{k}{}", if *f { " nomatch" } else { "" }))
                    .collect()
            })
        };
        assert_eq!(
            show("PAL-a").expect("known"),
            ["2001:db8::/64,sctp:9", "2001:db8::1/128,tcp:8080"]
        );
        assert_eq!(sets["PAL-a"].0, palisade_policy::model::Family::IPv6);
        assert_eq!(
            show("PAL-b").expect("known"),
            ["10.0.0.1/32", "10.1.0.0/16 nomatch"]
        );
        assert_eq!(show("PAL-c"), None, "a member we never write: rebuilt");
        assert_eq!(show("PAL-d"), None, "a type we never create: rebuilt");
        assert!(!sets.contains_key("other"));
    }

    use super::*;

    #[test]
    fn finds_revoked_flows_carried_on_in_reverse() {
        let revoked = parse_conntrack_line("ipv4     2 udp      17 29 src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=53 src=10.0.1.5 dst=10.0.0.1 sport=5353 dport=40000 mark=0 use=1").expect("parses");
        let reversed = parse_conntrack_line("ipv4     2 udp      17 29 src=10.0.1.5 dst=10.0.0.1 sport=5353 dport=40000 src=10.0.0.1 dst=10.0.1.5 sport=40000 dport=5353 mark=0 use=1").expect("parses");
        let other_port = parse_conntrack_line("ipv4     2 udp      17 29 src=10.0.1.5 dst=10.0.0.1 sport=5354 dport=40000 src=10.0.0.1 dst=10.0.1.5 sport=40000 dport=5354 mark=0 use=1").expect("parses");
        let tcp = parse_conntrack_line("ipv4     2 tcp      6 29 ESTABLISHED src=10.0.1.5 dst=10.0.0.1 sport=5353 dport=40000 src=10.0.0.1 dst=10.0.1.5 sport=40000 dport=5353 mark=0 use=1").expect("parses");
        assert!(reversed.reverses(&revoked.key));
        assert!(!revoked.reverses(&revoked.key));
        assert!(!other_port.reverses(&revoked.key));
        assert!(!tcp.reverses(&revoked.key));
    }

    #[test]
    fn parses_conntrack() {
        let e = parse_conntrack_line("ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=80 src=10.0.1.5 dst=10.0.0.1 sport=8080 dport=40000 [ASSURED] mark=0 use=1").expect("parses");
        let f = e.key.forward_flow().expect("flow");
        assert_eq!(f.src, "10.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(f.dst, "10.0.1.5".parse::<IpAddr>().expect("ip"));
        assert_eq!(f.l4, L4::Tcp(8080));
        let icmp = parse_conntrack_line("ipv4     2 icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1").expect("parses");
        assert_eq!(icmp.key.forward_flow().expect("flow").l4, L4::Icmp);
    }

    #[test]
    fn finds_failing_line() {
        assert_eq!(failing_line("iptables-restore: line 12 failed"), Some(12));
        assert_eq!(
            failing_line(
                "ipset v7.17: Error in line 3: The set with the given name does not exist"
            ),
            Some(3)
        );
    }

    #[test]
    fn hints_at_the_ipset_table_only_when_it_grew() {
        let param = |text: &'static str| move || Some(text.to_string());
        // At most the default: the parameter is not even read.
        let read = std::cell::Cell::new(false);
        let reader = || {
            read.set(true);
            Some("100".to_string())
        };
        assert_eq!(ipset_table_hint(256, reader), None);
        assert!(!read.get(), "max_sets read for 256 sets");
        assert_eq!(ipset_table_hint(2002, param("4096")), None);
        let hint = ipset_table_hint(257, param("0\n")).expect("default table outgrown");
        assert!(
            hint.contains("starts with 256 slots") && hint.contains("max_sets 0"),
            "{hint}"
        );
        assert!(
            hint.contains("max_sets=4096") && hint.contains("about 11 ms"),
            "{hint}"
        );
        let hint = ipset_table_hint(5000, param("1024")).expect("table outgrown");
        assert!(
            hint.contains("1024 slots") && hint.contains("max_sets=8192"),
            "{hint}"
        );
        let hint = ipset_table_hint(300, || None).expect("unreadable: the default");
        assert!(
            hint.contains("256 slots") && hint.contains("unreadable"),
            "{hint}"
        );
    }

    #[test]
    fn finds_reused_addresses() {
        let pod = |ns: &str, name: &str, ips: &[&str]| palisade_policy::compiled::LocalPod {
            namespace: ns.into(),
            name: name.into(),
            ips: ips.iter().map(|i| i.parse().expect("ip")).collect(),
            ingress: Vec::new(),
            egress: Vec::new(),
        };
        let state = |pods| NodeRuleSet {
            pods,
            ..NodeRuleSet::default()
        };
        let old = state(vec![
            pod("a", "old", &["10.0.0.1", "fd00::1"]),
            pod("a", "same", &["10.0.0.2"]),
            pod("a", "gone", &["10.0.0.3"]),
        ]);
        let new = state(vec![
            pod("b", "new", &["10.0.0.1", "fd00::1"]),
            pod("a", "same", &["10.0.0.2"]),
            pod("a", "fresh", &["10.0.0.4"]),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            reused_addresses(&old, &new),
            vec![ip("10.0.0.1"), ip("fd00::1")]
        );
        assert!(reused_addresses(&old, &old).is_empty());
    }

    #[test]
    fn parses_save() {
        let s = parse_save(":FORWARD ACCEPT [0:0]\n:PALISADE-FORWARD - [0:0]\n:FOREIGN - [0:0]\n-A FORWARD -m comment --comment \"palisade: enforce network policy\" -j PALISADE-FORWARD\n-A FORWARD -j FOREIGN\n-A PALISADE-FORWARD -j PALISADE-DENY\n");
        assert_eq!(s.chains, vec!["PALISADE-FORWARD"]);
        assert_eq!(s.hooks.len(), 1);
    }
}
