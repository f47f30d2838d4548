//! Validation of a compiled rule set before render and eval see it.
//!
//! Structural faults (wrong format, a pod or tier pointing at a tier or policy that
//! does not exist, two sets with one name and different members) refuse the whole
//! rule set: the rules in force stay. A fault inside one rule (a set index out of
//! range, a port range with start > end) makes that rule fail-closed, as the engine
//! does for unenforceable peers: an Accept rule matches nothing, a Deny or Pass rule
//! becomes a Deny of everything in its direction. Both render and eval work on the
//! checked copy, so they can never disagree about such a rule.

use std::borrow::Cow;
use std::collections::BTreeMap;

use palisade_policy::compiled::{CompiledRule, NodeRuleSet, RuleMatch, FORMAT_VERSION};
use palisade_policy::model::{Action, Direction};

use crate::error::{RenderError, RuleIssue};

/// Checks `rs` and returns a copy where faulty rules are made fail-closed, with
/// one issue per such rule.
pub fn check(rs: &NodeRuleSet) -> Result<(Cow<'_, NodeRuleSet>, Vec<RuleIssue>), RenderError> {
    if rs.format != FORMAT_VERSION {
        return Err(RenderError::Format {
            found: rs.format,
            expected: FORMAT_VERSION,
        });
    }
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, set) in rs.sets.iter().enumerate() {
        if let Some(&j) = by_name.get(set.name.as_str()) {
            if rs.sets[j] != *set {
                return Err(RenderError::invalid(
                    format!("set {}", set.name),
                    format!("sets[{i}]"),
                    format!("same name as sets[{j}] with different members"),
                ));
            }
        } else {
            by_name.insert(&set.name, i);
        }
    }
    for (p, policy) in rs.policies.iter().enumerate() {
        if policy.tier >= rs.tiers.len() {
            return Err(RenderError::invalid(
                policy.id.to_string(),
                format!("policies[{p}].tier"),
                format!("tier {} does not exist", policy.tier),
            ));
        }
    }
    for pod in &rs.pods {
        let object = format!("pod {}/{}", pod.namespace, pod.name);
        for (dir, list) in [
            (Direction::Ingress, &pod.ingress),
            (Direction::Egress, &pod.egress),
        ] {
            for tp in list {
                if tp.tier >= rs.tiers.len() {
                    return Err(RenderError::invalid(
                        &object,
                        dir.as_str(),
                        format!("tier {} does not exist", tp.tier),
                    ));
                }
                for &p in &tp.policies {
                    let Some(policy) = rs.policies.get(p) else {
                        return Err(RenderError::invalid(
                            &object,
                            dir.as_str(),
                            format!("policy {p} does not exist"),
                        ));
                    };
                    if policy.tier != tp.tier {
                        return Err(RenderError::invalid(
                            &object,
                            dir.as_str(),
                            format!(
                                "policy {} listed under tier {} but belongs to tier {}",
                                policy.id, tp.tier, policy.tier
                            ),
                        ));
                    }
                }
            }
        }
    }

    // Copy only when some rule has to be rewritten (the common case is none).
    let faulty = rs.policies.iter().any(|p| {
        p.ingress
            .iter()
            .chain(&p.egress)
            .any(|r| rule_fault(r, rs.sets.len()).is_some())
    });
    if !faulty {
        return Ok((Cow::Borrowed(rs), Vec::new()));
    }
    let mut out = rs.clone();
    let mut issues = Vec::new();
    for policy in &mut out.policies {
        let name = policy.id.to_string();
        for (dir, rules) in [
            (Direction::Ingress, &mut policy.ingress),
            (Direction::Egress, &mut policy.egress),
        ] {
            for rule in rules.iter_mut() {
                if let Some(reason) = rule_fault(rule, rs.sets.len()) {
                    issues.push(RuleIssue {
                        policy: name.clone(),
                        direction: dir,
                        rule_index: rule.index,
                        reason,
                    });
                    fail_closed(rule);
                }
            }
        }
    }
    Ok((Cow::Owned(out), issues))
}

fn rule_fault(rule: &CompiledRule, n_sets: usize) -> Option<String> {
    for (m, rm) in rule.matches.iter().enumerate() {
        if let Some(peers) = &rm.peers {
            if let Some(bad) = peers.iter().find(|&&s| s >= n_sets) {
                return Some(format!("matches[{m}].peers: set {bad} does not exist"));
            }
        }
        if let Some(local) = rm.local {
            if local >= n_sets {
                return Some(format!("matches[{m}].local: set {local} does not exist"));
            }
        }
        if let Some(ports) = &rm.ports {
            if let Some(bad) = ports.iter().find(|p| p.start > p.end) {
                return Some(format!(
                    "matches[{m}].ports: range {}-{} is empty",
                    bad.start, bad.end
                ));
            }
        }
    }
    None
}

fn fail_closed(rule: &mut CompiledRule) {
    match rule.action {
        Action::Accept => rule.matches.clear(),
        Action::Deny | Action::Pass => {
            rule.action = Action::Deny;
            rule.matches = vec![RuleMatch {
                peers: None,
                ports: None,
                local: None,
            }];
        }
    }
}
