//! What the reports say: findings built from the engine (the cluster as the sources read it),
//! the hub (what each node's enforcer realised), the rejected objects and the audit log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use palisade_crds::reports::ResultKind;
use palisade_crds::ObjectKey;
use palisade_policy::engine::Engine;
use palisade_policy::model::{Direction, Peer, Policy, PolicyId, PolicyKind};

use super::lint::{self, Shadows};
use super::model::{rfc3339, Category, Finding, ObjectRef, ReportSet, Scope};
use crate::hub::Realisation;
use crate::source::{RejectedObject, RejectionId};

/// A node as the reports see it: its desired version, since when, and what its enforcer last
/// reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub desired: u64,
    /// When this replica first saw `desired` (how long a node has been catching up).
    pub desired_since: SystemTime,
    pub realised: Option<Realisation>,
}

/// Everything a report build reads.
pub struct Inputs<'a> {
    /// The engine over the current cluster; `Err` with why it could not be built.
    pub engine: Result<&'a Engine, String>,
    pub nodes: &'a BTreeMap<String, NodeView>,
    pub rejected: &'a [RejectedObject],
    /// Denied connections in the last hour per policy (`Kind ns/name`), from the audit log.
    pub denied: &'a BTreeMap<String, u64>,
    /// Report pods that no policy selects for ingress.
    pub unprotected_pods: bool,
}

/// At most this many names are spelled out in one message.
const NAMES_IN_MESSAGE: usize = 20;

/// `Kind/name`: the `policy` of a result about a policy object.
pub fn policy_name(id: &PolicyId) -> String {
    format!("{}/{}", id.kind.as_str(), id.name)
}

fn policy_ref(id: &PolicyId) -> ObjectRef {
    let api_version = match id.kind {
        PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
        PolicyKind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
        PolicyKind::AdminNetworkPolicy | PolicyKind::BaselineAdminNetworkPolicy => {
            "policy.networking.k8s.io/v1alpha1"
        }
        PolicyKind::TieredNetworkPolicy => "palisade.dev/v1alpha1",
    };
    ObjectRef {
        api_version,
        kind: id.kind.as_str(),
        namespace: id.namespace.clone(),
        name: id.name.clone(),
    }
}

fn scope_of(id: &PolicyId) -> Scope {
    match &id.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::Cluster,
    }
}

/// `a, b, c and 4 more`.
fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names
        .iter()
        .take(NAMES_IN_MESSAGE)
        .map(String::as_str)
        .collect();
    let more = names.len().saturating_sub(NAMES_IN_MESSAGE);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Builds every report.
pub fn build(inputs: &Inputs<'_>) -> ReportSet {
    let mut set = ReportSet::default();
    set.ensure(Scope::Cluster);
    match &inputs.engine {
        Ok(engine) => {
            let shadows = Shadows::new(engine);
            for ns in namespaces_in_use(engine) {
                set.ensure(Scope::Namespace(ns));
            }
            for policy in &engine.cluster().policies {
                policy_findings(&mut set, inputs, engine, &shadows, policy);
            }
            tier_ties(&mut set, engine);
            address_conflicts(&mut set, engine);
            if inputs.unprotected_pods {
                unprotected(&mut set, engine);
            }
        }
        Err(why) => set.push(
            Scope::Cluster,
            Finding::new(
                "palisade/index",
                Category::Realisation,
                ResultKind::Error,
                format!(
                    "the cluster cannot be indexed, no rules were compiled from this state: {why}"
                ),
            ),
        ),
    }
    rejections(&mut set, inputs.rejected);
    set
}

/// Namespaces that have pods or policies (each gets a report).
fn namespaces_in_use(engine: &Engine) -> BTreeSet<String> {
    let cluster = engine.cluster();
    cluster
        .pods
        .iter()
        .map(|p| p.namespace.clone())
        .chain(
            cluster
                .policies
                .iter()
                .filter_map(|p| p.id.namespace.clone()),
        )
        .collect()
}

fn policy_findings(
    set: &mut ReportSet,
    inputs: &Inputs<'_>,
    engine: &Engine,
    shadows: &Shadows<'_>,
    policy: &Policy,
) {
    let id = &policy.id;
    let scope = scope_of(id);
    let name = policy_name(id);
    let mut pods: BTreeSet<usize> = shadows
        .selected(id, Direction::Ingress)
        .iter()
        .copied()
        .collect();
    pods.extend(shadows.selected(id, Direction::Egress));
    let mut denied = inputs.denied.get(&id.to_string()).copied();
    if pods.is_empty() {
        let mut f = Finding::new(
            &name,
            Category::Lint,
            ResultKind::Warn,
            "selects no pods: it enforces nothing",
        )
        .resource(policy_ref(id));
        if let Some(n) = denied.take() {
            f = f.property("deniedLastHour", n.to_string());
        }
        set.push(scope.clone(), f);
    } else {
        let mut f = realisation(engine, inputs.nodes, &name, &pods).resource(policy_ref(id));
        if let Some(n) = denied {
            f = f.property("deniedLastHour", n.to_string());
        }
        set.push(scope.clone(), f);
        for f in enforcer_rule_errors(inputs.nodes, id, &name) {
            set.push(scope.clone(), f.resource(policy_ref(id)));
        }
    }
    for d in engine.diagnostics().iter().filter(|d| &d.policy == id) {
        let (category, result) = match d.field.as_str() {
            "spec.tier" => (Category::Unsupported, ResultKind::Fail),
            "spec.priority" => (Category::Lint, ResultKind::Warn),
            // Unsupported peers are reported below, with their exact field.
            _ => continue,
        };
        set.push(
            scope.clone(),
            Finding::new(
                &name,
                category,
                result,
                format!("{}: {}", d.field, d.message),
            )
            .resource(policy_ref(id))
            .property("field", d.field.clone()),
        );
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        for (i, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let rule_name = format!("{}[{i}]", direction.as_str());
            for field in rule.peers.iter().flatten().filter_map(|p| match p {
                Peer::Unsupported { field } => Some(field),
                _ => None,
            }) {
                let effect = if rule.action == palisade_policy::model::Action::Accept {
                    "this peer matches nothing"
                } else {
                    "the rule denies all traffic in its direction"
                };
                set.push(
                    scope.clone(),
                    Finding::new(
                        &name,
                        Category::Unsupported,
                        ResultKind::Fail,
                        format!("{field} cannot be enforced: enforced fail-closed ({effect})"),
                    )
                    .rule(&rule_name)
                    .resource(policy_ref(id))
                    .property("field", field.clone()),
                );
            }
            if let Some(why) = lint::wide_open(rule, direction) {
                set.push(
                    scope.clone(),
                    Finding::new(
                        &name,
                        Category::Lint,
                        ResultKind::Warn,
                        format!("wide open: {why}"),
                    )
                    .rule(&rule_name)
                    .resource(policy_ref(id)),
                );
            }
            if let Some((by, j, action, tier)) = shadows.shadowed_by(policy, direction, i) {
                set.push(
                    scope.clone(),
                    Finding::new(
                        &name,
                        Category::Lint,
                        ResultKind::Warn,
                        format!(
                            "shadowed: never decides anything, {by} {}[{j}] ({action:?}) in tier {tier} decides every connection it matches first",
                            direction.as_str()
                        ),
                    )
                    .rule(&rule_name)
                    .resource(policy_ref(id))
                    .property("shadowedBy", format!("{by} {}[{j}]", direction.as_str())),
                );
            }
        }
    }
}

/// The nodes that host a pod the policy selects (pods owning an address on a known node: the
/// ones compiled into a node's rules; a pod whose address another pod owns is not).
fn hosting_nodes(engine: &Engine, pods: &BTreeSet<usize>) -> BTreeSet<String> {
    let cluster = engine.cluster();
    pods.iter()
        .filter(|&&p| engine.pod_has_address(p))
        .filter_map(|&p| cluster.pods.get(p))
        .filter_map(|p| p.node.clone())
        .collect()
}

/// The failure line of an enforcer report (`version N not applied: ...`), if any.
fn failure(r: &Realisation) -> Option<&str> {
    r.errors
        .iter()
        .map(String::as_str)
        .find(|e| e.starts_with("version "))
}

/// `pass` when every node hosting a selected pod realised its current rules, `fail` naming the
/// nodes that could not apply them and why, else `skip` (pending) with since when.
fn realisation(
    engine: &Engine,
    nodes: &BTreeMap<String, NodeView>,
    name: &str,
    pods: &BTreeSet<usize>,
) -> Finding {
    let hosts = hosting_nodes(engine, pods);
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut pending_since: Option<SystemTime> = None;
    let mut done: Vec<String> = Vec::new();
    for node in &hosts {
        let Some(view) = nodes.get(node) else {
            pending.push(node.clone());
            continue;
        };
        match &view.realised {
            Some(r) if r.version >= view.desired => done.push(node.clone()),
            Some(r) if failure(r).is_some() => {
                failed.push((node.clone(), failure(r).unwrap_or_default().to_string()))
            }
            _ => {
                pending.push(node.clone());
                pending_since = Some(match pending_since {
                    Some(t) => t.min(view.desired_since),
                    None => view.desired_since,
                });
            }
        }
    }
    if !failed.is_empty() {
        let what: Vec<String> = failed
            .iter()
            .map(|(n, e)| format!("node {n}: {e}"))
            .collect();
        let mut f = Finding::new(
            name,
            Category::Realisation,
            ResultKind::Fail,
            format!(
                "not realised on {} of {} nodes (the previous rules stay in force there): {}",
                failed.len(),
                hosts.len(),
                what.join("; ")
            ),
        )
        .property(
            "failedNodes",
            list(&failed.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()),
        );
        if !pending.is_empty() {
            f = f.property("pendingNodes", list(&pending));
        }
        return f;
    }
    if !pending.is_empty() {
        let mut f = Finding::new(
            name,
            Category::Realisation,
            ResultKind::Skip,
            format!(
                "pending: {} of {} nodes have not realised the current rules yet ({})",
                pending.len(),
                hosts.len(),
                list(&pending)
            ),
        )
        .property("pendingNodes", list(&pending));
        if let Some(t) = pending_since {
            f = f.property("pendingSince", rfc3339(t));
        }
        return f;
    }
    if hosts.is_empty() {
        return Finding::new(
            name,
            Category::Realisation,
            ResultKind::Skip,
            "the pods it selects have no address or node yet: nothing to enforce",
        );
    }
    Finding::new(
        name,
        Category::Realisation,
        ResultKind::Pass,
        format!(
            "realised on every node hosting a selected pod ({})",
            list(&done)
        ),
    )
    .property("nodes", list(&done))
}

/// Rules an enforcer reported it enforces fail-closed (`Kind ns/name ingress rule 3: why`).
fn enforcer_rule_errors(
    nodes: &BTreeMap<String, NodeView>,
    id: &PolicyId,
    name: &str,
) -> Vec<Finding> {
    let prefix = format!("{id} ");
    // (rule, reason) -> nodes
    let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (node, view) in nodes {
        for line in view.realised.iter().flat_map(|r| &r.errors) {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let mut words = rest.splitn(4, ' ');
            let (Some(direction), Some("rule"), Some(index), Some(reason)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let index = index.trim_end_matches(':');
            found
                .entry((format!("{direction}[{index}]"), reason.to_string()))
                .or_default()
                .push(node.clone());
        }
    }
    found
        .into_iter()
        .map(|((rule, reason), nodes)| {
            Finding::new(
                name,
                Category::Unsupported,
                ResultKind::Fail,
                format!("enforced fail-closed on {}: {reason}", list(&nodes)),
            )
            .rule(rule)
            .property("nodes", list(&nodes))
        })
        .collect()
}

fn tier_ties(set: &mut ReportSet, engine: &Engine) {
    for (priority, names) in engine.tier_ties() {
        for name in &names {
            let others: Vec<&str> = names.iter().copied().filter(|n| n != name).collect();
            set.push(
                Scope::Cluster,
                Finding::new(
                    format!("Tier/{name}"),
                    Category::Lint,
                    ResultKind::Warn,
                    format!(
                        "priority {priority} is shared with tier {}: ordered by name",
                        others.join(", ")
                    ),
                ),
            );
        }
    }
}

/// An address claimed by several pods (a Terminating pod's, already given to a new pod):
/// one `warn` in the namespace of each pod that lost it, naming the owner, so a pod
/// enforced as if it had no address is never silent.
fn address_conflicts(set: &mut ReportSet, engine: &Engine) {
    for conflict in engine.address_conflicts() {
        for loser in &conflict.losers {
            let Some((namespace, name)) = loser.split_once('/') else {
                continue;
            };
            set.push(
                Scope::Namespace(namespace.to_string()),
                Finding::new(
                    format!("Pod/{name}"),
                    Category::Realisation,
                    ResultKind::Warn,
                    format!(
                        "address {} is also claimed by {}, which owns it: no policy applies to \
                         this pod through it and no peer selector matches it there (owner: not \
                         terminating before terminating, then newest creationTimestamp, then \
                         namespace/name)",
                        conflict.address, conflict.owner
                    ),
                )
                .resource(ObjectRef {
                    api_version: "v1",
                    kind: "Pod",
                    namespace: Some(namespace.to_string()),
                    name: name.to_string(),
                })
                .property("address", conflict.address.to_string())
                .property("owner", conflict.owner.clone()),
            );
        }
    }
}

/// One result per namespace with pods: `warn` listing the pods no policy selects for ingress,
/// `pass` when there are none.
fn unprotected(set: &mut ReportSet, engine: &Engine) {
    let mut per_ns: BTreeMap<&str, (usize, Vec<String>)> = BTreeMap::new();
    for (i, pod) in engine.cluster().pods.iter().enumerate() {
        if pod.host_network {
            continue;
        }
        let entry = per_ns.entry(pod.namespace.as_str()).or_default();
        entry.0 += 1;
        if engine.policies_selecting(i, Direction::Ingress).is_empty() {
            entry.1.push(pod.name.clone());
        }
    }
    for (ns, (total, mut open)) in per_ns {
        open.sort();
        let scope = Scope::Namespace(ns.to_string());
        let finding = if open.is_empty() {
            Finding::new(
                "palisade/unprotected-pods",
                Category::Unprotected,
                ResultKind::Pass,
                format!("every pod ({total}) is selected for ingress by a policy"),
            )
        } else {
            let mut f = Finding::new(
                "palisade/unprotected-pods",
                Category::Unprotected,
                ResultKind::Warn,
                format!(
                    "{} of {total} pods are selected by no policy for ingress (any source may connect): {}",
                    open.len(),
                    list(&open)
                ),
            )
            .property("pods", open.len().to_string());
            for name in open.iter().take(NAMES_IN_MESSAGE) {
                f = f.resource(ObjectRef {
                    api_version: "v1",
                    kind: "Pod",
                    namespace: Some(ns.to_string()),
                    name: name.clone(),
                });
            }
            f
        };
        set.push(scope, finding);
    }
}

/// Rejected objects: never applied, never dropped silently.
fn rejections(set: &mut ReportSet, rejected: &[RejectedObject]) {
    for r in rejected {
        let rejection = &r.rejection;
        let (scope, policy, reference) = match &rejection.id {
            RejectionId::Object(ObjectKey::Policy(id)) => {
                (scope_of(id), policy_name(id), Some(policy_ref(id)))
            }
            RejectionId::Object(ObjectKey::Pod { namespace, name }) => (
                Scope::Namespace(namespace.clone()),
                format!("Pod/{name}"),
                None,
            ),
            RejectionId::Object(ObjectKey::Namespace(name)) => {
                (Scope::Cluster, format!("Namespace/{name}"), None)
            }
            RejectionId::Object(ObjectKey::Node(name)) => {
                (Scope::Cluster, format!("Node/{name}"), None)
            }
            RejectionId::Object(ObjectKey::Tier(name)) => {
                (Scope::Cluster, format!("Tier/{name}"), None)
            }
            RejectionId::Document(origin) => (Scope::Cluster, format!("manifest/{origin}"), None),
        };
        let mut f = Finding::new(
            policy,
            Category::Unsupported,
            ResultKind::Fail,
            format!(
                "rejected, not applied (an earlier accepted version stays in force, if any): {}",
                rejection.error
            ),
        )
        .property("rejectedSince", rfc3339(r.since));
        if let Some(origin) = &rejection.origin {
            f = f.property("origin", origin.clone());
        }
        if let Some(reference) = reference {
            f = f.resource(reference);
        }
        set.ensure(scope.clone());
        set.push(scope, f);
    }
}
