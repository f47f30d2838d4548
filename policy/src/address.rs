//! Which pod owns an address: one owner per pod address, whatever the watch says.
//!
//! A Terminating pod keeps `status.podIP` while the CNI may already have given the
//! address to a new pod, and the new pod may be known first. Both then claim the
//! address; if both were enforced, the address would go through both pods' chains
//! and be in the peer sets of both pods' labels. So each address has one owner:
//!
//! 1. a pod that is not terminating before one that is;
//! 2. then the most recently created (`created`; unknown counts as oldest);
//! 3. then the first by namespace, then name (deterministic, never arrival order).
//!
//! The other claimants lose that address (that family only) and are treated as a
//! pod whose address is not known yet: no subject for it, in no peer set through it.
//! Resolution is incremental: a pod's change re-resolves only the addresses it
//! claimed or claims.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::model::{Family, Pod};

/// The pods claiming one address (almost always exactly one: no allocation then).
#[derive(Clone, Debug)]
enum Claim {
    One(u32),
    /// Ordered by precedence: the owner first.
    Many(Vec<u32>),
}

/// Address → claimants, and per pod the families whose address it lost.
#[derive(Clone, Debug, Default)]
pub(crate) struct AddressBook {
    claims: FxHashMap<IpAddr, Claim>,
    /// Per pod: bit 0 set when it lost its IPv4 address, bit 1 its IPv6 one.
    lost: Vec<u8>,
    /// Addresses with more than one claimant.
    conflicts: BTreeSet<IpAddr>,
}

/// Two or more pods claim one address: who owns it, who lost it (reported loudly).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressConflict {
    pub address: IpAddr,
    /// `namespace/name` of the pod that owns the address.
    pub owner: String,
    /// `namespace/name` of the pods treated as without this address, in precedence order.
    pub losers: Vec<String>,
}

impl fmt::Display for AddressConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "address {} is claimed by several pods: {} owns it; {} treated as without it \
             (not terminating before terminating, then newest creationTimestamp, then \
             namespace/name)",
            self.address,
            self.owner,
            self.losers.join(", ")
        )
    }
}

fn family_bit(ip: &IpAddr) -> u8 {
    match Family::of(ip) {
        Family::IPv4 => 1,
        Family::IPv6 => 2,
    }
}

/// The precedence of two claimants: `Less` means `a` owns before `b`.
fn precedence(pods: &[Pod], a: u32, b: u32) -> Ordering {
    let key = |p: u32| {
        let pod = &pods[p as usize];
        (
            pod.terminating,
            Reverse(pod.created),
            pod.namespace.as_str(),
            pod.name.as_str(),
        )
    };
    key(a).cmp(&key(b))
}

impl AddressBook {
    /// Resolves every address of the cluster's pods.
    pub fn new(pods: &[Pod]) -> AddressBook {
        let mut book = AddressBook {
            claims: FxHashMap::default(),
            lost: vec![0; pods.len()],
            conflicts: BTreeSet::new(),
        };
        for (p, pod) in pods.iter().enumerate() {
            for ip in &pod.ips {
                book.add_claim(*ip, p as u32);
            }
        }
        let conflicted: Vec<IpAddr> = book.conflicts.iter().copied().collect();
        for ip in conflicted {
            book.resolve(ip, pods, &mut Vec::new());
        }
        book
    }

    /// Registers a pod appended to the cluster (claiming nothing yet).
    pub fn push_pod(&mut self) {
        self.lost.push(0);
    }

    /// The pod's address of a family, unless another pod owns it.
    pub fn ip_of(&self, pods: &[Pod], pod: usize, family: Family) -> Option<IpAddr> {
        let ip = pods.get(pod)?.ip_of(family)?;
        let lost = self.lost.get(pod).copied().unwrap_or(0);
        (lost & family_bit(&ip) == 0).then_some(ip)
    }

    /// Whether the pod owns `ip` (one of its claimed addresses).
    pub fn owns(&self, pod: usize, ip: &IpAddr) -> bool {
        self.lost.get(pod).copied().unwrap_or(0) & family_bit(ip) == 0
    }

    /// Whether the pod owns at least one address (no allocation: compile asks per pod).
    pub fn has_address(&self, pods: &[Pod], pod: usize) -> bool {
        let lost = self.lost.get(pod).copied().unwrap_or(0);
        pods.get(pod)
            .is_some_and(|p| p.ips.iter().any(|ip| lost & family_bit(ip) == 0))
    }

    /// The addresses the pod owns, in the order the pod lists them.
    pub fn ips_of(&self, pods: &[Pod], pod: usize) -> Vec<IpAddr> {
        let lost = self.lost.get(pod).copied().unwrap_or(0);
        pods.get(pod)
            .map(|p| {
                p.ips
                    .iter()
                    .copied()
                    .filter(|ip| lost & family_bit(ip) == 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Re-resolves after pod `pod` changed its addresses or its precedence (`pods`
    /// already holds its new version; `old_ips` are the addresses it claimed before).
    /// Returns the pods whose owned addresses changed, `pod` itself included if so.
    pub fn update(&mut self, pods: &[Pod], pod: usize, old_ips: &[IpAddr]) -> Vec<u32> {
        let p = pod as u32;
        let new_ips = &pods[pod].ips;
        for ip in old_ips.iter().filter(|ip| !new_ips.contains(ip)) {
            self.remove_claim(*ip, p);
        }
        for ip in new_ips.iter().filter(|ip| !old_ips.contains(ip)) {
            self.add_claim(*ip, p);
        }
        // A dropped address is not lost any more: the pod no longer claims it.
        let before = self.lost[pod];
        self.lost[pod] = 0;
        let mut moved = Vec::new();
        // Each address once (old and new addresses mostly overlap).
        for ip in old_ips
            .iter()
            .chain(new_ips.iter().filter(|ip| !old_ips.contains(ip)))
        {
            self.resolve(*ip, pods, &mut moved);
        }
        // The pod itself moved only if what it owns differs from before the reset.
        moved.retain(|&q| q != p);
        if self.lost[pod] != before || old_ips != new_ips.as_slice() {
            moved.push(p);
        }
        moved.sort_unstable();
        moved.dedup();
        moved
    }

    /// The addresses claimed by several pods, each with its owner and losers.
    pub fn conflicts(&self, pods: &[Pod]) -> Vec<AddressConflict> {
        let name = |p: &u32| {
            let pod = &pods[*p as usize];
            format!("{}/{}", pod.namespace, pod.name)
        };
        self.conflicts
            .iter()
            .filter_map(|ip| match self.claims.get(ip) {
                Some(Claim::Many(list)) => {
                    let (owner, losers) = list.split_first()?;
                    Some(AddressConflict {
                        address: *ip,
                        owner: name(owner),
                        losers: losers.iter().map(name).collect(),
                    })
                }
                _ => None,
            })
            .collect()
    }

    fn add_claim(&mut self, ip: IpAddr, pod: u32) {
        match self.claims.get_mut(&ip) {
            None => {
                self.claims.insert(ip, Claim::One(pod));
            }
            Some(Claim::One(other)) if *other == pod => {}
            Some(Claim::One(other)) => {
                let list = vec![*other, pod];
                self.claims.insert(ip, Claim::Many(list));
                self.conflicts.insert(ip);
            }
            Some(Claim::Many(list)) => {
                if !list.contains(&pod) {
                    list.push(pod);
                }
            }
        }
    }

    fn remove_claim(&mut self, ip: IpAddr, pod: u32) {
        match self.claims.get_mut(&ip) {
            Some(Claim::One(p)) if *p == pod => {
                self.claims.remove(&ip);
            }
            Some(Claim::Many(list)) => list.retain(|&p| p != pod),
            _ => {}
        }
    }

    /// Orders an address's claimants and sets who lost it; pods whose loss of it
    /// changed go to `moved`.
    fn resolve(&mut self, ip: IpAddr, pods: &[Pod], moved: &mut Vec<u32>) {
        let bit = family_bit(&ip);
        let list = match self.claims.get_mut(&ip) {
            Some(Claim::Many(list)) => list,
            Some(Claim::One(p)) => {
                let p = *p;
                self.set_lost(p, bit, false, moved);
                return;
            }
            None => return,
        };
        list.sort_by(|&a, &b| precedence(pods, a, b));
        let list = list.clone();
        match list.as_slice() {
            [] => {
                self.claims.remove(&ip);
                self.conflicts.remove(&ip);
            }
            [only] => {
                self.claims.insert(ip, Claim::One(*only));
                self.conflicts.remove(&ip);
                self.set_lost(*only, bit, false, moved);
            }
            [owner, losers @ ..] => {
                self.conflicts.insert(ip);
                self.set_lost(*owner, bit, false, moved);
                for &l in losers {
                    self.set_lost(l, bit, true, moved);
                }
            }
        }
    }

    fn set_lost(&mut self, pod: u32, bit: u8, lost: bool, moved: &mut Vec<u32>) {
        let Some(slot) = self.lost.get_mut(pod as usize) else {
            return;
        };
        let was = *slot & bit != 0;
        if was != lost {
            *slot ^= bit;
            moved.push(pod);
        }
    }
}
