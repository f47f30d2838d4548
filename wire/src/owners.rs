//! Which pod had an address when: the audit log names the ends of a decision after the
//! packet was seen (the enforcer's reader lags the kernel, the operator's ingest lags the
//! enforcer, by seconds, or by an outage's length when batches wait in the spool). A pod
//! deleted meanwhile, or its address given to another pod, must not turn a lagging
//! decision into one of the pod that holds the address at ingest time.
//!
//! [`AddressBook`] keeps the owners in force and, per address, the owners it had before,
//! each with the instant it stopped having it; [`AddressBook::owner`] answers for the
//! instant the packet was seen. The past is kept for a fixed time and up to a number of
//! entries; a decision older than that is named by the owners in force.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::audit::Endpoint;

/// Address → pod, now and recently.
#[derive(Clone, Debug)]
pub struct AddressBook {
    current: HashMap<IpAddr, Endpoint>,
    /// Per address, the owners it had before (`None`: no pod), oldest first, each with
    /// the instant (ms since the epoch) from which it no longer had it.
    past: HashMap<IpAddr, VecDeque<(Option<Endpoint>, i64)>>,
    /// Every entry of `past` by when it ended, oldest first (for pruning).
    ended: VecDeque<(i64, IpAddr)>,
    keep_ms: i64,
    max_past: usize,
    /// False until the first [`AddressBook::replace`]: the addresses it brings had no
    /// known owner before, and that is not a change worth remembering.
    started: bool,
}

impl AddressBook {
    /// `keep_ms`: how long a replaced owner stays known; `max_past`: at most this many
    /// replaced owners in all (the oldest go first).
    pub fn new(keep_ms: i64, max_past: usize) -> Self {
        AddressBook {
            current: HashMap::new(),
            past: HashMap::new(),
            ended: VecDeque::new(),
            keep_ms,
            max_past,
            started: false,
        }
    }

    /// The owners in force from `now_ms` on. Each address whose owner changes (or that
    /// gains or loses one) remembers the owner it had until `now_ms`.
    pub fn replace(&mut self, owners: HashMap<IpAddr, Endpoint>, now_ms: i64) {
        let old = std::mem::replace(&mut self.current, owners);
        if self.started {
            for (ip, before) in &old {
                if self.current.get(ip) != Some(before) {
                    self.remember(*ip, Some(before.clone()), now_ms);
                }
            }
            let gained: Vec<IpAddr> = self
                .current
                .keys()
                .filter(|ip| !old.contains_key(ip))
                .copied()
                .collect();
            for ip in gained {
                self.remember(ip, None, now_ms);
            }
        }
        self.started = true;
        self.prune(now_ms);
    }

    /// Who had `ip` at `at_ms`: the first remembered owner that still had it then, else
    /// the owner in force.
    pub fn owner(&self, ip: &IpAddr, at_ms: i64) -> Option<&Endpoint> {
        if let Some(history) = self.past.get(ip) {
            if let Some((owner, _)) = history.iter().find(|(_, until)| at_ms < *until) {
                return owner.as_ref();
            }
        }
        self.current.get(ip)
    }

    /// The owners in force.
    pub fn current(&self) -> &HashMap<IpAddr, Endpoint> {
        &self.current
    }

    fn remember(&mut self, ip: IpAddr, owner: Option<Endpoint>, until_ms: i64) {
        self.past
            .entry(ip)
            .or_default()
            .push_back((owner, until_ms));
        self.ended.push_back((until_ms, ip));
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
        // Before the first replace nothing was known: the first owners answer.
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
        // Past the keep time: forgotten, the owner in force answers.
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
        assert_eq!(book.owner(&x, 12_900), Some(&ep("a", "4")), "a/3 went");
        assert_eq!(book.owner(&x, 13_250), Some(&ep("a", "6")));
    }
}
