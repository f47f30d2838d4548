//! Which pod had an address when: the audit log names the ends of a decision after the
//! packet was seen (the enforcer's reader lags the kernel, the operator's ingest lags the
//! enforcer, by seconds, or by an outage's length when batches wait in the spool). A pod
//! deleted meanwhile, or its address given to another pod, must not turn a lagging
//! decision into one of the pod that holds the address at ingest time.
//!
//! [`AddressBook`] keeps the owners in force and, per address, the owners it had before,
//! each with the instant it stopped having it; [`AddressBook::owner`] answers for the
//! instant the packet was seen. The past is kept for a fixed time and up to a number of
//! entries. Before what the book remembers (a decision older than the keep time, or older
//! than the book itself), an address is named by the earliest owner the book still knows
//! for it: the guess closest in time.
//!
//! Building the new owners and comparing them with the old ones is the caller's work,
//! outside any lock ([`changes`]); [`AddressBook::commit`] only records the changes and
//! swaps the map, so readers wait for O(changes), not O(addresses).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use crate::audit::Endpoint;

/// Address → pod.
pub type Owners = HashMap<IpAddr, Endpoint>;

/// Address → pod, now and recently.
#[derive(Clone, Debug)]
pub struct AddressBook {
    current: Arc<Owners>,
    /// Per address, the owners it had before (`None`: no pod), oldest first, each with
    /// the instant (ms since the epoch) from which it no longer had it.
    past: HashMap<IpAddr, VecDeque<(Option<Endpoint>, i64)>>,
    /// Every entry of `past` by when it ended, oldest first (for pruning).
    ended: VecDeque<(i64, IpAddr)>,
    keep_ms: i64,
    max_past: usize,
    /// False until the first commit: the addresses it brings had no known owner before,
    /// and that is not a change worth remembering.
    started: bool,
    /// The latest commit's instant: a clock stepping back never puts a history out of
    /// order.
    last_ms: i64,
}

/// What `old` → `new` changes: each address whose owner differs (gained, lost or
/// another pod), with the owner it had in `old` (`None`: none).
pub fn changes(old: &Owners, new: &Owners) -> Vec<(IpAddr, Option<Endpoint>)> {
    let mut out: Vec<(IpAddr, Option<Endpoint>)> = old
        .iter()
        .filter(|(ip, before)| new.get(ip) != Some(before))
        .map(|(ip, before)| (*ip, Some(before.clone())))
        .collect();
    out.extend(
        new.keys()
            .filter(|ip| !old.contains_key(ip))
            .map(|ip| (*ip, None)),
    );
    out
}

impl AddressBook {
    /// `keep_ms`: how long a replaced owner stays known; `max_past`: at most this many
    /// replaced owners in all (the oldest go first).
    pub fn new(keep_ms: i64, max_past: usize) -> Self {
        AddressBook {
            current: Arc::default(),
            past: HashMap::new(),
            ended: VecDeque::new(),
            keep_ms,
            max_past,
            started: false,
            last_ms: i64::MIN,
        }
    }

    /// The owners in force.
    pub fn current(&self) -> &Arc<Owners> {
        &self.current
    }

    /// `owners` are in force from `now_ms` on; `changes` must be
    /// [`changes`]`(self.current(), &owners)` (computed by the caller, outside its lock).
    /// Returns the replaced map, for the caller to drop outside its lock.
    pub fn commit(
        &mut self,
        owners: Arc<Owners>,
        changes: Vec<(IpAddr, Option<Endpoint>)>,
        now_ms: i64,
    ) -> Arc<Owners> {
        let now_ms = now_ms.max(self.last_ms);
        self.last_ms = now_ms;
        if self.started {
            for (ip, before) in changes {
                self.past.entry(ip).or_default().push_back((before, now_ms));
                self.ended.push_back((now_ms, ip));
            }
        }
        self.started = true;
        self.prune(now_ms);
        std::mem::replace(&mut self.current, owners)
    }

    /// [`AddressBook::commit`] with the changes worked out here.
    pub fn replace(&mut self, owners: Owners, now_ms: i64) {
        let changes = changes(&self.current, &owners);
        self.commit(Arc::new(owners), changes, now_ms);
    }

    /// Who had `ip` at `at_ms`: the first remembered owner that still had it then, else
    /// the owner in force.
    pub fn owner(&self, ip: &IpAddr, at_ms: i64) -> Option<&Endpoint> {
        if let Some(history) = self.past.get(ip) {
            // Ends only grow along a history: the first one after `at_ms`.
            let i = history.partition_point(|(_, until)| *until <= at_ms);
            if let Some((owner, _)) = history.get(i) {
                return owner.as_ref();
            }
        }
        self.current.get(ip)
    }

    /// Forgets owners that ended more than `keep_ms` ago, and the oldest beyond
    /// `max_past`. `ended` and each address's history are in the same order, so the
    /// oldest entry of `ended` is the front of its address's history.
    fn prune(&mut self, now_ms: i64) {
        while let Some(&(until, ip)) = self.ended.front() {
            let expired = until.saturating_add(self.keep_ms) < now_ms;
            if !expired && self.ended.len() <= self.max_past {
                break;
            }
            self.ended.pop_front();
            if let Some(history) = self.past.get_mut(&ip) {
                history.pop_front();
                if history.is_empty() {
                    self.past.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ns: &str, pod: &str) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            pod: pod.into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn owners(list: &[(&str, Endpoint)]) -> HashMap<IpAddr, Endpoint> {
        list.iter().map(|(a, e)| (ip(a), e.clone())).collect()
    }

    #[test]
    fn a_reused_address_names_the_pod_that_had_it_then() {
        let mut book = AddressBook::new(60_000, 1000);
        let x = ip("10.0.0.7");
        book.replace(owners(&[("10.0.0.7", ep("a", "old"))]), 1_000);
        // old deleted at 2 s; the address given to b/new at 3 s.
        book.replace(HashMap::new(), 2_000);
        book.replace(owners(&[("10.0.0.7", ep("b", "new"))]), 3_000);
        assert_eq!(book.owner(&x, 1_500), Some(&ep("a", "old")));
        assert_eq!(book.owner(&x, 2_500), None, "nobody's between the two");
        assert_eq!(book.owner(&x, 3_000), Some(&ep("b", "new")));
        assert_eq!(book.owner(&x, 9_000), Some(&ep("b", "new")));
        // Before the first replace nothing was known: the earliest known owner answers.
        assert_eq!(book.owner(&x, 0), Some(&ep("a", "old")));
        // An address never changed is the current owner's, whenever.
        book.replace(
            owners(&[("10.0.0.7", ep("b", "new")), ("10.0.0.8", ep("c", "c"))]),
            4_000,
        );
        assert_eq!(book.owner(&ip("10.0.0.8"), 3_999), None, "not c's yet");
        assert_eq!(book.owner(&ip("10.0.0.8"), 4_000), Some(&ep("c", "c")));
    }

    #[test]
    fn the_first_owners_are_not_a_change() {
        let mut book = AddressBook::new(60_000, 1000);
        book.replace(owners(&[("10.0.0.7", ep("a", "p"))]), 5_000);
        assert!(book.past.is_empty());
        assert_eq!(book.owner(&ip("10.0.0.7"), 1), Some(&ep("a", "p")));
    }

    #[test]
    fn the_past_is_bounded_in_time_and_size() {
        let mut book = AddressBook::new(10_000, 3);
        let x = ip("10.0.0.7");
        book.replace(owners(&[("10.0.0.7", ep("a", "1"))]), 0);
        book.replace(owners(&[("10.0.0.7", ep("a", "2"))]), 1_000);
        book.replace(owners(&[("10.0.0.7", ep("a", "3"))]), 2_000);
        assert_eq!(book.owner(&x, 500), Some(&ep("a", "1")));
        assert_eq!(book.owner(&x, 1_500), Some(&ep("a", "2")));
        // Past the keep time a/1 is forgotten: before what the book remembers, the
        // earliest owner it still knows answers (a/2, then the owner in force).
        book.replace(owners(&[("10.0.0.7", ep("a", "3"))]), 11_500);
        assert_eq!(book.owner(&x, 500), Some(&ep("a", "2")));
        book.replace(owners(&[("10.0.0.7", ep("a", "3"))]), 12_500);
        assert_eq!(book.owner(&x, 500), Some(&ep("a", "3")));
        assert!(book.past.is_empty() && book.ended.is_empty());
        // At most 3 entries: the oldest go first.
        for (i, t) in [(4, 13_000), (5, 13_100), (6, 13_200), (7, 13_300)] {
            book.replace(owners(&[("10.0.0.7", ep("a", &i.to_string()))]), t);
        }
        assert_eq!(book.ended.len(), 3);
        assert_eq!(
            book.owner(&x, 12_900),
            Some(&ep("a", "4")),
            "a/3 forgotten: the earliest known"
        );
        assert_eq!(book.owner(&x, 13_250), Some(&ep("a", "6")));
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_history_in_order() {
        let mut book = AddressBook::new(60_000, 1000);
        let x = ip("10.0.0.7");
        book.replace(owners(&[("10.0.0.7", ep("a", "1"))]), 5_000);
        book.replace(owners(&[("10.0.0.7", ep("a", "2"))]), 6_000);
        // The clock stepped back 3 s: the change counts as at 6 s.
        book.replace(owners(&[("10.0.0.7", ep("a", "3"))]), 3_000);
        assert_eq!(book.owner(&x, 5_500), Some(&ep("a", "1")));
        assert_eq!(book.owner(&x, 6_000), Some(&ep("a", "3")));
    }

    #[test]
    fn commit_records_the_changes_given_and_returns_the_old_map() {
        let mut book = AddressBook::new(60_000, 1000);
        book.replace(owners(&[("10.0.0.7", ep("a", "1"))]), 1_000);
        let new = Arc::new(owners(&[("10.0.0.8", ep("a", "1"))]));
        let diff = changes(book.current(), &new);
        assert_eq!(diff.len(), 2, "one address lost, one gained: {diff:?}");
        let old = book.commit(Arc::clone(&new), diff, 2_000);
        assert_eq!(old.get(&ip("10.0.0.7")), Some(&ep("a", "1")));
        assert_eq!(book.owner(&ip("10.0.0.7"), 1_500), Some(&ep("a", "1")));
        assert_eq!(book.owner(&ip("10.0.0.7"), 2_000), None);
        assert_eq!(book.owner(&ip("10.0.0.8"), 1_500), None);
        assert_eq!(book.owner(&ip("10.0.0.8"), 2_000), Some(&ep("a", "1")));
    }
}
