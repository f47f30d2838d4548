//! Lints: rules that are enforced as written but are probably not what was meant.
//!
//! - **Wide open**: an allowing rule whose peers take in every address (no `from`/`to`), an
//!   `ipBlock`/`networks` CIDR of prefix length 0 (`0.0.0.0/0`, `::/0`: the internet), or an
//!   empty `namespaceSelector` with an empty (or no) `podSelector` (every pod of the cluster).
//!   An empty `namespaceSelector` that narrows pods by label (the usual DNS rule) is not
//!   reported.
//! - **Shadowed** (conservative: reported only when certain). Rule `R` of policy `P` (tier `T`,
//!   direction `d`) is shadowed by rule `R'` of policy `Q` when:
//!   1. `Q`'s tier is evaluated before `T`, is a defined tier and not the `networkpolicy` tier;
//!   2. `Q` applies in direction `d` to every pod `P` selects in that direction (and `P`
//!      selects at least one);
//!   3. `R'` is an Accept or Deny rule that covers `R`: its peers are all addresses, or
//!      contain each of `R`'s peers exactly as written; its ports are all ports, or contain
//!      each of `R`'s ports (same protocol, enclosing range; named ports only by equal name);
//!      neither has a peer Palisade cannot enforce;
//!   4. nothing can send a connection of `R` past `R'` to a later tier: no rule of `Q` before
//!      `R'` is a Pass rule, and for every selected pod no policy of `Q`'s tier evaluated
//!      before `Q` has a Pass rule in direction `d`.
//!
//!   Then every connection `R` matches is decided (accepted or denied) in `Q`'s tier before
//!   `T` is visited, so `R` never decides anything. Anything less certain is not reported.

use std::collections::HashMap;

use palisade_policy::engine::Engine;
use palisade_policy::model::{
    Action, Direction, NamespaceMatch, Peer, Policy, PolicyId, PortMatch, Rule,
};

/// Why a rule is wide open, or `None`.
pub fn wide_open(rule: &Rule, direction: Direction) -> Option<String> {
    if rule.action != Action::Accept {
        return None;
    }
    let Some(peers) = &rule.peers else {
        return Some(match direction {
            Direction::Ingress => "allows every source (the rule has no from): open to the whole cluster and the internet".to_string(),
            Direction::Egress => "allows every destination (the rule has no to): open to the whole cluster and the internet".to_string(),
        });
    };
    let mut reasons = Vec::new();
    for peer in peers {
        match peer {
            Peer::IpBlock { cidr, except } if cidr.prefix_len() == 0 => {
                reasons.push(if except.is_empty() {
                    format!("{cidr}: open to the internet")
                } else {
                    format!(
                        "{cidr} (except {} CIDRs): open to the internet",
                        except.len()
                    )
                })
            }
            Peer::Pods {
                namespaces: NamespaceMatch::Selector(ns),
                pods,
            } if ns.is_empty() && pods.is_empty() => reasons.push(
                "empty namespaceSelector and podSelector: open to every pod of the cluster"
                    .to_string(),
            ),
            _ => {}
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// The rule's peers hold one Palisade cannot enforce.
fn has_unsupported(rule: &Rule) -> bool {
    rule.peers
        .iter()
        .flatten()
        .any(|p| matches!(p, Peer::Unsupported { .. }))
}

fn port_covers(outer: &PortMatch, inner: &PortMatch) -> bool {
    match (outer, inner) {
        (PortMatch::AllPorts { protocol: a }, PortMatch::AllPorts { protocol: b }) => a == b,
        (
            PortMatch::AllPorts { protocol: a },
            PortMatch::Range { protocol: b, .. }
            | PortMatch::Named {
                protocol: Some(b), ..
            },
        ) => a == b,
        (
            PortMatch::Range {
                protocol: a,
                start: s1,
                end: e1,
            },
            PortMatch::Range {
                protocol: b,
                start: s2,
                end: e2,
            },
        ) => a == b && s1 <= s2 && e2 <= e1,
        (PortMatch::Named { .. }, PortMatch::Named { .. }) => outer == inner,
        _ => false,
    }
}

/// Whether peer `outer` matches every address `inner` matches. Only what holds whatever the
/// cluster looks like: equal peers; pod peers with an equal (or empty) pod selector in the same
/// namespaces (or in every namespace: an empty namespace selector); a CIDR without exceptions
/// that contains the other.
fn peer_covers(outer: &Peer, inner: &Peer) -> bool {
    if outer == inner {
        return true;
    }
    match (outer, inner) {
        (
            Peer::Pods {
                namespaces: on,
                pods: op,
            },
            Peer::Pods {
                namespaces: inn,
                pods: ip,
            },
        ) => {
            let all_namespaces = matches!(on, NamespaceMatch::Selector(s) if s.is_empty());
            (op.is_empty() || op == ip) && (all_namespaces || on == inn)
        }
        (
            Peer::IpBlock {
                cidr: oc,
                except: oe,
            },
            Peer::IpBlock { cidr: ic, .. },
        ) => oe.is_empty() && oc.contains(ic),
        _ => false,
    }
}

/// Whether every connection `inner` matches is also matched by `outer` (peers and ports).
pub fn covers(outer: &Rule, inner: &Rule) -> bool {
    if has_unsupported(outer) || has_unsupported(inner) {
        return false;
    }
    let peers = match (&outer.peers, &inner.peers) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => i.iter().all(|p| o.iter().any(|q| peer_covers(q, p))),
    };
    let ports = match (&outer.ports, &inner.ports) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(o), Some(i)) => i.iter().all(|p| o.iter().any(|q| port_covers(q, p))),
    };
    peers && ports
}

/// What the shadow check needs, computed once per report build.
pub struct Shadows<'a> {
    engine: &'a Engine,
    policies: HashMap<&'a PolicyId, &'a Policy>,
    /// Per direction (0 ingress, 1 egress): the pods each policy selects.
    selected: [HashMap<&'a PolicyId, Vec<usize>>; 2],
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl<'a> Shadows<'a> {
    pub fn new(engine: &'a Engine) -> Shadows<'a> {
        let cluster = engine.cluster();
        let mut selected: [HashMap<&PolicyId, Vec<usize>>; 2] = [HashMap::new(), HashMap::new()];
        for p in 0..cluster.pods.len() {
            for d in [Direction::Ingress, Direction::Egress] {
                for id in engine.policies_selecting(p, d) {
                    selected[dir_index(d)].entry(id).or_default().push(p);
                }
            }
        }
        Shadows {
            engine,
            policies: cluster.policies.iter().map(|p| (&p.id, p)).collect(),
            selected,
        }
    }

    /// The pods a policy selects in a direction.
    pub fn selected(&self, id: &PolicyId, d: Direction) -> &[usize] {
        self.selected[dir_index(d)]
            .get(id)
            .map_or(&[], |v| v.as_slice())
    }

    fn tier_of(&self, policy: &Policy) -> Option<usize> {
        self.engine
            .tiers()
            .iter()
            .position(|t| t.name == policy.tier)
    }

    fn has_pass(policy: &Policy, d: Direction) -> bool {
        policy
            .rules(d)
            .is_some_and(|rules| rules.iter().any(|r| r.action == Action::Pass))
    }

    /// The rule that shadows `policy`'s rule `index` in direction `d`, as
    /// `(policy, rule index, action, tier name)`, or `None` when not certain.
    pub fn shadowed_by(
        &self,
        policy: &Policy,
        d: Direction,
        index: usize,
    ) -> Option<(&'a PolicyId, usize, Action, &'a str)> {
        let rule = policy.rules(d)?.get(index)?;
        let pods = self.selected(&policy.id, d);
        let &first = pods.first()?;
        let own_tier = self.tier_of(policy)?;
        let tiers = self.engine.tiers();
        // Candidates: the policies before P's tier that apply to the first selected pod.
        for q_id in self.engine.policies_selecting(first, d) {
            let q = *self.policies.get(q_id)?;
            let q_tier = self.tier_of(q)?;
            if q_tier >= own_tier {
                break;
            }
            let info = &tiers[q_tier];
            if info.missing || info.is_networkpolicy() {
                continue;
            }
            // Both lists are in pod order (built by walking the pods in order).
            let q_pods = self.selected(q_id, d);
            if !pods.iter().all(|p| q_pods.binary_search(p).is_ok())
                || !self.no_pass_before(q, q_tier, pods, d)
            {
                continue;
            }
            for (j, r) in q.rules(d).unwrap_or_default().iter().enumerate() {
                if r.action == Action::Pass {
                    break;
                }
                if covers(r, rule) {
                    return Some((q_id, j, r.action, info.name.as_str()));
                }
            }
        }
        None
    }

    /// No policy of `q`'s tier evaluated before `q` for any of the pods has a Pass rule.
    fn no_pass_before(&self, q: &Policy, q_tier: usize, pods: &[usize], d: Direction) -> bool {
        pods.iter().all(|&p| {
            for id in self.engine.policies_selecting(p, d) {
                if id == &q.id {
                    return true;
                }
                let Some(other) = self.policies.get(id) else {
                    return false;
                };
                if self.tier_of(other) == Some(q_tier) && Self::has_pass(other, d) {
                    return false;
                }
            }
            false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::model::{LabelSelector, Protocol};

    fn rule(action: Action, peers: Option<Vec<Peer>>, ports: Option<Vec<PortMatch>>) -> Rule {
        Rule {
            name: None,
            action,
            peers,
            ports,
        }
    }

    fn tcp(start: u16, end: u16) -> PortMatch {
        PortMatch::Range {
            protocol: Protocol::Tcp,
            start,
            end,
        }
    }

    #[test]
    fn wide_open_rules() {
        let all = rule(Action::Accept, None, None);
        assert!(wide_open(&all, Direction::Ingress).is_some());
        let internet = rule(
            Action::Accept,
            Some(vec![Peer::IpBlock {
                cidr: "::/0".parse().expect("cidr"),
                except: vec![],
            }]),
            None,
        );
        assert_eq!(
            wide_open(&internet, Direction::Egress).as_deref(),
            Some("::/0: open to the internet")
        );
        let dns = rule(
            Action::Accept,
            Some(vec![Peer::Pods {
                namespaces: NamespaceMatch::Selector(LabelSelector::everything()),
                pods: LabelSelector {
                    match_labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
                    match_expressions: vec![],
                },
            }]),
            None,
        );
        assert_eq!(wide_open(&dns, Direction::Egress), None);
        // A Deny of everything is not "open".
        assert_eq!(
            wide_open(&rule(Action::Deny, None, None), Direction::Ingress),
            None
        );
    }

    #[test]
    fn coverage_of_peers_and_ports() {
        let block = Peer::IpBlock {
            cidr: "10.0.0.0/8".parse().expect("cidr"),
            except: vec![],
        };
        let outer = rule(
            Action::Deny,
            Some(vec![block.clone()]),
            Some(vec![tcp(1, 1000)]),
        );
        let inner = rule(
            Action::Accept,
            Some(vec![block.clone()]),
            Some(vec![tcp(80, 80)]),
        );
        assert!(covers(&outer, &inner));
        // Wider ports, all protocols or other peers are not covered.
        assert!(!covers(
            &outer,
            &rule(
                Action::Accept,
                Some(vec![block.clone()]),
                Some(vec![tcp(80, 2000)])
            )
        ));
        assert!(!covers(
            &outer,
            &rule(Action::Accept, Some(vec![block.clone()]), None)
        ));
        assert!(!covers(
            &outer,
            &rule(Action::Accept, None, Some(vec![tcp(80, 80)]))
        ));
        assert!(covers(&rule(Action::Deny, None, None), &inner));
        let domain = Peer::Unsupported {
            field: "spec.egress[0].to[0].domainNames".into(),
        };
        assert!(!covers(
            &rule(Action::Deny, None, None),
            &rule(Action::Accept, Some(vec![domain]), None)
        ));
    }
}
